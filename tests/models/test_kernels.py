"""The tokenizer's CPU fast path (magvit_pl.models.kernels) computes what the plain PyTorch ops compute:
forward with and without autograd, and every gradient, with and without GroupNorm."""
import pytest
import torch

from magvit_pl.models import kernels
from magvit_pl.models.quantizers.lfq import LookupFreeQuantizer
from magvit_pl.models.tokenizer import VQTokenizer


def _tokenizer(norm_groups: int) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(base_channels=8, channel_multipliers=[1, 2], num_res_blocks=1, embedding_dim=6,
                       temporal_downsample=[True], norm_groups=norm_groups, quantizer=LookupFreeQuantizer(dim=6))


@pytest.mark.parametrize("norm_groups", [0, 4])
def test_fast_path_forward_equals_reference(norm_groups):
    """norm_groups=0 makes the norm an identity, which hands its input back: an in-place SiLU on it once
    corrupted the residual branch in eval (no autograd) only, so eval reconstructions were noise while
    training looked fine."""
    tok = _tokenizer(norm_groups).eval()
    x = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad(), kernels.reference_kernels():
        want = tok.decoder(tok.encoder(x))
    with torch.no_grad():
        fast = tok.decoder(tok.encoder(x))
    graph = tok.decoder(tok.encoder(x))  # with autograd: the fast path's other branch
    assert torch.allclose(fast, want, atol=1e-5, rtol=1e-4), (fast - want).abs().max()
    assert torch.allclose(graph.detach(), want, atol=1e-5, rtol=1e-4), (graph.detach() - want).abs().max()
    assert want.abs().mean() > 1e-3  # a real signal, not zeros on both sides


@pytest.mark.parametrize("norm_groups", [0, 4])
def test_fast_path_gradients_equal_reference(norm_groups):
    tok = _tokenizer(norm_groups).train()
    x = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def grads(reference: bool) -> list[torch.Tensor]:
        tok.zero_grad(set_to_none=True)
        if reference:
            with kernels.reference_kernels():
                out = tok.decoder(tok.encoder(x))
        else:
            out = tok.decoder(tok.encoder(x))
        (out.square().mean()).backward()
        return [p.grad.clone() for p in tok.parameters() if p.grad is not None]

    want, got = grads(True), grads(False)
    assert len(got) == len(want) > 10
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-3), (g - w).abs().max()


@pytest.mark.parametrize("rows", [4, 64, 300])
def test_linear_gelu_equals_the_plain_ops(rows):
    """Below FUSED_LINEAR_MIN_ROWS the plain ops run; from it on, without autograd, one oneDNN call: both give
    F.gelu(fc(x), approximate="tanh"); with autograd the gradients are the plain ops' too."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(16, 48)
    x = torch.randn(rows, 16, generator=torch.Generator().manual_seed(1))
    want = torch.nn.functional.gelu(fc(x), approximate="tanh")
    with torch.no_grad():
        got = kernels.linear_gelu(x, fc)
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    assert want.abs().mean() > 0.1
    xg = x.clone().requires_grad_()
    kernels.linear_gelu(xg, fc).sum().backward()
    ref = x.clone().requires_grad_()
    torch.nn.functional.gelu(torch.nn.functional.linear(ref, fc.weight, fc.bias), approximate="tanh").sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad)
