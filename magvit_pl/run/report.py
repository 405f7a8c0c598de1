"""Results people read: a table on the console and ``results.json`` in the run folder.

:func:`print_table` is the one table printer (``test`` on MTM tasks and on a tokenizer, ``reconstruct``,
``benchmarks/reconstruction.py``); :func:`save_results` the one ``results.json`` writer (values, protocol,
time; written atomically); :func:`write_results` both, for the per-task results of ``test --task``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from magvit_pl.run.files import write_json

Column = tuple[str, str, str]  # (result key, header, number format)


def print_table(rows: dict[str, dict], title: str, columns: Sequence[Column], extra: Sequence[Column] = (),
                first: str = "model") -> None:
    """Print one row per entry of ``rows`` (name → values) with ``columns`` and any ``extra`` columns ("–" where a
    row has no value), the first column headed ``first``; then one line per skipped metric (a row's
    ``"skipped"``: metric → why)."""
    table = Table(title=title)
    table.add_column(first, overflow="fold")  # long names (checkpoint paths) wrap instead of squeezing the numbers
    for _, header, _ in (*columns, *extra):
        table.add_column(header, justify="right")
    for name, r in rows.items():
        table.add_row(name, *("–" if r.get(key) is None else format(r[key], fmt) for key, _, fmt in (*columns, *extra)))
    console = Console(width=max(Console().width, 120))  # a pipe or a log file gets 120 columns, not 80
    console.print(table)
    skipped = {k: v for r in rows.values() for k, v in r.get("skipped", {}).items()}
    for k, v in skipped.items():
        console.print(f"{k} skipped: {v}", markup=False, highlight=False)


def save_results(run_dir: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``run_dir/results.json``: ``payload`` plus the time; returns its path."""
    path = Path(run_dir) / "results.json"
    write_json(path, {**payload, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    return path


def write_results(results: dict[str, dict[str, float]], label: str, run_dir: str | Path, protocol: dict[str, Any] | None = None) -> Path:
    """Print ``results`` (task → metric → value) with the family mean, and write ``run_dir/results.json``; returns its path."""
    keys = sorted({k for values in results.values() for k in values})
    mean = {k: sum(v[k] for v in results.values() if k in v) / max(1, sum(k in v for v in results.values())) for k in keys}
    rows = dict(results) if len(results) <= 1 else {**results, "[bold]mean[/bold]": mean}
    print_table(rows, title=f"test --task {label}", columns=[(k, k, ".4f") for k in keys], first="task")
    return save_results(run_dir, {"task": label, "results": results, "mean": mean, "protocol": protocol or {}})
