"""Losses of MAGVIT's tokenizer GAN, in plain torch: L2 reconstruction, non-saturating GAN, R1, LeCam, perceptual.

Conventions follow the official code (google-research/magvit, videogvt/train_lib/losses.py and
trainers/vqgan_trainer.py); where it departs from the papers it cites, both are documented.

Pixel range and loss balance. Models here see pixels in [-1, 1]; the official code trains on [0, 1]
(``zero_centering = False`` in every released config) and its loss weights were tuned there. Two terms
depend on the pixel scale: an L2 distance of pixels is 4x larger in [-1, 1] (differences double), and
an R1 penalty, a squared gradient with respect to the pixels, is 4x smaller (the gradient halves). With
``unit_range=True`` (the default of :func:`reconstruction_loss`, :func:`r1_penalty` and of the
tokenizer module's ``unit_range_losses``) both are computed in [0, 1] units, i.e. exactly the values
the official code computes on the same clips, so the official weights (L2 1, R1 cost 10) give the
official balance. ``unit_range=False`` computes them on the model's [-1, 1] pixels (L2 4x, R1 1/4x the
official values). The GAN, LeCam and perceptual terms do not depend on the pixel scale (the perceptual
network is fed [0, 1] frames either way).
"""
from __future__ import annotations

import os
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.models.lpips import LPIPS
from magvit_pl.models.resnet import ResNet50
from magvit_pl.run.checkpoint import load_checkpoint
from magvit_pl.run.errors import MissingFileError, UserError, first_line
from magvit_pl.data.transforms import to_frames


# ---------------------------------------------------------------- GAN losses
def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(−D(fake)) = −log sigmoid(D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_gan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss: mean softplus(−D(real)) + mean softplus(D(fake))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


# [-1, 1] model pixels per [0, 1] official pixel: x = 2u - 1
MODEL_UNITS_PER_UNIT_PIXEL = 2.0


def reconstruction_loss(recon: torch.Tensor, video: torch.Tensor, unit_range: bool = True) -> torch.Tensor:
    """Mean squared error of ``recon`` and ``video`` (both in [-1, 1]).

    ``unit_range``: in [0, 1] pixel units, as the official ``l2_loss`` on its [0, 1] clips (the [-1, 1]
    value divided by 4); else in the model's [-1, 1] units (see the module docstring).
    """
    mse = F.mse_loss(recon.float(), video.float())
    return mse / MODEL_UNITS_PER_UNIT_PIXEL**2 if unit_range else mse


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor, cost: float = 10.0, unit_range: bool = True) -> torch.Tensor:
    """R1 gradient penalty on real inputs: ``cost · mean_b ‖∇_x D(x_b)‖²``.

    This is the official MAGVIT scaling (``r1_gradient_penalty``: squared gradient summed per sample,
    batch mean, times ``grad_penalty_cost`` = 10), with no factor 1/2; StyleGAN writes γ/2 · E‖∇‖², so
    cost = 10 here equals γ = 20 there. ``real_inputs`` must have ``requires_grad`` set before the
    discriminator saw them. The graph is kept, so the penalty can be back-propagated to D. Samples must
    be independent in D (no batch norm), which holds for the MAGVIT discriminator.

    ``unit_range``: the gradient is taken with respect to [0, 1] pixels u = (x + 1) / 2, as the official
    code's inputs: ∇_u = 2·∇_x, so the penalty is 4x the one with respect to the [-1, 1] inputs x.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    penalty = cost * grad.float().pow(2).flatten(1).sum(1).mean()
    return penalty * MODEL_UNITS_PER_UNIT_PIXEL**2 if unit_range else penalty


LeCamMode = Literal["batch_mean", "per_sample"]
LECAM_MODES: tuple[str, ...] = ("batch_mean", "per_sample")


class LeCamEMA(nn.Module):
    """LeCam regularisation (Tseng et al. 2021, https://arxiv.org/abs/2104.03310) with EMA anchors.

    ``loss = mean relu(D(real) − α_fake)² + mean relu(α_real − D(fake))²``, where α are exponential
    moving averages of the mean real / fake logits, kept as buffers (they are saved in checkpoints and
    restored on resume). The relu follows the LeCam authors' code and the MAGVIT code.

    Args:
        decay: EMA decay of the anchors (MAGVIT: 0.999, the generator EMA decay).
        mode: ``batch_mean``: the penalty on the batch-mean logits, as the official MAGVIT trainer
            (``lecam_reg(real_pred, fake_pred, ...)`` with ``real_pred = mean(real_logit)``,
            vqgan_trainer.py:267-274); ``per_sample``: on each sample's logit, as the LeCam authors' code.
    """

    def __init__(self, decay: float = 0.999, mode: LeCamMode = "batch_mean"):
        super().__init__()
        if mode not in LECAM_MODES:
            raise UserError(f"LeCam mode must be one of {', '.join(LECAM_MODES)}; got {mode!r}")
        self.decay = decay
        self.mode = mode
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real, fake = real_logits.float(), fake_logits.float()
        if self.mode == "batch_mean":
            real, fake = real.mean(), fake.mean()
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()

    @torch.no_grad()
    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """Move the anchors towards this batch's mean logits (averaged over DDP ranks)."""
        means = torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(means)
            means /= dist.get_world_size()
        self.ema_real.mul_(self.decay).add_((1 - self.decay) * means[0])
        self.ema_fake.mul_(self.decay).add_((1 - self.decay) * means[1])

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`loss` (the anchors are not updated)."""
        return self.loss(real_logits, fake_logits)


# ---------------------------------------------------------------- perceptual loss
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Frozen image network comparing real and reconstructed frames (all frames by default).

    Backbones: ``resnet50_logits`` (MAGVIT: ImageNet ResNet-50 logits, frames resized bilinearly to
    224, mean squared difference of the logits), ``lpips_vgg16`` (LPIPS distance, mean over frames) or
    ``none`` (always 0). The network is frozen, always in eval mode, and its weights are left out of this
    module's state dict (they come from ``weights_path``, not from checkpoints).

    The official trainer flattens time into the batch (``flatten_t_dim``, vqgan_trainer.py:296-297), so
    every frame of every clip is scored: ``num_frames=None`` (the default). A smaller ``num_frames``
    scores that many random frames per clip (cheaper, noisier).

    Args:
        backbone: Which network: resnet50_logits, lpips_vgg16 or none.
        weights_path: File with the network's weights. resnet50_logits: a torchvision-format
            ``resnet50`` state dict (read with ``torch.load(weights_only=True)``), required.
            lpips_vgg16: passed to LPIPS (None = the fetched cache file).
        num_frames: Frames per clip scored (drawn at random, the same ones for real and recon);
            None or 0 scores every frame (official).
        input_norm: How resnet50_logits sees the frames: ``unit`` feeds [0, 1] pixels with no mean/std,
            as the official code (pretrained_model_utils.get_pretrained_embs resizes to 224 and applies the
            network); ``imagenet`` subtracts the ImageNet mean and divides by its std, what torchvision's
            own ResNet-50 weights expect.
    """

    def __init__(
        self,
        backbone: Literal["lpips_vgg16", "resnet50_logits", "none"] = "none",
        weights_path: str | None = None,
        num_frames: int | None = None,
        input_norm: Literal["unit", "imagenet"] = "unit",
    ):
        super().__init__()
        if backbone not in ("lpips_vgg16", "resnet50_logits", "none"):
            raise UserError(f"perceptual backbone must be lpips_vgg16, resnet50_logits or none; got {backbone!r}")
        if input_norm not in ("unit", "imagenet"):
            raise UserError(f"perceptual input_norm must be unit or imagenet; got {input_norm!r}")
        self.backbone = backbone
        self.weights_path = weights_path
        self.num_frames = num_frames
        self.input_norm = input_norm
        self.net: nn.Module | None = None
        self._loaded = backbone != "resnet50_logits"
        if backbone == "resnet50_logits":
            if weights_path is None:
                raise UserError(
                    "perceptual backbone resnet50_logits needs weights_path (a torchvision resnet50 state dict)"
                )
            if not os.path.isfile(weights_path):
                raise MissingFileError(f"ResNet-50 weights not found: {weights_path}")
            self.net = ResNet50()
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        elif backbone == "lpips_vgg16":
            self.net = LPIPS(weights_path)
        if self.net is not None:
            self.net.requires_grad_(False)
            self.net.eval()
        self.register_state_dict_post_hook(_drop_net_keys)
        self.register_load_state_dict_pre_hook(_keep_net_weights)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        if self.net is not None:
            self.net.eval()  # frozen: BatchNorm statistics never update
        return self

    def load_weights(self) -> None:
        """Read the ResNet-50 weights (done on the first forward if not called before)."""
        if self._loaded:
            return
        sd = load_checkpoint(self.weights_path)  # weights-only; one-line errors for text, truncated or pickled files
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        try:
            self.net.load_state_dict(sd)
        except (RuntimeError, AttributeError, TypeError) as err:
            raise UserError(f"{self.weights_path} is not a torchvision resnet50 state dict: {first_line(err)}") from None
        self._loaded = True

    def forward(self, real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Perceptual distance of videos ``real`` and ``recon`` (B, 3, T, H, W) in [-1, 1]: a scalar."""
        if self.net is None:
            return recon.new_zeros((), dtype=torch.float32)
        self.load_weights()
        x, y = self._frames(real, recon)  # (N, 3, H, W) each
        if self.backbone == "lpips_vgg16":
            return self.net(x, y).float().mean()
        return F.mse_loss(self._logits(x).float(), self._logits(y).float())

    def _frames(self, real: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same random ``num_frames`` frames of each clip from both videos, as (B·n, 3, H, W)."""
        B, C, T, H, W = real.shape
        n = T if not self.num_frames else min(self.num_frames, T)
        if n < T:
            idx = torch.rand(B, T, device=real.device).argsort(dim=1)[:, :n]  # (B, n) distinct frames
        else:
            idx = torch.arange(T, device=real.device).expand(B, T)
        gather = idx.view(B, 1, n, 1, 1).expand(B, C, n, H, W)
        return to_frames(torch.gather(real, 2, gather)), to_frames(torch.gather(recon, 2, gather))  # (B·n, C, H, W) each

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] frames (N, 3, H, W) → ResNet-50 logits (N, 1000), fed [0, 1] (``unit``) or ImageNet-normalised."""
        if x.shape[-2:] != (224, 224):
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=x.shape[-1] > 224)
        x = (x + 1) / 2
        if self.input_norm == "imagenet":
            x = (x - self.mean) / self.std
        return self.net(x)


def _drop_net_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: leave the frozen backbone out of checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
        del state_dict[key]


def _keep_net_weights(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a checkpoint has no backbone entries; keep the current weights."""
    if module.net is not None:
        for key, value in module.net.state_dict().items():
            state_dict.setdefault(prefix + "net." + key, value)
