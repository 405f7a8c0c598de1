"""The clip stream's stages one by one: reading shards under an error policy, splitting by rank."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from magvit_pl.data.shards import ShardError, encode_sample, write_shard
from magvit_pl.data.stream import SkipUnusable, UnusableSample, read_shards, split_by_rank


def _shard(path, keys):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    write_shard(path, [encode_sample(k, frames, {"fps": 8.0, "label": 0}, fmt="npy") for k in keys])
    return {"url": str(path)}


def test_read_shards_hands_bad_shards_to_the_handler(tmp_path):
    good = _shard(tmp_path / "a.tar", ["a0", "a1"])
    empty = _shard(tmp_path / "e.tar", [])
    missing = {"url": str(tmp_path / "gone.tar")}
    other = _shard(tmp_path / "b.tar", ["b0"])
    seen = []
    keys = [s["__key__"] for s in read_shards([good, empty, missing, other], handler=lambda e: seen.append(e) or True)]
    assert keys == ["a0", "a1", "b0"]
    assert [type(e) for e in seen] == [ShardError, ShardError]
    assert "holds no samples" in str(seen[0]) and "gone.tar" in str(seen[1]) and "not found" in str(seen[1])
    with pytest.raises(ShardError, match="holds 2 samples, manifest.json says 3"):
        list(read_shards([good], counts={good["url"]: 3}))
    assert [s["__key__"] for s in read_shards([empty, other], counts={empty["url"]: 0, other["url"]: 1})] == ["b0"]
    stopped = list(read_shards([missing, good], handler=lambda e: False))  # a handler returning False ends the stream
    assert stopped == []


def test_skip_unusable_counts_failures_in_a_row_and_lets_other_errors_through():
    policy = SkipUnusable(limit=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert policy(UnusableSample("sample x: bad")) and policy(ShardError("s.tar", "broken"))
        assert list(policy.passed(["ok"])) == ["ok"] and policy.in_a_row == 0  # a clip got through: count again
        policy(UnusableSample("sample y: bad"))
        policy(UnusableSample("sample z: bad"))
        with pytest.raises(Exception, match=r"3 training samples or shards in a row were unusable \(last: sample w"):
            policy(UnusableSample("sample w: bad"))
    assert [str(w.message) for w in caught][:2] == ["skipping sample x: bad", "skipping shard s.tar: broken"]
    with pytest.raises(KeyError):
        SkipUnusable()(KeyError("a bug, not bad data"))


def test_split_by_rank_gives_each_rank_its_shards():
    shards = [{"url": f"{i}.tar"} for i in range(5)]
    assert [s["url"] for s in split_by_rank(shards, 1, 2)] == ["1.tar", "3.tar"]
    assert [s["url"] for s in split_by_rank(shards, 0, 1)] == [s["url"] for s in shards]
