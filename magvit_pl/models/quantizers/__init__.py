"""Quantizers for the stage-1 tokenizer: VQ (MAGVIT) and lookup-free quantization (MAGVIT-v2).

Both take a latent ``(B, D, t, h, w)`` and return the same :class:`QuantizerOutput`, both expose
``codebook_size``, ``embedding_dim`` and ``embed(indices)``, so the tokenizer can use either.
"""
from magvit_pl.models.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    annealed_weight,
    code_histogram_stats,
    entropy_loss,
    fp32_region,
    histogram_stats,
)
from magvit_pl.models.quantizers.lfq import LookupFreeQuantizer
from magvit_pl.models.quantizers.vq import VectorQuantizer

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "LookupFreeQuantizer",
    "entropy_loss",
    "code_histogram_stats",
    "annealed_weight",
    "fp32_region",
]
