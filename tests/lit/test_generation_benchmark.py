"""benchmarks/generation.py: region PSNR values, and one run on a tiny trained MTM through the real CLI."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_generation", REPO / "benchmarks" / "generation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_region_psnr_counts_only_the_masked_pixels():
    bench = _bench()
    real = torch.zeros(1, 3, 2, 4, 4)
    fake = real.clone()
    fake[:, :, 1] = 0.2  # error 0.2 on the second frame only
    given = torch.zeros(1, 1, 2, 4, 4, dtype=torch.bool)
    given[:, :, 0] = True
    assert bench.region_psnr(fake, real, given) == pytest.approx(10 * math.log10(4.0 / 1e-10))  # exact: capped
    assert bench.region_psnr(fake, real, ~given) == pytest.approx(10 * math.log10(4.0 / 0.04), abs=1e-4)
    assert bench.region_psnr(fake, real, given & False) is None


def test_benchmark_samples_a_tiny_mtm_on_the_val_split(tmp_path, fit_tiny_mtm, tiny_data, capsys):
    run = fit_tiny_mtm(tmp_path / "runs")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = _bench().main(["--ckpt", ckpt, "--shards", str(tiny_data), "--task", "frame_prediction", "--task", "outpainting_central",
                         "--seeds", "0", "1", "--batch", "4", "--threads", "1", "--steps", "2", "--grid", str(tmp_path / "g.png")])
    printed = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert printed == json.loads(json.dumps(out)) and out["clips"] == 8 and out["overrides"] == {"steps": 2}
    rows = out["results"]
    for task in ("frame_prediction", "outpainting_central"):
        pad, tok, smp = rows[f"{task} · padded condition"], rows[f"{task} · tokenizer of {run.name}"], rows[f"{task} · sample of {run.name}"]
        assert math.isfinite(pad["gen_psnr"]) and math.isfinite(tok["given_psnr"]) and math.isfinite(tok["gen_psnr"])
        assert 0.0 <= smp["cond_agree"] <= 1.0 and 0.0 <= smp["token_acc"] <= 1.0
        assert len(smp["per_seed"]["given_psnr"]) == 2 and smp["given_psnr_std"] is not None
        assert smp["sampling"]["steps"] == 2
        assert (tmp_path / f"g_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seeds give the same samples: a second run reproduces the figures exactly
    # (sampled with the condition tokens re-predicted, the model's setting, and held fixed, side by side)
    again = _bench().main(["--ckpt", ckpt, "--shards", str(tiny_data), "--task", "frame_prediction", "--seeds", "0", "1",
                           "--batch", "4", "--threads", "1", "--steps", "2", "--keep_condition", "both"])
    free, kept = (again["results"][f"frame_prediction · sample of {run.name} ({s})"] for s in ("re-predicted", "kept"))
    default = rows[f"frame_prediction · sample of {run.name}"]
    assert default["sampling"]["keep_condition"] is True  # configs/mtm.yaml holds the condition
    assert kept["per_seed"] == default["per_seed"] and free["per_seed"] != default["per_seed"]
    assert kept["cond_agree"] == 1.0 and kept["sampling"]["keep_condition"] is True and free["sampling"]["keep_condition"] is False
    assert again["overrides"] == {"steps": 2, "keep_condition": "both"}
    assert out["checkpoints"] == {run.name: ckpt} and smp["ckpt"] == ckpt


def test_class_tasks_use_the_shard_labels_or_class_id_and_refuse_a_bad_class_in_one_line(tmp_path, fit_tiny_mtm, tiny_data,
                                                                                         write_raw, pattern, monkeypatch):
    run = fit_tiny_mtm(tmp_path / "runs")
    bench = _bench()
    common = ["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--seeds", "0", "--threads", "1", "--steps", "2", "--batch", "4"]
    videos = tmp_path / "videos"
    videos.mkdir()
    write_raw(videos / "a.mp4", pattern(10, 32, 32))
    # a video folder has no labels: the one line names --class_id and the model's classes
    with pytest.raises(bench.UserError, match=r"--task class_frame_prediction is class-conditional .* pass --class_id \(0\.\.7\)"):
        bench.main([*common, "--videos", str(videos), "--task", "class_frame_prediction"])
    with_class = bench.main([*common, "--videos", str(videos), "--task", "class_frame_prediction", "--class_id", "7"])
    assert with_class["class_id"] == 7 and with_class["clips"] == 4
    with pytest.raises(bench.UserError, match=r"--class_id 8: must be in 0\.\.7"):
        bench.main([*common, "--shards", str(tiny_data), "--task", "frame_prediction", "--class_id", "8"])
    # the labels each task's batches are tokenized with
    import magvit_pl.lit.mtm_batch as mtm_batch
    seen, tokenize = [], mtm_batch.tokenize
    def spy(tokenizer, vocab, task, video, labels=None, **kw):
        seen.append((task.name, None if labels is None else labels.tolist()))
        return tokenize(tokenizer, vocab, task, video, labels, **kw)
    monkeypatch.setattr(mtm_batch, "tokenize", spy)
    from magvit_pl.run.eval_clips import labelled_shard_clips
    labels = labelled_shard_clips(tiny_data, "val", 8, 32)[2]
    assert labels.dtype == torch.long and len(labels) == 8 and len(set(labels.tolist())) > 1  # the clips' own, varied classes
    tasks = ["--task", "class_frame_prediction", "--task", "frame_prediction"]
    shards = bench.main([*common, "--shards", str(tiny_data), *tasks])
    assert shards["class_id"] == "the shards' labels"
    assert seen == [("class_frame_prediction", labels[:4].tolist()), ("class_frame_prediction", labels[4:].tolist()),
                    ("frame_prediction", None), ("frame_prediction", None)]
    seen.clear()
    forced = bench.main([*common, "--shards", str(tiny_data), *tasks, "--class_id", "3"])
    assert forced["class_id"] == 3
    assert seen == [("class_frame_prediction", [3] * 4)] * 2 + [("frame_prediction", None)] * 2
    row = lambda out, task: out["results"][f"{task} · sample of {run.name}"]["per_seed"]
    assert row(forced, "frame_prediction") == row(shards, "frame_prediction")  # the class reaches class tasks only
