import math

import pytest
import torch

from magvit_pl.commit import Vocab, build_prefix
from magvit_pl.models.transformer import BidirectionalTransformer, TransformerConfig
from magvit_pl.sampling import decode, decode_autoregressive, gumbel, sample_logits

VOCAB = Vocab(codebook_size=8, num_classes=3, task_names=("fp", "opc"))
K, MASK = VOCAB.codebook_size, VOCAB.mask
N = 32
COND_CODE = K - 1  # z̃ uses a code the fake model never samples, so re-inserted z̃ is visible


class FakeModel:
    """Random logits over codes 0..K-2 (code K-1 impossible), padded to the full vocab; records inputs."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.inputs = []

    def __call__(self, seq):
        self.inputs.append(seq.clone())
        logits = torch.randn(seq.shape[0], seq.shape[1], VOCAB.size, generator=self.g)
        logits[..., COND_CODE] = float("-inf")
        return logits


def _cond(B=2):
    cond = torch.zeros(B, N, dtype=torch.bool)
    cond[:, :12] = True  # first 12 positions are condition
    z_cond = torch.where(cond, torch.full((B, N), COND_CODE), torch.zeros(B, N, dtype=torch.long))
    return z_cond, cond


def _prefix(B=2, labels=None):
    return build_prefix(VOCAB, "fp", B, labels)


def test_k_calls_and_schedule_of_unknown_positions():
    z_cond, cond = _cond()
    model = FakeModel()
    out = decode(model, z_cond, cond, _prefix(), VOCAB, steps=6, generator=torch.Generator().manual_seed(0))
    assert len(model.inputs) == 6
    for t, seq in enumerate(model.inputs):
        video = seq[:, 2:]
        shown = (video == MASK) | (video == COND_CODE)  # positions still unknown
        # condition positions show z̃, others [MASK], never the other way round
        assert not (cond & (video == MASK)).any() and not (~cond & (video == COND_CODE)).any()
        expected = N if t == 0 else max(1, math.floor(N * math.cos(math.pi / 2 * t / 6)))
        assert shown.sum(1).tolist() == [expected, expected]
    assert out.shape == (2, N) and out.min() >= 0 and out.max() < K
    assert not (out == COND_CODE).any() and not (out == MASK).any()


def test_fixed_tokens_stay_fixed():
    z_cond, cond = _cond()
    model = FakeModel(seed=3)
    out = decode(model, z_cond, cond, _prefix(), VOCAB, steps=8, generator=torch.Generator().manual_seed(1))
    videos = [s[:, 2:] for s in model.inputs] + [out]
    for a, b in zip(videos, videos[1:]):
        known = (a != MASK) & (a != COND_CODE)
        assert torch.equal(a[known], b[known])


def test_determinism():
    z_cond, cond = _cond()
    run = lambda seed: decode(FakeModel(), z_cond, cond, _prefix(), VOCAB, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_model_with_all_mass_on_one_code():
    def peaked(seq):
        logits = torch.full((*seq.shape, VOCAB.size), -1e4)
        logits[..., 3] = 0.0
        return logits

    z_cond, cond = _cond()
    out = decode(peaked, z_cond, cond, _prefix(), VOCAB, generator=torch.Generator().manual_seed(0))
    assert (out == 3).all()


def test_naive_mode_keeps_condition_tokens():
    z_cond, cond = _cond()
    z_cond = torch.where(cond, torch.arange(N).expand(2, N) % (K - 1), z_cond)  # varied valid codes
    model = FakeModel()
    out = decode(model, z_cond, cond, _prefix(), VOCAB, steps=4, mode="naive", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[cond], z_cond[cond])
    assert (model.inputs[0][:, 2:][~cond] == MASK).all()
    assert not (out == MASK).any()


def test_classifier_free_guidance():
    labels = torch.tensor([1, 2])

    def model(seq):
        model.batches.append(seq.shape[0])
        logits = torch.zeros(*seq.shape, VOCAB.size)
        uncond = seq[:, 1:2] == VOCAB.uncond  # (B', 1)
        logits[..., 0] = torch.where(uncond, 0.0, 2.0)  # c = [2, 2.5], u = [0, 3]
        logits[..., 1] = torch.where(uncond, 3.0, 2.5)
        return logits

    z_cond, cond = _cond()
    prefix = _prefix(labels=labels)
    for scale, code, batch in ((0.0, 1, 2), (1.0, 0, 4)):  # 2c − u = [4, 2] → code 0
        model.batches = []
        out = decode(model, z_cond, cond, prefix, VOCAB, steps=5, temperature=0.0, guidance_scale=scale)
        assert (out == code).all() and model.batches == [batch] * 5  # batch-concat: still K calls


def test_sample_logits_top_k_and_greedy():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.9]]).repeat(2000, 1)
    assert (sample_logits(logits, temperature=0.0) == 2).all()
    s = sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) == {2, 3}
    p2 = math.exp(5.0) / (math.exp(5.0) + math.exp(4.9))
    assert (s == 2).float().mean().item() == pytest.approx(p2, abs=0.04)


def test_sample_logits_frequencies_follow_temperature():
    p = torch.tensor([0.2, 0.3, 0.5])
    logits = p.log().repeat(20000, 1)
    for T in (1.0, 0.5):
        s = sample_logits(logits, temperature=T, generator=torch.Generator().manual_seed(1))
        freq = torch.bincount(s, minlength=3).float() / len(s)
        expected = p ** (1 / T) / (p ** (1 / T)).sum()
        torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def _tiny(seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64)
    return BidirectionalTransformer(VOCAB.size, 2 + N, config, codebook_size=K).eval()


def test_autoregressive_cached_equals_uncached():
    m = _tiny()
    prefix = _prefix()
    a = decode_autoregressive(m, prefix, N, kv_cache=True, temperature=0.0)
    b = decode_autoregressive(m, prefix, N, kv_cache=False, temperature=0.0)
    assert torch.equal(a, b) and a.shape == (2, N)
    s1 = decode_autoregressive(m, prefix, N, temperature=1.0, generator=torch.Generator().manual_seed(2))
    s2 = decode_autoregressive(m, prefix, N, kv_cache=False, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2)
    # greedy: each token is the argmax of a causal pass over everything before it
    seq = torch.cat([prefix, a], 1)
    with torch.no_grad():
        pred = m(seq, causal=True)[:, 1:-1].argmax(-1)
    assert torch.equal(pred, a)


def test_decode_with_real_tiny_transformer():
    m = _tiny()
    z_cond, cond = _cond()
    out = decode(m, z_cond, cond, _prefix(), VOCAB, steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, N) and out.max() < K and out.min() >= 0


def _reference_decode(model_fn, z_cond, cond, prefix, steps, temperature=1.0, top_k=None, generator=None):
    """The COMMIT loop written out as the module docstring states it (and as decode ran before it skipped the
    known positions): logits, a draw and a confidence at EVERY position, ranks by a double argsort."""
    B, N = z_cond.shape
    refill = torch.where(cond, z_cond, torch.full_like(z_cond, MASK))
    tokens, unknown = refill.clone(), torch.ones_like(cond)
    for step in range(steps):
        logits = model_fn(torch.cat([prefix, tokens], 1))[:, -N:, :K]
        sampled = torch.where(unknown, sample_logits(logits, temperature, top_k, generator), tokens)
        logp = logits.gather(-1, sampled[..., None])[..., 0] - torch.logsumexp(logits, -1)
        progress = (step + 1) / steps
        conf = torch.where(unknown, logp, torch.full_like(logp, float("inf")))
        conf = conf + 4.5 * (1 - progress) * gumbel(conf.shape, generator, conf.device)
        num = torch.floor(N * torch.tensor(math.cos(math.pi / 2 * progress), dtype=torch.float64)).long().clamp(min=1)
        num = torch.minimum(num.expand(B), unknown.sum(1) - 1).clamp(min=0)
        remask = conf.argsort(dim=1, stable=True).argsort(dim=1) < num[:, None]
        tokens, unknown = torch.where(remask, refill, sampled), remask
    return sampled


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.7}, {"top_k": 3}, {"temperature": 0.0}])
def test_decode_gives_the_reference_loops_tokens(kw):
    """Sampling only the unknown positions, with the model computing only their logits, changes no token:
    the same generator seed gives what the written-out loop over every position gives."""
    m = _tiny(seed=3)
    with torch.no_grad():
        m.head_bias[:K] += torch.linspace(-2, 2, K)  # a distribution worth sampling from
    z_cond, cond = _cond(B=3)
    prefix = _prefix(B=3, labels=torch.tensor([0, 1, 2]))
    got = decode(m, z_cond, cond, prefix, VOCAB, steps=6, generator=torch.Generator().manual_seed(7), **kw)
    want = _reference_decode(m, z_cond, cond, prefix, 6, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(got, want)
    if kw.get("temperature", 1.0) > 0:
        assert len(set(got.flatten().tolist())) > 2  # sampled, not one repeated code


def test_decode_asks_the_model_for_the_unknown_positions_only():
    """A model that supports ``logits_at`` runs its head on the positions still unknown at each step (N, then
    the re-masked counts), not on the whole sequence; a plain callable still gets the full sequence."""
    m = _tiny()
    rows = []
    m.head_dense.register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[:-1].numel()))
    z_cond, cond = _cond()
    out = decode(m, z_cond, cond, _prefix(), VOCAB, steps=6, generator=torch.Generator().manual_seed(0))
    unknown = [N] + [max(1, math.floor(N * math.cos(math.pi / 2 * t / 6))) for t in range(1, 6)]
    assert rows == [2 * n for n in unknown]  # batch 2
    plain = decode(lambda seq: m(seq), z_cond, cond, _prefix(), VOCAB, steps=6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, plain) and rows[6:] == [2 * (2 + N)] * 6
