"""Run folders, resume and experiment tracking through the real command line (``python cli.py …`` subprocesses).

One tiny tokenizer fit (module fixture ``first_run``) is shared: it starts while every run folder name of the
next 15 minutes is taken (a run in the same second), with ``--trainer.default_root_dir`` instead of
``--runs_root`` and a TensorBoard logger added in YAML. The other tests start from a copy of its runs folder.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from magvit_pl.lit.schedules import lr_multiplier

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_YAML = str(REPO / "configs" / "tokenizer.yaml")
# each of these never reaches the user (silenced once in magvit_pl.run.lightning_cli.quiet_known_noise)
KNOWN_NOISE = ("IterableDataset` has `__len__`", "LeafSpec", "module(s) in eval mode", "💡 Tip")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MAGVIT_PL_RUN_DIR", None)
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=900)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def fit_args(tiny_tokenizer_args, data_args) -> list[str]:
    """A 2-step tiny tokenizer fit that validates (and writes media) at step 2 and logs every step."""
    return ["fit", "--config", TOKENIZER_YAML, *tiny_tokenizer_args, *data_args, "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--model.init_args.val_fvd", "false"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, fit_args):
    """``(root, run folder, result, taken)``: the shared fit (see the module docstring); ``taken``: the folders
    that were there before it, each holding one file ``theirs``."""
    root = tmp_path_factory.mktemp("exp")
    kind_dir = root / "tokenizer"
    taken = []
    for seconds in range(900):
        folder = kind_dir / time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() + seconds))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "theirs").write_text("another run's file")
        taken.append(folder)
    tensorboard = root / "tensorboard.yaml"
    tensorboard.write_text("trainer:\n  logger:\n    - class_path: lightning.pytorch.loggers.TensorBoardLogger\n"
                           "      init_args: {save_dir: .}\n")
    cwd = tmp_path_factory.mktemp("cwd")
    result = cli(*fit_args, "--config", tensorboard, "--trainer.default_root_dir", root, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in kind_dir.iterdir() if p.is_dir() and not p.is_symlink() and p not in taken]
    assert len(runs) == 1, runs
    assert not (cwd / "runs").exists() and not any(cwd.iterdir())  # nothing in the working folder
    return root, runs[0], result, taken


def copy_runs(first_run, dest: Path) -> Path:
    """A runs folder holding only the first run (and ``latest`` → it): each test changes its own."""
    root, run, _, _ = first_run
    shutil.copytree(run, dest / "tokenizer" / run.name)
    os.symlink(run.name, dest / "tokenizer" / "latest")
    return dest


# ------------------------------------------------------------------------------------------- item 2, 3
def test_a_run_started_in_the_same_second_gets_its_own_folder(first_run):
    _, run, _, taken = first_run
    assert re.fullmatch(r"\d{8}-\d{6}-2", run.name) and run.with_name(run.name[:-2]) in taken
    assert all(os.listdir(folder) == ["theirs"] for folder in taken)  # nobody else's folder was written into
    assert {"checkpoints", "config.yaml", "media", "metrics.csv"} <= {p.name for p in run.iterdir()}


def test_default_root_dir_is_where_runs_go_and_config_yaml_keeps_it(first_run):
    import yaml

    root, run, _, _ = first_run
    assert run.parent == root / "tokenizer" and (run / "checkpoints" / "last.ckpt").is_file()
    trainer = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert trainer["default_root_dir"] == str(root)  # not the run folder: a re-run of config.yaml makes a new folder
    assert trainer["logger"][0]["init_args"]["save_dir"] == "."


# ------------------------------------------------------------------------------------------- item 1
def test_latest_follows_a_run_once_it_wrote_a_checkpoint(first_run):
    root, run, _, _ = first_run
    assert (root / "tokenizer" / "latest").resolve() == run.resolve()


def test_a_run_that_stops_before_its_first_checkpoint_leaves_latest_alone(first_run, fit_args, tmp_path):
    root = copy_runs(first_run, tmp_path / "runs")
    good = (root / "tokenizer" / "latest").resolve()
    # an infinite reconstruction loss in the first step, and one non-finite step stops the run (exit 3)
    result = cli(*fit_args, "--runs_root", root, "--model.init_args.recon_weight", "1e300",
                 "--model.init_args.max_consecutive_nonfinite", "1", "--save_every_n_steps", "0")
    assert result.returncode == 3 and len(errors(result)) == 1, result.stderr[-2000:]
    assert (root / "tokenizer" / "latest").resolve() == good


def test_resume_last_with_no_checkpoint_is_one_line_naming_what_it_looked_for(first_run, fit_args, tmp_path):
    root = copy_runs(first_run, tmp_path / "runs")
    empty = root / "tokenizer" / "20200101-000000"  # what a run stopped before its first checkpoint left behind
    empty.mkdir()
    (empty / "config.yaml").write_text("{}")
    (root / "tokenizer" / "latest").unlink()
    os.symlink(empty.name, root / "tokenizer" / "latest")
    before = sorted(os.listdir(root / "tokenizer"))
    result = cli(*fit_args, "--runs_root", root, "--ckpt_path", "last")
    assert result.returncode == 2
    assert errors(result) == [f"error: --ckpt_path last: nothing to resume, no checkpoint at {empty}/checkpoints/last.ckpt; "
                              "start the run again without --ckpt_path, or pass --ckpt_path FILE"]
    assert sorted(os.listdir(root / "tokenizer")) == before and os.listdir(empty) == ["config.yaml"]


# ------------------------------------------------------------------------------------------- item 4
def test_resume_takes_the_checkpoints_settings_and_a_typed_learning_rate(first_run, fit_args, tmp_path):
    ckpt = first_run[1] / "checkpoints" / "last.ckpt"
    args = [*fit_args, "--runs_root", tmp_path, "--ckpt_path", ckpt, "--trainer.max_steps", "4",
            "--trainer.val_check_interval", "4", "--model.init_args.num_media_clips", "0"]
    result = cli(*args, "--model.lr", "0.5", "--model.init_args.warmup_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    info = [line for line in result.stderr.splitlines() if line.startswith("info: resuming")]
    assert len(info) == 1 and "yours win: lr=0.5 (checkpoint 0.001), warmup_steps=3 (checkpoint 1)" in info[0], info
    with open(next(tmp_path.glob("tokenizer/*/metrics.csv"))) as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh) if row.get("lr")]
    # steps 3 and 4 of the new schedule (3-step warmup to 0.5 over 4 steps); the checkpoint's optimiser held 0.001
    want = [0.5 * lr_multiplier("warmup_cosine", step, 3, 4, 0.1) for step in (2, 3)]
    assert lrs == pytest.approx(want, rel=1e-5), lrs


@pytest.mark.parametrize("case, expected", [
    ("other-kind", "error: --ckpt_path {ckpt}: a tokenizer checkpoint (magvit_pl.lit.tokenizer.TokenizerModule), but the config's "
                   "model is a mtm (magvit_pl.lit.mtm.MTMModule); pass the config of a tokenizer, e.g. --config configs/tokenizer.yaml"),
    ("architecture", "error: --model.per_frame True: the checkpoint's model has False, and this setting cannot change when "
                     "resuming a run; drop the option (settings that can: lr, disc_lr, "),
])
def test_resume_refuses_another_kind_of_model_and_a_typed_architecture_change(first_run, fit_args, data_args, tmp_path, case, expected):
    ckpt = first_run[1] / "checkpoints" / "last.ckpt"
    if case == "other-kind":  # the tokenizer's checkpoint given to the MTM's config
        args = ["fit", "--config", REPO / "configs" / "mtm.yaml", *data_args]
    else:
        args = [*fit_args, "--model.init_args.per_frame", "true"]
    result = cli(*args, "--runs_root", tmp_path, "--ckpt_path", ckpt)
    assert result.returncode == 2 and len(errors(result)) == 1, result.stderr[-2000:]
    assert errors(result)[0].startswith(expected.format(ckpt=ckpt)), errors(result)
    assert not any(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------------------------------- item 5, 6
def test_a_failed_test_leaves_no_folder_and_test_on_a_tokenizer_run_works(first_run, tmp_path):
    root = copy_runs(first_run, tmp_path / "runs")
    before = sorted(os.listdir(root / "tokenizer"))
    failed = cli("test", "--kind", "tokenizer", "--runs_root", root, "--data.init_args.data_dir", tmp_path / "no_data")
    assert failed.returncode == 2 and "no_data" in errors(failed)[0]
    assert sorted(os.listdir(root / "tokenizer")) == before  # no empty STAMP-test folder
    done = cli("test", "--kind", "tokenizer", "--runs_root", root, "--trainer.limit_test_batches", "1",
               "--trainer.enable_progress_bar", "false")
    assert done.returncode == 0 and not errors(done), done.stderr[-3000:]
    import json

    (test_dir,) = [p for p in (root / "tokenizer").iterdir() if p.name.endswith("-test")]
    results = json.loads((test_dir / "results.json").read_text())
    assert 5 < results["results"]["tokenizer"]["psnr"] < 60, results


def test_predict_is_not_offered_and_says_what_does_it():
    result = cli("predict", "--config", TOKENIZER_YAML)
    assert result.returncode == 2
    assert errors(result) == ["error: there is no predict command; for reconstructions of any videos: python cli.py reconstruct; "
                              "generated clips: python cli.py generate (one input) or python cli.py sample (N per task)"]
    overview = cli("--help").stdout
    assert "reconstruct" in overview and not re.search(r"\bpredict\b", overview)


# ------------------------------------------------------------------------------------------- item 11, 12
def read_tensorboard(folder: Path) -> dict[str, list]:
    """Every value of the TensorBoard event files under ``folder``: tag -> [scalar or 'image', ...]."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: length (u64), its crc, the record, its crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += n + 16
            for value in event.summary.value:
                found.setdefault(value.tag, []).append("image" if value.HasField("image") else value.simple_value)
    return found


def test_a_logger_added_in_yaml_gets_metrics_lr_and_media_beside_metrics_csv(first_run):
    _, run, _, _ = first_run
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"lr", "disc_lr", "train/loss", "val/psnr"} <= set(rows[0])
    assert [float(r["lr"]) for r in rows if r["lr"]] == pytest.approx([0.001, 0.001])  # warmup 1 step, then cosine
    board = read_tensorboard(run)
    assert board["lr"] == pytest.approx([0.001, 0.001]) and len(board["disc_lr"]) == 2
    assert board["media/reconstruction"] == ["image"] and len(board["val/psnr"]) == 1
    assert (run / "media" / "reconstruction_step0000002.mp4").is_file()


def test_a_logger_whose_package_is_missing_is_one_line_and_makes_no_run(first_run, fit_args, tmp_path):
    pytest.importorskip("lightning")
    if __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    root = copy_runs(first_run, tmp_path / "runs")
    before = sorted(os.listdir(root / "tokenizer"))
    result = cli(*fit_args, "--runs_root", root, "--trainer.logger", "WandbLogger")
    assert result.returncode == 2
    (line,) = errors(result)
    assert line.startswith("error: lightning.pytorch.loggers.WandbLogger: a package it needs is not installed") and "wandb" in line
    assert sorted(os.listdir(root / "tokenizer")) == before


def test_known_lightning_noise_never_reaches_the_user(first_run):
    stderr = first_run[2].stderr
    assert not [n for n in KNOWN_NOISE if n in stderr], stderr[-3000:]
