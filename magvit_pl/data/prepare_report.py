"""What ``prepare`` shows while it runs and returns when it ends: a rich progress bar over files, the
summary dict, and the summary table (with every skipped file and its reason)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path


def summary(manifest: dict, processed: int, reused_shards: int, output: str) -> dict:
    """What prepare returns: counts per split, videos, frames, the skipped files, the time taken and the next command."""
    ok = [s for s in manifest["sources"] if s["status"] == "ok"]
    return {
        "output": manifest["name"],
        "splits": {k: v["count"] for k, v in manifest["splits"].items()},
        "classes": len(manifest["classes"]),
        "videos": len(ok),
        "frames": sum(s["frames"] for s in ok),
        "skipped": manifest["skipped"],
        "processed_files": processed,
        "reused_shards": reused_shards,
        "seconds": manifest["seconds"],
        "next": next_command(output, {k: v["count"] for k, v in manifest["splits"].items()}),
    }


def next_command(output: str, splits: dict[str, int]) -> str:
    """The ``fit`` that trains a tokenizer on the prepared folder; without a 'val' split, validating on the one
    there is (``test``, else ``train``) so that ``fit`` does not stop at its first validation."""
    command = f"python cli.py fit --config configs/tokenizer.yaml --data.data_dir {output}"
    if not splits.get("val"):
        command += f" --data.val_split {'test' if splits.get('test') else 'train'}"
    return command


class Progress:
    """A rich progress bar over files (a no-op when quiet)."""

    def __init__(self, total: int, quiet: bool, title: str):
        self.bar = None
        if not quiet and total:
            # rich loads only when a bar is shown: quiet runs (tests, scripts) never import it
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[last]}"), transient=False)
            self.task = self.bar.add_task(title, total=total, last="")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def advance(self, name: str, status: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=f"{Path(name).name} {'' if status == 'ok' else status}")


def print_summary(summary: dict, manifest: dict) -> None:
    """The summary table: per split videos, shards and MB; then every skipped file with its reason."""
    from rich.console import Console  # rich loads only when a table is shown (see Progress)
    from rich.table import Table  # (with Console, above)

    console = Console()
    table = Table(title=f"prepared {manifest['name']}: {summary['videos']} videos, {summary['frames']} frames, "
                        f"{summary['classes']} classes in {summary['seconds']:.1f} s")
    table.add_column("split")
    table.add_column("videos", justify="right")
    table.add_column("shards", justify="right")
    table.add_column("MB", justify="right")
    for split, entry in manifest["splits"].items():
        mb = sum(s["bytes"] for s in entry["shards"]) / 2**20
        table.add_row(split, str(entry["count"]), str(len(entry["shards"])), f"{mb:.1f}")
    console.print(table)
    if not summary["splits"].get("val"):
        console.print(f"[yellow]no 'val' split[/yellow] ({summary['videos']} usable video(s)): fit validates on "
                      f"'{'test' if summary['splits'].get('test') else 'train'}' instead (--data.val_split below); "
                      "with two or more videos and --val_fraction > 0, one goes to 'val'")
    print(f"next: {summary['next']}", flush=True)  # plain: one line to copy, never wrapped
    if summary["reused_shards"]:
        console.print(f"{summary['reused_shards']} shard(s) were already finished and kept")
    if summary["skipped"]:
        reasons = Counter(s["reason"].split(" (")[0].split(":")[0] for s in summary["skipped"])
        console.print(f"[yellow]skipped {len(summary['skipped'])} file(s)[/yellow] "
                      f"({', '.join(f'{k}: {v}' for k, v in reasons.most_common())}):")
        for s in summary["skipped"]:
            console.print(f"  {s['path']}: {s['reason']}", markup=False, highlight=False)
