"""Scaled dot-product attention with a backend switch: torch SDPA (default), xformers, or plain math.

All backends take and return ``(B, nh, L, hs)`` tensors and agree to float rounding:

- ``sdpa``: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
  kernels where torch has them, including on CPU).
- ``xformers``: ``xformers.ops.memory_efficient_attention``; used only when xformers imports and the
  tensors are on CUDA. Anything else falls back to ``sdpa`` and logs the reason once; so does a call for
  which the installed xformers has no kernel (a wheel built for another torch/CUDA loads without its
  CUDA extensions, seen with xformers 0.0.35 on torch 2.11+cu130): :func:`xformers_unavailable` probes.
- ``math``: the readable reference, ``softmax(Q Kᵀ / √hs) V``.

Masks follow SDPA's convention: a boolean mask is True where a query may attend, a float mask is
added to the scores; either broadcasts to ``(B, nh, Lq, Lk)``. ``causal=True`` aligns the causal
triangle to the bottom right, so a short query block (the newest tokens) attends to every cached key
before it: that is the KV-cache path the autoregressive decoder uses (see :class:`KVCache`).
"""
from __future__ import annotations

import logging
import math as _math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from magvit_pl.run.errors import UserError

Backend = Literal["sdpa", "xformers", "math"]
BACKENDS: tuple[str, ...] = ("sdpa", "xformers", "math")

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("attention backend 'xformers' unavailable (%s); using 'sdpa'", reason)


def _xformers_ops():
    """Import xformers lazily; None when it is not installed (or fails to import)."""
    try:
        import xformers.ops as xops  # noqa: PLC0415  (optional dependency, imported on demand)
    except Exception:  # ImportError, or a broken build raising at import time
        return None
    return xops


def xformers_unavailable(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """Why xformers cannot run attention on ``device`` for ``dtype`` inputs, or None when a probe call works.

    An installed xformers can still lack kernels: a wheel built for another torch or CUDA loads without its
    C++/CUDA extensions, and its remaining kernels take only some dtypes."""
    if torch.device(device).type != "cuda":
        return f"tensors are on {torch.device(device).type}, xformers needs CUDA"
    xops = _xformers_ops()
    if xops is None:
        return "xformers is not installed"
    probe = torch.zeros(1, 8, 1, 32, device=device, dtype=dtype)
    try:
        xops.memory_efficient_attention(probe, probe, probe)
    except NotImplementedError as err:
        return f"xformers has no kernel for {str(dtype).removeprefix('torch.')} inputs here ({_first_line(err)})"
    return None


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Return the backend that will actually run for ``name`` on ``device`` (the run log prints it).

    Args:
        name: requested backend, one of ``sdpa``, ``xformers``, ``math``.
        device: device of the attention inputs.
    """
    if name not in BACKENDS:
        raise UserError(f"attention_backend={name!r} is not known; choose one of {', '.join(BACKENDS)}")
    if name != "xformers":
        return name
    if torch.device(device).type != "cuda":
        _warn_once(f"tensors are on {torch.device(device).type}, xformers needs CUDA")
        return "sdpa"
    if _xformers_ops() is None:
        _warn_once("xformers is not installed; pip install 'magvit-pl[xformers]' (the build matching your torch: README, Install)")
        return "sdpa"
    return "xformers"


def causal_mask(lq: int, lk: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(lq, lk)`` mask, True where query ``i`` may see key ``j``: ``j <= i + (lk - lq)``.

    The triangle is aligned to the bottom right: the ``lq`` queries are the last ``lq`` positions of
    the ``lk`` keys (a prefill with an empty cache is the usual square lower triangle).
    """
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    backend: Backend = "sdpa",
    dropout_p: float = 0.0,
    mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """Multi-head attention on ``(B, nh, L, hs)`` tensors; returns ``(B, nh, Lq, hs)``.

    Args:
        q: queries ``(B, nh, Lq, hs)``.
        k: keys ``(B, nh, Lk, hs)``.
        v: values ``(B, nh, Lk, hs)``.
        backend: ``sdpa`` | ``xformers`` | ``math`` (see the module docstring for fallbacks).
        dropout_p: dropout on the attention probabilities; pass 0.0 at evaluation.
        mask: optional boolean (True = attend) or additive float mask, broadcastable to
            ``(B, nh, Lq, Lk)``.
        causal: restrict each query to keys at or before its position (bottom-right aligned).
    """
    backend = resolve_backend(backend, q.device)
    if backend == "xformers" and mask is not None:
        _warn_once("an explicit attention mask is not supported on the xformers path")
        backend = "sdpa"
    if backend == "xformers":
        try:
            return _xformers_attention(q, k, v, dropout_p, causal)
        except NotImplementedError as err:  # installed, but no kernel for these inputs (e.g. a build for another torch)
            _warn_once(f"xformers has no kernel for {str(q.dtype).removeprefix('torch.')} inputs here: {_first_line(err)}")
    if backend == "math":
        return math_attention(q, k, v, dropout_p=dropout_p, mask=mask, causal=causal)
    lq, lk = q.shape[-2], k.shape[-2]
    if causal and lq != lk:
        # SDPA's is_causal aligns the triangle top-left; spell out the bottom-right mask instead.
        cm = causal_mask(lq, lk, q.device)
        mask = cm if mask is None else _combine(mask, cm)
        causal = False
    if causal and mask is not None:
        mask = _combine(mask, causal_mask(lq, lk, q.device))
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """Reference attention ``softmax(Q Kᵀ / √hs + mask) V``, written out; same arguments as :func:`attention`."""
    hs = q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * (1.0 / _math.sqrt(hs))  # (B, nh, Lq, Lk)
    if causal:
        att = att.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else att + mask
    att = torch.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, Lq, hs)


def _combine(mask: Tensor, cm: Tensor) -> Tensor:
    """Intersect a user mask (bool or additive float) with a boolean causal mask."""
    if mask.dtype == torch.bool:
        return mask & cm
    return mask.masked_fill(~cm, float("-inf"))


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, causal: bool) -> Tensor:
    xops = _xformers_ops()
    bias = None
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        bias = xops.LowerTriangularMask() if lq == lk else xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    # xformers wants (B, L, nh, hs)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    y = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)  # (B, Lq, nh, hs)
    return y.transpose(1, 2)  # (B, nh, Lq, hs)


class KVCache:
    """Key/value buffers of every layer for incremental (causal) decoding.

    ``length`` counts the positions already stored. A forward pass over ``L`` new tokens writes their
    keys and values at ``[length, length + L)`` in every layer, and the model advances ``length`` once
    all layers have run (:meth:`advance`).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, num_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``(B, nh, L, hs)`` new keys/values of ``layer``; return all keys/values so far."""
        end = self.length + k.shape[-2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, nh, end, hs)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as stored (called once per forward pass, after every layer)."""
        self.length += n
