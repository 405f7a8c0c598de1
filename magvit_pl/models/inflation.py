"""Initialise a 3D tokenizer run from a 2D (per-frame) one by inflating its conv kernels, and Flax-style init.

MAGVIT §3.1: "central inflation" puts each 2D kernel in the temporal centre slice of the 3D kernel and
zeros elsewhere (in a causal 3D model, the last slice: its present frame), so the 3D network starts
out computing the 2D one frame by frame; "average"
inflation spreads it as 2D / kt over all kt slices (the I3D recipe). Parameters whose shapes already
match (norms, biases, 1×1×1 convs, the codebook) are copied.

The official code (google-research/magvit, ``train_lib/vqgan_train_lib.py:217-239``,
``init_from_pretrained_checkpoint``) inflates three parts of the 2D run: the generator, the
discriminator and the generator's EMA, each from its own 2D counterpart (the EMA from the 2D EMA, not
from the 2D generator); a parameter it cannot inflate keeps its fresh 3D value with a warning
(``vqgan_train_lib.py:156-158``). :func:`load_init_parts` reads those parts from a
:class:`~magvit_pl.lit.tokenizer.TokenizerModule` checkpoint; :func:`inflate_state_dict` inflates one.

The 2D model is a :class:`~magvit_pl.models.tokenizer.VQTokenizer` with ``temporal_kernel_size=1``
(kernels 1×3×3) and the 2D discriminator a
:class:`~magvit_pl.models.discriminator.StyleGANDiscriminator3D` with ``temporal_kernel_size=1``, so
their keys are those of the 3D models.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
import torch.nn as nn

from magvit_pl.run.checkpoint import load_checkpoint
from magvit_pl.run.errors import UserError

log = logging.getLogger(__name__)

InflationMode = Literal["central", "average"]
# training counters of the quantizers: a new run starts them afresh
_FRESH_BUFFERS = ("num_steps", "code_age")
# prefixes of a TokenizerModule checkpoint's state dict
GENERATOR_PREFIX, EMA_PREFIX, DISCRIMINATOR_PREFIX = "tokenizer.", "ema_tokenizer.", "discriminator."


def inflate_kernel(w2d: torch.Tensor, kt: int, mode: InflationMode = "central", causal: bool = False) -> torch.Tensor:
    """(O, I, 1, kh, kw) → (O, I, kt, kh, kw). ``causal``: the kernel is a causal conv's, whose present
    frame is its last slice, so "central" inflation fills that slice instead of the middle one."""
    if w2d.shape[2] != 1:
        raise UserError(f"can only inflate kernels with temporal size 1, got shape {tuple(w2d.shape)}")
    O, I, _, kh, kw = w2d.shape
    if mode == "central":
        w3d = w2d.new_zeros(O, I, kt, kh, kw)
        w3d[:, :, kt - 1 if causal else kt // 2] = w2d[:, :, 0]
        return w3d
    if mode == "average":
        return w2d.expand(O, I, kt, kh, kw) / kt
    raise UserError(f"inflation must be 'central' or 'average'; got {mode!r}")


def inflate_state_dict(
    sd2d: Mapping[str, torch.Tensor], model3d: nn.Module, mode: InflationMode = "central", strict: bool = True,
    what: str = "the 3D model",
) -> dict[str, torch.Tensor]:
    """A state dict for ``model3d`` from the 2D state dict ``sd2d`` (same keys; 5D conv kernels with
    temporal size 1 are inflated, everything else is copied when its shape matches).

    ``strict``: every entry must be copied or inflated (a one-line error names the first that cannot);
    otherwise an entry that is missing or cannot be inflated keeps ``model3d``'s value, with a warning,
    as the official code does (used for the discriminator, whose Dense input size depends on the clip).
    """
    target = model3d.state_dict()
    missing = sorted(set(target) - set(sd2d))
    if missing and strict:
        raise UserError(f"the 2D checkpoint lacks {len(missing)} of {what}'s entries, e.g. {missing[0]!r}")
    out: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    for key, ref in target.items():
        src = sd2d.get(key)
        if key.rsplit(".", 1)[-1] in _FRESH_BUFFERS:
            out[key] = ref.clone()
        elif src is None:
            out[key] = ref.clone()
            kept.append(key)
        elif src.shape == ref.shape:
            out[key] = src.to(ref.dtype).clone()
        elif src.dim() == 5 and src.shape[2] == 1 and src.shape[:2] + src.shape[3:] == ref.shape[:2] + ref.shape[3:]:
            out[key] = inflate_kernel(src, ref.shape[2], mode, causal=_is_causal_conv(model3d, key)).to(ref.dtype).contiguous()
        elif strict:
            raise UserError(
                f"cannot inflate {key!r}: 2D shape {tuple(src.shape)} does not fit 3D shape {tuple(ref.shape)}"
            )
        else:
            out[key] = ref.clone()
            kept.append(key)
    if kept:
        log.warning("init_from: %d entr%s of %s kept their fresh values (absent from or not inflatable from the 2D "
                    "checkpoint): %s", len(kept), "y" if len(kept) == 1 else "ies", what, ", ".join(kept))
    return out


def _is_causal_conv(model: nn.Module, key: str) -> bool:
    """Whether the parameter ``key`` of ``model`` belongs to a causal conv (``SameConv3d(causal=True)``)."""
    owner, _, _ = key.rpartition(".")
    try:
        return bool(getattr(model.get_submodule(owner), "causal", False))
    except AttributeError:
        return False


@dataclass
class InitParts:
    """The state dicts a run is initialised from: the generator, its EMA and the discriminator (None when
    the file has none; ``ema`` None means: use the generator's)."""

    generator: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    discriminator: dict[str, torch.Tensor] | None = None


def _with_prefix(sd: Mapping[str, object], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def load_init_parts(path: str | os.PathLike, prefix: str = "") -> InitParts:
    """Read the parts to initialise from at ``path``.

    * ``prefix`` given (e.g. ``'ema_tokenizer.'``): a tokenizer state dict under that prefix, used for the
      generator and its EMA; no discriminator.
    * A :class:`~magvit_pl.lit.tokenizer.TokenizerModule` checkpoint (entries under ``tokenizer.``): the
      generator from ``tokenizer.``, the EMA from ``ema_tokenizer.``, the discriminator from ``discriminator.``.
    * Otherwise a plain tokenizer state dict: generator and EMA from it; no discriminator.
    """
    obj = load_checkpoint(path)  # weights-only; one-line errors for missing, foreign, truncated files and folders
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise UserError(f"{path} holds no state dict")
    if prefix:
        gen = _with_prefix(sd, prefix)
        if not gen:
            raise UserError(f"{path} has no entries starting with prefix {prefix!r}")
        return InitParts(generator=gen)
    gen = _with_prefix(sd, GENERATOR_PREFIX)
    if gen:
        return InitParts(generator=gen, ema=_with_prefix(sd, EMA_PREFIX) or None,
                         discriminator=_with_prefix(sd, DISCRIMINATOR_PREFIX) or None)
    plain = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not plain:
        raise UserError(f"{path} holds no tensors")
    return InitParts(generator=plain)


def init_run_from_checkpoint(path: str | os.PathLike, tokenizer: nn.Module, ema: nn.Module, discriminator: nn.Module | None = None,
                             mode: InflationMode = "central", prefix: str = "") -> list[str]:
    """Initialise a tokenizer run from ``path`` (see :func:`load_init_parts`), inflating 2D kernels: ``tokenizer``
    from its generator, ``ema`` from its EMA (or its generator when it has none) and ``discriminator``, when
    given and the file has one, from its discriminator (entries that do not fit keep their values). Returns the
    parts initialised, e.g. ``['tokenizer', "ema (from the checkpoint's EMA)", 'discriminator']``."""
    parts = load_init_parts(path, prefix=prefix)
    tokenizer.load_state_dict(inflate_state_dict(parts.generator, tokenizer, mode, what="the tokenizer"))
    src = parts.ema if parts.ema is not None else parts.generator
    ema.load_state_dict(inflate_state_dict(src, ema, mode, what="the EMA tokenizer"))
    done = ["tokenizer", "ema (from the checkpoint's EMA)" if parts.ema is not None else "ema (from its tokenizer)"]
    if discriminator is not None and parts.discriminator is not None:
        discriminator.load_state_dict(inflate_state_dict(parts.discriminator, discriminator, mode, strict=False, what="the discriminator"))
        done.append("discriminator")
    return done


def load_state_dict_file(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read a plain state dict or a Lightning checkpoint (its ``state_dict``), keeping the entries that
    start with ``prefix`` (e.g. ``'tokenizer.'``), with the prefix removed."""
    obj = load_checkpoint(path)  # weights-only; one-line errors for missing, foreign, truncated files and folders
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise UserError(f"{path} holds no state dict")
    out = _with_prefix(sd, prefix)
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


# ------------------------------------------------------------------------------------ Flax-style init
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's default kernel init, ``variance_scaling(1, 'fan_in', 'truncated_normal')``: a normal truncated
    at ±2σ, rescaled so that the variance is 1 / fan_in (fan_in = input channels × kernel volume)."""
    fan_in = weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]
    # std of a unit normal truncated to [-2, 2] is 0.87962566103423978: divide it out
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def flax_style_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every conv and linear layer of ``module`` as Flax does by default (lecun-normal kernels,
    zero biases), the initialisation of the official tokenizer (``model_utils.Conv`` is a Flax ``nn.Conv``,
    enc_dec_3dcnn.py:100-104). Norm layers (scale 1, bias 0) and the codebook (already the official
    fan-in uniform) are left as they are. Returns ``module``."""
    for mod in module.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            lecun_normal_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    return module
