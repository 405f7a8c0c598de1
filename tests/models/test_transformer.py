import dataclasses

import pytest
import torch
import torch.nn.functional as F

from magvit_pl.run.errors import UserError
from magvit_pl.models.checkpointing import apply_activation_checkpointing
from magvit_pl.models.transformer import PRESETS, BidirectionalTransformer, TransformerConfig, transformer_from_preset

V, S, K = 40, 12, 32  # vocab, seq len, codebook


def _model(codebook_size=K, **kw):
    torch.manual_seed(0)
    config = TransformerConfig(**{**dict(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64), **kw})
    return BidirectionalTransformer(V, S, config, codebook_size=codebook_size)


def _tokens(B=2, L=S, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _expected_params(V, S, H, n, M):
    block = (3 * H * H + 3 * H) + (H * H + H) + (H * M + M) + (M * H + H) + 4 * H
    return V * H + S * H + 2 * H + n * block + (H * H + H) + 2 * H + V


def test_logits_shape_and_tied_head():
    m = _model().eval()
    x = _tokens()
    logits = m(x)
    assert logits.shape == (2, S, K)
    # the head is tied: scaling the code embeddings' contribution changes logits exactly through W[:K]
    with torch.no_grad():
        h = []
        m.head_ln.register_forward_hook(lambda mod, i, o: h.append(o))
        m(x)
    expected = h[0] @ m.tok_emb.weight[:K].t() + m.head_bias[:K]
    torch.testing.assert_close(logits, expected)


def test_parameter_counts_match_formula_and_paper_sizes():
    m = _model()
    assert m.num_params() == _expected_params(V, S, 32, 2, 64)
    vocab = 1024 + 101 + 2 + 10  # codes, UCF classes, UNCOND+MASK, 10 task tokens
    with torch.device("meta"):
        counts = {p: transformer_from_preset(p, vocab, 1026, 1024).num_params() for p in ("B", "L")}
    for p in ("B", "L"):
        c = PRESETS[p]
        assert counts[p] == _expected_params(vocab, 1026, c["hidden_dim"], c["num_layers"], c["mlp_dim"])
    assert round(counts["B"] / 1e6) == 87 and round(counts["L"] / 1e6) == 306  # paper: ≈87M, ≈306M


def test_bert_init():
    m = transformer_from_preset("small", 300, 64, 256)
    w = m.blocks[0].fc1.weight
    assert abs(w.std().item() - 0.02 * 0.88) < 0.002  # N(0, .02) truncated at ±2σ has std 0.88σ
    assert w.abs().max().item() <= 0.04 + 1e-7
    assert m.tok_emb.weight.abs().max().item() <= 0.04 + 1e-7
    assert m.blocks[0].fc1.bias.abs().sum() == 0 and m.head_bias.abs().sum() == 0
    assert torch.equal(m.blocks[0].ln1.weight, torch.ones(128))


def test_post_ln_outputs_are_normalised_pre_ln_are_not():
    x = _tokens()
    for pre_norm, normalised in ((False, True), (True, False)):
        m = _model(pre_norm=pre_norm).eval()
        outs = []
        m.blocks[-1].register_forward_hook(lambda mod, i, o: outs.append(o))
        m(x)
        o = outs[0]
        is_norm = torch.allclose(o.mean(-1), torch.zeros(()), atol=1e-5) and torch.allclose(
            o.var(-1, unbiased=False), torch.ones(()), atol=1e-3
        )
        assert is_norm == normalised


def test_bidirectional_vs_causal():
    m = _model().eval()
    x = _tokens(B=1)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % V  # change the last token only
    with torch.no_grad():
        assert (m(x)[0, 0] - m(y)[0, 0]).abs().max() > 1e-4  # bidirectional: position 0 sees it
        torch.testing.assert_close(m(x, causal=True)[0, :-1], m(y, causal=True)[0, :-1])


def test_backends_agree():
    x = _tokens()
    a = _model(attention_backend="sdpa").eval()(x)
    b = _model(attention_backend="math").eval()(x)
    assert (a - b).abs().max() <= 1e-5


def test_kv_cache_matches_full_causal_pass():
    m = _model().eval()
    x = _tokens(B=2)
    with torch.no_grad():
        full = m(x, causal=True)
        cache = m.new_kv_cache(2)
        parts = [m(x[:, :3], kv_cache=cache)] + [m(x[:, i : i + 1], kv_cache=cache) for i in range(3, S)]
    assert cache.length == S
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_activation_checkpointing_gives_same_gradients():
    x, t = _tokens(), _tokens(seed=2) % K
    grads = []
    for ckpt in (False, True):
        m = _model(dropout=0.1, attention_dropout=0.1).train()
        calls, mlp = [], m.blocks[0].mlp
        m.blocks[0].mlp = lambda h: calls.append(1) or mlp(h)  # count evaluations (hooks skip recompute)
        if ckpt:
            assert apply_activation_checkpointing(m) == 2  # from outside: one wrapper per block
        torch.manual_seed(5)
        loss = F.cross_entropy(m(x).transpose(1, 2), t)
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed blocks are recomputed in backward
        grads.append((loss.detach(), m.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_learns_a_fixed_batch():
    m = _model(dropout=0.0, attention_dropout=0.0).train()
    x, t = _tokens(), _tokens(seed=3) % K
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(m(x).transpose(1, 2), t)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.2


def test_param_groups_decay_only_linear_weights():
    m = _model()
    decay, no_decay = m.param_groups(0.045)
    assert decay["weight_decay"] == 0.045 and no_decay["weight_decay"] == 0.0
    # per block: qkv, proj, fc1, fc2 weights; plus the head's dense weight
    assert len(decay["params"]) == 2 * 4 + 1
    assert all(p.ndim == 2 for p in decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    assert id(m.tok_emb.weight) in ids and id(m.pos_emb.weight) in ids and id(m.head_bias) in ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_errors():
    with pytest.raises(UserError, match="tiny, small, B, L"):
        transformer_from_preset("XL", V, S, K)
    with pytest.raises(UserError, match="divisible"):
        _model(hidden_dim=30, num_heads=4)
    with pytest.raises(UserError, match="codebook_size"):
        _model(codebook_size=V + 1)
    with pytest.raises(ValueError, match="seq_len"):
        _model()(_tokens(L=S + 1))


def _factorized(grid=(2, 2, 2), prefix=4):
    torch.manual_seed(0)
    config = TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, position_embedding="factorized")
    return BidirectionalTransformer(V, prefix + 8, config, codebook_size=K, grid=grid)


def test_factorized_positions_are_sums_over_time_row_column():
    m = _factorized()
    table = m.positions(0, 12)
    assert table.shape == (12, 32)
    torch.testing.assert_close(table[:4], m.pos_emb.weight)  # the prefix keeps one vector per position
    # video token (t, h, w) sits at 4 + t*4 + h*2 + w
    for t, h, w in [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 0)]:
        expected = m.pos_t.weight[t] + m.pos_h.weight[h] + m.pos_w.weight[w]
        torch.testing.assert_close(table[4 + t * 4 + h * 2 + w], expected)
    # far fewer position parameters than one per position on a real grid
    big = BidirectionalTransformer(V, 2 + 4 * 16 * 16, TransformerConfig(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64,
                                   position_embedding="factorized"), codebook_size=K, grid=(4, 16, 16))
    assert sum(p.numel() for n, p in big.named_parameters() if n.startswith("pos")) == (2 + 4 + 16 + 16) * 32


def test_factorized_positions_with_kv_cache_match_full_causal_pass():
    m = _factorized().eval()
    x = _tokens()
    full = m(x, causal=True)
    cache = m.new_kv_cache(2)
    parts = [m(x[:, :5], kv_cache=cache), m(x[:, 5:9], kv_cache=cache), m(x[:, 9:], kv_cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_factorized_positions_need_the_grid_and_a_known_name():
    config = TransformerConfig(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64, position_embedding="factorized")
    with pytest.raises(UserError, match="needs the token grid"):
        BidirectionalTransformer(V, S, config, codebook_size=K)
    with pytest.raises(UserError, match="needs the token grid"):
        BidirectionalTransformer(V, S, config, codebook_size=K, grid=(2, 4, 4))  # 32 video tokens > seq_len 12
    with pytest.raises(UserError, match="choose one of learned, factorized"):
        BidirectionalTransformer(V, S, dataclasses.replace(config, position_embedding="sinusoid"), codebook_size=K)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_logits_at_gives_the_asked_rows_of_the_full_logits(pre_norm):
    """``logits_at`` (what COMMIT decoding asks for) computes the rows after the last block's attention only;
    they equal the full pass's rows, in row-major order, and the head sees only those rows."""
    m = _model(pre_norm=pre_norm, dropout=0.0).eval()
    x = _tokens(B=3)
    rows = torch.rand(3, S, generator=torch.Generator().manual_seed(2)) < 0.5
    seen = []
    m.head_dense.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        full, part = m(x), m(x, logits_at=rows)
    assert part.shape == (int(rows.sum()), K)
    torch.testing.assert_close(part, full[rows], atol=1e-5, rtol=1e-5)
    assert seen[-1] == int(rows.sum())  # (M, C) into the head, not (B, L, C)
    assert full.abs().mean() > 0.01  # BERT init: small but real logits


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cpu_inference_fast_path_equals_the_plain_ops(pre_norm):
    """Without autograd on CPU, fc1 and the head's dense layer take their GELU as a oneDNN post-op once a
    call has 64+ rows (here 2 x 40); the plain ops (kernels.reference_kernels) give the same logits."""
    from magvit_pl.models import kernels

    torch.manual_seed(0)
    config = TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, pre_norm=pre_norm)
    m = BidirectionalTransformer(V, 40, config, codebook_size=K).eval()
    x = _tokens(L=40)
    with torch.no_grad():
        fast = m(x)
        with kernels.reference_kernels():
            plain = m(x)
    graph = m(x).detach()  # with autograd: the plain ops
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(graph, plain, atol=0, rtol=0)
