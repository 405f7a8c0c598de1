"""NaN/inf in training: the run stops with the step and the loss term named, and the last good
checkpoint stays intact and finite."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

POISON = textwrap.dedent('''
    import torch
    from lightning.pytorch import Callback

    class PoisonAt(Callback):
        """Before training step ``step + 1``, set one decoder weight to NaN (a blown-up update)."""
        def __init__(self, step: int):
            self.step = step
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                with torch.no_grad():
                    next(pl_module.tokenizer.decoder.parameters()).view(-1)[0] = float("nan")
''')


def test_nan_stops_the_run_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, fault_fit, tiny_tokenizer_args, data_args):
    from magvit_pl.run.checkpoint import load_checkpoint, load_tokenizer

    poison = fault_fit.callback("poison", POISON, "PoisonAt", step=3)
    result = fault_fit.run(tmp_path / "runs", [
        "--config", str(REPO / "configs" / "tokenizer.yaml"), *tiny_tokenizer_args, *data_args, "--config", str(poison),
        "--trainer.max_steps", "20", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--save_every_n_steps", "2", "--model.init_args.max_consecutive_nonfinite", "3"])

    assert result.returncode == 3, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: loss term(s) recon") and "3 consecutive steps (last at step 3)" in last_line, last_line
    assert "Traceback" not in result.stderr

    ckpt_path = tmp_path / "runs" / "tokenizer" / "latest" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["global_step"] == 2  # saved before the poison; nothing later overwrote it
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    tokenizer = load_tokenizer(ckpt_path)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    assert torch.isfinite(tokenizer.decode(tokenizer.encode(video))).all()
