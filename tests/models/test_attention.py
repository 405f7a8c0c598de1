import logging

import pytest
import torch

from magvit_pl.run.errors import UserError
from magvit_pl.models import attention as attn_mod
from magvit_pl.models.attention import KVCache, attention, causal_mask, math_attention, resolve_backend


def _qkv(B=2, nh=3, lq=7, lk=7, hs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, lq, hs, generator=g)
    k = torch.randn(B, nh, lk, hs, generator=g)
    v = torch.randn(B, nh, lk, hs, generator=g)
    return q, k, v


def test_math_matches_explicit_softmax():
    q, k, v = _qkv(B=1, nh=1, lq=2, lk=3, hs=2)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / 2**0.5
    expected = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
    torch.testing.assert_close(math_attention(q, k, v), expected, atol=1e-6, rtol=0)


def test_sdpa_matches_math_without_mask():
    q, k, v = _qkv()
    diff = (attention(q, k, v, "sdpa") - attention(q, k, v, "math")).abs().max()
    assert diff <= 1e-5


def test_sdpa_matches_math_with_bool_and_float_masks():
    q, k, v = _qkv(lq=5, lk=9)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(2, 1, 5, 9, generator=g) > 0.4
    keep[..., 0] = True  # every query sees at least one key
    for mask in (keep, torch.randn(2, 3, 5, 9, generator=g)):
        a = attention(q, k, v, "sdpa", mask=mask)
        b = attention(q, k, v, "math", mask=mask)
        assert (a - b).abs().max() <= 1e-5
    # a masked-out key must not influence the output
    v2 = v.clone()
    v2[:, :, 3] += 100.0
    only = torch.ones(1, 1, 5, 9, dtype=torch.bool)
    only[..., 3] = False
    torch.testing.assert_close(attention(q, k, v, mask=only), attention(q, k, v2, mask=only))


def test_causal_square_and_bottom_right():
    q, k, v = _qkv(lq=6, lk=6)
    full = attention(q, k, v, "math", causal=True)
    assert (attention(q, k, v, "sdpa", causal=True) - full).abs().max() <= 1e-5
    # the last 2 queries against all 6 keys == the last 2 rows of full causal attention (KV-cache path)
    for backend in ("sdpa", "math"):
        tail = attention(q[:, :, 4:], k, v, backend, causal=True)
        assert (tail - full[:, :, 4:]).abs().max() <= 1e-5
    # causal + explicit mask on sdpa agrees with math
    keep = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    keep[..., 0] = False
    keep[..., 0, 0] = True
    a = attention(q, k, v, "sdpa", mask=keep, causal=True)
    assert (a - attention(q, k, v, "math", mask=keep, causal=True)).abs().max() <= 1e-5


def test_causal_mask_values():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_resolve_backend_falls_back_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(attn_mod, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="magvit_pl.models.attention"):
        assert resolve_backend("xformers", "cpu") == "sdpa"
        assert resolve_backend("xformers", torch.device("cpu")) == "sdpa"
        out = attention(*_qkv(), backend="xformers")
    warnings = [r for r in caplog.records if "xformers" in r.getMessage()]
    assert len(warnings) == 1 and "CUDA" in warnings[0].getMessage()
    assert (out - attention(*_qkv(), backend="math")).abs().max() <= 1e-5
    assert resolve_backend("math", "cpu") == "math" and resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(UserError, match="sdpa, xformers, math"):
        resolve_backend("flash3", "cpu")


def test_kv_cache_update_and_overflow():
    c = KVCache(num_layers=2, batch_size=1, num_heads=1, max_len=3, head_dim=2)
    k1, v1 = torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 1, 2, 2)
    k, v = c.update(0, k1, v1)
    assert k.shape == (1, 1, 2, 2) and v.sum() == 8
    c.advance(2)
    k, v = c.update(1, 3 * torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert k.shape == (1, 1, 3, 2) and k[0, 0, :, 0].tolist() == [0.0, 0.0, 3.0]  # layer 1 had nothing before
    with pytest.raises(ValueError, match="overflow"):
        c.update(0, torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


@pytest.mark.cuda
def test_xformers_matches_sdpa_on_cuda():
    why = attn_mod.xformers_unavailable("cuda", torch.float32)
    if why is not None:
        pytest.skip(why)
    q, k, v = (t.cuda() for t in _qkv(lq=16, lk=16, hs=32))
    assert resolve_backend("xformers", q.device) == "xformers"
    for causal in (False, True):
        a = attention(q, k, v, "xformers", causal=causal)
        b = attention(q, k, v, "math", causal=causal)
        assert (a - b).abs().max() <= 1e-4
    tail = attention(q[:, :, 10:], k, v, "xformers", causal=True)
    assert (tail - attention(q, k, v, "math", causal=True)[:, :, 10:]).abs().max() <= 1e-4


class _XformersWithoutKernels:
    """What a wheel built for another torch/CUDA looks like: it imports, but has no kernel for the inputs."""

    LowerTriangularMask = object

    @staticmethod
    def memory_efficient_attention(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n     query : ...")


def test_xformers_without_a_kernel_for_the_inputs_falls_back_to_sdpa_with_one_notice(monkeypatch, caplog):
    monkeypatch.setattr(attn_mod, "_xformers_ops", lambda: _XformersWithoutKernels)
    monkeypatch.setattr(attn_mod, "resolve_backend", lambda name, device: name)  # as if on CUDA
    monkeypatch.setattr(attn_mod, "_warned", set())
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="magvit_pl.models.attention"):
        out = attention(q, k, v, "xformers", causal=True)
        attention(q, k, v, "xformers", causal=True)
    assert torch.equal(out, attention(q, k, v, "sdpa", causal=True))
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1
    assert "no kernel for float32 inputs here: No operator found for `memory_efficient_attention_forward`" in notices[0]
    assert "using 'sdpa'" in notices[0]


def test_xformers_unavailable_names_the_reason(monkeypatch):
    assert attn_mod.xformers_unavailable("cpu") == "tensors are on cpu, xformers needs CUDA"
    monkeypatch.setattr(attn_mod, "_xformers_ops", lambda: None)
    assert attn_mod.xformers_unavailable("cuda") == "xformers is not installed"
