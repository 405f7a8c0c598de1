"""The official recipes (issue 14): tokenizer loss balance, EMA, LeCam, Flax init, 2D → 3D initialisation of
generator, EMA and discriminator, the two-stage chain; MTM sequence layouts, task tokens, guidance's
unconditional task, what generate encodes."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from magvit_pl.run.errors import UserError
from magvit_pl.lit.mtm import MTMModule
from magvit_pl.lit.mtm_options import TaskConfig
from magvit_pl.lit.tokenizer import TokenizerModule
from magvit_pl.models.discriminator import StyleGANDiscriminator3D
from magvit_pl.models.quantizers import VectorQuantizer
from magvit_pl.models.tokenizer import VQTokenizer
from magvit_pl.models.transformer import TransformerConfig
from magvit_pl.sampling import SamplingConfig

REPO = Path(__file__).resolve().parents[2]


def tiny_tokenizer(tk: int = 3, seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    return VQTokenizer(base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1, embedding_dim=8,
                       temporal_kernel_size=tk, quantizer=VectorQuantizer(16, 8), norm_groups=4)


def tiny_disc(tk: int = 3, frames: int = 4, seed: int = 1) -> StyleGANDiscriminator3D:
    torch.manual_seed(seed)
    return StyleGANDiscriminator3D(base_channels=4, channel_multipliers=(2, 2), num_frames=frames, resolution=8, temporal_kernel_size=tk)


# ------------------------------------------------------------------------------------- tokenizer
def test_one_training_step_logs_the_official_loss_values_and_a_constant_ema():
    """Defaults: L2 and R1 equal the official [0, 1] values on the same batch, LeCam on batch means, EMA decay 0.999
    from the first step (the old defaults logged 4x the L2, 1/4 the R1 and moved the EMA with decay 0.1)."""
    from lightning.pytorch import Trainer

    torch.manual_seed(0)
    video = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    model = TokenizerModule(tiny_tokenizer(), tiny_disc(), val_fvd=False, warmup_steps=0, lecam_weight=0.001)
    assert model.lecam.mode == "batch_mean" and not model.hparams.ema_warmup
    with torch.no_grad():
        recon0, _ = model.tokenizer(video)
    u, u_rec = (video + 1) / 2, (recon0 + 1) / 2
    official_l2 = ((u - u_rec) ** 2).mean().item()
    uu = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.discriminator(2 * uu - 1).sum(), uu)
    official_r1 = 10.0 * g.pow(2).flatten(1).sum(1).mean().item()
    before = model.tokenizer.decoder.conv_out.weight.detach().clone()

    loader = torch.utils.data.DataLoader([{"video": v} for v in video], batch_size=2)
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, loader)
    logged = trainer.callback_metrics
    assert logged["train/recon"].item() == pytest.approx(official_l2, rel=1e-4)
    assert logged["train/r1"].item() == pytest.approx(official_r1, rel=1e-4)
    after = model.tokenizer.decoder.conv_out.weight.detach()
    assert not torch.equal(after, before)
    assert torch.allclose(model.ema_tokenizer.decoder.conv_out.weight, before + 0.001 * (after - before), atol=1e-7)


def test_flax_init_gives_lecun_normal_kernels_and_zero_biases():
    torch.manual_seed(0)
    tok = VQTokenizer(base_channels=32, channel_multipliers=(1, 1), num_res_blocks=1, embedding_dim=8, quantizer=VectorQuantizer(16, 8))
    module = TokenizerModule(tok, None, val_fvd=False, flax_init=True)
    w = module.tokenizer.encoder.levels[0][0].conv1.weight  # 32 -> 32, 3x3x3: fan_in 864, 27,648 values
    std = (1 / 864) ** 0.5
    assert w.std().item() == pytest.approx(std, rel=0.05)
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6  # truncated at 2 sigma of the unscaled normal
    assert all((m.bias == 0).all() for m in module.tokenizer.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None)
    assert torch.equal(module.ema_tokenizer.encoder.levels[0][0].conv1.weight, w)  # the EMA starts from the init
    plain = TokenizerModule(tiny_tokenizer(), None, val_fvd=False)
    assert any((m.bias != 0).any() for m in plain.tokenizer.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None)


def _two_d_checkpoint(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A TokenizerModule-style checkpoint of a 2D run: generator, a different EMA, a 2D discriminator."""
    gen, ema, disc = tiny_tokenizer(tk=1, seed=1), tiny_tokenizer(tk=1, seed=2), tiny_disc(tk=1, frames=1, seed=3)
    parts = {"tokenizer.": gen.state_dict(), "ema_tokenizer.": ema.state_dict(), "discriminator.": disc.state_dict()}
    torch.save({"state_dict": {p + k: v for p, sd in parts.items() for k, v in sd.items()}}, path)
    return parts


def test_init_from_a_2d_run_inflates_generator_ema_and_discriminator(tmp_path, caplog):
    parts = _two_d_checkpoint(tmp_path / "2d.ckpt")
    model = TokenizerModule(tiny_tokenizer(), tiny_disc(), val_fvd=False)
    done = model.init_from_checkpoint(str(tmp_path / "2d.ckpt"))
    assert done == ["tokenizer", "ema (from the checkpoint's EMA)", "discriminator"]

    def check(module: torch.nn.Module, sd2d: dict[str, torch.Tensor], key: str) -> None:
        w3, w2 = module.state_dict()[key], sd2d[key]
        assert w3.shape[2] == 3 and w2.shape[2] == 1
        assert torch.equal(w3[:, :, 1], w2[:, :, 0])  # central inflation: the 2D kernel in the middle slice
        assert not w3[:, :, 0].any() and not w3[:, :, 2].any()

    check(model.tokenizer, parts["tokenizer."], "encoder.conv_in.weight")
    check(model.ema_tokenizer, parts["ema_tokenizer."], "encoder.conv_in.weight")  # from the 2D EMA, not the 2D generator
    assert not torch.equal(model.ema_tokenizer.encoder.conv_in.weight, model.tokenizer.encoder.conv_in.weight)
    check(model.discriminator, parts["discriminator."], "conv_in.weight")
    check(model.discriminator, parts["discriminator."], "blocks.0.conv1.weight")
    assert torch.equal(model.discriminator.fc.weight, parts["discriminator."]["fc.weight"])  # same size: copied
    assert torch.equal(model.tokenizer.quantizer.codebook, parts["tokenizer."]["quantizer.codebook"])

    # a discriminator whose Dense layer has another size keeps its fresh one (as the official code, with a warning)
    wide = tiny_disc(frames=8)  # 8 frames -> 2 after two blocks: the Dense input doubles
    fresh_fc = wide.fc.weight.detach().clone()
    model = TokenizerModule(tiny_tokenizer(), wide, val_fvd=False)
    with caplog.at_level(logging.WARNING, logger="magvit_pl.models.inflation"):
        model.init_from_checkpoint(str(tmp_path / "2d.ckpt"))
    assert torch.equal(model.discriminator.fc.weight, fresh_fc) and "fc.weight" in caplog.text
    check(model.discriminator, parts["discriminator."], "conv_in.weight")

    # init_prefix reads one tokenizer for both tokenizer and EMA and leaves the discriminator alone
    disc = tiny_disc()
    d0 = disc.conv_in.weight.detach().clone()
    model = TokenizerModule(tiny_tokenizer(), disc, val_fvd=False, init_prefix="ema_tokenizer.")
    assert model.init_from_checkpoint(str(tmp_path / "2d.ckpt")) == ["tokenizer", "ema (from its tokenizer)"]
    check(model.tokenizer, parts["ema_tokenizer."], "encoder.conv_in.weight")
    assert torch.equal(model.discriminator.conv_in.weight, d0)


def test_the_two_stage_recipe_runs_through_the_cli(tiny_tokenizer_args, data_args, tmp_path, caplog):
    """2D stage (configs/paper/tokenizer_2d.yaml over the demo tokenizer) → 3D run initialised from it."""
    from magvit_pl.run.cli import main

    common = ["--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
              *tiny_tokenizer_args, *data_args]
    main(["fit", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--config", str(REPO / "configs" / "paper" / "tokenizer_2d.yaml"),
          "--run_dir", str(tmp_path / "2d"), "--trainer.max_steps", "2", *common, "--data.init_args.frame_stride", "2"])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    ckpt = tmp_path / "2d" / "checkpoints" / "last.ckpt"
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    assert sd["tokenizer.encoder.conv_in.weight"].shape[2] == 1 and sd["discriminator.conv_in.weight"].shape[2] == 1
    with caplog.at_level(logging.INFO, logger="magvit_pl.lit.tokenizer"):
        main(["fit", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--run_dir", str(tmp_path / "3d"), "--trainer.max_steps", "1",
              *common, "--model.init_args.init_from", str(ckpt)])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    assert "tokenizer, ema (from the checkpoint's EMA), discriminator" in caplog.text
    sd3 = torch.load(tmp_path / "3d" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert sd3["tokenizer.encoder.conv_in.weight"].shape[2] == 3


# ------------------------------------------------------------------------------------------- MTM
def mtm(names: list[str], num_classes: int = 3, **tasks) -> MTMModule:
    model = MTMModule("unused.ckpt", num_classes=num_classes, num_frames=4, resolution=8, tasks=TaskConfig(names=names, **tasks),
                      transformer=TransformerConfig(hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32),
                      sampling=SamplingConfig(steps=2), tokenizer=tiny_tokenizer().eval().requires_grad_(False))
    model.configure_model()
    return model


def test_single_task_model_sees_class_then_video_tokens():
    from magvit_pl.lit.mtm_batch import commit_step, tokenize

    single = mtm(["class_generation"])
    assert single.vocab.prefix_len == 1 and not single.vocab.task_token
    n = 2 * 4 * 4  # token grid of 4x8x8 clips
    assert single.transformer.seq_len == 1 + n and single.vocab.size == 16 + 3 + 2  # codes, classes, UNCOND, MASK
    video = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    inputs = tokenize(single.tokenizer, single.vocab, single.task("class_generation"), video, torch.tensor([0, 2]))
    assert inputs.prefix.tolist() == [[16], [18]]  # [class] only: codes 0..15, classes 16..18
    loss, _, _ = commit_step(single.transformer, inputs, single.vocab, single.commit_config)
    assert torch.isfinite(loss)
    assert mtm(["class_generation"], task_token="always").vocab.prefix_len == 2
    assert mtm(["class_generation", "frame_prediction"]).vocab.prefix_len == 2  # auto: several tasks have a token
    with pytest.raises(UserError, match="one task only"):
        mtm(["class_generation", "frame_prediction"], task_token="never")


def test_shared_task_tokens_and_checks_of_the_task_options():
    names = ["frame_prediction", "outpainting_central", "inpainting_central"]
    shared, own = mtm(names, shared_task_tokens=True), mtm(names)
    assert shared.vocab.task_id("outpainting_central") == shared.vocab.task_id("inpainting_central") != shared.vocab.task_id("frame_prediction")
    assert len({own.vocab.task_id(n) for n in names}) == 3 and own.vocab.size == shared.vocab.size + 1
    with pytest.raises(UserError, match="num_classes=0 .* class_generation is class-conditional"):
        mtm(["class_generation", "frame_prediction"], num_classes=0)
    assert mtm(["frame_prediction"], num_classes=0).vocab.uncond == 16  # BAIR: no class tokens, UNCOND only
    with pytest.raises(UserError, match="weights names outpainting_central, not among"):
        mtm(["frame_prediction"], weights={"outpainting_central": 2.0})
    weighted = mtm(names, weights={"frame_prediction": 2.0}, schedule="official")
    assert weighted.schedule.sequence.count("frame_prediction") == 200 and len(weighted.schedule.sequence) == 400


class _Recorder(torch.nn.Module):
    """Wraps a transformer and keeps every input it is given."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, ids, *args, **kwargs):
        self.inputs.append(ids.clone())
        return self.inner(ids, *args, **kwargs)


def test_guidance_unconditional_pass_uses_the_generation_task_token():
    model = mtm(["class_generation", "frame_prediction"])
    model.sampling_config = SamplingConfig(steps=2, guidance_scale=1.5)
    model.transformer = _Recorder(model.transformer)
    batch = {"video": torch.rand(2, 3, 4, 8, 8) * 2 - 1, "label": torch.tensor([0, 1])}
    model.generate(batch, "frame_prediction", seed=0)
    ids = model.transformer.inputs[0]  # (2B, P + N): the conditional then the unconditional sequences
    v = model.vocab
    assert ids[:2, :2].tolist() == [[v.task_id("frame_prediction"), v.uncond]] * 2
    assert ids[2:, :2].tolist() == [[v.task_id("class_generation"), v.uncond]] * 2  # official: full generation
    other = mtm(["frame_prediction", "outpainting_central"])
    other.sampling_config = SamplingConfig(steps=2, guidance_scale=1.5)
    other.transformer = _Recorder(other.transformer)
    other.generate(batch, "outpainting_central", seed=0)
    assert other.transformer.inputs[0][2:, 0].tolist() == [other.vocab.task_id("outpainting_central")] * 2  # no generation task: its own


def test_generate_encodes_only_the_condition_video():
    model = mtm(["class_generation", "frame_prediction"])
    calls = []
    encode = model.tokenizer.encode
    model.tokenizer.encode = lambda v: calls.append(v.clone()) or encode(v)
    batch = {"video": torch.rand(2, 3, 4, 8, 8) * 2 - 1, "label": torch.tensor([0, 1])}
    out = model.generate(batch, "class_generation", seed=0)
    assert calls == [] and out.inputs.z is None  # nothing given: nothing to encode
    model.generate(batch, "frame_prediction", seed=0)
    assert len(calls) == 1  # Ṽ only, not the ground-truth clip
    cond = model.task("frame_prediction").build_condition(batch["video"]).video
    assert torch.equal(calls[0], cond)
