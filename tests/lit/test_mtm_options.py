"""MTMModule's option groups: typed dataclasses in, plain data in the checkpoint, the old flat layout mapped."""
from __future__ import annotations

import io

import pytest
import torch

from magvit_pl.commit import CommitConfig
from magvit_pl.run.errors import UserError
from magvit_pl.lit.evaluation import EvalConfig
from magvit_pl.lit.mtm import MTMModule
from magvit_pl.lit.mtm_options import OptimConfig, TaskConfig, constructor_args, group_flat_hparams
from magvit_pl.models.checkpointing import is_checkpointed
from magvit_pl.models.quantizers import VectorQuantizer
from magvit_pl.models.tokenizer import VQTokenizer
from magvit_pl.models.transformer import TransformerConfig
from magvit_pl.sampling import SamplingConfig

OLD = {  # hyper-parameters as the flat layout saved them
    "tokenizer_ckpt": "runs/tokenizer/latest/checkpoints/last.ckpt", "num_classes": 8, "num_frames": 8, "resolution": 32,
    "tasks": ["frame_prediction", "outpainting_central"], "num_cond_frames": 2, "hidden_dim": 32, "num_layers": 2,
    "num_heads": 2, "mlp_dim": 64, "dropout": 0.1, "attention_dropout": 0.0, "pre_norm": False, "attention_backend": "sdpa",
    "activation_checkpointing": True, "mode": "naive", "mask_schedule": "linear", "loss_weights": [1.0, 2.0, 3.0],
    "label_smoothing": 0.1, "class_dropout_prob": 0.2, "lr": 0.001, "betas": [0.9, 0.99], "weight_decay": 0.01,
    "warmup_steps": 7, "min_lr_ratio": 0.1, "sample_steps": 4, "choice_temperature": 3.0, "sample_temperature": 0.5,
    "top_k": 5, "guidance_scale": 1.5, "eval_task": "outpainting", "num_media_clips": 2, "media_fps": 4,
    "max_consecutive_nonfinite": 3, "seed": 9, "token_cache_clips": 0, "_class_path": "magvit_pl.lit.mtm.MTMModule",
}


def test_old_flat_hparams_map_onto_the_groups():
    args = constructor_args(OLD)
    assert args["transformer"] == TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, dropout=0.1,
                                                    attention_dropout=0.0, pre_norm=False, attention_backend="sdpa")
    assert args["commit"] == CommitConfig(mode="naive", mask_schedule="linear", loss_weights=(1.0, 2.0, 3.0),
                                          label_smoothing=0.1, class_dropout_prob=0.2)
    assert args["optim"] == OptimConfig(lr=0.001, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=7, min_lr_ratio=0.1)
    assert args["sampling"] == SamplingConfig(steps=4, choice_temperature=3.0, temperature=0.5, top_k=5, guidance_scale=1.5)
    # saved before the layout option: every sequence had a task token
    assert args["tasks"] == TaskConfig(names=["frame_prediction", "outpainting_central"], num_cond_frames=2, task_token="always")
    assert args["evaluation"] == EvalConfig()  # the old layout had no protocol options
    rest = {k: v for k, v in args.items() if k not in ("transformer", "commit", "optim", "sampling", "tasks", "evaluation")}
    assert rest == {"tokenizer_ckpt": OLD["tokenizer_ckpt"], "num_classes": 8, "num_frames": 8, "resolution": 32,
                    "activation_checkpointing": True, "eval_task": "outpainting", "num_media_clips": 2, "media_fps": 4,
                    "max_consecutive_nonfinite": 3, "seed": 9, "token_cache_clips": 0}
    grouped = group_flat_hparams(OLD)
    assert group_flat_hparams(grouped) == grouped  # the grouped layout passes through


def test_unknown_field_of_a_group_is_one_line():
    with pytest.raises(UserError, match=r"model.transformer has unknown field\(s\) width; known: .*hidden_dim"):
        constructor_args({"transformer": {"width": 3}, "num_classes": 1})


def tiny_tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    tok = VQTokenizer(base_channels=8, channel_multipliers=(1, 2), embedding_dim=8, quantizer=VectorQuantizer(16, 8))
    return tok.eval().requires_grad_(False)


def test_built_from_python_the_checkpoint_holds_plain_data_and_checkpointing_is_applied():
    tasks = TaskConfig(names=["frame_prediction", "outpainting_central"], num_cond_frames=2, latent_rule="any")
    model = MTMModule("unused.ckpt", num_classes=3, num_frames=4, resolution=8, tasks=tasks,
                      transformer=TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32),
                      activation_checkpointing=True, tokenizer=tiny_tokenizer())
    model.configure_model()
    assert is_checkpointed(model.transformer) and model.vocab.size == 16 + 3 + 2 + 2 and model.grid == (2, 4, 4)
    buf = io.BytesIO()
    torch.save(dict(model.hparams), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # no dataclass (nor the tokenizer module) in a checkpoint
    assert saved["tasks"] == {"names": ["frame_prediction", "outpainting_central"], "num_cond_frames": 2, "latent_rule": "any",
                              "task_token": "auto", "shared_task_tokens": False, "weights": None, "schedule": "cycle"}
    assert saved["evaluation"] == {"num_samples": None, "num_repeats": 1}
    assert saved["transformer"]["hidden_dim"] == 16 and "tokenizer" not in saved
    assert constructor_args(saved)["transformer"] == model.transformer_config
    fp, opc = model.task("frame_prediction"), model.task("outpainting_central")
    assert (fp.num_cond_frames, fp.latent_rule, opc.latent_rule) == (2, "any", "any")  # each got what it declares
