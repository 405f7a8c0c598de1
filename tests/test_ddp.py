"""Real DDP: 2 CPU processes over gloo, for both LightningModules, through `python cli.py fit` with the
shipped configs/hardware/cpu_ddp.yaml.

Lightning's DDP launcher re-runs the command line for rank 1, so each run is a subprocess (in its own
process group, killed whole if it hangs). The validation set is deliberately uneven across ranks:
6 clips in shards of 4 + 2, so rank 0 validates 2 batches of 2 and rank 1 one batch.
"""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # 8 train clips per epoch / (2 ranks x batch 2) = 2 batches per rank per epoch -> 2 epochs
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory) -> list[str]:
    """CLI overrides for a dataset whose val split is uneven across 2 ranks (see the module docstring)."""
    from magvit_pl.data.synthetic import ensure_default_dataset

    root = ensure_default_dataset(tmp_path_factory.mktemp("ddp_data") / "synthetic", num_train=8, num_val=6, num_test=4,
                                  num_frames=8, resolution=32, shard_size=4, workers=1)
    return ["--data.init_args.data_dir", str(root), "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "2", "--data.init_args.train_samples_per_epoch", "8"]


def fit_ddp(model_config: str, runs: Path, *overrides: str) -> str:
    """Run `cli.py fit --config <model> --config configs/hardware/cpu_ddp.yaml ...`; return its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAGVIT_PL_RUN_DIR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(REPO / "cli.py"), "fit", "--config", f"configs/{model_config}", "--config", "configs/hardware/cpu_ddp.yaml",
           "--runs_root", str(runs), "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2",
           "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks: rank 1 is a child of rank 0, in the same group
        out, _ = proc.communicate()
        pytest.fail(f"DDP fit of {model_config} did not finish in {TIMEOUT_S}s (a rank waiting in a collective?)\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    assert "MEMBER: 2/2" in out, "rank 1 never joined"
    return out


def one_run_dir(runs: Path, kind: str) -> Path:
    """Both ranks must have written into one run directory (the CLI hands it to rank 1 via MAGVIT_PL_RUN_DIR)."""
    made = sorted(p.relative_to(runs).as_posix() for p in runs.glob("*/*") if not p.is_symlink())
    assert len(made) == 1 and made[0].startswith(f"{kind}/"), made
    run = runs / made[0]
    assert (runs / kind / "latest").resolve() == run.resolve()
    return run


def check_checkpoint(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    # 2 batches per epoch on each rank shows the 8 training clips were split between the 2 processes
    assert progress["total"]["completed"] == STEPS and progress["current"]["completed"] == 2 and ckpt["epoch"] == 1
    return ckpt


def metric_rows(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_tokenizer_fit_with_two_cpu_processes(tmp_path, uneven_data, tiny_tokenizer_args):
    runs = tmp_path / "runs"
    out = fit_ddp("tokenizer.yaml", runs, *tiny_tokenizer_args, *uneven_data)
    run = one_run_dir(runs, "tokenizer")
    ckpt = check_checkpoint(run)
    assert any(k.startswith("ema_tokenizer.") for k in ckpt["state_dict"])
    losses = metric_rows(run, "train/loss")
    # the quantizer's entropy term is negative; with L2 in [0, 1] units it can outweigh the rest at the start
    assert len(losses) == STEPS and all(math.isfinite(v) and -5 < v < 5 for v in losses)
    psnr = metric_rows(run, "val/psnr")  # torchmetrics PSNR, synced over both ranks' 6 clips
    usage = metric_rows(run, "val/codebook_usage")
    assert len(psnr) == 2 and all(5 < v < 40 for v in psnr), psnr
    assert len(usage) == 2 and all(0 < v <= 1 for v in usage), usage
    # rank 0 writes the reconstructions after each validation (a collective there would deadlock rank 1)
    media = sorted(p.name for p in (run / "media").iterdir())
    assert any(name.startswith("reconstruction_step0000002") for name in media), media
    assert any(name.startswith(f"reconstruction_step{STEPS:07d}") for name in media), media
    assert "Traceback" not in out


def test_mtm_fit_with_two_cpu_processes(tmp_path, uneven_data, tokenizer_run):
    runs = tmp_path / "runs"
    fit_ddp("mtm.yaml", runs, "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
            "--model.transformer.hidden_dim", "32", "--model.transformer.num_layers", "2", "--model.transformer.num_heads", "2",
            "--model.transformer.mlp_dim", "64", "--model.optim.warmup_steps", "1", "--model.init_args.num_media_clips", "1",
            *uneven_data)
    run = one_run_dir(runs, "mtm")
    check_checkpoint(run)
    losses = metric_rows(run, "train/loss")
    # cross-entropy over a 64-entry codebook starts near ln(64) = 4.16 (a few steps move it only a little)
    assert len(losses) == STEPS and all(2.5 < v < 6.0 for v in losses), losses
    acc = metric_rows(run, "val/acc")
    assert len(acc) == 2 and all(0 <= v <= 1 for v in acc), acc
    media = sorted(p.name for p in (run / "media").iterdir())
    assert any(name.startswith("samples_") and f"_step{STEPS:07d}." in name for name in media), media
