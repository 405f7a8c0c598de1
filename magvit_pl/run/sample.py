"""``python cli.py sample --task T --num N --output DIR``: generated clips as lossless files, for any evaluator.

For every task (a name, a family, or ``all``) the MTM generates ``N`` clips, or ``N`` per class for class
generation, and writes them under ``DIR/TASK/generated/``: PNG frame folders (the layout StyleGAN-V's metric
scripts read), FFV1 ``.mkv`` files, or one ``.npz`` (what ``common_metrics_on_video_quality`` and numpy users
load). Conditional tasks take their condition clips from ``--input`` (any clip set of :mod:`magvit_pl.run.clipsets`),
by default the test split of the data the model was trained on; with ``--write_real`` the real clips go to
``DIR/TASK/real/`` under the same names, so ``python cli.py fvd --real DIR/TASK/real --fake DIR/TASK/generated
--lpips true`` scores them as paired sets. ``DIR/samples.json`` records every file with its seed (batch ``k`` is
sampled with ``--seed + k``), class and condition clip, and per task the checkpoint, settings and command: the
same command on the same machine writes the same files.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from magvit_pl.data.datamodule import VideoDataModule
from magvit_pl.data.transforms import frames_to_tensor, tensor_to_frames
from magvit_pl.lit.evaluation import eval_task_names
from magvit_pl.pretrained import load_mtm_any, recorded_data
from magvit_pl.run.clipsets import ClipSet, ClipSpec, write_clip, write_npz
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import make_dir, write_json
from magvit_pl.run.generate import MAX_SEED
from magvit_pl.run.run_dir import latest_checkpoint

RECORD = "samples.json"


def sample(
    task: str,
    num: int,
    output: str,
    ckpt_path: str | None = None,
    input: str | None = None,
    split: str | None = None,
    class_ids: list[int] | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    format: Literal["png", "mkv", "npz"] = "png",
    write_real: bool = True,
    overwrite: bool = False,
    runs_root: str = "runs",
) -> Path:
    """Generate clips with a trained MTM and write them losslessly, seeds recorded in ``OUTPUT/samples.json``.

    Args:
        task: Task name, family (``python cli.py tasks``) or ``all`` (every task the model was trained on).
        num: Clips per task; for class generation, clips per class.
        output: Folder to write into (one sub-folder per task, plus ``samples.json``).
        ckpt_path: MTM checkpoint or model folder; default: the latest MTM run under ``runs_root``.
        input: Condition clips for the conditional tasks: a folder of videos, a prepared shard folder or an .npz
            of clips (resized and centre-cropped to the model's clip size); default: the data the model was
            trained on, if it is on this machine.
        split: The split of a shard folder (default: the data module's test split, else ``test``).
        class_ids: Classes for class generation (default: all of the model's classes).
        steps: Decoding steps (default: the model's ``sampling.steps``).
        seed: Seed of the first batch; batch k uses seed + k.
        batch_size: Clips generated at once (the seeds depend on it: keep it to reproduce a set).
        format: ``png`` (a folder of frames per clip), ``mkv`` (FFV1, lossless RGB) or ``npz`` (one file per task side).
        write_real: Also write each conditional task's real clips (``real/``, same names) for paired metrics.
        overwrite: Write into task folders that exist already (files of the same names are replaced).
        runs_root: Where training runs live (for the default checkpoint).
    """
    if num < 1:
        raise UserError(f"--num {num}: must be >= 1")
    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: must be >= 1")
    if format not in ("png", "mkv", "npz"):
        raise UserError(f"--format {format}: choose png, mkv or npz")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: must be in 0..{MAX_SEED} (2^64 - 1)")
    ckpt = str(ckpt_path or latest_checkpoint(runs_root))
    model = load_mtm_any(ckpt)
    hp = model.hparams
    names = list(model.task_names) if task == "all" else eval_task_names(task, model.task_names)
    tokens = int(np.prod(model.grid))
    steps = model.sampling_config.steps if steps is None else steps
    if not 1 <= steps <= tokens:
        raise UserError(f"--steps {steps}: must be in 1..{tokens} (the model's tokens per clip)")
    classes = list(range(hp.num_classes)) if class_ids is None else list(class_ids)
    bad = [c for c in classes if not 0 <= c < hp.num_classes]
    if bad or not classes:
        raise UserError(f"--class_ids {class_ids}: each must be in 0..{hp.num_classes - 1}")
    root = make_dir(output, f"--output {output}")
    for name in names:
        if (root / name).exists() and not overwrite:
            raise UserError(f"--output {output}: {root / name} exists; pass --overwrite true to write into it")

    jobs = {name: _conditions(model, name, num, classes, ckpt, input, split) for name in names}
    batches = max(-(-len(job[0]) // batch_size) for job in jobs.values())
    if seed + batches - 1 > MAX_SEED:
        raise UserError(f"--seed {seed}: batch {batches - 1} would use seed {seed + batches - 1}, beyond 2^64 - 1")
    command = ["python", "cli.py", "sample", "--task", task, "--num", str(num), "--output", str(output), "--ckpt_path", ckpt,
               "--seed", str(seed), "--batch_size", str(batch_size), "--steps", str(steps), "--format", format]
    command += (["--input", input] if input else []) + (["--split", split] if split else []) + \
        (["--class_ids", json.dumps(class_ids)] if class_ids is not None else [])
    record = _read_record(root)
    settings = {"checkpoint": ckpt, "command": shlex.join(command), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": steps,
                "format": format, "batch_size": batch_size, "seed": seed, "fps": hp.media_fps,
                "clip": [hp.num_frames, hp.resolution, hp.resolution]}
    progress = Progress(TextColumn("sample {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                        TimeRemainingColumn(), console=Console(stderr=True))
    with progress:
        for name, (videos, labels, clip_names, sources, source) in jobs.items():
            bar = progress.add_task(name, total=len(videos))
            entries, generated = [], []
            for k, start in enumerate(range(0, len(videos), batch_size)):
                batch = {"video": videos[start : start + batch_size], "label": labels[start : start + batch_size]}
                out = model.generate(batch, name, seed=seed + k, steps=steps)
                clips = tensor_to_frames(out.generated)
                for j, clip in enumerate(clips):
                    i = start + j
                    entry = {"name": clip_names[i], "seed": seed + k, "batch": k, "index_in_batch": j, "source": sources[i]}
                    if model.task(name).uses_class:
                        entry["class_id"] = int(labels[i])
                    if format != "npz":
                        entry["file"] = str(write_clip(root / name / "generated", clip_names[i], clip, format, hp.media_fps).relative_to(root))
                        if write_real and source is not None:
                            write_clip(root / name / "real", clip_names[i], tensor_to_frames(videos[i : i + 1])[0], format, hp.media_fps)
                    entries.append(entry)
                    generated.append(clip)
                progress.advance(bar, len(clips))
            if format == "npz":
                seeds = np.asarray([e["seed"] for e in entries], np.int64)
                write_npz(root / name / "generated.npz", np.stack(generated), clip_names, labels=labels.numpy(), seeds=seeds)
                if write_real and source is not None:
                    write_npz(root / name / "real.npz", tensor_to_frames(videos), clip_names, labels=labels.numpy())
            record.setdefault("tasks", {})[name] = {**settings, "num": len(entries), "condition": source, "clips": entries}
    write_json(root / RECORD, record)
    for name in names:
        print(f"wrote {len(jobs[name][0])} clips to {root / name} ({format})")
    print(f"wrote {root / RECORD} (seeds, classes and conditions of every clip)")
    return root


def _conditions(model: Any, task: str, num: int, classes: list[int], ckpt: str, input: str | None,
                split: str | None) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str | None], dict | None]:
    """(videos, labels, clip names, condition clip names, condition set) of one task's clips."""
    hp, spec = model.hparams, model.task(task)
    shape = (hp.num_frames, hp.resolution, hp.resolution)
    if spec.family == "generation":  # class only (or nothing): the video is never looked at
        labels = [c for c in classes for _ in range(num)] if spec.uses_class else [0] * num
        names = [f"class{c:03d}_{j:05d}" for c in classes for j in range(num)] if spec.uses_class else [f"{j:05d}" for j in range(num)]
        return torch.zeros(len(labels), 3, *shape), torch.tensor(labels), names, [None] * len(labels), None
    clip_set, frame_stride = _condition_set(ckpt, input, split)
    clips = list(clip_set.clips(ClipSpec(hp.num_frames, frame_stride, 1, hp.resolution, "crop"), limit=num))
    if len(clips) < num:
        raise UserError(f"--num {num}: the condition clips ({clip_set.path}) give only {len(clips)} clips of "
                        f"{hp.num_frames} frames{'; skipped: ' + clip_set.skipped[0] if clip_set.skipped else ''}")
    if spec.uses_class and any(c.label < 0 for c in clips):
        raise UserError(f"--task {task} uses the class label, but the condition clips ({clip_set.path}) have none; "
                        "pass a prepared shard folder with labels as --input")
    videos = torch.stack([frames_to_tensor(c.frames) for c in clips])
    labels = torch.tensor([max(c.label, 0) for c in clips])
    return videos, labels, [f"{i:05d}" for i in range(num)], [c.name for c in clips], clip_set.describe()


def _condition_set(ckpt: str, input: str | None, split: str | None) -> tuple[ClipSet, int]:
    """``--input`` (frame stride 1), else the test split of the data the model was trained on (generated first if
    synthetic) and its frame stride."""
    if input is not None:
        return ClipSet(input, "--input", split or "test"), 1
    data = recorded_data(ckpt)
    if not data:
        raise UserError("this model does not record its training data; pass the condition clips with --input")
    dm = VideoDataModule(**data)
    try:
        dm.manifest  # noqa: B018 - generates the embedded synthetic set when it is the one used and absent
    except UserError as err:
        raise UserError(f"the model's training data is not here ({err}); pass the condition clips with --input") from None
    return ClipSet(dm.root, "--input", split or dm.splits["test"]), dm.frame_stride


def _read_record(root: Path) -> dict[str, Any]:
    """The existing ``samples.json`` of ``root`` (other tasks sampled into it before), or a new record."""
    path = root / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        raise UserError(f"--output {root}: its {RECORD} is not readable JSON; move it away or choose another folder") from None
    return record if isinstance(record, dict) else {}
