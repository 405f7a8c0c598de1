"""A content-addressed cache of a frozen tokenizer's tokens (stage 2).

The MTM's tokenizer never changes during training, so a clip's tokens z are a pure function of its
pixels. :class:`TokenCache` memoises ``encode`` by a 128-bit BLAKE2b hash of each clip's float
pixels: a clip seen again (same video, same frames, same crop and flip) is looked up instead of
encoded. Keys come from content, not from sample names, so a cache hit is always right, whatever the
data module or its augmentation does; augmentation only lowers the hit rate (each random window is a
new clip). Turn random crops, flips and clip starts off (``--data.random_crop false
--data.random_flip false``, and clips as long as the stored videos) for the full saving.

Tokens are kept on the CPU as int32, least recently used evicted first: a 4x16x16 grid costs 4 KiB
a clip, so 100,000 clips take ~400 MiB. z̃ (the tokens of each task's condition) is not cached: it
differs per task and is built per batch.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import torch


def clip_hashes(video: torch.Tensor) -> list[str]:
    """One hex digest per clip of ``video`` (B, ...), over its exact bytes (call it on the CPU batch)."""
    flat = video.detach().to("cpu").contiguous().reshape(video.shape[0], -1)
    return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).hexdigest() for row in flat]


class TokenCache:
    """LRU map clip-hash -> tokens (N,) int32 on the CPU, with hit counters."""

    def __init__(self, max_clips: int):
        if max_clips < 1:
            raise ValueError(f"max_clips must be >= 1, got {max_clips}")
        self.max_clips = int(max_clips)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def encode(self, video: torch.Tensor, keys: list[str], encode_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Tokens (B, N) of ``video`` (B, 3, T, H, W): cached rows looked up, the rest encoded with
        ``encode_fn`` (one call on the missing clips only) and stored."""
        if len(keys) != video.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {video.shape[0]} clips")
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.lookups += len(keys)
        self.hits += len(keys) - len(missing)
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            z = encode_fn(video[missing]).reshape(len(missing), -1)
            for i, row in zip(missing, z):
                fresh[keys[i]] = row.to("cpu", torch.int32)
        rows = []
        for k in keys:
            row = fresh.get(k)
            if row is None:
                row = self._store[k]
                self._store.move_to_end(k)
            rows.append(row)
        for k, row in fresh.items():
            self._store[k] = row
        while len(self._store) > self.max_clips:
            self._store.popitem(last=False)
        return torch.stack(rows).to(video.device, torch.long)
