"""Initialise a 3D tokenizer from a 2D (per-frame) one by inflating its conv kernels.

MAGVIT §3.1: "central inflation" puts each 2D kernel in the temporal centre slice of the 3D kernel and
zeros elsewhere, so the 3D network starts out computing the 2D one frame by frame; "average"
inflation spreads it as 2D / kt over all kt slices (the I3D recipe). Parameters whose shapes already
match (norms, biases, 1×1×1 convs, the codebook) are copied.

The 2D model is a :class:`~magvit_pl.models.tokenizer.VQTokenizer` with ``temporal_kernel_size=1``
(kernels 1×3×3), so its keys are those of the 3D model.
"""
from __future__ import annotations

import os
from typing import Literal, Mapping

import torch
import torch.nn as nn

from magvit_pl.run.checkpoint import load_checkpoint
from magvit_pl.run.errors import UserError

InflationMode = Literal["central", "average"]
# training counters of the quantizers: a new run starts them afresh
_FRESH_BUFFERS = ("num_steps", "code_age")


def inflate_kernel(w2d: torch.Tensor, kt: int, mode: InflationMode = "central") -> torch.Tensor:
    """(O, I, 1, kh, kw) → (O, I, kt, kh, kw)."""
    if w2d.shape[2] != 1:
        raise UserError(f"can only inflate kernels with temporal size 1, got shape {tuple(w2d.shape)}")
    O, I, _, kh, kw = w2d.shape
    if mode == "central":
        w3d = w2d.new_zeros(O, I, kt, kh, kw)
        w3d[:, :, kt // 2] = w2d[:, :, 0]
        return w3d
    if mode == "average":
        return w2d.expand(O, I, kt, kh, kw) / kt
    raise UserError(f"inflation must be 'central' or 'average'; got {mode!r}")


def inflate_state_dict(
    sd2d: Mapping[str, torch.Tensor], model3d: nn.Module, mode: InflationMode = "central"
) -> dict[str, torch.Tensor]:
    """A state dict for ``model3d`` from the 2D state dict ``sd2d`` (same keys; 5D conv kernels with
    temporal size 1 are inflated, everything else must match in shape)."""
    target = model3d.state_dict()
    missing = sorted(set(target) - set(sd2d))
    if missing:
        raise UserError(f"the 2D checkpoint lacks {len(missing)} of the 3D model's entries, e.g. {missing[0]!r}")
    out: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        src = sd2d[key]
        if key.rsplit(".", 1)[-1] in _FRESH_BUFFERS:
            out[key] = ref.clone()
        elif src.shape == ref.shape:
            out[key] = src.to(ref.dtype).clone()
        elif src.dim() == 5 and src.shape[2] == 1 and src.shape[:2] + src.shape[3:] == ref.shape[:2] + ref.shape[3:]:
            out[key] = inflate_kernel(src, ref.shape[2], mode).to(ref.dtype).contiguous()
        else:
            raise UserError(
                f"cannot inflate {key!r}: 2D shape {tuple(src.shape)} does not fit 3D shape {tuple(ref.shape)}"
            )
    return out


def load_state_dict_file(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read a plain state dict or a Lightning checkpoint (its ``state_dict``), keeping the entries that
    start with ``prefix`` (e.g. ``'tokenizer.'``), with the prefix removed."""
    obj = load_checkpoint(path)  # weights-only; one-line errors for missing, foreign, truncated files and folders
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise UserError(f"{path} holds no state dict")
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    if not out:
        raise UserError(f"{path} has no entries starting with prefix {prefix!r}")
    return out


def init_from_checkpoint(
    model3d: nn.Module, path: str | os.PathLike, inflation: InflationMode = "central", prefix: str = ""
) -> nn.Module:
    """Load the 2D tokenizer at ``path`` into ``model3d``, inflating its kernels; returns ``model3d``."""
    sd2d = load_state_dict_file(path, prefix)
    model3d.load_state_dict(inflate_state_dict(sd2d, model3d, inflation))
    return model3d
