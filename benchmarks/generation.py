"""Sample quality of MTM checkpoints per task: is the condition kept, is the generated region close to the clip?

For every ``--ckpt`` (several compare side by side in one run) and every ``--task``, samples each clip
with the checkpoint's own sampling settings (or the ``--steps`` / ``--temperature`` / ``--top_k`` /
``--choice_temperature`` / ``--keep_condition`` overrides; ``--keep_condition both`` samples each checkpoint
with the condition tokens re-predicted and kept, side by side) and reports, over ``--seeds`` sampling seeds:

* ``given_psnr``: PSNR of the sample on the pixels the task gives (the condition must survive decoding);
* ``gen_psnr``: PSNR of the sample on the pixels the model generates, against the real clip (a proxy: a
  plausible sample need not equal the clip, but a sample far below the baselines is not plausible);
* ``cond_agree``: fraction of the condition tokens that the sampled tokens keep;
* ``token_acc``: fraction of generated tokens equal to the clip's own tokens.

Two no-sampling rows per task put these in scale: ``padded condition`` (the task's condition video Ṽ
itself: the given pixels and the task's padding elsewhere, e.g. the last given frame repeated) and
``tokenizer`` (the clip through the frozen tokenizer: the best a sample can be on the given region).

Clips come from ``--shards DIR`` (its ``--split``, as validation reads it) or ``--videos DIR`` (evenly
spaced centre crops). Class-conditional tasks (e.g. ``class_frame_prediction``) see each shard clip's own
label, or ``--class_id`` for every clip (needed with ``--videos``): comparing a class task with its
unconditional twin, or the true label with another, measures how much the model uses the class.
``--grid PNG`` writes, per task, the first clips' frames: real, then each checkpoint's sample. Prints one
JSON line and a table.

    python benchmarks/generation.py --ckpt runs/mtm/latest/checkpoints/last.ckpt --shards data/shards/dead_leaves-16x32
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from magvit_pl.run.errors import UserError
from magvit_pl.run.report import print_table

COLUMNS = (("given_psnr", "given PSNR", ".2f"), ("gen_psnr", "generated PSNR", ".2f"),
           ("cond_agree", "cond. tokens kept", ".3f"), ("token_acc", "token acc.", ".3f"))


def region_psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> float | None:
    """PSNR (peak-to-peak 2, clips in [-1, 1]) over the pixels where ``weight`` (broadcast to ``a``) is 1."""
    w = weight.expand_as(a).float()
    if w.sum() == 0:
        return None
    mse = (((a - b) ** 2) * w).sum() / w.sum()
    return float(10 * torch.log10(4.0 / mse.clamp(min=1e-10)))


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def filmstrip(rows: list[torch.Tensor], clips: int = 2, pad: int = 2) -> "np.ndarray":
    """(H', W', 3) uint8: for each (B, C, T, H, W) row tensor, its first ``clips`` clips as strips of frames
    (time along the width), strips top to bottom with a white gap after each row tensor."""
    import numpy as np

    strips = []
    for r in rows:
        x = ((r[:clips].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (b, C, T, H, W)
        for clip in x:
            strips.append(torch.cat(list(clip.permute(1, 2, 3, 0)), dim=1).numpy())  # (H, T*W, C)
        strips.append(np.full((pad, strips[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(strips, 0)


def short_names(paths: list[str], names: list[str] | None) -> list[str]:
    """``names`` when given (one per checkpoint), else each checkpoint's run folder (``<run>/checkpoints/x.ckpt``),
    made unique with ``#i``."""
    if names:
        if len(names) != len(paths):
            raise UserError(f"--name given {len(names)} times for {len(paths)} --ckpt; give one per checkpoint or none")
        return list(names)
    out = []
    for i, p in enumerate(paths):
        path = Path(p)
        name = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
        out.append(name if name not in out else f"{name}#{i}")
    return out


def load_clips(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The clips ``(N, 3, T, R, R)`` and their class labels ``(N,)``: ``--class_id`` for every clip when given, else
    the shards' own labels, else None (a video folder has no labels)."""
    from magvit_pl.run.eval_clips import labelled_shard_clips, video_clips  # the clip readers of the reconstruction benchmark

    if args.videos is not None:
        clips, _ = video_clips(args.videos, args.num_frames, args.resolution, args.clips_per_video)
        labels = None
    else:
        clips, _, labels = labelled_shard_clips(args.shards, args.split, args.num_frames, args.resolution)
    clips = clips[: args.max_clips]
    if args.class_id is not None:
        return clips, torch.full((len(clips),), args.class_id, dtype=torch.long)
    return clips, None if labels is None else labels[: args.max_clips]


def check_labels(model, task: str, labels: torch.Tensor | None, class_id: int | None) -> None:
    """One line when ``--class_id`` is not one of ``model``'s classes, or a class-conditional ``task`` has no labels."""
    n = model.hparams.num_classes
    if class_id is not None and not 0 <= class_id < n:
        raise UserError(f"--class_id {class_id}: must be in 0..{n - 1} (the model's num_classes is {n})")
    if labels is None and model.task(task).uses_class:
        raise UserError(f"--task {task} is class-conditional and a video folder has no labels: pass --class_id (0..{n - 1}), "
                        "the class every clip gets, or use --shards (each clip's own label)")


def evaluate_task(model, task_name: str, clips: torch.Tensor, batch: int, seeds: list[int], sampling,
                  labels: torch.Tensor | None = None) -> tuple[dict, dict, dict, torch.Tensor]:
    """Rows (padded condition, tokenizer, sample) for one task and the first batch's first seed's samples;
    ``labels (N,)`` are the clips' classes, used by class-conditional tasks only."""
    from magvit_pl.lit.mtm_batch import sample, tokenize

    task = model.task(task_name)
    label_batches = labels.split(batch) if labels is not None and task.uses_class else None
    stats: dict[str, list] = {k: [] for k in ("given_psnr", "gen_psnr", "cond_agree", "token_acc")}
    pad = {"gen_psnr": []}  # on the given pixels the padded condition is the clip itself
    tok = {"given_psnr": [], "gen_psnr": []}
    first = None
    for seed in seeds:
        per_seed: dict[str, list] = {k: [] for k in stats}
        for i, video in enumerate(clips.split(batch)):
            inputs = tokenize(model.tokenizer, model.vocab, task, video, label_batches[i] if label_batches else None, need_z=True)
            given = inputs.condition.pixel_mask
            generator = torch.Generator().manual_seed(seed * 100003 + i)
            out = sample(model.transformer, model.tokenizer, inputs, model.vocab, model.grid, model.commit_config,
                         sampling, generator)
            g = out.generated
            per_seed["given_psnr"].append(region_psnr(g, video, given))
            per_seed["gen_psnr"].append(region_psnr(g, video, ~given))
            cm = inputs.cond_mask
            per_seed["cond_agree"].append(float((out.tokens == inputs.z_cond)[cm].float().mean()) if cm.any() else None)
            per_seed["token_acc"].append(float((out.tokens == inputs.z)[~cm].float().mean()) if (~cm).any() else None)
            if seed == seeds[0]:
                pad["gen_psnr"].append(region_psnr(inputs.condition.video, video, ~given))
                recon = model.tokenizer.decode(inputs.z.reshape(-1, *model.grid)).clamp(-1, 1)
                tok["given_psnr"].append(region_psnr(recon, video, given))
                tok["gen_psnr"].append(region_psnr(recon, video, ~given))
                if first is None:
                    first = g
        for k in stats:
            stats[k].append(_mean(per_seed[k]))
    row = {k: _mean(v) for k, v in stats.items()}
    row.update({f"{k}_std": _std(v) for k, v in stats.items()})
    row["per_seed"] = stats
    return ({k: _mean(v) for k, v in pad.items()}, {k: _mean(v) for k, v in tok.items()}, row, first)


# --keep_condition -> the (keep_condition override, row-name suffix) pairs each checkpoint is sampled with
KEEP_VARIANTS: dict[str, tuple[tuple[bool | None, str], ...]] = {
    "model": ((None, ""),), "on": ((True, " (kept)"),), "off": ((False, " (re-predicted)"),),
    "both": ((False, " (re-predicted)"), (True, " (kept)")),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", action="append", required=True, help="MTM checkpoint (repeat to compare)")
    ap.add_argument("--name", action="append", help="a short name per --ckpt for the table (default: its run folder)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder of videos (e.g. ../shared/data/clips)")
    src.add_argument("--shards", type=Path, help="prepared shard folder (e.g. data/shards/dead_leaves-16x32)")
    ap.add_argument("--split", default="val", help="with --shards: the split to read")
    ap.add_argument("--task", action="append", help="task name (repeat; default: frame_prediction, outpainting_central, "
                                                    "inpainting_central, frame_interpolation)")
    ap.add_argument("--num_frames", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--clips_per_video", type=int, default=4)
    ap.add_argument("--max_clips", type=int, default=32)
    ap.add_argument("--class_id", type=int, help="class-conditional tasks: the class every clip gets (default with --shards: "
                    "each clip's own label; needed with --videos)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (mean ± std over them)")
    ap.add_argument("--steps", type=int, help="override the checkpoint's sampling steps")
    ap.add_argument("--temperature", type=float, help="override the sampling temperature")
    ap.add_argument("--top_k", type=int, help="override top-k")
    ap.add_argument("--choice_temperature", type=float, help="override the choice temperature")
    ap.add_argument("--keep_condition", choices=("model", "on", "off", "both"), default="model",
                    help="hold the condition tokens fixed while decoding: the checkpoint's setting, on, off, or both side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, help="write <grid>_<task>.png: real clip frames, then each checkpoint's sample")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.run.media import save_png

    tasks = args.task or ["frame_prediction", "outpainting_central", "inpainting_central", "frame_interpolation"]
    clips, labels = load_clips(args)
    overrides = {k: getattr(args, k) for k in ("steps", "temperature", "top_k", "choice_temperature") if getattr(args, k) is not None}
    models = [MTMModule.from_checkpoint(p) for p in args.ckpt]
    names = short_names(args.ckpt, args.name)
    rows: dict[str, dict] = {}
    grids: dict[str, list[torch.Tensor]] = {t: [clips[:4]] for t in tasks}
    t0 = time.perf_counter()
    for task in tasks:
        for path, name, model in zip(args.ckpt, names, models):
            if task not in model.task_names:
                print(f"note: {path} was not trained on {task}; skipped", file=sys.stderr)
                continue
            check_labels(model, task, labels, args.class_id)
            for keep, suffix in KEEP_VARIANTS[args.keep_condition]:
                keep_override = {} if keep is None else {"keep_condition": keep}
                sampling = dataclasses.replace(model.sampling_config, **overrides, **keep_override)
                pad, tok, row, first = evaluate_task(model, task, clips, args.batch, args.seeds, sampling, labels)
                rows.setdefault(f"{task} · padded condition", pad)
                rows[f"{task} · tokenizer of {name}"] = tok
                rows[f"{task} · sample of {name}{suffix}"] = {**row, "sampling": dataclasses.asdict(sampling), "ckpt": path}
                grids[task].append(first[:4])
    out = {"benchmark": "generation", "clips": len(clips), "num_frames": args.num_frames, "resolution": args.resolution,
           "seeds": args.seeds, "source": str(args.videos or f"{args.shards}:{args.split}"),
           "class_id": args.class_id if args.class_id is not None else ("the shards' labels" if labels is not None else None),
           "overrides": {**overrides, **({} if args.keep_condition == "model" else {"keep_condition": args.keep_condition})},
           "seconds": round(time.perf_counter() - t0, 1), "checkpoints": dict(zip(names, args.ckpt)), "results": rows}
    print(json.dumps(out))
    print_table(rows, title=f"generation on {len(clips)} clips, mean over seeds {args.seeds} (higher is better)",
                columns=COLUMNS, extra=(("given_psnr_std", "± seeds", ".2f"), ("gen_psnr_std", "± seeds", ".2f")),
                first="task · row")
    if args.grid:
        for task, row_videos in grids.items():
            path = args.grid.with_name(f"{args.grid.stem}_{task}.png")
            save_png(path, filmstrip(row_videos).repeat(3, 0).repeat(3, 1))
            row_names = [f"{n}{suffix}" for n in names for _, suffix in KEEP_VARIANTS[args.keep_condition]]
            print(f"grid: {path} (rows: real, {', '.join(row_names)})")
    return out


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
