"""Activation checkpointing, applied to a built network from outside (as torchtitan's ``apply_ac``).

The networks in :mod:`magvit_pl.models` know nothing of it: a LightningModule calls
:func:`apply_activation_checkpointing` in its ``configure_model`` when its ``activation_checkpointing``
option is on. Each residual block of the tokenizer (:class:`~magvit_pl.models.blocks.ResBlock`) and of
the discriminator (:class:`~magvit_pl.models.discriminator.DiscriminatorBlock`), and each transformer
block (:class:`~magvit_pl.models.transformer.Block`), is wrapped in PyTorch's ``CheckpointWrapper``: in
training with autograd recording, the block keeps only its input and runs its forward again in the
backward pass (non-reentrant ``torch.utils.checkpoint``, so R1's double backward works through it).
Outputs and gradients are unchanged; eval and ``no_grad`` run the block once, as before.

The wrapper strips its own prefix from ``state_dict`` keys (and adds it back on load), so checkpoints
look the same with and without it. Measured by ``benchmarks/memory.py`` (see ``benchmarks/README.md``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.utils.checkpoint import checkpoint

from magvit_pl.models.blocks import ResBlock
from magvit_pl.models.discriminator import DiscriminatorBlock
from magvit_pl.models.transformer import Block

#: The blocks wrapped by default: every residual block of the tokenizer and discriminator, every transformer block.
BLOCK_TYPES: tuple[type[nn.Module], ...] = (ResBlock, DiscriminatorBlock, Block)


def checkpoint_in_training(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``block(*args)``, recomputed in backward when ``block`` is training and autograd is recording."""
    if block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


def apply_activation_checkpointing(module: nn.Module, block_types: tuple[type[nn.Module], ...] = BLOCK_TYPES) -> int:
    """Wrap every submodule of ``module`` that is one of ``block_types``; returns how many were wrapped.

    Idempotent: a block already wrapped is left alone, so calling it again (Lightning may call
    ``configure_model`` more than once) changes nothing.
    """
    wrapped = 0
    for parent in list(module.modules()):
        if isinstance(parent, CheckpointWrapper):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, block_types):
                parent.register_module(name, checkpoint_wrapper(child, checkpoint_fn=checkpoint_in_training))
                wrapped += 1
    return wrapped


def is_checkpointed(module: nn.Module) -> bool:
    """Whether any block of ``module`` is wrapped by :func:`apply_activation_checkpointing`."""
    return any(isinstance(m, CheckpointWrapper) for m in module.modules())


def drop_legacy_flag(config: dict[str, Any]) -> dict[str, Any]:
    """A ``{"class_path", "init_args"}`` config without the ``activation_checkpointing`` init arg that
    tokenizer and discriminator configs carried before checkpointing moved out of the models (so
    checkpoints written then still build); nested configs included. Returns a new dict. Anything else is
    returned as it is, for :func:`~magvit_pl.models.config.build_from_config` to refuse."""
    if not isinstance(config, dict) or not isinstance(config.get("init_args", {}), dict):
        return config
    init_args = {k: drop_legacy_flag(v) if isinstance(v, dict) and "class_path" in v else v
                 for k, v in config.get("init_args", {}).items() if k != "activation_checkpointing"}
    return {**config, "init_args": init_args}
