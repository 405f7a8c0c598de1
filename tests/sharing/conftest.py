"""Fixtures of the sharing and evaluation tests: a tiny tokenizer and MTM, each trained for a few steps by a real
Lightning ``Trainer`` in this process (seconds, unlike a CLI run), saved like a run's ``last.ckpt``; and a helper
that runs ``cli.py`` in this process and returns its exit code and stderr."""
from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Callable

import pytest
import torch


def _fit(module, data, run: Path, steps: int = 2, validate: bool = True):
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger

    seed_everything(0)
    trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=CSVLogger(str(run), name="", version=""),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1 if validate else 0,
                      val_check_interval=steps, check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=1,
                      default_root_dir=str(run))
    trainer.fit(module, data)
    ckpt = run / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def share_data(tmp_path_factory) -> Path:
    """4 train / 4 val / 4 test synthetic clips of 8×32² (8 classes), as prepared shards."""
    from magvit_pl.data.synthetic import ensure_default_dataset

    return ensure_default_dataset(tmp_path_factory.mktemp("share_data") / "data", num_train=4, num_val=4, num_test=4,
                                  num_frames=8, resolution=32, shard_size=4, workers=1)


@pytest.fixture(scope="session")
def tiny_models(share_data, tmp_path_factory) -> types.SimpleNamespace:
    """``.data`` (:func:`share_data`), ``.tokenizer_ckpt`` and ``.mtm_ckpt`` (Lightning checkpoints of a 2-step tiny tokenizer and a 2-step tiny MTM on it, with metrics.csv next to them)."""
    from magvit_pl.data import VideoDataModule
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.lit.mtm_options import OptimConfig
    from magvit_pl.lit.tokenizer import TokenizerModule
    from magvit_pl.models.quantizers.vq import VectorQuantizer
    from magvit_pl.models.tokenizer import VQTokenizer
    from magvit_pl.models.transformer import TransformerConfig
    from magvit_pl.sampling import SamplingConfig

    root, data_dir = tmp_path_factory.mktemp("sharing"), share_data
    data = lambda: VideoDataModule(data_dir=str(data_dir), num_frames=8, resolution=32, batch_size=2, eval_batch_size=4,  # noqa: E731
                                   train_samples_per_epoch=4, num_workers=0)
    torch.manual_seed(0)
    tokenizer = VQTokenizer(base_channels=8, channel_multipliers=[1, 2, 2], num_res_blocks=1, embedding_dim=16,
                            temporal_downsample=[True, False], quantizer=VectorQuantizer(codebook_size=64, embedding_dim=16))
    tok_ckpt = _fit(TokenizerModule(tokenizer=tokenizer, warmup_steps=1, val_fvd=False, num_media_clips=1), data(),
                    root / "runs" / "tokenizer" / "run")
    mtm = MTMModule(tokenizer_ckpt=str(tok_ckpt), num_classes=8, num_frames=8, resolution=32,
                    transformer=TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64),
                    optim=OptimConfig(warmup_steps=1), sampling=SamplingConfig(steps=4))
    mtm_ckpt = _fit(mtm, data(), root / "runs" / "mtm" / "run", validate=False)
    return types.SimpleNamespace(root=root, data=data_dir, tokenizer_ckpt=tok_ckpt, mtm_ckpt=mtm_ckpt)


@pytest.fixture(scope="session")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny tokenizer and MTM exported as model folders (fp32) by ``export --format safetensors``'s function."""
    from magvit_pl.run.export import export

    root = tmp_path_factory.mktemp("folders")
    return {kind: export(str(getattr(tiny_models, f"{kind}_ckpt")), str(root / kind), format="safetensors")
            for kind in ("tokenizer", "mtm")}


@pytest.fixture
def run_cli(capsys) -> Callable[[list[str]], tuple[int, list[str]]]:
    """``run_cli(args) -> (exit code, stderr lines)``: ``cli.py ARGS`` through ``magvit_pl.run.cli.main`` in this process;
    its stdout is left in ``run_cli.out``."""
    from magvit_pl.run.cli import main

    def run(args: list[str]) -> tuple[int, list[str]]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)  # set by a Lightning command for its DDP children
        captured = capsys.readouterr()
        run.out = captured.out
        return code, captured.err.strip().splitlines()

    return run


@pytest.fixture(scope="session")
def video_batch() -> dict[str, torch.Tensor]:
    """Two seeded clips of 8×32² in [-1, 1] with labels, the tiny models' input size."""
    g = torch.Generator().manual_seed(7)
    return {"video": torch.rand(2, 3, 8, 32, 32, generator=g) * 2 - 1, "label": torch.tensor([1, 5])}
