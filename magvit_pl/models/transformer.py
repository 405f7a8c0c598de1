"""The stage-2 masked token transformer: a BERT encoder over ``[task][class][video tokens]``.

MAGVIT (Yu et al., CVPR 2023, arXiv 2212.05199) §3.2 uses BERT as in MaskGIT: learned absolute
positions, embedding LayerNorm + dropout, post-LayerNorm blocks (LN after each residual add, eps
1e-12), GELU MLPs, and an MLM head ``Dense → GELU → LN → tied word embedding + bias`` whose logits are
restricted to the ``codebook_size`` visual codes. GELU is the tanh approximation, as in BERT and the
official JAX code (``jax.nn.gelu``). ``pre_norm=True`` switches to pre-LN blocks plus a final LN.

The same module runs causally (``causal=True``, optionally with a :class:`KVCache`) for the
autoregressive baseline decoder in ``magvit_pl.sampling``; MAGVIT itself never uses that mode.

Cost (``benchmarks/sampling.py --demo``): ``forward(tokens, logits_at=mask)`` computes the logits of the
masked positions only, and after the last block's attention only their rows go on (projection, MLP,
norms, the head): COMMIT decoding needs the logits of the positions it still predicts, about two thirds
of them over a 12-step cosine schedule. Residual adds run in place on the new branch output (no extra
tensor), and on CPU without autograd fc1 and the head's dense layer take their GELU as a oneDNN post-op
(:func:`magvit_pl.models.kernels.linear_gelu`). Same maths: outputs equal the plain ops to float rounding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from magvit_pl.run.errors import UserError
from magvit_pl.models import kernels
from magvit_pl.models.attention import Backend, KVCache, attention


PositionEmbedding = Literal["learned", "factorized"]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape and regularisation of the transformer (defaults: MAGVIT-B).

    Args:
        hidden_dim: Width of the residual stream (B: 768, L: 1024).
        num_layers: Number of transformer blocks (B: 12, L: 24).
        num_heads: Attention heads per block (B: 12, L: 16).
        mlp_dim: Hidden width of each block's MLP (B: 3072, L: 4096).
        dropout: Dropout on the embeddings and on each residual branch.
        attention_dropout: Dropout on the attention probabilities.
        layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
        pre_norm: Pre-LN blocks with a final LN instead of BERT's post-LN.
        attention_backend: ``sdpa`` (default), ``xformers`` (CUDA + xformers only, otherwise sdpa with a
            logged notice) or ``math`` (reference).
        position_embedding: ``learned`` (the paper: one learned vector per sequence position) or
            ``factorized``: the video tokens' position is the sum of learned time, row and column vectors
            (``T + H + W`` vectors instead of ``T·H·W``; the prefix keeps one per position). Factorized
            positions share what is learned across the grid, so a model trained for few steps can already
            copy and move content in space and time; it needs the token ``grid``.
    """

    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pre_norm: bool = False
    attention_backend: Backend = "sdpa"
    position_embedding: PositionEmbedding = "learned"


POSITION_EMBEDDINGS = get_args(PositionEmbedding)


#: Named sizes (layers / width / heads / MLP width) for code and benchmarks; the paper YAMLs
#: (configs/paper/mtm_B.yaml, the mtm_L.yaml overlay) hold the same B and L, pinned by tests/test_cli.py.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, hidden_dim=64, num_heads=2, mlp_dim=256),
    "small": dict(num_layers=4, hidden_dim=128, num_heads=4, mlp_dim=512),
    "B": dict(num_layers=12, hidden_dim=768, num_heads=12, mlp_dim=3072),
    "L": dict(num_layers=24, hidden_dim=1024, num_heads=16, mlp_dim=4096),
}


def init_bert_(module: nn.Module, std: float = 0.02) -> None:
    """BERT init: weights and embeddings ~ N(0, std²) truncated at ±2·std; biases 0; LN (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and a switchable kernel."""

    def __init__(self, hidden_dim: int, num_heads: int, attention_dropout: float, backend: Backend):
        super().__init__()
        if hidden_dim % num_heads:
            raise UserError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)
        self.attention_dropout = attention_dropout
        self.backend = backend

    def forward(self, x: Tensor, causal: bool = False, kv_cache: KVCache | None = None, layer: int = 0,
                rows: Tensor | None = None) -> Tensor:
        """``proj(attention(x))`` ``(B, L, C)``; with ``rows`` ``(B, L)`` bool, the rows where it is True
        only, ``(M, C)`` in row-major order (every position is still a key and a value)."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        hs = C // self.num_heads
        q, k, v = (t.view(B, L, self.num_heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, cached + L, hs)
        p = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, backend=self.backend, dropout_p=p, causal=causal)  # (B, nh, L, hs)
        y = y.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.proj(y if rows is None else y[rows])  # (B, L, C) or (M, C)


class Block(nn.Module):
    """One transformer layer; post-LN (BERT) by default, pre-LN when ``pre_norm``."""

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        layer_norm_eps: float,
        pre_norm: bool,
        backend: Backend,
    ):
        super().__init__()
        self.attn = SelfAttention(hidden_dim, num_heads, attention_dropout, backend)
        self.ln1 = nn.LayerNorm(hidden_dim, eps=layer_norm_eps)
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)
        self.ln2 = nn.LayerNorm(hidden_dim, eps=layer_norm_eps)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def mlp(self, x: Tensor) -> Tensor:
        return self.fc2(kernels.linear_gelu(x, self.fc1))

    def forward(self, x: Tensor, causal: bool = False, kv_cache: KVCache | None = None, layer: int = 0,
                rows: Tensor | None = None) -> Tensor:
        """The layer on ``x`` ``(B, L, C)``; with ``rows`` ``(B, L)`` bool only those rows' outputs ``(M, C)``.

        Each residual add runs in place on the branch's fresh output (``x + branch`` = ``branch + x``
        exactly; a linear layer or dropout keeps no output for backward, so autograd is unaffected)."""
        kept = x if rows is None else x[rows]  # the residual stream of the rows that go on
        if self.pre_norm:
            x = self.drop(self.attn(self.ln1(x), causal, kv_cache, layer, rows)).add_(kept)
            return self.drop(self.mlp(self.ln2(x))).add_(x)
        x = self.ln1(self.drop(self.attn(x, causal, kv_cache, layer, rows)).add_(kept))
        return self.ln2(self.drop(self.mlp(x)).add_(x))


class BidirectionalTransformer(nn.Module):
    """BERT-style masked token model; ``forward(tokens (B, L)) -> logits (B, L, codebook_size)``."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        config: TransformerConfig = TransformerConfig(),
        codebook_size: int | None = None,
        grid: tuple[int, int, int] | None = None,
    ):
        """
        Args:
            vocab_size: number of input token ids (codes, class tokens, special and task tokens).
            seq_len: longest sequence, prefix included (positions are learned).
            config: width, depth, heads, dropout, normalisation and attention kernel.
            codebook_size: logits cover token ids ``[0, codebook_size)`` only; None = the whole vocab.
            grid: the video tokens' ``(T, H, W)``, the last ``T·H·W`` positions of the sequence; needed by
                ``position_embedding="factorized"``.
        """
        super().__init__()
        codebook_size = vocab_size if codebook_size is None else codebook_size
        if not 0 < codebook_size <= vocab_size:
            raise UserError(f"codebook_size={codebook_size} must be in [1, vocab_size={vocab_size}]")
        c = self.config = config
        hidden_dim, eps = c.hidden_dim, c.layer_norm_eps
        self.vocab_size, self.seq_len, self.codebook_size = vocab_size, seq_len, codebook_size
        self.num_layers, self.num_heads, self.hidden_dim = c.num_layers, c.num_heads, hidden_dim

        self.tok_emb = nn.Embedding(vocab_size, hidden_dim)
        if c.position_embedding not in POSITION_EMBEDDINGS:
            raise UserError(f"position_embedding={c.position_embedding!r} is not known; choose one of {', '.join(POSITION_EMBEDDINGS)}")
        self.grid = None
        if c.position_embedding == "factorized":
            if grid is None or len(grid) != 3 or math.prod(grid) > seq_len:
                raise UserError(f"position_embedding='factorized' needs the token grid (T, H, W) with T*H*W <= seq_len={seq_len}; got {grid}")
            self.grid = tuple(int(g) for g in grid)
            self.pos_t, self.pos_h, self.pos_w = (nn.Embedding(g, hidden_dim) for g in self.grid)
        n_learned = seq_len - math.prod(self.grid) if self.grid else seq_len
        self.pos_emb = nn.Embedding(n_learned, hidden_dim)  # every position, or only the prefix's
        self.emb_ln = nn.LayerNorm(hidden_dim, eps=eps)
        self.emb_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(hidden_dim, c.num_heads, c.mlp_dim, c.dropout, c.attention_dropout, eps, c.pre_norm, c.attention_backend)
            for _ in range(c.num_layers)
        )
        self.final_ln = nn.LayerNorm(hidden_dim, eps=eps) if c.pre_norm else nn.Identity()
        # MLM head: Dense → GELU → LN → tied word embedding + bias
        self.head_dense = nn.Linear(hidden_dim, hidden_dim)
        self.head_ln = nn.LayerNorm(hidden_dim, eps=eps)
        self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        init_bert_(self)

    #: ``forward`` takes ``logits_at`` (``magvit_pl.sampling.decode`` asks for the positions it predicts)
    supports_logits_at = True

    def forward(self, tokens: Tensor, causal: bool = False, kv_cache: KVCache | None = None,
                logits_at: Tensor | None = None) -> Tensor:
        """Logits ``(B, L, codebook_size)`` for token ids ``(B, L)``.

        Args:
            tokens: input ids ``(B, L)``, long.
            causal: attend only to earlier positions (autoregressive baseline).
            kv_cache: continue a causal sequence: ``tokens`` are the positions after
                ``kv_cache.length``; keys/values are stored and the cache advanced. Implies causal.
            logits_at: ``(B, L)`` bool: return the logits ``(M, codebook_size)`` of the M positions where it
                is True only, in row-major order (what ``logits[logits_at]`` would be); after the last
                block's attention only those rows are computed.
        """
        B, L = tokens.shape
        start = 0 if kv_cache is None else kv_cache.length
        if start + L > self.seq_len:
            raise ValueError(f"sequence of {start + L} tokens is longer than seq_len={self.seq_len}")
        causal = causal or kv_cache is not None
        x = self.emb_drop(self.emb_ln(self.tok_emb(tokens) + self.positions(start, L)))  # (B, L, C)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, causal, kv_cache, i, rows=logits_at if i == last else None)  # (B, L, C); (M, C) after the last
        if kv_cache is not None:
            kv_cache.advance(L)
        x = self.final_ln(x)
        h = self.head_ln(kernels.linear_gelu(x, self.head_dense))  # (B, L, C) or (M, C)
        K = self.codebook_size
        return F.linear(h, self.tok_emb.weight[:K], self.head_bias[:K])  # tied embedding + bias: (B, L, K) or (M, K)

    def positions(self, start: int, length: int) -> Tensor:
        """Position vectors ``(length, C)`` of sequence positions ``start … start + length − 1``."""
        if self.grid is None:
            return self.pos_emb(torch.arange(start, start + length, device=self.pos_emb.weight.device))
        t, h, w = self.grid
        video = (self.pos_t.weight[:, None, None] + self.pos_h.weight[None, :, None] + self.pos_w.weight[None, None, :])
        table = torch.cat([self.pos_emb.weight, video.reshape(t * h * w, -1)])  # (seq_len, C)
        return table[start : start + length]

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache sized for this model (``max_len`` defaults to ``seq_len``)."""
        p = self.tok_emb.weight
        return KVCache(
            self.num_layers, batch_size, self.num_heads, max_len or self.seq_len,
            self.hidden_dim // self.num_heads, device=p.device, dtype=p.dtype,
        )

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as in the official code: decay only the Linear weight matrices; embeddings,
        LayerNorms and biases get none."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(self.parameters())
        return [
            {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
        ]

    def num_params(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())


def transformer_from_preset(
    preset: str, vocab_size: int, seq_len: int, codebook_size: int | None = None, **overrides
) -> BidirectionalTransformer:
    """Build a :class:`BidirectionalTransformer` from a named size in :data:`PRESETS`.

    Args:
        preset: one of ``tiny``, ``small`` (CPU), ``B``, ``L`` (paper sizes).
        vocab_size: number of token ids.
        seq_len: sequence length including the prefix.
        codebook_size: number of visual codes (logit width).
        overrides: any other :class:`TransformerConfig` field (dropout, pre_norm, attention_backend ...).
    """
    if preset not in PRESETS:
        raise UserError(f"transformer preset {preset!r} is not known; choose one of {', '.join(PRESETS)}")
    config = TransformerConfig(**{**PRESETS[preset], **overrides})
    return BidirectionalTransformer(vocab_size, seq_len, config, codebook_size=codebook_size)
