"""3D-VQ tokenizer: presets, shapes and sizes, gradients, padding modes, 2D→3D inflation."""
import pytest
import torch
import torch.nn.functional as F

from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.models.blocks import SameConv3d, avg_pool_down
from magvit_pl.models.checkpointing import apply_activation_checkpointing, drop_legacy_flag, is_checkpointed
from magvit_pl.models.inflation import inflate_kernel, inflate_state_dict, init_from_checkpoint
from magvit_pl.models.quantizers import LookupFreeQuantizer, VectorQuantizer
from magvit_pl.models.tokenizer import PRESETS, VQTokenizer, count_parameters, tokenizer_preset_kwargs


def tiny(seed: int = 0, activation_checkpointing: bool = False, **kw) -> VQTokenizer:
    torch.manual_seed(seed)
    args = dict(base_channels=16, channel_multipliers=(1, 2, 2), embedding_dim=8, quantizer=VectorQuantizer(64, 8))
    model = VQTokenizer(**{**args, **kw})
    if activation_checkpointing:  # applied from outside, as the LightningModule's configure_model does
        apply_activation_checkpointing(model)
    return model


def clip(seed: int = 0, shape=(1, 3, 8, 32, 32)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# measured once; a change means the architecture changed
PRESET_PARAMS = {"B": 40_579_843, "L": 157_811_971, "bair_B": 36_596_355, "bair_L": 141_882_371, "tiny": 486_307}


@pytest.mark.parametrize(
    "name, clip_shape, grid",
    [("B", (16, 128, 128), (4, 16, 16)), ("L", (16, 128, 128), (4, 16, 16)),
     ("bair_B", (16, 64, 64), (4, 16, 16)), ("bair_L", (16, 64, 64), (4, 16, 16)), ("tiny", (16, 64, 64), (4, 16, 16))],
)
def test_preset_token_grids_and_sizes(name, clip_shape, grid):
    with torch.device("meta"):
        model = VQTokenizer.from_preset(name)
    assert model.token_grid(*clip_shape) == grid
    assert model.codebook_size == (1024 if name != "tiny" else PRESETS["tiny"]["codebook_size"])
    assert count_parameters(model) == PRESET_PARAMS[name]
    if name != "tiny":
        assert count_parameters(model.quantizer) == 1024 * 256


def test_preset_forward_shapes_on_meta():
    with torch.device("meta"):
        model = VQTokenizer.from_preset("B")
        recon, q = model(torch.empty(2, 3, 16, 128, 128))
    assert recon.shape == (2, 3, 16, 128, 128)
    assert q.indices.shape == (2, 4, 16, 16) and q.quantized.shape == (2, 256, 4, 16, 16)


def test_l_is_about_four_times_b_and_presets_are_fresh():
    assert 3.5 < PRESET_PARAMS["L"] / PRESET_PARAMS["B"] < 4.0
    a, b = tokenizer_preset_kwargs("B"), tokenizer_preset_kwargs("B")
    assert a["quantizer"] is not b["quantizer"]
    with pytest.raises(UserError, match="unknown tokenizer preset 'XL'"):
        tokenizer_preset_kwargs("XL")


def test_forward_encode_decode_round_trip():
    model = tiny().eval()
    x = clip()
    recon, q = model(x)
    assert recon.shape == x.shape and q.indices.shape == (1, 2, 8, 8) and q.indices.dtype == torch.long
    assert model.downsample_factors == (4, 4, 4)
    tokens = model.encode(x)
    assert torch.equal(tokens, q.indices)
    assert torch.allclose(model.decode(tokens), recon, atol=1e-5)
    assert torch.allclose(model.decode_code(q.quantized), recon, atol=1e-6)
    m = q.metrics
    assert q.loss.item() == pytest.approx((m["commitment"] + m["codebook"] + m["entropy"]).item(), rel=1e-5)
    assert 0 < m["usage"].item() <= 1 and 1 <= m["perplexity"].item() <= 64


def test_straight_through_gradient_reaches_encoder_and_codebook():
    model = tiny()
    x = clip()
    recon, q = model(x)
    (recon - x).pow(2).mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # only through the straight-through path
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0
    model.zero_grad()
    recon, q = model(x)
    ((recon - x).pow(2).mean() + q.loss).backward()
    assert model.quantizer.codebook.grad.abs().sum() > 0
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0


def test_temporal_downsample_flags():
    assert tiny().temporal_downsample == (True, True)
    assert tiny(channel_multipliers=(1, 2, 2, 4)).temporal_downsample == (True, True, False)
    assert tiny(temporal_kernel_size=1).temporal_downsample == (False, False)
    model = tiny(temporal_downsample=(True, False))
    assert model.downsample_factors == (2, 4, 4)
    assert model.encode(clip()).shape == (1, 4, 8, 8)
    with pytest.raises(UserError, match="one flag per downsample"):
        tiny(temporal_downsample=(True,))


def test_bad_sizes_and_arguments_are_user_errors():
    model = tiny()
    with pytest.raises(UserError, match="multiple of the tokenizer's downsampling 4x4x4"):
        model.encode(clip(shape=(1, 3, 6, 32, 32)))
    with pytest.raises(UserError, match="padding_mode"):
        tiny(padding_mode="circular")
    with pytest.raises(UserError, match="must equal embedding_dim"):
        tiny(quantizer=VectorQuantizer(64, 4))


def test_padding_modes_all_run_and_differ():
    ref = tiny(padding_mode="zeros").eval()
    x = clip()
    outs = {}
    for mode in ("zeros", "reflect", "replicate"):
        model = tiny(padding_mode=mode).eval()
        model.load_state_dict(ref.state_dict())  # same weights, only the padding differs
        outs[mode] = model(x)[0]
        assert torch.isfinite(outs[mode]).all()
    for a, b in (("zeros", "reflect"), ("zeros", "replicate"), ("reflect", "replicate")):
        assert (outs[a] - outs[b]).abs().max() > 1e-3
    # with one frame, reflect cannot pad time: that dimension is replicate-padded, H and W reflected
    conv = SameConv3d(2, 2, 3, padding_mode="reflect")
    y = torch.randn(1, 2, 1, 4, 4)
    padded = F.pad(F.pad(y, (0, 0, 0, 0, 1, 1), mode="replicate"), (1, 1, 1, 1, 0, 0), mode="reflect")
    assert torch.allclose(conv(y), F.conv3d(padded, conv.weight, conv.bias), atol=1e-6)


def test_same_conv_padding_values():
    x = torch.arange(3.0).view(1, 1, 3, 1, 1)  # frames 0, 1, 2
    expect = {"zeros": [1.0, 3.0, 3.0], "replicate": [1.0, 3.0, 5.0], "reflect": [2.0, 3.0, 4.0]}
    for mode, values in expect.items():
        conv = SameConv3d(1, 1, (3, 1, 1), bias=False, padding_mode=mode)
        with torch.no_grad():
            conv.weight.fill_(1.0)  # sum over a 3-frame window
        assert conv(x).flatten().tolist() == values, mode


def test_avg_pool_down_is_tf_same():
    x = torch.arange(3.0).view(1, 1, 3, 1, 1).expand(1, 1, 3, 2, 2)
    assert avg_pool_down(x).flatten().tolist() == [0.5, 2.0]  # the last window has one frame
    assert avg_pool_down(torch.ones(1, 1, 1, 4, 4)).shape == (1, 1, 1, 2, 2)  # one frame: time not pooled


def test_lfq_tokenizer():
    torch.manual_seed(0)
    model = VQTokenizer(base_channels=16, channel_multipliers=(1, 2), embedding_dim=6,
                        quantizer=LookupFreeQuantizer(dim=6)).eval()
    x = clip(shape=(1, 3, 4, 16, 16))
    recon, q = model(x)
    assert model.codebook_size == 64 and q.indices.shape == (1, 2, 8, 8)
    assert int(q.indices.max()) < 64
    assert torch.allclose(model.decode(q.indices), recon, atol=1e-5)


# ---------------------------------------------------------------- inflation
def test_inflate_kernel_central_and_average():
    w = torch.randn(4, 3, 1, 3, 3)
    c = inflate_kernel(w, 3, "central")
    assert torch.equal(c[:, :, 1], w[:, :, 0]) and c[:, :, 0].abs().sum() == 0 and c[:, :, 2].abs().sum() == 0
    a = inflate_kernel(w, 3, "average")
    assert torch.allclose(a.sum(2), w[:, :, 0]) and torch.allclose(a[:, :, 0], w[:, :, 0] / 3)


@pytest.mark.parametrize("mode, padding", [("central", "zeros"), ("average", "replicate")])
def test_inflated_3d_model_reproduces_2d_on_static_clip(mode, padding):
    model2d = tiny(seed=1, temporal_kernel_size=1, padding_mode=padding).eval()
    model3d = tiny(seed=2, padding_mode=padding).eval()  # pools time twice
    model3d.load_state_dict(inflate_state_dict(model2d.state_dict(), model3d, mode))
    frame = clip(shape=(1, 3, 1, 32, 32))
    video = frame.expand(1, 3, 4, 32, 32).contiguous()  # four identical frames
    with torch.no_grad():
        z2 = model2d.encoder(frame)  # (1, D, 1, 8, 8)
        z3 = model3d.encoder(video)  # (1, D, 1, 8, 8): time pooled 4 → 1
        assert torch.allclose(z3, z2, atol=1e-5)
        tokens = model2d.encode(frame)
        assert torch.equal(model3d.encode(video), tokens)
        out3 = model3d.decode(tokens)  # (1, 3, 4, 32, 32)
        out2 = model2d.decode(tokens)  # (1, 3, 1, 32, 32)
    assert out3.shape == video.shape
    assert torch.allclose(out3, out2.expand_as(out3), atol=1e-5)
    # and the 3D model did change: its kernels are 3 frames deep
    assert model3d.encoder.conv_in.weight.shape[2] == 3


def test_init_from_lightning_checkpoint(tmp_path):
    model2d = tiny(seed=1, temporal_kernel_size=1)
    ckpt = {"state_dict": {f"tokenizer.{k}": v for k, v in model2d.state_dict().items()}, "epoch": 3}
    ckpt["state_dict"]["discriminator.fc.weight"] = torch.zeros(2, 2)
    path = tmp_path / "tok2d.ckpt"
    torch.save(ckpt, path)
    model3d = init_from_checkpoint(tiny(seed=2), path, inflation="central", prefix="tokenizer.")
    w2, w3 = model2d.decoder.conv_out.weight, model3d.decoder.conv_out.weight
    assert torch.equal(w3[:, :, 1], w2[:, :, 0]) and w3[:, :, 0].abs().sum() == 0
    assert torch.equal(model3d.quantizer.codebook, model2d.quantizer.codebook)
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        init_from_checkpoint(tiny(), tmp_path / "nope.ckpt")
    with pytest.raises(UserError, match="prefix 'ema.'"):
        init_from_checkpoint(tiny(), path, prefix="ema.")
    with pytest.raises(UserError, match="cannot inflate"):  # a wider 2D model does not fit
        init_from_checkpoint(tiny(base_channels=32), path, prefix="tokenizer.")


# ---------------------------------------------------------------- activation checkpointing
def _count_calls(module: torch.nn.Module, calls: list) -> None:
    """Count evaluations of ``module.forward`` (recomputation included) into ``calls``."""
    forward = module.forward
    module.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs (outside checkpointed blocks)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def test_activation_checkpointing_same_outputs_and_gradients():
    x = clip(shape=(2, 3, 8, 32, 32))
    runs = []
    for ckpt in (False, True):
        model = tiny(seed=3, activation_checkpointing=ckpt).train()
        calls = []
        _count_calls(model.encoder.levels[0][0].conv1, calls)
        _count_calls(model.decoder.mid[0].conv2, calls)
        saved, (recon, q) = _saved_bytes(lambda: model(x))
        loss = (recon - x).abs().mean() + q.loss
        loss.backward()
        assert len(calls) == (4 if ckpt else 2)  # checkpointed blocks run again in backward
        # parameter names as in the state dict (the checkpoint wrapper's own level left out)
        grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append((saved, recon.detach(), q.indices, loss.detach(), grads))
    (saved0, recon0, idx0, loss0, g0), (saved1, recon1, idx1, loss1, g1) = runs
    assert saved1 < 0.5 * saved0  # the blocks' activations are no longer kept
    torch.testing.assert_close(recon1, recon0, rtol=0, atol=1e-6)
    assert torch.equal(idx1, idx0)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 20
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=1e-6, msg=name)


def test_activation_checkpointing_is_off_in_eval_and_without_grad():
    model = tiny(activation_checkpointing=True)
    calls = []
    _count_calls(model.encoder.levels[0][0].conv1, calls)
    x = clip()
    with torch.no_grad():
        model.train()(x)
    model.eval()(x)[0].sum().backward()
    assert len(calls) == 2  # one evaluation each, nothing recomputed


def test_activation_checkpointing_leaves_config_and_state_dict_alone():
    from magvit_pl.models.config import build_from_config

    plain, model = tiny(), tiny(activation_checkpointing=True)
    assert is_checkpointed(model) and not is_checkpointed(plain)
    assert apply_activation_checkpointing(model) == 0  # idempotent: nothing left to wrap
    assert model.init_config == plain.init_config and "activation_checkpointing" not in model.init_config["init_args"]
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints look the same
    rebuilt = build_from_config(model.init_config)
    rebuilt.load_state_dict(model.state_dict())
    model.load_state_dict(plain.state_dict())
    old = {**plain.init_config, "init_args": {**plain.init_config["init_args"], "activation_checkpointing": True}}
    assert drop_legacy_flag(old) == plain.init_config  # configs written when it was a model flag still build
    build_from_config(drop_legacy_flag(old))


def test_discriminator_activation_checkpointing_with_r1():
    from magvit_pl.losses import r1_penalty
    from magvit_pl.models.config import build_from_config
    from magvit_pl.models.discriminator import StyleGANDiscriminator3D

    video = clip(shape=(2, 3, 4, 16, 16))
    runs = []
    for ckpt in (False, True):
        torch.manual_seed(4)
        disc = StyleGANDiscriminator3D(base_channels=4, num_frames=4, resolution=16)
        if ckpt:
            assert apply_activation_checkpointing(disc) == len(disc.blocks)
        real = video.clone().requires_grad_(True)
        logits = disc(real)
        loss = logits.mean() + r1_penalty(logits, real, cost=10.0)  # double backward through the blocks
        loss.backward()
        runs.append((logits.detach(), loss.detach(), [p.grad.clone() for p in disc.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=0, atol=1e-6)
    for a, b in zip(runs[0][2], runs[1][2]):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert "activation_checkpointing" not in build_from_config(disc.init_config).init_config["init_args"]


def test_norm_groups_sets_every_group_norm_and_zero_removes_them():
    def norms(tok):
        return [m for m in tok.modules() if isinstance(m, torch.nn.GroupNorm)]

    kw = dict(base_channels=16, channel_multipliers=(1, 2), num_res_blocks=1, embedding_dim=4,
              quantizer=LookupFreeQuantizer(4, norm_groups=0))
    paper = VQTokenizer(**kw)
    assert {m.num_groups for m in norms(paper)} == {16, 32}  # 32 groups: one channel each at width 16/32
    four = VQTokenizer(norm_groups=4, **kw)
    assert {m.num_groups for m in norms(four)} == {4} and four.init_config["init_args"]["norm_groups"] == 4
    none = VQTokenizer(norm_groups=0, **kw)
    assert norms(none) == [] and sum(p.numel() for p in none.parameters()) < sum(p.numel() for p in four.parameters())
    video = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    assert none(video)[0].shape == video.shape
    with pytest.raises(UserError, match="norm_groups"):
        VQTokenizer(norm_groups=-1, **kw)


# ---------------------------------------------------------------- causal (MAGVIT-v2 style) option
def test_causal_same_conv_pads_the_past_only():
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)
    expect = {"zeros": [3.0, 4.0, 6.0], "replicate": [3.0, 4.0, 6.0], "reflect": [3.0, 4.0, 6.0]}  # past: the first frame
    for mode, values in expect.items():
        conv = SameConv3d(1, 1, (3, 1, 1), bias=False, padding_mode=mode, causal=True)
        with torch.no_grad():
            conv.weight.fill_(1.0)  # sum of frames t-2, t-1, t
        assert conv(x).flatten().tolist() == values, mode
    assert not SameConv3d(1, 1, (1, 3, 3), causal=True).causal  # nothing to pad in time


@pytest.mark.parametrize("padding, groups", [("zeros", 0), ("reflect", 4)])
@pytest.mark.parametrize("grad", [False, True])  # the CPU fast path runs without autograd
def test_causal_tokenizer_sees_only_the_past(padding, groups, grad):
    kw = dict(padding_mode=padding, norm_groups=groups, temporal_downsample=(True, False))
    causal, centred = tiny(seed=3, causal=True, **kw).eval(), tiny(seed=3, **kw).eval()
    assert causal.init_config["init_args"]["causal"] is True
    x = clip(seed=4)
    y = x.clone()
    y[:, :, 2:] = clip(seed=5)[:, :, 2:]  # same first two frames, different future
    z = torch.randn(1, 8, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    z2 = z.clone()
    z2[:, :, 1:] = torch.randn(1, 8, 3, 8, 8, generator=torch.Generator().manual_seed(7))  # same first latent frame
    with torch.set_grad_enabled(grad):
        for model, is_causal in ((causal, True), (centred, False)):
            ex, ey = model.encoder(x), model.encoder(y)
            dx, dy = model.decoder(z), model.decoder(z2)
            if is_causal:  # latent frame 0 covers frames 0-1 and sees nothing later; frames 0-1 decode from it alone
                assert torch.equal(ex[:, :, 0], ey[:, :, 0]) and torch.equal(dx[:, :, :2], dy[:, :, :2])
                assert torch.equal(model.encode(x)[:, 0], model.encode(y)[:, 0])
            else:  # the centred model mixes the future into both
                assert (ex[:, :, 0] - ey[:, :, 0]).abs().max() > 1e-4 and (dx[:, :, :2] - dy[:, :, :2]).abs().max() > 1e-4
            assert (ex[:, :, 1] - ey[:, :, 1]).abs().max() > 1e-4 and (dx[:, :, 2:] - dy[:, :, 2:]).abs().max() > 1e-4


def test_causal_group_norm_is_per_frame_and_inflation_fills_the_present_slice():
    norms = [m for m in tiny(causal=True, norm_groups=4).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(type(m).__name__ == "FrameGroupNorm" for m in norms)
    w = torch.randn(4, 3, 1, 3, 3)
    c = inflate_kernel(w, 3, "central", causal=True)
    assert torch.equal(c[:, :, 2], w[:, :, 0]) and c[:, :, :2].abs().sum() == 0
    # a causal 3D model inflated from a 2D one without time pooling computes the 2D model frame by frame, on any clip
    model2d = tiny(seed=1, temporal_kernel_size=1, norm_groups=4).eval()
    model3d = tiny(seed=2, causal=True, norm_groups=4, temporal_downsample=(False, False)).eval()
    model3d.load_state_dict(inflate_state_dict(model2d.state_dict(), model3d, "central"))
    video = clip(seed=8, shape=(1, 3, 3, 32, 32))  # three different frames
    with torch.no_grad():
        per_frame = torch.cat([model2d.encoder(video[:, :, i:i + 1]) for i in range(3)], dim=2)
        assert torch.allclose(model3d.encoder(video), per_frame, atol=1e-5)


def test_decoder_only_causal_keeps_the_centred_encoder():
    model = tiny(seed=3, causal="decoder", temporal_downsample=(True, False)).eval()
    assert model.init_config["init_args"]["causal"] == "decoder"
    assert not model.encoder.conv_in.causal and model.decoder.conv_in.causal and model.decoder.conv_out.causal
    x, y = clip(seed=4), clip(seed=4).clone()
    y[:, :, 2:] = clip(seed=5)[:, :, 2:]
    z = torch.randn(1, 8, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    z2 = z.clone()
    z2[:, :, 1:] = 0.0
    with torch.no_grad():
        assert (model.encoder(x)[:, :, 0] - model.encoder(y)[:, :, 0]).abs().max() > 1e-4  # the encoder sees the future
        assert torch.equal(model.decoder(z)[:, :, :2], model.decoder(z2)[:, :, :2])  # the decoder does not
    with pytest.raises(UserError, match="causal"):
        tiny(causal="encoder")
