"""VQ and LFQ quantizers: hand-computed losses, straight-through gradients, entropy, LFQ ids."""
import math

import numpy as np
import pytest
import torch

from magvit_pl.models.quantizers import (
    LookupFreeQuantizer,
    VectorQuantizer,
    annealed_weight,
    code_histogram_stats,
    entropy_loss,
)


def _np_entropy_loss(logits: np.ndarray) -> float:
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sample = -(p * np.log(np.clip(p, 1e-300, None))).sum(1).mean()
    avg = p.mean(0)
    return float(sample - (-(avg * np.log(avg + 1e-5)).sum()))


def _tiny_vq(**kw) -> VectorQuantizer:
    vq = VectorQuantizer(codebook_size=4, embedding_dim=2, **kw)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]))
    return vq


def _latents() -> torch.Tensor:
    # three latents (B=1, D=2, t=1, h=1, w=3)
    z = torch.tensor([[0.2, 0.1], [0.9, -0.2], [0.1, 1.4]])  # (3, D)
    return z.t().reshape(1, 2, 1, 1, 3).clone()


def test_vq_loss_terms_match_hand_computation():
    vq = _tiny_vq(entropy_temperature=0.5)
    z = _latents()
    out = vq(z)
    zn = z.reshape(2, 3).t().numpy()  # (3, D)
    cb = vq.codebook.detach().numpy()
    d = ((zn[:, None, :] - cb[None]) ** 2).sum(-1)  # (3, 4)
    idx = d.argmin(1)
    assert idx.tolist() == [0, 1, 2]
    assert out.indices.tolist() == [[[[0, 1, 2]]]]
    mse = float(((zn - cb[idx]) ** 2).mean())  # (0.05 + 0.05 + 0.17) / 6 = 0.045
    assert mse == pytest.approx(0.045, abs=1e-7)
    ent = _np_entropy_loss(-d / 0.5)
    assert out.metrics["commitment"].item() == pytest.approx(0.25 * mse, rel=1e-5)
    assert out.metrics["codebook"].item() == pytest.approx(1.0 * mse, rel=1e-5)
    assert out.metrics["entropy"].item() == pytest.approx(0.1 * ent, rel=1e-4, abs=1e-6)
    assert out.loss.item() == pytest.approx(1.25 * mse + 0.1 * ent, rel=1e-4)
    # forward values are the codes themselves
    assert torch.allclose(out.quantized.reshape(2, 3).t(), torch.tensor(cb[idx]))
    assert out.metrics["usage"].item() == pytest.approx(3 / 4)
    assert out.metrics["perplexity"].item() == pytest.approx(3.0, rel=1e-5)
    # embed() maps ids back to the same codes
    assert torch.equal(vq.embed(out.indices), out.quantized.detach())


def test_vq_straight_through_and_codebook_gradients():
    vq = _tiny_vq(entropy_weight=0.0)
    z = _latents().requires_grad_(True)
    out = vq(z)
    out.quantized.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through: identity gradient
    z.grad = None
    vq.codebook.grad = None
    out.loss.backward()
    zn = _latents().reshape(2, 3).t()
    q = vq.codebook.detach()[[0, 1, 2]]
    # d/dz 0.25·mean((z − sg q)²) = 0.25·2·(z − q)/6 ; d/dc_k 1.0·mean((c − sg z)²) = 2·(c_k − z)/6
    expect_z = (0.5 * (zn - q) / 6).t().reshape(1, 2, 1, 1, 3)
    assert torch.allclose(z.grad, expect_z, atol=1e-7)
    expect_cb = torch.zeros(4, 2)
    expect_cb[[0, 1, 2]] = 2 * (q - zn) / 6
    assert torch.allclose(vq.codebook.grad, expect_cb, atol=1e-7)


def test_entropy_loss_prefers_confident_and_diverse_codes():
    confident_uniform = torch.eye(4) * 50.0  # each latent sure of a different code
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 50.0  # every latent sure of code 0
    unsure = torch.zeros(4, 4)  # every latent uniform over all codes
    u, c, s = (entropy_loss(x).item() for x in (confident_uniform, collapsed, unsure))
    assert u == pytest.approx(-math.log(4), abs=1e-3)
    assert c == pytest.approx(0.0, abs=1e-3)
    assert s == pytest.approx(0.0, abs=1e-3)  # log 4 − log 4
    assert u < c and u < s
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert entropy_loss(logits).item() == pytest.approx(_np_entropy_loss(logits.numpy()), abs=1e-5)


def test_code_histogram_stats():
    counts, usage, perplexity = code_histogram_stats(torch.tensor([0, 0, 1, 2]), 8)
    assert counts.tolist() == [2, 1, 1, 0, 0, 0, 0, 0]
    assert usage.item() == pytest.approx(3 / 8)
    assert perplexity.item() == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))), rel=1e-6)


def test_vq_dead_code_restart_is_deterministic():
    def run():
        torch.manual_seed(0)
        vq = _tiny_vq(dead_code_restart=True, dead_code_threshold=2).train()
        z = _latents()
        outs = [vq(z) for _ in range(3)]
        return vq, outs

    vq, outs = run()
    # code 3 at (3, 3) is never nearest: it ages 1, 2, and is restarted on the third forward
    assert [o.metrics["restarted"].item() for o in outs] == [0.0, 0.0, 1.0]
    zn = _latents().reshape(2, 3).t()
    assert any(torch.equal(vq.codebook[3].detach(), row) for row in zn)
    # the restarted code now wins its latent (distance 0); the code that latent used before ages by 1
    assert outs[2].indices.flatten().tolist().count(3) == 1
    assert vq.code_age[3].item() == 0 and vq.code_age.sum().item() == 1
    vq2, _ = run()
    assert torch.equal(vq.codebook, vq2.codebook)
    assert int(vq.num_steps) == 3
    # off by default: nothing changes
    plain = _tiny_vq().train()
    for _ in range(3):
        plain(_latents())
    assert plain.codebook[3].tolist() == [3.0, 3.0]


def test_annealed_weight_schedule():
    assert annealed_weight(0.1, 3.0, 100, 0) == pytest.approx(0.4)
    assert float(annealed_weight(0.1, 3.0, 100, 50)) == pytest.approx(0.25)
    assert float(annealed_weight(0.1, 3.0, 100, 500)) == pytest.approx(0.1)
    assert annealed_weight(0.1, 3.0, 0, 0) == 0.1


# ---------------------------------------------------------------- LFQ
def test_lfq_index_code_round_trip():
    lfq = LookupFreeQuantizer(dim=6, code_scale=0.5)
    assert lfq.codebook_size == 64
    ids = torch.arange(64)
    codes = lfq.indices_to_codes(ids)  # (64, 6)
    assert set(codes.unique().tolist()) == {-0.5, 0.5}
    assert torch.equal(lfq.codes_to_indices(codes), ids)
    # bit i of the id is the sign of channel i
    assert lfq.codes_to_indices(torch.tensor([0.3, -2.0, 0.1, -0.1, -5.0, 1.0])).item() == 1 + 4 + 32
    assert codes[37].tolist() == [0.5, -0.5, 0.5, -0.5, -0.5, 0.5]


def test_lfq_forward_signs_ids_and_gradients():
    torch.manual_seed(0)
    lfq = LookupFreeQuantizer(dim=4, norm_groups=0)
    z = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    out = lfq(z)
    assert torch.equal(out.quantized.detach(), torch.where(z > 0, 1.0, -1.0))
    ids = lfq.codes_to_indices(z.detach().permute(0, 2, 3, 4, 1))  # (B, t, h, w)
    assert torch.equal(out.indices, ids)
    assert torch.equal(lfq.embed(out.indices), out.quantized.detach())
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    zn = z.detach()
    expect_commit = 0.25 * ((zn - torch.sign(zn)) ** 2).mean()
    assert out.metrics["commitment"].item() == pytest.approx(expect_commit.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((out.metrics["commitment"] + out.metrics["entropy"]).item(), rel=1e-6)


def test_lfq_prenorm_is_non_affine_group_norm():
    lfq = LookupFreeQuantizer(dim=4)
    assert sum(p.numel() for p in lfq.parameters()) == 0
    z = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 7 + 3
    out = lfq(z)
    zn = (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + 1e-6)
    assert torch.equal(out.indices, lfq.codes_to_indices(zn.permute(0, 2, 3, 4, 1)))


@pytest.mark.parametrize("groups", [1, 2])
def test_lfq_entropy_equals_brute_force_over_all_codes(groups):
    torch.manual_seed(0)
    dim, T = 6, 0.7
    lfq = LookupFreeQuantizer(dim=dim, entropy_groups=groups, entropy_temperature=T, code_scale=1.0)
    flat = torch.randn(20, dim) * 0.5
    got = lfq.grouped_entropy(flat).item()
    expect = 0.0
    dg = dim // groups
    sub = LookupFreeQuantizer(dim=dg)
    for g in range(groups):
        zg = flat[:, g * dg:(g + 1) * dg]
        codes = sub.indices_to_codes(torch.arange(2**dg))  # (Kg, dg)
        dist = ((zg[:, None] - codes[None]) ** 2).sum(-1)  # (N, Kg)
        expect += entropy_loss(-dist / T).item()
    assert got == pytest.approx(expect, rel=1e-4, abs=1e-5)


def test_lfq_entropy_annealing_via_step():
    torch.manual_seed(0)
    lfq = LookupFreeQuantizer(dim=4, entropy_anneal_steps=10, entropy_anneal_ratio=1.0, entropy_temperature=1.0)
    lfq.eval()
    z = torch.randn(1, 4, 1, 4, 4)
    e0 = lfq(z, step=0).metrics["entropy"]
    e5 = lfq(z, step=5).metrics["entropy"]
    e20 = lfq(z, step=20).metrics["entropy"]
    assert e0.item() == pytest.approx(2 * e20.item(), rel=1e-5)
    assert e5.item() == pytest.approx(1.5 * e20.item(), rel=1e-5)
    assert int(lfq.num_steps) == 0  # eval forwards do not count
    lfq.train()
    lfq(z)
    lfq(z)
    assert int(lfq.num_steps) == 2  # the buffer counts training forwards
    assert lfq(z).metrics["entropy"].item() == pytest.approx(1.8 * e20.item(), rel=1e-5)  # step 2 of 10


@pytest.mark.parametrize("make", [lambda: VectorQuantizer(32, 8), lambda: LookupFreeQuantizer(dim=8)])
def test_quantizers_run_in_fp32_under_autocast(make):
    torch.manual_seed(0)
    quantizer = make().eval()
    z = torch.randn(1, 8, 2, 4, 4)
    ref = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert out.quantized.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.equal(out.indices, ref.indices)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
