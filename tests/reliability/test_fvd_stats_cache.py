"""`test` caches the real-data FVD statistics of its test set and the next `test` reuses them (issue 12, item 16):
keyed by the shard manifest hash, checked when read. A stand-in feature extractor replaces I3D (which needs
fetched weights and takes seconds per clip here); it counts the clips it sees."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ten_frame_data(tmp_path_factory) -> Path:
    """4 test clips of 10 frames (FVD needs at least 9) at 32 px, synthetic."""
    from magvit_pl.data.synthetic import ensure_default_dataset

    root = tmp_path_factory.mktemp("fvd_data") / "synthetic"
    return ensure_default_dataset(root, num_train=4, num_val=4, num_test=4, num_frames=10, resolution=32, shard_size=4, workers=1)


def test_second_test_run_reuses_the_cached_real_statistics(ten_frame_data, checkpoints, tmp_path, monkeypatch, cli_error):
    import magvit_pl.tasks
    from magvit_pl.run.cli import main
    from magvit_pl.metrics.fvd import FrechetVideoDistance, PairedFVD

    seen: list[int] = []

    def features(clips: torch.Tensor) -> torch.Tensor:  # (B, 3, T, 16, 16) -> (B, 6): per-channel mean and std
        seen.append(clips.shape[0])
        return torch.cat([clips.mean(dim=(2, 3, 4)), clips.std(dim=(2, 3, 4))], 1)

    monkeypatch.setattr(magvit_pl.tasks, "build_fvd",
                        lambda paired=False: (PairedFVD if paired else FrechetVideoDistance)(extractor=features, resize=16))
    monkeypatch.setenv("MAGVIT_PL_CACHE", str(tmp_path / "cache"))
    ckpt = checkpoints.mtm(num_frames=10)
    args = ["test", "--task", "frame_prediction", "--ckpt_path", ckpt, "--config", REPO / "configs" / "mtm.yaml",
            "--data.init_args.data_dir", ten_frame_data, "--data.init_args.num_frames", "10", "--data.init_args.num_workers", "0",
            "--data.init_args.eval_batch_size", "2", "--trainer.enable_progress_bar", "false"]

    results = []
    for run in ("first", "second"):
        seen.clear()
        main([str(a) for a in [*args, "--run_dir", tmp_path / run]])
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)  # set by a run for its DDP children
        results.append((json.loads((tmp_path / run / "results.json").read_text()), sum(seen)))
    (first, clips_first), (second, clips_second) = results
    assert clips_first == 8 and clips_second == 4  # 4 real + 4 generated clips, then the generated ones only
    cached = first["protocol"]["fvd_real_stats"]
    assert cached["reused"] is False and second["protocol"]["fvd_real_stats"] == {**cached, "reused": True}
    fvd = first["results"]["frame_prediction"]["fvd"]
    assert np.isfinite(fvd) and fvd > 0 and second["results"]["frame_prediction"]["fvd"] == fvd
    stats = np.load(cached["file"])
    assert int(stats["n"]) == 4 and stats["sigma"].shape == (6, 6)

    # the cached file is data from outside like any other: NaN statistics are one line, not FVD = nan
    with np.load(cached["file"]) as z:
        fields = dict(z)
    fields["mu"][0] = np.nan
    np.savez(cached["file"], **fields)
    line = cli_error([*args, "--run_dir", tmp_path / "third"])
    assert f"{cached['file']} holds invalid FVD statistics (NaN or inf values); delete it" in line
