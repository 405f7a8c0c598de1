"""`cli.py test` on a tokenizer run: reconstruction metrics of the EMA tokenizer next to the pooled baseline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magvit_pl.run.checkpoint import load_tokenizer
from magvit_pl.run.cli import main
from magvit_pl.run.lightning_cli import complete_eval_args
from magvit_pl.data.video_io import read_video
from magvit_pl.run.errors import UserError
from magvit_pl.metrics.frame import VideoPSNR
from magvit_pl.metrics.reconstruction import pooled_baseline

REPO = Path(__file__).resolve().parents[2]


def _psnr(recon: torch.Tensor, video: torch.Tensor) -> float:
    m = VideoPSNR()
    m.update(recon.clamp(-1, 1), video)
    return float(m.compute())


def test_test_without_ckpt_path_finds_the_latest_run_of_the_config_kind(tokenizer_run, tmp_path):
    runs = str(tokenizer_run.parent.parent)
    ckpt = str((tokenizer_run / "checkpoints" / "last.ckpt").resolve())
    args = complete_eval_args(["test", "--kind", "tokenizer", "--runs_root", runs])
    assert args[args.index("--ckpt_path") + 1] == ckpt
    assert args[args.index("--config") + 1] == str(tokenizer_run / "config.yaml")
    args = complete_eval_args(["test", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--runs_root", runs])
    assert args[args.index("--ckpt_path") + 1] == ckpt
    with pytest.raises(UserError, match="no mtm checkpoint .*python cli.py test --kind tokenizer"):
        complete_eval_args(["test", "--runs_root", runs])  # the default kind is still the MTM
    with pytest.raises(UserError, match="--kind video: choose tokenizer or mtm"):
        complete_eval_args(["test", "--kind", "video", "--runs_root", runs])
    with pytest.raises(UserError, match="no tokenizer checkpoint"):
        complete_eval_args(["test", "--kind", "tokenizer", "--runs_root", str(tmp_path)])


def test_a_kind_that_contradicts_the_model_is_one_line(tokenizer_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--kind", "mtm", "--ckpt_path", str(tokenizer_run / "checkpoints" / "last.ckpt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --kind mtm: the model (magvit_pl.lit.tokenizer.TokenizerModule) is a tokenizer; pass --kind tokenizer, or the config of a mtm model"]


def test_cli_test_on_a_tokenizer_run_reports_reconstruction_next_to_the_baseline(tokenizer_run):
    from magvit_pl.data.datamodule import VideoDataModule

    runs = tokenizer_run.parent.parent
    before = set((runs / "tokenizer").glob("*-test"))
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "test", "--kind", "tokenizer", "--runs_root", str(runs),
                             "--trainer.enable_progress_bar", "false"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenizer (EMA)" in result.stdout and "baseline (avg-pool 2x4x4)" in result.stdout
    (test_dir,) = set((runs / "tokenizer").glob("*-test")) - before
    res = json.loads((test_dir / "results.json").read_text())
    protocol = res["protocol"]
    assert protocol["split"] == "test" and protocol["clips"] == 8 and protocol["frames"] == 8
    assert protocol["resolution"] == [32, 32] and protocol["grid"] == [4, 8, 8]
    assert res["results"]["tokenizer"]["rfvd"] is None and "9" in res["results"]["tokenizer"]["skipped"]["rfvd"]
    assert 0 < res["results"]["tokenizer"]["codebook_usage"] <= 1
    # the values are the metrics of the EMA tokenizer and of the baseline on the 8 test clips
    dm = VideoDataModule(data_dir=protocol["data_dir"], num_frames=8, resolution=32, eval_batch_size=8, num_workers=0)
    dm.setup("test")
    video = torch.cat([b["video"] for b in dm.test_dataloader()])
    with torch.no_grad():
        recon = load_tokenizer(tokenizer_run / "checkpoints" / "last.ckpt")(video)[0]
    assert res["results"]["tokenizer"]["psnr"] == pytest.approx(_psnr(recon, video), abs=1e-3)
    assert res["results"]["baseline"]["psnr"] == pytest.approx(_psnr(pooled_baseline(video, (2, 4, 4)), video), abs=1e-3)
    media = test_dir / "media"
    assert read_video(media / "test_reconstruction.mp4").shape == (8, 3 * 34 + 2, 4 * 34 + 2, 3)  # rows: original, baseline, tokenizer
    assert (media / "test_reconstruction.gif").is_file()
    assert (media / "test_reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
