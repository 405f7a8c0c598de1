"""``python cli.py generate``: one condition clip (or a class label) in, one generated video out.

Also home of :func:`read_input`, how every command reads a user's ``--input`` video (``reconstruct`` too).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from magvit_pl.data.transforms import center_crop, frames_to_tensor, resize_short_side, tensor_to_frames
from magvit_pl.data.video_io import read_video, write_video
from magvit_pl.lit.mtm import MTMModule
from magvit_pl.pretrained import load_mtm_any
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.files import check_output_file
from magvit_pl.run.media import save_video_grid
from magvit_pl.run.run_dir import latest_checkpoint

log = logging.getLogger(__name__)


LOAD_TIMEOUT_S = 60.0  # give up on an --input that takes longer than this to decode
MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds


def read_input(path: str, max_frames: int, short_side: int | None, timeout_s: float | None = LOAD_TIMEOUT_S) -> np.ndarray:
    """The first ``max_frames`` frames of the ``--input`` file ``path`` as uint8 (T, H, W, 3), the short side
    scaled to ``short_side`` while decoding (``None``: own size), within ``timeout_s`` seconds.
    Anything wrong with the file (missing, not a video, truncated, too large, too slow) is a one-line UserError."""
    if not Path(path).is_file():
        raise MissingFileError(f"--input {path}: file not found")
    return read_video(path, max_frames=max_frames, short_side=short_side, timeout_s=timeout_s)


def load_clip(path: str, num_frames: int, resolution: int, timeout_s: float | None = LOAD_TIMEOUT_S) -> torch.Tensor:
    """The first ``num_frames`` frames of any PyAV-readable file, resized and centre-cropped: (1, 3, T, R, R) in [-1, 1]."""
    frames = read_input(path, num_frames, resolution, timeout_s)
    if frames.shape[0] < num_frames:
        raise UserError(f"--input {path}: has {frames.shape[0]} frames, the model needs {num_frames}")
    frames = center_crop(resize_short_side(frames, resolution), resolution)
    return frames_to_tensor(frames).unsqueeze(0)  # (1, 3, T, R, R)


def generate(
    task: str,
    input: str | None = None,
    output: str = "generated.mp4",
    ckpt_path: str | None = None,
    class_id: int | None = None,
    steps: int = 12,
    seed: int = 0,
    grid: bool = False,
    runs_root: str = "runs",
    keep_condition: bool | None = None,
) -> Path:
    """Generate a video with a trained MTM: the task's condition is taken from ``--input``.

    Args:
        task: Task name (``python cli.py tasks`` lists them; the model must have been trained on it).
        input: Condition clip, any PyAV-readable file; resized/cropped to the model's size. Not needed
            by class_generation.
        output: Where to write the result: ``.mp4`` or ``.gif``.
        ckpt_path: MTM checkpoint or model folder (``export --format safetensors``); default: the latest run's
            ``last.ckpt`` under ``runs_root``.
        class_id: Class label for class-conditional tasks (0 ≤ class_id < the model's num_classes).
        steps: Decoding steps (12 in the paper); at most the model's tokens per clip (e.g. 256 for the CPU demo's
            4×8×8 grid), since each step fixes at least one token.
        seed: Sampling seed, 0 ≤ seed < 2^64; the same seed gives the same video.
        grid: Also write ``OUTPUT_grid.mp4``: condition | generated | input side by side.
        runs_root: Where training runs live (for the default checkpoint).
        keep_condition: Hold the condition's tokens fixed while decoding (true) or let COMMIT re-predict them
            (false, the paper); default: the model's ``sampling.keep_condition``.
    """
    out_path = check_output_file(output, "--output", "generated.mp4")
    if out_path.suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"--output {output}: must end in .mp4 or .gif")
    if steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: must be in 0..{MAX_SEED} (2^64 - 1)")
    model = load_mtm_any(ckpt_path or latest_checkpoint(runs_root))  # a checkpoint or a model folder
    if keep_condition is not None:
        model.sampling_config = dataclasses.replace(model.sampling_config, keep_condition=bool(keep_condition))
    video = _condition(model, task, input, class_id, steps)
    out = model.generate({"video": video, "label": torch.tensor([class_id or 0])}, task, seed=seed, steps=steps)
    fps = model.hparams.media_fps
    write_video(out_path, tensor_to_frames(out.generated[0]), fps=fps)
    written = [out_path]
    if grid:
        written += save_video_grid(out_path.with_name(out_path.stem + "_grid"), [out.inputs.condition.video, out.generated, video],
                                   fps=fps, formats=(out_path.suffix[1:],))
    for path in written:
        print(f"wrote {path}")
    return out_path


def _condition(model: MTMModule, task: str, input: str | None, class_id: int | None, steps: int) -> torch.Tensor:
    """The clip the task's condition is built from (``--input``, or zeros for class generation), once the task,
    class and step count were checked against the model: (1, 3, T, R, R)."""
    if task not in model.task_names:
        raise UserError(f"--task {task}: this model knows {', '.join(model.task_names)}")
    hp = model.hparams
    tokens = model.grid[0] * model.grid[1] * model.grid[2]
    if steps > tokens:
        raise UserError(f"--steps {steps}: at most {tokens}, the model's tokens per clip (each step fixes at least one; the paper uses 12)")
    spec = model.task(task)
    if spec.uses_class:
        if class_id is None:
            raise UserError(f"--task {task} is class-conditional: pass --class_id (0..{hp.num_classes - 1})")
        if not 0 <= class_id < hp.num_classes:
            raise UserError(f"--class_id {class_id}: must be in 0..{hp.num_classes - 1}")
    if input is not None:
        return load_clip(input, hp.num_frames, hp.resolution)
    if spec.family == "generation":
        return torch.zeros(1, 3, hp.num_frames, hp.resolution, hp.resolution)
    raise UserError(f"--task {task} needs a condition clip: pass --input FILE")
