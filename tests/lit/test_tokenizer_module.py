"""TokenizerModule: a shrunk real config trained through the CLI; checkpoint → tokenizer without Lightning."""
from __future__ import annotations

import csv

import pytest
import torch

from magvit_pl.run.checkpoint import load_checkpoint, load_tokenizer
from magvit_pl.run.errors import NonFiniteLossError, UserError
from magvit_pl.lit.common import NonFiniteGuard, update_ema


def test_run_directory_holds_config_metrics_checkpoints_and_media(tokenizer_run):
    assert (tokenizer_run / "config.yaml").is_file()
    assert (tokenizer_run / "checkpoints" / "last.ckpt").is_file()
    media = sorted(p.name for p in (tokenizer_run / "media").iterdir())
    assert any(n.startswith("reconstruction_") and n.endswith(".mp4") for n in media)
    assert any(n.startswith("reconstruction_") and n.endswith(".gif") for n in media)
    png = (tokenizer_run / "media" / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    rows = list(csv.DictReader(open(tokenizer_run / "metrics.csv")))
    psnr = [float(r["val/psnr"]) for r in rows if r.get("val/psnr")]
    assert psnr and all(5.0 < p < 60.0 for p in psnr)
    losses = [float(r["train/recon"]) for r in rows if r.get("train/recon")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # the discriminator switched on (disc_start_step 1) and R1 / LeCam were computed
    assert any(r.get("train/d_gan") for r in rows)


def test_reloaded_checkpoint_reproduces_encode_bit_for_bit(tokenizer_run):
    ckpt = tokenizer_run / "checkpoints" / "last.ckpt"
    torch.manual_seed(0)
    video = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    a, b = load_tokenizer(ckpt), load_tokenizer(ckpt)
    tokens = a.encode(video)
    assert tokens.shape == (2, 4, 8, 8) and tokens.dtype == torch.long
    assert torch.equal(tokens, b.encode(video))
    recon = a.decode(tokens)
    assert recon.shape == video.shape
    assert torch.equal(recon, b.decode(tokens))
    assert not any(p.requires_grad for p in a.parameters())


def test_ema_weights_are_the_tokenizer_and_differ_from_raw(tokenizer_run):
    ckpt = load_checkpoint(tokenizer_run / "checkpoints" / "last.ckpt")
    assert ckpt["magvit"]["kind"] == "tokenizer"
    sd = ckpt["state_dict"]
    raw = {k[len("tokenizer."):]: v for k, v in sd.items() if k.startswith("tokenizer.")}
    ema = {k[len("ema_tokenizer."):]: v for k, v in sd.items() if k.startswith("ema_tokenizer.")}
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    assert not any(k.startswith("perceptual.net") for k in sd)  # frozen perceptual nets are not saved


def test_truncated_checkpoint_is_a_clear_error(tokenizer_run, tmp_path):
    data = (tokenizer_run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_tokenizer(bad)


def test_update_ema_matches_formula():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, model, decay=0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight.detach())


def test_nonfinite_guard_skips_then_stops_naming_step_and_term():
    guard = NonFiniteGuard(max_consecutive=3)
    ok = {"recon": torch.tensor(1.0)}
    bad = {"recon": torch.tensor(1.0), "gan": torch.tensor(float("nan"))}
    assert guard.check(0, ok)
    assert not guard.check(1, bad) and not guard.check(2, bad)
    assert guard.check(3, ok) and guard.consecutive == 0  # a good step resets the run of bad ones
    assert not guard.check(4, bad) and not guard.check(5, bad)
    with pytest.raises(NonFiniteLossError, match=r"gan.*step 6"):
        guard.check(6, bad)
    assert guard.total == 5


def test_validation_reports_reconstruction_fvd_when_i3d_is_fetched(tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, Dataset

    from magvit_pl.run.errors import MissingWeightsError
    from magvit_pl.lit.tokenizer import TokenizerModule
    from magvit_pl.models.quantizers.vq import VectorQuantizer
    from magvit_pl.models.tokenizer import VQTokenizer
    from magvit_pl.run.weights import weight_path

    try:
        weight_path("i3d")
    except MissingWeightsError:
        pytest.skip("I3D weights not fetched (python cli.py fetch-weights i3d)")

    class Clips(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"video": torch.rand(3, 12, 32, 32, generator=g) * 2 - 1, "label": 0}

    torch.manual_seed(0)
    tok = VQTokenizer(base_channels=8, channel_multipliers=(1, 2), embedding_dim=8, quantizer=VectorQuantizer(codebook_size=16, embedding_dim=8))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    (result,) = trainer.validate(TokenizerModule(tok, None), DataLoader(Clips(), batch_size=2))
    # an untrained tokenizer reconstructs noise as a blur: far from the real clips in I3D space
    assert result["val/fvd"] > 10.0
    assert 0.0 < result["val/psnr"] < 20.0


def test_activation_checkpointing_is_applied_in_configure_model_and_changes_no_step(tmp_path):
    """The option lives on the LightningModule; configure_model wraps the tokenizer's and the discriminator's
    residual blocks (not the EMA copy); two training steps give the same weights with it on or off."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from magvit_pl.lit.tokenizer import TokenizerModule
    from magvit_pl.models.checkpointing import is_checkpointed
    from magvit_pl.models.discriminator import StyleGANDiscriminator3D
    from magvit_pl.models.quantizers.vq import VectorQuantizer
    from magvit_pl.models.tokenizer import VQTokenizer

    g = torch.Generator().manual_seed(0)
    clips = [{"video": torch.rand(3, 4, 16, 16, generator=g) * 2 - 1} for _ in range(4)]
    states = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        tok = VQTokenizer(base_channels=8, channel_multipliers=(1, 2), embedding_dim=8, quantizer=VectorQuantizer(16, 8))
        disc = StyleGANDiscriminator3D(base_channels=4, num_frames=4, resolution=16)
        module = TokenizerModule(tok, disc, warmup_steps=1, activation_checkpointing=ckpt, val_fvd=False)
        trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path))
        torch.manual_seed(1)
        trainer.fit(module, DataLoader(clips, batch_size=2))
        assert is_checkpointed(module.tokenizer) == ckpt and is_checkpointed(module.discriminator) == ckpt
        assert not is_checkpointed(module.ema_tokenizer)
        states.append(module.state_dict())
    assert list(states[0]) == list(states[1])  # same checkpoint keys
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=1e-5, msg=key)
