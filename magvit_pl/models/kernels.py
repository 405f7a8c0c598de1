"""Faster CPU kernels for the tokenizer's 3D convolutions and the transformer's linear layers, with the
plain PyTorch ops as the reference.

The maths is the plain one (``F.conv3d``, ``F.avg_pool3d``, ``F.interpolate(mode="nearest")``,
``F.group_norm`` + ``F.silu``); only the way the CPU computes it changes, so outputs and gradients agree
with :func:`reference_kernels` to float rounding (``tests/models/test_kernels.py``). Why each path is
faster (measured with ``benchmarks/tokenizer.py --matched``):

- **channels-last 3D, oneDNN always.** PyTorch sends a batch-1 Conv3d whose ``B·C·T·H`` is at most
  20,480 to its slow im2col kernel (a heuristic tuned for 2D images): at 64² clips that is every conv
  past the first level. :func:`conv3d` calls oneDNN (``aten::mkldnn_convolution``) directly on
  ``(B, T, H, W, C)``-ordered (channels-last 3D) tensors: 2–5× faster for those convs, and faster for
  the others too, since no layout conversion runs around each call. Weights are converted once per
  change (:func:`channels_last_weight`).
- **backward without the slow kernel.** The input gradient is the transposed convolution of the output
  gradient (oneDNN again). The weight gradient uses oneDNN's 3D
  kernel where PyTorch would, and otherwise ``kt`` 2D weight gradients over the clip's frames (one per
  temporal tap; the frames of a channels-last clip are a channels-last 2D batch, no copy).
- **fused inference epilogues.** Without autograd a residual block's last conv adds the shortcut
  inside oneDNN (a post-op: one pass less over the activations) and SiLU runs in place.
- **pooling as strided sums.** On channels-last tensors ``avg_pool3d`` and nearest upsampling's
  backward are slow on CPU (6× here; the latter also converts its gradient to the other layout); a
  2×2×2 mean is the sum of 8 strided views, which is also nearest upsampling's backward (and the
  upsampling, PyTorch's own kernel, the mean's backward).

- **linear + GELU in one oneDNN call (transformer inference).** PyTorch's tanh-approximated GELU is a
  separate pass over the MLP's hidden activations and a slow one on this CPU (~8 ns per element, one
  thread); as a post-op of the matrix product (``mkldnn._linear_pointwise``) it costs a fraction of
  that: 2-3x faster for fc1 + GELU at 1,000+ rows (``benchmarks/sampling.py``). Below
  :data:`FUSED_LINEAR_MIN_ROWS` rows the call's set-up costs more than it saves (the KV-cached
  decoder's one row per clip), so those rows take the plain ops.

Everything else (CUDA, bf16/autocast, other dtypes, odd sizes) runs the reference ops: the fast paths
are for fp32 on CPU, where this project trains its demo. GroupNorm runs PyTorch's own kernel, which
handles channels-last as fast as the default layout; fusing GroupNorm and SiLU with plain PyTorch ops
was measured 2–5× slower than the two kernels, so they stay separate.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CHANNELS_LAST = torch.channels_last_3d
_ONES = [1, 1, 1]
_reference = False


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Inside this context every op is the plain PyTorch one (contiguous ``F.conv3d`` & co.): the
    reference the fast paths are tested against, and what ``FlopCounterMode`` counts (it does not see
    ``aten::mkldnn_convolution``)."""
    global _reference
    before, _reference = _reference, True
    try:
        yield
    finally:
        _reference = before


def fast_cpu(x: Tensor) -> bool:
    """Whether ``x`` takes the fast CPU paths: fp32 on CPU, oneDNN available, no autocast, not disabled."""
    return (
        not _reference
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def to_fast_layout(x: Tensor) -> Tensor:
    """``x`` in channels-last 3D order when it takes the fast paths (a no-op when it already is)."""
    return x.contiguous(memory_format=CHANNELS_LAST) if fast_cpu(x) else x


# ---------------------------------------------------------------- convolution
# oneDNN's fused ops (used by inductor; private, so checked once and never required)
_HAS_POINTWISE = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_convolution_transpose_pointwise")
)


def _onednn_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: Sequence[int]) -> Tensor:
    """Stride-1 3D convolution by oneDNN; channels-last in, channels-last out."""
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), _ONES, _ONES, 1)


def _torch_would_use_onednn(x: Tensor) -> bool:
    """PyTorch's own choice for an fp32 CPU conv (``ConvParams::use_mkldnn`` in ATen): oneDNN when the
    batch is > 1 or ``B·C·T·H`` > 20480, else the slow im2col kernel."""
    B, C, T, H = x.shape[:4]
    return B > 1 or B * C * T * H > 20480


def _framewise_weight_grad(grad_out: Tensor, x: Tensor, kernel: Sequence[int], padding: Sequence[int]) -> Tensor:
    """Weight gradient of a stride-1 3D conv on ONE clip as ``kt`` 2D weight gradients over its frames.

    In channels-last order the clip ``(1, C, T, H, W)`` is the 2D batch ``(T, C, H, W)`` of its frames (a
    view). Temporal tap ``a`` pairs output frame ``t`` with input frame ``t + a − pt``; the frames where
    that falls in the zero padding contribute nothing and are left out, so nothing is padded or copied.
    """
    kt, kh, kw = kernel
    pt, ph, pw = padding
    T, To = x.shape[2], grad_out.shape[2]
    frames, grad_frames = x[0].transpose(0, 1), grad_out[0].transpose(0, 1)  # (T, Ci, H, W), (To, Co, H', W')
    # only the weight's sizes and layout are read
    shape_2d = torch.empty(grad_out.shape[1], x.shape[1], kh, kw, dtype=x.dtype, memory_format=torch.channels_last)
    taps = []
    for a in range(kt):
        lo, hi = max(0, pt - a), min(To, T + pt - a)  # output frames whose input frame exists
        if lo >= hi:
            taps.append(x.new_zeros(shape_2d.shape))
            continue
        taps.append(torch.ops.aten.convolution_backward(
            grad_frames[lo:hi], frames[lo + a - pt : hi + a - pt], shape_2d, None,
            [1, 1], [ph, pw], [1, 1], False, [0, 0], 1, [False, True, False],
        )[1])
    return torch.stack(taps, 2)  # (Co, Ci, kt, kh, kw)


class _WeightCache:
    """The channels-last copy of one conv weight, valid while the weight is unchanged (an optimiser
    step or a load bumps its version counter; a swapped tensor has another storage)."""

    def __init__(self):
        self.key: tuple | None = None
        self.weight: Tensor | None = None

    def get(self, w: Tensor) -> Tensor:
        key = (w._version, w.data_ptr(), w.dtype, tuple(w.shape))
        if key != self.key:
            self.key, self.weight = key, w.detach().contiguous(memory_format=CHANNELS_LAST)
        return self.weight


def _weight_cache(module: torch.nn.Module) -> _WeightCache:
    cache = module.__dict__.get("_channels_last_weights")
    if cache is None:  # kept out of the state dict and the module's attributes
        cache = module.__dict__["_channels_last_weights"] = _WeightCache()
    return cache


def channels_last_weight(module: torch.nn.Module) -> Tensor:
    """``module.weight``, detached, in channels-last order; converted again only when it changed."""
    return _weight_cache(module).get(module.weight)


def _input_grad(grad_out: Tensor, weight: Tensor, padding: Sequence[int]) -> Tensor:
    """d loss / d x of a stride-1 conv: the transposed convolution of ``grad_out`` with the same kernel
    (oneDNN's, which reads the kernel as it is; without it, the convolution with the flipped kernel)."""
    if _HAS_POINTWISE:
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            grad_out, weight, None, list(padding), [0, 0, 0], _ONES, _ONES, 1, "none", [], ""
        )
    flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous(memory_format=CHANNELS_LAST)
    return _onednn_conv(grad_out, flipped, None, [k - 1 - p for k, p in zip(weight.shape[2:], padding)])


class _Conv3dOneDNN(torch.autograd.Function):
    """Stride-1, dilation-1, ungrouped 3D conv: forward and both gradients through oneDNN (see the
    module docstring). Not twice differentiable (the tokenizer never needs it)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int, int],
                weight_cl: Tensor) -> Tensor:
        x = x.contiguous(memory_format=CHANNELS_LAST)
        ctx.save_for_backward(x, weight_cl)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _onednn_conv(x, weight_cl, bias, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=CHANNELS_LAST)
        kernel, padding = weight.shape[2:], ctx.padding
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _input_grad(grad_out, weight, padding)
        if ctx.needs_input_grad[1]:
            if _torch_would_use_onednn(x):
                gw = torch.ops.aten.convolution_backward(
                    grad_out, x, weight, None, _ONES, list(padding), _ONES, False, [0, 0, 0], 1, [False, True, False]
                )[1]
            else:
                gw = _framewise_weight_grad(grad_out, x, kernel, padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, 2, 3, 4))
        return gx, gw, gb, None, None


def conv3d(x: Tensor, conv: torch.nn.Conv3d, padding: tuple[int, int, int]) -> Tensor:
    """``F.conv3d(x, conv.weight, conv.bias, padding=padding)`` for a stride-1 ungrouped ``conv``,
    through oneDNN on the fast path."""
    if not fast_cpu(x):
        return F.conv3d(x, conv.weight, conv.bias, padding=padding)
    return _Conv3dOneDNN.apply(x, conv.weight, conv.bias, tuple(padding), channels_last_weight(conv))


def conv3d_add(x: Tensor, conv: torch.nn.Conv3d, padding: tuple[int, int, int], residual: Tensor) -> Tensor:
    """``conv3d(x, conv, padding) + residual``; without autograd on the fast path the add is a oneDNN post-op."""
    if not fast_cpu(x):
        return conv3d(x, conv, padding) + residual
    if not torch.is_grad_enabled() and _HAS_POINTWISE:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x.contiguous(memory_format=CHANNELS_LAST), residual.contiguous(memory_format=CHANNELS_LAST),
            channels_last_weight(conv), conv.bias, list(padding), _ONES, _ONES, 1, "add", None, None, [], None,
        )
    # the conv keeps its input, not its output, for backward: adding in place is safe under autograd
    return conv3d(x, conv, padding).add_(residual)


# ---------------------------------------------------------------- linear layers (transformer)
_HAS_LINEAR_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

#: Fewest rows for the fused linear + GELU: measured (one thread, CPU clock) 0.18 vs 0.17 ms at 64 rows of
#: 128 → 512, 0.65 vs 0.47 ms at 258 rows, 6.4 vs 2.3 ms at 1,032; at 16 rows and fewer the fused call is slower.
FUSED_LINEAR_MIN_ROWS = 64


def linear_gelu(x: Tensor, fc: torch.nn.Linear) -> Tensor:
    """``F.gelu(fc(x), approximate="tanh")``; one oneDNN call without autograd on the fast path (the
    fused op has no backward), for at least :data:`FUSED_LINEAR_MIN_ROWS` rows and a ``fc`` without hooks
    (FSDP and DeepSpeed ZeRO-3 gather weights in module hooks, which calling the op directly would skip)."""
    if (
        _HAS_LINEAR_POINTWISE and fast_cpu(x) and not torch.is_grad_enabled() and fc.bias is not None
        and x.numel() >= FUSED_LINEAR_MIN_ROWS * x.shape[-1] and not (fc._forward_hooks or fc._forward_pre_hooks)
    ):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), fc.weight, fc.bias, "gelu", [], "tanh")
    return F.gelu(fc(x), approximate="tanh")


# ---------------------------------------------------------------- normalisation
def norm_silu(norm: torch.nn.Module, x: Tensor) -> Tensor:
    """``F.silu(norm(x))``; the SiLU runs in place when nothing needs the normalised tensor for backward and
    the normalised tensor is a new one (an identity norm, ``norm_groups=0``, hands back ``x`` itself, which the
    caller still needs for the residual)."""
    h = norm(x)
    if h is not x and fast_cpu(x) and not (torch.is_grad_enabled() and h.requires_grad):
        return F.silu(h, inplace=True)
    return F.silu(h)


# ---------------------------------------------------------------- pooling and upsampling
def _sum_pool(x: Tensor, k: tuple[int, int, int]) -> Tensor:
    """Sum over the ``k`` windows (each size divisible by its factor): the sum of the strided views."""
    kt, kh, kw = k
    views = [x[:, :, a::kt, b::kh, c::kw] for a in range(kt) for b in range(kh) for c in range(kw)]
    out = views[0].clone() if len(views) == 1 else views[0] + views[1]
    for v in views[2:]:
        out.add_(v)
    return out


class _AvgPool(torch.autograd.Function):
    """Mean over non-overlapping ``k`` windows; backward spreads each gradient evenly (differentiable again)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: tuple[int, int, int]) -> Tensor:
        ctx.k = k
        n = k[0] * k[1] * k[2]
        return _sum_pool(x.contiguous(memory_format=CHANNELS_LAST), k).mul_(1.0 / n)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        n = ctx.k[0] * ctx.k[1] * ctx.k[2]
        return _NearestUp.apply(grad_out, ctx.k) * (1.0 / n), None


class _NearestUp(torch.autograd.Function):
    """Nearest-neighbour upsampling by integer factors ``k``; backward sums each window (differentiable again)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: tuple[int, int, int]) -> Tensor:
        ctx.k = k
        B, C, T, H, W = x.shape
        x = x.contiguous(memory_format=CHANNELS_LAST)  # upsample_nearest3d keeps channels-last in forward
        return F.interpolate(x, size=(T * k[0], H * k[1], W * k[2]), mode="nearest")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        n = ctx.k[0] * ctx.k[1] * ctx.k[2]
        return _AvgPool.apply(grad_out, ctx.k) * float(n), None


def avg_pool(x: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """``F.avg_pool3d(x, kernel, kernel, ceil_mode=True)``; on the fast path, for channels-last inputs whose
    sizes the kernel divides, the mean of the strided views (``avg_pool3d`` is slow on channels-last)."""
    if (
        not fast_cpu(x)
        or not x.is_contiguous(memory_format=CHANNELS_LAST)
        or any(n % k for n, k in zip(x.shape[2:], kernel))
    ):
        return F.avg_pool3d(x, kernel, kernel, ceil_mode=True)
    return _AvgPool.apply(x, tuple(kernel))


def nearest_up(x: Tensor, factors: tuple[int, int, int]) -> Tensor:
    """``F.interpolate(x, scale_factor=factors, mode="nearest")`` for integer factors; on the fast path, for
    channels-last inputs, one broadcast copy (and a strided-sum backward: the reference's converts layouts)."""
    if not fast_cpu(x) or not x.is_contiguous(memory_format=CHANNELS_LAST):
        B, C, T, H, W = x.shape
        return F.interpolate(x, size=(T * factors[0], H * factors[1], W * factors[2]), mode="nearest")
    return _NearestUp.apply(x, tuple(factors))
