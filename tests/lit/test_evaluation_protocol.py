"""The test protocol (issue 14): sample counts per repeat, reuse of the test clips, mean ± std over repeats,
real features computed once, BAIR's evenly spaced eval clips, and a BAIR-like run without classes end to end."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from magvit_pl.lit.evaluation import SamplePlan, TaskEvaluator, planned_test_clips

REPO = Path(__file__).resolve().parents[2]


def run_plan(plan: SamplePlan, num_clips: int, batch: int) -> tuple[Counter, Counter]:
    """Feed ``num_clips`` clips in batches: (samples per repeat, samples per clip)."""
    per_repeat, per_clip = Counter(), Counter()
    for first in range(0, num_clips, batch):
        count = min(batch, num_clips - first)
        for _, k, spans in plan.groups(first, count):
            assert spans[0][0] == 0 and spans[-1][1] == k and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            for lo, hi, r in spans:
                per_repeat[r] += hi - lo
                per_clip.update(range(first + lo, first + hi))
    return per_repeat, per_clip


@pytest.mark.parametrize("clips, per_repeat, repeats, batch", [(3840, 25600, 4, 64), (9537, 10000, 4, 64), (10, 3, 2, 4)],
                         ids=["bair_256x15_clips_25600x4", "ucf_train_10000x4", "fewer_samples_than_clips"])
def test_each_repeat_gets_exactly_num_samples_cycling_the_clips(clips, per_repeat, repeats, batch):
    plan = SamplePlan(repeats, per_repeat, clips)
    got, per_clip = run_plan(plan, clips, batch)
    assert dict(got) == {r: per_repeat for r in range(repeats)}
    total = per_repeat * repeats
    uses = set(per_clip.values())  # every clip used equally often, give or take one (in order, as the official iterator)
    assert uses <= {total // clips, total // clips + 1} and sum(per_clip.values()) == total
    if total < clips:
        assert set(per_clip) == set(range(total))  # the first clips only


def test_default_protocol_is_the_test_set_once_per_repeat():
    plan = SamplePlan(3)
    assert plan.passes == 3 and plan.groups(10, 4) == [(0, 4, [(0, 4, 0)]), (1, 4, [(0, 4, 1)]), (2, 4, [(0, 4, 2)])]
    got, per_clip = run_plan(plan, 7, 3)
    assert dict(got) == {0: 7, 1: 7, 2: 7} and set(per_clip.values()) == {3}


def test_planned_clips_follow_the_loader_batches_and_limit():
    class Counts:
        def eval_counts(self):
            return [5, 3]  # two workers: batches of 2 → [2, 2, 1] and [2, 1], handed out round-robin

    loader = torch.utils.data.DataLoader([0] * 7, batch_size=3)
    loader_iter = type("L", (), {"dataset": Counts(), "batch_size": 2})()
    assert planned_test_clips(loader_iter, None) == 8
    assert planned_test_clips(loader_iter, 3) == 6  # 2 + 2 + 2
    assert planned_test_clips(loader_iter, 4) == 7  # then worker 0's short batch
    assert planned_test_clips(loader, float("inf")) == 7 and planned_test_clips(loader, 2) == 6


@pytest.mark.parametrize("workers", [0, 2])
def test_evenly_spaced_eval_clips_and_their_count(tiny_data, workers):
    from magvit_pl.data import VideoDataModule
    from magvit_pl.data.shards import decode_sample, read_shard

    dm = VideoDataModule(data_dir=str(tiny_data), num_frames=6, resolution=32, eval_batch_size=3, num_workers=workers,
                         eval_clips_per_video=2)
    dm.setup("test")
    loader = dm.test_dataloader()
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 16 == planned_test_clips(loader, None)  # 8 videos x 2 clips (8 frames: starts 0 and 2)
    assert Counter(k.rsplit("@", 1)[1] for k in keys) == {"0": 8, "2": 8}
    first = next(iter(read_shard(str(tiny_data / json.loads((tiny_data / "manifest.json").read_text())["splits"]["test"]["shards"][0]["name"]))))
    full = decode_sample(first)["frames"]  # (8, 32, 32, 3)
    videos = {k: v for b in batches for k, v in zip(b["key"], b["video"])}
    for start in (0, 2):
        clip = videos[f"{first['__key__']}@{start}"]
        expected = torch.from_numpy(full[start:start + 6].copy()).permute(3, 0, 1, 2).float() / 127.5 - 1
        assert torch.allclose(clip, expected, atol=1e-6)


def test_repeats_share_the_real_features_and_report_mean_and_std(monkeypatch):
    import magvit_pl.tasks
    from magvit_pl.lit.mtm_batch import Sample, TokenizedBatch
    from magvit_pl.metrics.fvd import FrechetVideoDistance, PairedFVD
    from magvit_pl.tasks import get_task

    seen = []

    def features(clips):  # a stand-in for I3D that counts the clips it sees
        seen.append(clips.shape[0])
        return torch.cat([clips.mean(dim=(2, 3, 4)), clips.std(dim=(2, 3, 4))], 1)

    monkeypatch.setattr(magvit_pl.tasks, "build_fvd",
                        lambda paired=False: (PairedFVD if paired else FrechetVideoDistance)(extractor=features, resize=8))
    tasks = {n: get_task(n) for n in ("frame_prediction", "outpainting_central")}
    ev = TaskEvaluator(tasks, num_frames=9, num_repeats=2)
    g = torch.Generator().manual_seed(0)
    for batch in range(2):
        real = torch.rand(4, 3, 9, 8, 8, generator=g) * 2 - 1
        ev.begin_batch(real)
        for name, task in tasks.items():
            cond = task.build_condition(real)
            inputs = TokenizedBatch(z=None, z_cond=torch.zeros(4, 2, dtype=torch.long), cond_mask=torch.zeros(4, 2, dtype=torch.bool),
                                    prefix=torch.zeros(4, 2, dtype=torch.long), condition=cond)
            for repeat in range(2):
                fake = (real + (repeat + 1) * 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
                ev.update(name, Sample(generated=fake, tokens=torch.zeros(4, 2, dtype=torch.long), inputs=inputs), repeat, (0, 4))
    # real clips: one I3D pass per batch (4 clips) for 2 tasks x 2 repeats; generated: 2 x 2 x 4 per batch
    # (each task's FVD of each repeat computing its own would be 8 passes over the real clips)
    assert ev.real_feature_passes == 2 and seen == [4] * (2 + 2 * 2 * 2)
    results, per_repeat = ev.compute()
    for name in tasks:
        fvds = per_repeat[name]["fvd"]
        assert len(fvds) == 2 and fvds[1] > fvds[0] > 0  # the noisier repeat is further away
        assert results[name]["fvd"] == pytest.approx(sum(fvds) / 2)
        assert results[name]["fvd_std"] == pytest.approx(abs(fvds[1] - fvds[0]) / 2)  # np.std, ddof 0
        assert ev.counts[name] == [8, 8]


@pytest.fixture(scope="module")
def unlabelled_data(tiny_data, tmp_path_factory) -> Path:
    """The tiny synthetic set without classes, like BAIR."""
    root = tmp_path_factory.mktemp("bair_like") / "data"
    shutil.copytree(tiny_data, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["classes"] = []
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_bair_like_single_task_run_without_classes_end_to_end(tokenizer_run, unlabelled_data, tiny_mtm_args, tmp_path, capsys):
    """num_classes 0, one task (no task token), then test with 6 samples x 2 repeats over 2 clips per video."""
    from magvit_pl.run.checkpoint import load_checkpoint
    from magvit_pl.run.cli import main

    data = ["--data.init_args.data_dir", str(unlabelled_data), "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "4", "--data.init_args.train_samples_per_epoch", "8", "--data.init_args.num_frames", "6",
            "--trainer.enable_progress_bar", "false"]
    model = ["--model.init_args.num_classes", "0", "--model.init_args.tasks.names", "[frame_prediction]",
             "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"), *tiny_mtm_args]
    main(["fit", "--config", str(REPO / "configs" / "mtm.yaml"), "--run_dir", str(tmp_path / "fit"), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", *model, *data])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    meta = load_checkpoint(ckpt)["magvit"]
    assert meta["vocab"]["num_classes"] == 0 and meta["vocab"]["task_token"] is False and meta["task_table"] == {}
    main(["test", "--config", str(tmp_path / "fit" / "config.yaml"), "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "test"),
          "--num_samples", "6", "--num_repeats", "2",
          "--data.init_args.eval_clips_per_video", "2"])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    res = json.loads((tmp_path / "test" / "results.json").read_text())
    ev = res["protocol"]["evaluation"]
    assert (ev["num_samples"], ev["num_repeats"], ev["eval_clips_per_video"], ev["test_clips"]) == (6, 2, 2, 16)
    assert ev["generated_per_repeat"] == {"frame_prediction": [6, 6]}
    values = res["results"]["frame_prediction"]
    assert len(ev["per_repeat"]["frame_prediction"]["psnr_given"]) == 2 and "psnr_given_std" in values
    assert values["psnr_given"] == pytest.approx(sum(ev["per_repeat"]["frame_prediction"]["psnr_given"]) / 2)


def test_protocol_flags_are_checked_in_one_line(tmp_path, capsys):
    from magvit_pl.run.cli import main

    for args, expected in ((["--config", str(REPO / "configs" / "tokenizer.yaml"), "--num_samples", "5"], "--num_samples 5: only an MTM model"),
                           (["--config", str(REPO / "configs" / "mtm.yaml"), "--num_repeats", "0"], "--num_repeats 0: must be >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--runs_root", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], err
