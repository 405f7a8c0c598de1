"""`cli.py reconstruct`: any video through a trained tokenizer → side by side + PSNR/SSIM/LPIPS."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magvit_pl.run.checkpoint import load_tokenizer
from magvit_pl.run.cli import main
from magvit_pl.data.video_io import read_video
from magvit_pl.metrics.frame import VideoPSNR
from magvit_pl.metrics.reconstruction import pooled_baseline


def _json_line(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def _psnr(recon: torch.Tensor, video: torch.Tensor) -> float:
    m = VideoPSNR()
    m.update(recon.clamp(-1, 1), video)
    return float(m.compute())


@pytest.fixture
def clip(tmp_path, pattern, write_raw) -> Path:
    """20 frames of 40x52: three chunks of the tiny tokenizer's 8-frame clips, the last one padded."""
    return write_raw(tmp_path / "videos" / "clip.mp4", pattern(20, 40, 52, seed=3))


def test_reconstruct_chunks_a_video_and_reports_what_the_tokenizer_keeps(tokenizer_run, clip, tmp_path, capsys):
    ckpt = tokenizer_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "side_by_side.mp4"
    main(["reconstruct", "--input", str(clip), "--output", str(out), "--ckpt_path", str(ckpt),
          "--resolution", "0", "--baseline", "true", "--lpips", "false"])
    report = _json_line(capsys.readouterr().out)
    assert report["frames"] == 20 and report["size"] == [40, 52] and report["chunk_frames"] == 8
    assert report["grid_per_chunk"] == [4, 10, 13]
    # the same numbers by hand: chunks of 8 frames, the last 4 padded with copies of their last frame
    tok = load_tokenizer(ckpt)
    video = torch.from_numpy(read_video(clip)).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]  # (1, 3, 20, 40, 52)
    padded = torch.cat([video, video[:, :, -1:].expand(-1, -1, 4, -1, -1)], 2)
    with torch.no_grad():
        recon = torch.cat([tok(padded[:, :, s : s + 8])[0] for s in (0, 8, 16)], 2)[:, :, :20]
        base = torch.cat([pooled_baseline(padded[:, :, s : s + 8], (2, 4, 4)) for s in (0, 8, 16)], 2)[:, :, :20]
    assert report["tokenizer"]["psnr"] == pytest.approx(_psnr(recon, video), abs=1e-3)
    assert report["baseline"]["psnr"] == pytest.approx(_psnr(base, video), abs=1e-3)
    assert report["baseline"]["psnr"] > 25  # smooth gradients survive pooling
    assert report["tokenizer"]["lpips"] is None and 0 < report["tokenizer"]["ssim"] < 1
    # original | reconstruction | baseline, 2-pixel black borders; the left column is the input
    frames = read_video(out)
    assert frames.shape == (20, 44, 3 * 54 + 2, 3)
    left = torch.from_numpy(frames[:, 2:42, 2:54].copy()).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
    assert _psnr(left, video) > 30  # only the mp4 encoding between them


def test_reconstruct_resizes_the_short_side_and_crops_to_the_token_size(tokenizer_run, clip, tmp_path, capsys):
    from magvit_pl.run.reconstruct import reconstruct

    ckpt = str(tokenizer_run / "checkpoints" / "last.ckpt")
    report = reconstruct(str(clip), str(tmp_path / "r.gif"), ckpt_path=ckpt, resolution=32, max_frames=6, lpips=False)
    # 40x52 -> short side 32 (52 * 32/40 = 41.6 -> 42) -> cropped to multiples of 4: 32x40
    assert report["size"] == [32, 40] and report["frames"] == 6
    assert read_video(tmp_path / "r.gif").shape == (6, 36, 2 * 42 + 2, 3)
    again = reconstruct(str(clip), str(tmp_path / "s.gif"), ckpt_path=ckpt, resolution=32, max_frames=6, lpips=False)
    assert again["tokenizer"] == report["tokenizer"]  # deterministic


@pytest.mark.parametrize("args, expected", [
    (["--input", "/no/such/video.mp4"], "--input /no/such/video.mp4: file not found"),
    (["--output", "out.avi"], "--output out.avi: must end in .mp4 or .gif"),
    (["--resolution", "-1"], "--resolution -1: must be >= 0"),
    (["--resolution", "2"], "--resolution 2: must be at least the tokenizer's spatial downsampling 4"),
    (["--chunk_frames", "3"], "--chunk_frames 3: must be a positive multiple of the tokenizer's temporal downsampling 2"),
    (["--max_frames", "0"], "--max_frames 0: must be >= 1"),
    (["--input", "TEXT"], "notes.mp4: corrupt, truncated or not a video"),
    (["--ckpt_path", "TEXT"], "error: checkpoint "),  # named, refused (the wording is checkpoint.py's)
])
def test_reconstruct_refuses_bad_input_in_one_line(tokenizer_run, clip, tmp_path, capsys, args, expected):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    options = {"--input": str(clip), "--output": str(tmp_path / "o.mp4"), "--ckpt_path": str(tokenizer_run / "checkpoints" / "last.ckpt")}
    options.update({k: str(text) if v == "TEXT" else v for k, v in zip(args[::2], args[1::2])})
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", *[x for kv in options.items() for x in kv]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [line for line in err.splitlines() if line.startswith("error:")]
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert "TEXT" not in args or "notes.mp4" in err
    assert not (tmp_path / "o.mp4").exists()


def test_reconstruct_defaults_to_the_latest_tokenizer_run(tmp_path, clip, capsys):
    with pytest.raises(SystemExit):
        main(["reconstruct", "--input", str(clip), "--runs_root", str(tmp_path)])
    assert "no tokenizer checkpoint at" in capsys.readouterr().err
