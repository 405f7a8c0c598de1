"""User mistakes on the command line end with one ``error:`` line and a non-zero exit (issue 12, items 11-14).

In-process through ``magvit_pl.run.cli.main`` (the same code path as ``python cli.py``); one subprocess test checks
the real process for the case that used to print a 71-line trace.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_YAML = REPO / "configs" / "tokenizer.yaml"


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path: Path, checkpoints) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line error says)"""
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n" * 10)
    good = checkpoints.tokenizer("good.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good[: len(good) // 2])
    payload = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": RunsCode(tmp_path / "ran")}}, payload)
    plain = tmp_path / "weights.pt"  # fine for init_from, not a checkpoint Lightning can resume or test
    torch.save({"w": torch.zeros(2)}, plain)
    return {"text": (text, "is not a torch checkpoint"), "truncated": (cut, "is truncated or corrupt"),
            "payload": (payload, "holds objects other than tensors and plain data"),
            "plain_state_dict": (plain, "is not a Lightning checkpoint (no 'pytorch-lightning_version' entry)")}


# ---------------------------------------------------------------- 11. --ckpt_path / init_from: bad files
@pytest.mark.parametrize("kind", ["text", "truncated", "payload", "plain_state_dict"])
def test_bad_checkpoint_files_are_one_line(kind, tmp_path, checkpoints, cli_error, tiny_tokenizer_args, data_args):
    path, says = _bad_files(tmp_path, checkpoints)[kind]
    runs = tmp_path / "runs"
    base = ["--config", TOKENIZER_YAML, "--runs_root", runs, "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
            *tiny_tokenizer_args, *data_args]
    init_from = [["fit", *base, "--model.init_args.init_from", path]] if kind != "plain_state_dict" else []
    for args in (["fit", *base, "--ckpt_path", path], ["test", *base, "--ckpt_path", path], *init_from):
        assert f"checkpoint {path} {says}" in cli_error(args)
    assert not (tmp_path / "ran").exists()
    assert not (runs / "tokenizer" / "latest").exists()


# ---------------------------------------------------------------- 12. values refused while classes are built
@pytest.mark.parametrize("option, value, says", [
    ("--data.init_args.batch_size", "0", "--data.batch_size must be >= 1, got 0"),
    ("--data.init_args.num_frames", "0", "--data.num_frames must be >= 1, got 0"),
    ("--trainer.max_steps", "-5", "trainer.max_steps=-5: must be a finite number >= -1"),
    ("--trainer.val_check_interval", "0", "trainer.val_check_interval=0: must be a finite number > 0"),
    ("--model.init_args.lr", "-1", "model.lr=-1.0: must be a finite number > 0"),
    ("--model.init_args.betas", "[0.9, 1.5]", "model.betas=[0.9, 1.5]: each entry must be a finite number in [0, 1)"),
    ("--model.init_args.tokenizer.init_args.base_channels", "0", "tokenizer.base_channels=0: must be a finite number >= 1"),
    ("--model.init_args.tokenizer.init_args.quantizer.init_args.entropy_weight", "-1", "quantizer.entropy_weight=-1.0: must be a finite number >= 0"),
    ("--model.init_args.discriminator.init_args.base_channels", "0", "discriminator.base_channels=0: must be a finite number >= 1"),
])
def test_bad_values_are_one_line_and_leave_no_run(option, value, says, tmp_path, cli_error, tiny_tokenizer_args, data_args):
    runs = tmp_path / "runs"
    line = cli_error(["fit", "--config", TOKENIZER_YAML, "--runs_root", runs, *tiny_tokenizer_args, *data_args, option, value])
    assert says in line
    assert not (runs / "tokenizer").exists() or list((runs / "tokenizer").iterdir()) == []  # no empty run, no `latest`


def test_mtm_values_are_checked(checkpoints, tmp_path):
    from magvit_pl.run.errors import UserError
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.lit.mtm_options import OptimConfig
    from magvit_pl.models.transformer import TransformerConfig
    from magvit_pl.sampling import SamplingConfig

    tok = str(checkpoints.tokenizer())
    for kwargs, says in [({"optim": OptimConfig(lr=-1.0)}, "model.optim.lr=-1.0: must be a finite number > 0"),
                         ({"transformer": TransformerConfig(dropout=1.5)}, "model.transformer.dropout=1.5: must be a finite number in [0, 1)"),
                         ({"sampling": SamplingConfig(steps=0)}, "model.sampling.steps=0: must be a finite number >= 1"),
                         ({"num_media_clips": -1}, "model.num_media_clips=-1: must be a finite number >= 0")]:
        with pytest.raises(UserError, match=f"^{says.replace('[', '.').replace(')', '.')}$"):
            MTMModule(tokenizer_ckpt=tok, num_classes=8, **kwargs)


def test_a_value_refused_inside_class_instantiation_is_one_line_in_a_real_process(tmp_path, data_args):
    """The case that printed a 71-line trace: LightningCLI wraps the data module's own UserError."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MAGVIT_PL_RUN_DIR", None)
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "fit", "--config", str(TOKENIZER_YAML), "--runs_root",
                             str(tmp_path / "runs"), *data_args, "--data.init_args.batch_size", "0"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == ["error: --data.batch_size must be >= 1, got 0"]
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # the error and Lightning's seed notice at most


# ---------------------------------------------------------------- 13. path mistakes outside prepare
def test_path_mistakes_are_one_line(tmp_path, checkpoints, cli_error, tiny_tokenizer_args, data_args):
    a_file = tmp_path / "a_file"
    a_file.write_text("I am a file\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    a_dir = tmp_path / "out.mp4"
    a_dir.mkdir()
    ckpt = checkpoints.tokenizer()
    cases = [
        (["fetch-weights", "i3d", "--cache", a_file], f"--cache {a_file}: is a file"),
        (["fetch-weights", "i3d", "--cache", a_file / "sub"], f"{a_file} is a file, not a folder"),
        (["export", "--ckpt_path", ckpt, "--output", a_file / "x.ckpt"], f"--output {a_file / 'x.ckpt'}: {a_file} is a file, not a folder"),
        (["generate", "--task", "class_generation", "--class_id", "1", "--output", a_dir, "--ckpt_path", ckpt],
         f"--output {a_dir}: is a folder"),
        (["fit", "--config", TOKENIZER_YAML, "--runs_root", a_file, *tiny_tokenizer_args, *data_args],
         f"--runs_root {a_file}: cannot create the folder {a_file}/tokenizer: {a_file} is a file, not a folder"),
        (["fit", "--config", binary], f"--config {binary}: not a text file"),
    ]
    for args, says in cases:
        assert says in cli_error(args), args
    assert a_file.read_text() == "I am a file\n" and list(a_dir.iterdir()) == []


# ---------------------------------------------------------------- 14. generate/export values
def test_generate_seed_and_steps_are_bounded_and_export_checks_the_state_dict(tmp_path, checkpoints, cli_error):
    mtm = checkpoints.mtm()
    out = tmp_path / "out.mp4"
    base = ["generate", "--task", "class_generation", "--class_id", "1", "--output", out, "--ckpt_path", mtm]
    assert "--seed 99999999999999999999: must be in 0..18446744073709551615" in cli_error([*base, "--seed", "99999999999999999999"])
    assert "--steps 100000000: at most 256, the model's tokens per clip" in cli_error([*base, "--steps", "100000000"])
    assert not out.exists()

    odd = tmp_path / "odd.ckpt"
    ckpt = torch.load(mtm, weights_only=True)
    for state_dict in ([1, 2], {"w": "not a tensor"}):
        torch.save({**ckpt, "state_dict": state_dict}, odd)
        line = cli_error(["export", "--ckpt_path", odd, "--output", tmp_path / "o.ckpt"])
        assert f"checkpoint {odd}: its 'state_dict' must be a dict of named tensors" in line
    assert not (tmp_path / "o.ckpt").exists()
