"""Session fixtures shared by the CLI and LightningModule tests: a tiny synthetic dataset and a tiny
trained tokenizer checkpoint, both made once per session in a temporary folder."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = [
    "--model.init_args.tokenizer.init_args.base_channels", "8",
    "--model.init_args.tokenizer.init_args.embedding_dim", "6",
    "--model.init_args.tokenizer.init_args.quantizer.init_args.dim", "6",  # LFQ: 64 codes
    "--model.init_args.discriminator.init_args.base_channels", "4",
    "--model.init_args.disc_start_step", "1",
    "--model.init_args.warmup_steps", "1",
    "--model.init_args.r1_every", "1",
]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip on a machine without a CUDA device (the one marker for GPU tests)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_run_dir_env():
    """A fit in this process sets MAGVIT_PL_RUN_DIR (for DDP children); never let it leak into the next test.
    (Not through monkeypatch: a test's own monkeypatch.delenv after its fit would restore the leaked value
    when monkeypatch is undone, after this fixture's cleanup.)"""
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    yield
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)


TINY_MTM = ["--model.transformer.hidden_dim", "32", "--model.transformer.num_layers", "2", "--model.transformer.num_heads", "2",
            "--model.transformer.mlp_dim", "64", "--model.optim.warmup_steps", "1", "--model.sampling.steps", "4"]


@pytest.fixture(scope="session")
def tiny_mtm_args() -> list[str]:
    """CLI overrides that shrink configs/mtm.yaml's transformer to a 2-layer, 32-wide one."""
    return list(TINY_MTM)


@pytest.fixture(scope="session")
def tiny_tokenizer_args() -> list[str]:
    """CLI overrides that shrink configs/tokenizer.yaml to a few-second model (test modules import no conftest)."""
    return list(TINY_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train / 8 val / 8 test synthetic clips of 8×32² (same generator and format as the default set)."""
    from magvit_pl.data.synthetic import ensure_default_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    return ensure_default_dataset(root, num_train=8, num_val=8, num_test=8, num_frames=8, resolution=32, shard_size=4, workers=1)


@pytest.fixture(scope="session")
def data_args(tiny_data) -> list[str]:
    """CLI overrides that point a shipped config at the tiny dataset with tiny batches."""
    return ["--data.init_args.data_dir", str(tiny_data), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "4",
            "--data.init_args.train_samples_per_epoch", "8"]


@pytest.fixture(scope="session")
def tokenizer_run(data_args, tmp_path_factory) -> Path:
    """A 4-step `fit --config configs/tokenizer.yaml` (shrunk) through the real CLI; returns the run dir."""
    from magvit_pl.run.cli import main

    runs = tmp_path_factory.mktemp("runs")
    main(["fit", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--runs_root", str(runs),
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false", *TINY_TOKENIZER, *data_args])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    return (runs / "tokenizer" / "latest").resolve()


@pytest.fixture(scope="session")
def fit_tiny_mtm(tokenizer_run, data_args):
    """fit_tiny_mtm(runs_root) -> run dir: a 6-step tiny MTM (`fit --config configs/mtm.yaml`, shrunk) on the
    session's tiny tokenizer, through the real CLI, validating at steps 3 and 6."""
    from magvit_pl.run.cli import main

    def fit(runs_root: Path) -> Path:
        main(["fit", "--config", str(REPO / "configs" / "mtm.yaml"), "--runs_root", str(runs_root),
              "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
              "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
              "--trainer.enable_progress_bar", "false", *TINY_MTM, *data_args])
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)
        return (Path(runs_root) / "mtm" / "latest").resolve()

    return fit


# ------------------------------------------------------------------ tiny videos written with PyAV
def pattern(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients, uint8 (T, H, W, 3): easy to compress, every frame different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for t in range(num_frames):
        r = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + 0.05 * t) + rng.uniform(0, 0.01))
        g = 0.5 + 0.4 * np.cos(2 * np.pi * (yy - 0.03 * t))
        b = np.full_like(xx, (t % 10) / 10)
        out.append(np.stack([r, g, b], -1))
    return np.round(np.stack(out) * 255).astype(np.uint8)


def write_raw(path: Path, frames: np.ndarray, fps: float = 25, codec: str = "libx264", pix_fmt: str = "yuv420p",
              pts_ms: list[int] | None = None, options: dict | None = None, fmt: str | None = None,
              faststart: bool = False) -> Path:
    """Write ``frames`` (uint8 T,H,W,3) with any codec/pixel format; ``pts_ms`` gives each frame's
    time in milliseconds (variable frame rate); ``fmt`` forces the container whatever the name;
    ``faststart`` puts the mp4 index first, so a cut file still opens and decodes up to the cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt, options={"movflags": "faststart"} if faststart else None) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if options:
            stream.options = options
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)
            vf.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                vf.time_base = Fraction(1, 1000)
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(name="pattern")
def pattern_fixture():
    """The ``pattern(num_frames, height, width, seed=0)`` helper (tests import no conftest module)."""
    return pattern


@pytest.fixture(name="write_raw")
def write_raw_fixture():
    """The ``write_raw(path, frames, fps, codec, pix_fmt, pts_ms, options, fmt, faststart)`` helper."""
    return write_raw
