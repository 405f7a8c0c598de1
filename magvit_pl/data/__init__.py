"""Data: video I/O (PyAV), frame transforms, webdataset shards, ``prepare``, the synthetic default set,
the clip stream and the DataModule.

Names are imported lazily (PEP 562), so ``cli.py prepare`` does not pay for importing Lightning.
``prepare`` itself is not re-exported, so that ``magvit_pl.data.prepare`` stays the module; call it
as ``from magvit_pl.data.prepare import prepare``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "datamodule": ["DATA_ENV", "VideoDataModule", "default_data_root"],
    "loader": ["ClipLoader"],
    "manifest": ["check_manifest", "read_manifest"],
    "shards": ["decode_sample", "encode_sample", "read_shard", "write_shard"],
    "stream": ["ClipSpec", "ShardClips"],
    "synthetic": ["ensure_default_dataset", "render_clip"],
    "transforms": ["center_crop", "clip_indices", "frames_to_tensor", "from_frames", "pixels_to_unit", "random_crop", "resize",
                   "resize_short_side", "sample_clip", "short_side_size", "tensor_to_frames", "to_frames", "unit_to_pixels"],
    "video_io": ["VideoInfo", "VideoReadError", "encode_video", "probe", "read_video", "write_video"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["SYNTHETIC_CLASSES"]


def __getattr__(name: str) -> Any:
    if name == "SYNTHETIC_CLASSES":
        return importlib.import_module("magvit_pl.data.synthetic").CLASSES
    if name in _WHERE:
        return getattr(importlib.import_module(f"magvit_pl.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'magvit_pl.data' has no attribute '{name}'")
