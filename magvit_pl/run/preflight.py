"""Check (and where safe, fix) the ``trainer:`` part of a run's config before Lightning builds anything.

One call, :func:`check_trainer_config`, made by the CLI on the parsed trainer config of every Lightning
command. It turns hardware mistakes that Lightning would report as a deep traceback (or, worse, as
a hang or a run 500x slower than it should be) into one-line :class:`~magvit_pl.run.errors.UserError`\\ s,
and rewrites two settings in place, saying so in the log (a warning for the first, info for the second):

* ``precision`` ``bf16*`` / ``16*`` on a CPU run becomes ``32-true``: CPUs without native bf16 emulate
  it (measured ~500x slower than fp32 on the 2-core CI machine). The rewritten value is what the run
  uses and what its saved ``config.yaml`` records.
* the tokenizer under DDP gets ``find_unused_parameters=True``: its GAN step calls ``manual_backward``
  twice per batch, once for the generator and once for the discriminator, and each backward leaves
  the other network's parameters without gradients, which plain DDP rejects
  ("parameters that were not used in producing the loss").

What is refused:

* a DeepSpeed strategy without a CUDA GPU (DeepSpeed runs on CUDA only), or without the
  ``deepspeed`` package (``pip install 'magvit-pl[deepspeed]'``);
* a DeepSpeed strategy for training the tokenizer. Lightning's ``DeepSpeedStrategy`` hands exactly one
  optimizer to ``deepspeed.initialize``: ``_init_optimizers`` raises "DeepSpeed currently only supports
  single optimizer, single optional scheduler" (lightning/pytorch/strategies/deepspeed.py), and
  manual optimisation is supported with that single optimizer only (Lightning PR #7970). The
  tokenizer has two (generator, discriminator). Train it with DDP; DeepSpeed is for the MTM, which
  has one optimizer and automatic optimisation;
* FSDP without a CUDA GPU (Lightning's FSDP strategy requires ``accelerator: gpu``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any, Mapping

import torch

from magvit_pl.lit.tokenizer import TokenizerModule
from magvit_pl.run.checks import check_args
from magvit_pl.run.errors import UserError

log = logging.getLogger(__name__)

CPU_CONFIGS = "--config configs/hardware/cpu.yaml (one process) or configs/hardware/cpu_ddp.yaml (2 processes, DDP)"
LOW_PRECISION = ("bf16", "16")  # prefixes of Lightning's half-precision flags: bf16-mixed, 16-mixed, bf16-true, 16 ...
# DDP strategy names whose registered variant with find_unused_parameters=True is "<name>_find_unused_parameters_true"
DDP_NAMES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
# numeric Trainer arguments that Lightning checks late (a division by zero mid-run) or not at all (magvit_pl.run.checks)
TRAINER_RULES = {
    "max_steps": ">= -1", "max_epochs": ">= -1", "min_steps": ">= 0", "min_epochs": ">= 0", "num_nodes": ">= 1",
    "val_check_interval": "> 0", "check_val_every_n_epoch": ">= 1", "log_every_n_steps": ">= 1",
    "accumulate_grad_batches": ">= 1", "gradient_clip_val": ">= 0", "num_sanity_val_steps": ">= -1",
    "limit_train_batches": ">= 0", "limit_val_batches": ">= 0", "limit_test_batches": ">= 0", "limit_predict_batches": ">= 0",
}


def _cuda() -> bool:
    return torch.cuda.is_available()


def _deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _name(value: Any) -> str:
    """A strategy/accelerator flag as text: the string itself, a ``class_path``, or an object's class name."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) or hasattr(value, "get"):  # dict or jsonargparse Namespace
        class_path = value.get("class_path")
        if class_path:
            return str(class_path)
    return type(value).__name__


def is_deepspeed(strategy: Any) -> bool:
    """True for ``deepspeed``, ``deepspeed_stage_*`` and a ``DeepSpeedStrategy`` class path or object."""
    name = _name(strategy)
    return name.startswith("deepspeed") or name.rsplit(".", 1)[-1] == "DeepSpeedStrategy"


def is_fsdp(strategy: Any) -> bool:
    """True for ``fsdp``, ``fsdp_cpu_offload`` and an ``FSDPStrategy`` class path or object."""
    name = _name(strategy)
    return name.startswith("fsdp") or name.rsplit(".", 1)[-1] == "FSDPStrategy"


def _is_tokenizer(model_class_path: str | None) -> bool:
    """Whether the model is the GAN-trained tokenizer (or a subclass of it)."""
    if not model_class_path:
        return False
    module, _, name = model_class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return name == "TokenizerModule"
    return isinstance(cls, type) and issubclass(cls, TokenizerModule)


def _process_count(trainer_cfg: Any, accelerator: str) -> int:
    """Processes that ``devices`` x ``num_nodes`` asks for (``-1``/``auto`` counted on this machine)."""
    devices = trainer_cfg.get("devices", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda())
    if devices in (-1, "-1", "auto", None):
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            count = 1
    return count * int(trainer_cfg.get("num_nodes") or 1)


def _check_deepspeed(strategy: str, model_class_path: str | None, accelerator: str, subcommand: str) -> None:
    if subcommand == "fit" and _is_tokenizer(model_class_path):
        raise UserError(
            f"strategy {strategy} cannot train {model_class_path}: Lightning's DeepSpeed strategy supports one optimizer, "
            "and the tokenizer's GAN step uses two (generator + discriminator, manual optimisation); train the tokenizer "
            "with DDP (--config configs/hardware/gpu_ddp.yaml) and use DeepSpeed for the MTM (configs/mtm.yaml)"
        )
    if not _cuda() or accelerator == "cpu":
        where = "accelerator is cpu" if accelerator == "cpu" else "no CUDA GPU is visible"
        raise UserError(f"strategy {strategy} needs CUDA GPUs (DeepSpeed runs on CUDA only) but {where}; on CPU use {CPU_CONFIGS}")
    if not _deepspeed_installed():
        raise UserError(f"strategy {strategy} needs the deepspeed package, which is not installed: pip install 'magvit-pl[deepspeed]'")


def _find_unused_for_gan(trainer_cfg: Any, strategy_value: Any, strategy: str, accelerator: str) -> None:
    """Make a DDP strategy tolerate the tokenizer's two backward passes per batch (see the module docstring)."""
    if isinstance(strategy_value, str) or strategy_value is None:
        base = "ddp" if strategy == "auto" and _process_count(trainer_cfg, accelerator) > 1 else strategy
        if base not in DDP_NAMES:
            return
        new = f"{base}_find_unused_parameters_true"
        trainer_cfg["strategy"] = new
        _say(logging.INFO, f"strategy={strategy}: using {new} for the tokenizer (each of its two backward passes per batch "
                           "leaves the other network's parameters unused)")
    elif strategy.rsplit(".", 1)[-1] == "DDPStrategy":
        init_args = strategy_value.get("init_args")
        if init_args is None:
            strategy_value["init_args"] = init_args = type(strategy_value)()  # dict or Namespace, like its parent
        if not init_args.get("find_unused_parameters"):
            init_args["find_unused_parameters"] = True
            _say(logging.INFO, "DDPStrategy: setting find_unused_parameters=True for the tokenizer (two backward passes per batch)")


def _say(level: int, message: str) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP children re-run the same check: say it once per node
        log.log(level, message)


def check_trainer_config(trainer_cfg: Any, model_class_path: str | None, subcommand: str = "fit") -> None:
    """Validate the trainer config of one run, and adjust it in place where that is safe.

    Args:
        trainer_cfg: the subcommand's ``trainer`` config: a jsonargparse ``Namespace`` (as LightningCLI
            parses it) or a plain dict; ``strategy`` and ``precision`` may be rewritten in it.
        model_class_path: the ``model.class_path`` of the run (``magvit_pl.lit.tokenizer.TokenizerModule``, ...).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict`` (the one-optimizer limit of DeepSpeed only
            matters for ``fit``).

    Raises:
        UserError: a DeepSpeed strategy without CUDA, without the ``deepspeed`` package, or for training the
            tokenizer; an FSDP strategy without CUDA.
    """
    check_args("trainer", trainer_cfg, TRAINER_RULES)
    strategy_value = trainer_cfg.get("strategy")
    strategy = _name(strategy_value)
    accelerator = _name(trainer_cfg.get("accelerator")).lower()
    if is_deepspeed(strategy_value):
        _check_deepspeed(strategy, model_class_path, accelerator, subcommand)
    if is_fsdp(strategy_value) and (not _cuda() or accelerator == "cpu"):
        raise UserError(f"strategy {strategy} needs CUDA GPUs (Lightning's FSDP requires accelerator gpu) but "
                        f"{'accelerator is cpu' if accelerator == 'cpu' else 'no CUDA GPU is visible'}; on CPU use {CPU_CONFIGS}")

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not _cuda())
    precision = trainer_cfg.get("precision")
    if on_cpu and precision is not None and str(precision).startswith(LOW_PRECISION):
        trainer_cfg["precision"] = "32-true"
        _say(logging.WARNING, f"precision={precision} on CPU runs ~500x slower than fp32 here; using precision=32-true (set by magvit_pl.run.preflight)")

    if subcommand == "fit" and _is_tokenizer(model_class_path):
        _find_unused_for_gan(trainer_cfg, strategy_value, strategy, accelerator)
