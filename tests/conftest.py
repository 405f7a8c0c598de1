"""Session fixtures shared by the CLI and LightningModule tests: a tiny synthetic dataset and a tiny
trained tokenizer checkpoint, both made once per session in a temporary folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = [
    "--model.init_args.tokenizer.init_args.base_channels", "8",
    "--model.init_args.tokenizer.init_args.embedding_dim", "16",
    "--model.init_args.tokenizer.init_args.quantizer.init_args.embedding_dim", "16",
    "--model.init_args.tokenizer.init_args.quantizer.init_args.codebook_size", "64",
    "--model.init_args.discriminator.init_args.base_channels", "4",
    "--model.init_args.disc_start_step", "1",
    "--model.init_args.warmup_steps", "1",
    "--model.init_args.r1_every", "1",
]


TINY_MTM = ["--model.init_args.hidden_dim", "32", "--model.init_args.num_layers", "2", "--model.init_args.num_heads", "2",
            "--model.init_args.mlp_dim", "64", "--model.init_args.warmup_steps", "1", "--model.init_args.sample_steps", "4"]


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
    from magvit_pl.cli import main

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
    from magvit_pl.cli import main

    def fit(runs_root: Path) -> Path:
        main(["fit", "--config", str(REPO / "configs" / "mtm.yaml"), "--runs_root", str(runs_root),
              "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
              "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
              "--trainer.enable_progress_bar", "false", *TINY_MTM, *data_args])
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)
        return (Path(runs_root) / "mtm" / "latest").resolve()

    return fit
