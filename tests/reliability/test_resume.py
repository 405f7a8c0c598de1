"""Exact resume: kill -9 a fit mid-run, restart with ``--ckpt_path last``, and the per-step training
losses equal those of an uninterrupted run (CPU, same seed)."""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 8

SIGNALLER = textwrap.dedent('''
    import os, signal
    from lightning.pytorch import Callback

    class SignalAt(Callback):
        """Send this process ``sig`` as training step ``step`` starts: SIGKILL (a crash: no cleanup at all) or
        SIGTERM (a scheduler preempting the job)."""
        def __init__(self, step: int, sig: str):
            self.step, self.sig = step, getattr(signal, sig)
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), self.sig)
''')


def _losses(run_dir: Path) -> dict[int, list[float]]:
    """step -> every train/loss value logged for it (a replayed step appears twice)."""
    out: dict[int, list[float]] = {}
    with open(run_dir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                out.setdefault(int(row["step"]), []).append(float(row["train/loss"]))
    return out


def _kill_and_resume(fault_fit, tmp_path: Path, kind: str, args: list[str], kill_at: int, every: int):
    """Uninterrupted run vs killed-at-``kill_at``-then-resumed run; returns both loss tables."""
    kill = fault_fit.callback("killer", SIGNALLER, "SignalAt", step=kill_at, sig="SIGKILL")
    common = [*args, "--trainer.max_steps", str(MAX_STEPS), "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false", "--save_every_n_steps", str(every)]

    full = fault_fit.run(tmp_path / "full", common)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = fault_fit.run(tmp_path / "crash", [*common, "--config", str(kill)])
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    run = (tmp_path / "crash" / kind / "latest").resolve()
    assert (run / "checkpoints" / "last.ckpt").is_file()

    resumed = fault_fit.run(tmp_path / "crash", [*common, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "crash" / kind / "latest").resolve() == run  # resumed in place
    return _losses((tmp_path / "full" / kind / "latest").resolve()), _losses(run)


def _assert_same(full: dict[int, list[float]], resumed: dict[int, list[float]], first_replayed: int) -> None:
    """Logged steps count from 0: the resumed run trained steps ``first_replayed``..MAX_STEPS-1 again."""
    assert sorted(full) == list(range(MAX_STEPS)), full
    assert sorted(s for s in resumed if s >= first_replayed) == list(range(first_replayed, MAX_STEPS)), resumed
    for step in sorted(resumed):
        for value in resumed[step]:
            assert value == pytest.approx(full[step][0], rel=0, abs=1e-6), (step, value, full[step])


def test_tokenizer_resume_matches_uninterrupted(tmp_path, fault_fit, tiny_tokenizer_args, data_args):
    # 4 batches per epoch; checkpoints every 4 steps and after validation (every 3); killed after 5 steps:
    # resumes from the checkpoint at the end of epoch 0 (4 steps) and replays step 5.
    args = ["--config", str(REPO / "configs" / "tokenizer.yaml"), *tiny_tokenizer_args, *data_args,
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--model.init_args.val_fvd", "false"]
    full, resumed = _kill_and_resume(fault_fit, tmp_path, "tokenizer", args, kill_at=5, every=4)
    _assert_same(full, resumed, first_replayed=4)


def test_mtm_resume_matches_uninterrupted(tmp_path, fault_fit, tokenizer_run, tiny_mtm_args, data_args):
    # checkpoints every 3 steps and after validation (every 4); killed after 7 steps: resumes mid-epoch from
    # step 6 (batch 2 of 4), so the data stream, the task cycle, dropout and the mask draws must all continue.
    args = ["--config", str(REPO / "configs" / "mtm.yaml"), *tiny_mtm_args, *data_args,
            "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
            "--model.transformer.dropout", "0.1", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1"]
    full, resumed = _kill_and_resume(fault_fit, tmp_path, "mtm", args, kill_at=7, every=3)
    _assert_same(full, resumed, first_replayed=6)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_skips_exactly_the_consumed_batches(tiny_data, workers):
    """A loader told that k batches of the epoch are done yields exactly batches k.. of a fresh pass."""
    import torch

    from magvit_pl.data.datamodule import VideoDataModule

    dm = VideoDataModule(data_dir=str(tiny_data), num_frames=8, resolution=32, batch_size=2,
                         num_workers=workers, train_samples_per_epoch=8, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.epoch_fn = lambda: 1
    loader.skip_fn = lambda: 0
    full = [(b["key"], b["video"]) for b in loader]
    assert len(full) == len(loader) == 4
    for k in (1, 3):
        loader.skip_fn = lambda k=k: k
        rest = [(b["key"], b["video"]) for b in loader]
        assert [keys for keys, _ in rest] == [keys for keys, _ in full[k:]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[k:]))
    loader.skip_fn = lambda: 4  # resumed on the epoch's last batch: the next epoch, from its start
    nxt = [b["key"] for b in loader]
    loader.epoch_fn, loader.skip_fn = (lambda: 2), (lambda: 0)
    assert nxt == [b["key"] for b in loader]


def test_sigterm_saves_the_step_exits_143_and_resumes_there(tmp_path, fault_fit, tiny_tokenizer_args, data_args):
    """Lightning stops between batches on SIGTERM with a SystemExit that has no code (exit 0, as if done, and
    nothing saved since the last periodic checkpoint): the run must save last.ckpt at that step and exit 143."""
    import torch

    term = fault_fit.callback("terminator", SIGNALLER, "SignalAt", step=5, sig="SIGTERM")
    common = ["--config", str(REPO / "configs" / "tokenizer.yaml"), *tiny_tokenizer_args, *data_args,
              "--trainer.max_steps", str(MAX_STEPS), "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.limit_val_batches", "0", "--model.init_args.val_fvd", "false", "--save_every_n_steps", "0"]
    stopped = fault_fit.run(tmp_path / "runs", [*common, "--config", str(term)])
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert lines[-1].startswith("error: stopped by SIGTERM; checkpoints/last.ckpt holds step 6") and "Traceback" not in stopped.stderr
    run = (tmp_path / "runs" / "tokenizer" / "latest").resolve()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 6
    resumed = fault_fit.run(tmp_path / "runs", [*common, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(s for s in _losses(run) if s >= 6) == [6, 7]  # continued at step 6, nothing replayed or lost
    full = fault_fit.run(tmp_path / "full", common)
    assert full.returncode == 0, full.stderr[-3000:]
    _assert_same(_losses((tmp_path / "full" / "tokenizer" / "latest").resolve()), _losses(run), first_replayed=6)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == MAX_STEPS
