"""The stage-2 token cache: content-keyed, LRU-bounded, and invisible in the results."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from magvit_pl.lit.token_cache import TokenCache, clip_hashes

REPO = Path(__file__).resolve().parents[1]


class CountingEncoder:
    """encode(video) -> (B, 2) tokens from the clip's pixels; counts the clips it was asked to encode."""

    def __init__(self):
        self.clips = 0

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        self.clips += video.shape[0]
        s = video.flatten(1).sum(1)
        return torch.stack([s.round().long(), (s * 10).round().long() % 7], 1)


def test_cached_tokens_equal_encoded_and_only_misses_are_encoded():
    torch.manual_seed(0)
    clips = torch.randn(6, 3, 2, 4, 4)
    enc, cache = CountingEncoder(), TokenCache(max_clips=100)
    direct = CountingEncoder()(clips)
    first = cache.encode(clips[:4], clip_hashes(clips[:4]), enc)
    assert torch.equal(first, direct[:4]) and enc.clips == 4 and cache.hit_rate == 0.0
    batch = clips[[3, 4, 0, 5, 4]]  # 3 and 0 seen; 4 twice in one batch; 5 new
    out = cache.encode(batch, clip_hashes(batch), enc)
    assert torch.equal(out, direct[[3, 4, 0, 5, 4]])
    assert enc.clips == 4 + 3  # clips 4, 4, 5: the two copies of 4 were both missing before this call
    assert cache.hits == 2 and cache.lookups == 9 and len(cache) == 6
    assert out.dtype == torch.long


def test_lru_eviction_keeps_the_recently_used():
    clips = torch.arange(5 * 3 * 1 * 1 * 1, dtype=torch.float32).reshape(5, 3, 1, 1, 1)
    keys = clip_hashes(clips)
    enc, cache = CountingEncoder(), TokenCache(max_clips=3)
    for i in (0, 1, 2):
        cache.encode(clips[i : i + 1], keys[i : i + 1], enc)
    cache.encode(clips[0:1], keys[0:1], enc)  # touch 0: now 1 is the oldest
    cache.encode(clips[3:4], keys[3:4], enc)  # evicts 1
    assert len(cache) == 3 and enc.clips == 4
    cache.encode(clips[[0, 2, 3]], [keys[0], keys[2], keys[3]], enc)
    assert enc.clips == 4  # all three still cached
    cache.encode(clips[1:2], keys[1:2], enc)
    assert enc.clips == 5  # 1 had been evicted


def test_hash_depends_on_every_pixel():
    a = torch.zeros(2, 3, 2, 4, 4)
    b = a.clone()
    b[1, 2, 1, 3, 3] = 1e-7
    ha, hb = clip_hashes(a), clip_hashes(b)
    assert ha[0] == ha[1] == hb[0] and hb[1] != ha[1]
    with pytest.raises(ValueError):
        TokenCache(0)


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def test_mtm_training_with_the_cache_matches_training_without(tmp_path, tokenizer_run, tiny_mtm_args, data_args):
    """Same losses step for step with and without the cache; the cache really hits (2 epochs of 4 batches
    over the same 8 clips, no augmentation). Not bit-identical: the tokenizer's CPU convolutions are not
    batch-invariant, so a clip encoded inside another batch can flip a near-tie code (seen here: 1 token
    of 512 in one batch), which moves the loss in the 5th digit."""
    from magvit_pl.run.cli import main

    runs = {}
    for cache in (0, 64):
        root = tmp_path / f"cache{cache}"
        main(["fit", "--config", str(REPO / "configs" / "mtm.yaml"), "--runs_root", str(root), *tiny_mtm_args, *data_args,
              "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
              "--model.init_args.token_cache_clips", str(cache), "--data.init_args.random_flip", "false",
              "--data.init_args.random_crop", "false", "--trainer.max_steps", "8", "--trainer.limit_val_batches", "0",
              "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"])
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)
        runs[cache] = (root / "mtm" / "latest").resolve()
    plain, cached = _losses(runs[0]), _losses(runs[64])
    assert sorted(plain) == list(range(8))
    for step, value in plain.items():
        assert cached[step] == pytest.approx(value, rel=1e-3), step
    with open(runs[64] / "metrics.csv", newline="") as fh:
        rates = [float(r["train/token_cache_hit_rate"]) for r in csv.DictReader(fh) if r.get("train/token_cache_hit_rate")]
    # 16-frame clips cut to 8 frames at a random start: some windows repeat within 2 epochs of 8 clips
    assert rates[0] == 0.0 and rates[-1] > 0.0


def test_token_cache_benchmark_runs_on_a_tiny_tokenizer(tokenizer_run, tiny_data, capsys, monkeypatch):
    """benchmarks/token_cache.py end to end (it once broke on a renamed MTMModule method unnoticed)."""
    import importlib.util
    import json

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # where the script finds its `timing` helper
    spec = importlib.util.spec_from_file_location("bench_token_cache", REPO / "benchmarks" / "token_cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"), "--data_dir", str(tiny_data),
                      "--batch", "2", "--repeats", "1", "--threads", "1"])
    printed = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert printed == out and set(out["modes"]) == {"off", "warm", "encode"}
    assert out["hit_rate_warm"] > 0 and all(r["s_per_step"] > 0 for r in out["modes"].values())
