"""Vector quantization with a learned codebook, as in MAGVIT's 3D-VQ.

Papers: VQ-VAE, https://arxiv.org/abs/1711.00937 ; MAGVIT, https://arxiv.org/abs/2212.05199 (the
entropy term follows the official MAGVIT code, google-research/magvit).

Nearest neighbour on squared L2, straight-through gradient, codebook learned by gradient (no EMA, no
l2 normalisation). Loss = commitment·‖sg(q) − z‖² + codebook·‖q − sg(z)‖² + entropy·H, where
H = mean per-latent entropy − entropy of the batch-mean of p = softmax(−dist / temperature).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.checks import check_args
from magvit_pl.models.config import ConfigMixin
from magvit_pl.models.quantizers.base import Quantizer, QuantizerOutput, entropy_loss


class VectorQuantizer(ConfigMixin, Quantizer):
    """Nearest-neighbour vector quantizer with a learned codebook.

    Args:
        codebook_size: Number of codes K (the tokenizer's vocabulary).
        embedding_dim: Dimension D of each code; must equal the encoder's output channels.
        commitment_weight: Weight of ‖sg(q) − z‖² (pulls the encoder towards its code).
        codebook_weight: Weight of ‖q − sg(z)‖² (pulls the codes towards the encoder outputs).
        entropy_weight: Weight of the entropy penalty (0 turns it off and skips its cost).
        entropy_temperature: Temperature T of p = softmax(−dist / T) in the entropy penalty.
        entropy_anneal_steps: Steps over which the entropy weight decays from (1 + entropy_anneal_ratio)
            times its value to its value; 0 keeps it constant.
        entropy_anneal_ratio: Extra entropy weight at step 0, as a multiple of ``entropy_weight``.
        dead_code_restart: Re-initialise codes unused for ``dead_code_threshold`` training steps from
            random encoder outputs of the current batch (off in MAGVIT).
        dead_code_threshold: Training steps without use after which a code counts as dead.
    """

    def __init__(
        self,
        codebook_size: int = 1024,  # K codes
        embedding_dim: int = 256,  # D, the encoder's output channels
        commitment_weight: float = 0.25,  # β on ‖sg(q) − z‖²
        codebook_weight: float = 1.0,  # on ‖q − sg(z)‖²
        entropy_weight: float = 0.1,  # on the entropy penalty
        entropy_temperature: float = 0.01,  # T in softmax(−dist / T)
        entropy_anneal_steps: int = 0,  # 0: constant entropy weight
        entropy_anneal_ratio: float = 0.0,  # extra weight at step 0, × entropy_weight
        dead_code_restart: bool = False,  # restart unused codes from batch latents
        dead_code_threshold: int = 100,  # steps unused before a restart
    ):
        super().__init__()
        check_args("quantizer", locals(), {"codebook_size": ">= 2", "embedding_dim": ">= 1", "commitment_weight": ">= 0",
                                           "codebook_weight": ">= 0", "entropy_weight": ">= 0", "entropy_temperature": "> 0",
                                           "entropy_anneal_steps": ">= 0", "entropy_anneal_ratio": ">= 0", "dead_code_threshold": ">= 1"})
        self.num_codes = codebook_size
        self.embedding_dim = embedding_dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.entropy_anneal_steps = entropy_anneal_steps
        self.entropy_anneal_ratio = entropy_anneal_ratio
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        # uniform fan-in init over the codebook, as the official code (variance scaling 1, fan_in = K)
        bound = math.sqrt(3.0 / codebook_size)
        self.codebook = nn.Parameter(torch.empty(codebook_size, embedding_dim).uniform_(-bound, bound))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("code_age", torch.zeros(codebook_size))

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) → codes (B, D, t, h, w)."""
        return F.embedding(indices, self.codebook).permute(0, 4, 1, 2, 3)

    def _forward(self, z: torch.Tensor, step: int | None) -> QuantizerOutput:
        B, D, T, H, W = z.shape
        assert D == self.embedding_dim, f"latent has {D} channels but the codebook has dim {self.embedding_dim}"
        flat = z.permute(0, 2, 3, 4, 1).reshape(-1, D)  # (N, D), N = B·t·h·w
        if self.training and self.dead_code_restart:
            restarted = self._restart_dead_codes(flat.detach())
        dists = self.squared_distances(flat)  # (N, K)
        indices = dists.argmin(dim=1)  # (N,)
        q = F.embedding(indices, self.codebook.float())  # (N, D)
        terms = {
            "commitment": self.commitment_weight * F.mse_loss(flat, q.detach()),
            "codebook": self.codebook_weight * F.mse_loss(q, flat.detach()),
            "entropy": self.entropy_term(step, lambda: entropy_loss(-dists / self.entropy_temperature)),
        }
        out, counts = self.finish(flat, q, indices, (B, T, H, W, D), terms)
        if self.training and self.dead_code_restart:
            self._age_codes(counts)
            out.metrics["restarted"] = restarted
        return out

    def _indices(self, z: torch.Tensor) -> torch.Tensor:
        B, D, T, H, W = z.shape
        return self.squared_distances(z.permute(0, 2, 3, 4, 1).reshape(-1, D)).argmin(dim=1).view(B, T, H, W)

    def squared_distances(self, flat: torch.Tensor) -> torch.Tensor:
        """‖z − c‖² for every latent row of ``flat`` (N, D) and code c: (N, K), computed in fp32."""
        zf, cb = flat.float(), self.codebook.float()
        return zf.pow(2).sum(1, keepdim=True) - 2 * zf @ cb.t() + cb.pow(2).sum(1)[None]

    @torch.no_grad()
    def _age_codes(self, counts: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # every rank must see the same ages
        self.code_age += 1
        self.code_age[counts > 0] = 0

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Replace codes unused for ``dead_code_threshold`` steps by random rows of ``flat``; returns how
        many. Uses the torch RNG; under DDP rank 0's choice is broadcast so the codebooks stay equal."""
        dead = self.code_age >= self.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return torch.zeros((), device=flat.device)
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        self.codebook[dead] = flat[pick].to(self.codebook.dtype)
        self.code_age[dead] = 0
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.codebook.data, src=0)
        return torch.tensor(float(n), device=flat.device)
