"""Reading magvit-pl checkpoints without Lightning.

A Lightning checkpoint written by :class:`~magvit_pl.lit.tokenizer.TokenizerModule` carries, besides
the usual state, a ``"magvit"`` entry with the tokenizer's constructor config; its EMA weights (the
tokenizer used by stage 2) live under the ``ema_tokenizer.`` prefix of the state dict. Everything is
read with ``torch.load(weights_only=True)``, and what the file names is data, never code: the recorded model
config builds only allow-listed classes (:mod:`magvit_pl.models.config`), the hyper-parameters LightningCLI
rebuilds a model from may name only this package's modules (:func:`checked_hparams`), and a run's
``config.yaml`` found next to a checkpoint may name only the classes runs record (:func:`check_run_config`).
Anything else is a one-line :class:`~magvit_pl.run.errors.UserError` before anything is built.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import torch

from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.models.checkpointing import drop_legacy_flag
from magvit_pl.models.config import build_from_config, check_config, check_values

TOKENIZER_PREFIX = "ema_tokenizer."
# the LightningModules a checkpoint's hyper_parameters["_class_path"] may name (LightningCLI rebuilds that class)
LIGHTNING_MODULES = {"tokenizer": "magvit_pl.lit.tokenizer.TokenizerModule", "mtm": "magvit_pl.lit.mtm.MTMModule"}
DATA_MODULES = ("magvit_pl.data.VideoDataModule", "magvit_pl.data.datamodule.VideoDataModule")
# Lightning's own allow-list of hyper_parameters["_instantiator"] (lightning.pytorch.core.saving._ALLOWED_INSTANTIATORS)
INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)
TRAIN_HINT = {"tokenizer": "python cli.py fit --config configs/tokenizer.yaml", "mtm": "python cli.py fit --config configs/mtm.yaml"}


@contextlib.contextmanager
def checkpoint_read_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn what ``torch.load`` raises for a bad file into one-line errors naming ``path``: missing,
    foreign objects (refused by ``weights_only``; the refused global is named), truncated or corrupt,
    or not a torch file at all. Shared by :func:`load_checkpoint` and the CLI's checkpoint plugin."""
    try:
        yield
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint not found: {path}") from None
    except pickle.UnpicklingError as err:
        refused = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln), "UnpicklingError")
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain data; refusing to load it ({refused})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # a zip cut near its end: "negative seek value"
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first})") from None
    except Exception as err:  # e.g. a text file: the legacy reader fails on its "magic number"
        raise UserError(f"checkpoint {path} is not a torch checkpoint; refusing to load it ({type(err).__name__})") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated or foreign files and for folders."""
    path = Path(path)
    if path.is_dir():  # DeepSpeed / FSDP sharded checkpoints are folders
        raise UserError(f"checkpoint {path} is a folder (a sharded DeepSpeed or FSDP checkpoint); make one file of it first: "
                        f"python cli.py export --ckpt_path {path} --output FILE")
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    with checkpoint_read_errors(path):
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_of(ckpt: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict``, checked to be a dict of named tensors (one-line error otherwise)."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict holding other things than named tensors"
        raise UserError(f"checkpoint {path}: its 'state_dict' must be a dict of named tensors, found {found}")
    return state


def read_model_checkpoint(path: str | os.PathLike, kind: str, cls: type | None = None) -> tuple[dict, dict, dict]:
    """``(magvit entry, hyper-parameters, state dict)`` of a magvit-pl checkpoint of ``kind`` (tokenizer, mtm), all checked.

    The recorded model config (``magvit.tokenizer_config``) must pass :func:`~magvit_pl.models.config.check_config`
    (allow-listed classes, plain values), and with ``cls`` the hyper-parameters must be plain data naming only
    arguments of ``cls``: nothing in the file is built before all of it was checked.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("magvit") if isinstance(ckpt, dict) else None
    found = meta.get("kind") if isinstance(meta, dict) else None
    if found != kind:
        raise UserError(f"{path} is not a magvit-pl {kind} checkpoint (kind={found!r}); train one with: {TRAIN_HINT[kind]}")
    check_config(meta.get("tokenizer_config"), f"checkpoint {path}")
    hparams = checked_hparams(ckpt.get("hyper_parameters", {}), f"checkpoint {path}")
    hparams = {k: v for k, v in hparams.items() if not (isinstance(k, str) and k.startswith("_"))}
    if cls is not None:
        check_init_kwargs(cls, hparams, f"checkpoint {path}")
    return meta, hparams, state_dict_of(ckpt, path)


def checked_hparams(hparams: Any, source: str, allowed: tuple[str, ...] = tuple(LIGHTNING_MODULES.values())) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` once checked: a dict of plain data whose ``_class_path`` (if any) is in
    ``allowed`` (this package's LightningModules; :data:`DATA_MODULES` for ``datamodule_hyper_parameters``), whose
    ``_instantiator`` is Lightning's own, and whose nested configs name only allow-listed classes. Returned as given;
    a one-line :class:`UserError` otherwise."""
    if not isinstance(hparams, dict):
        raise UserError(f"{source}: its hyper-parameters must be a dict, found {type(hparams).__name__}")
    class_path = hparams.get("_class_path")
    if class_path is not None and class_path not in allowed:
        raise UserError(f"{source} names the class {class_path!r}, which magvit-pl does not build from a file; "
                        f"allowed: {', '.join(allowed)}")
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in INSTANTIATORS:
        raise UserError(f"{source} names the instantiator {instantiator!r}; only {', '.join(INSTANTIATORS)} is allowed")
    check_values({k: v for k, v in hparams.items() if k not in ("_class_path", "_instantiator")}, source)
    return hparams


def lightning_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``hyper_parameters`` of the Lightning checkpoint file at ``path`` (what LightningCLI merges into
    the config of ``fit``/``test --ckpt_path``); one-line errors for unreadable files, files that are not Lightning
    checkpoints (Lightning's loader fails on them with a KeyError deep inside) and disallowed contents."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (no 'pytorch-lightning_version' entry); "
                        "a run's checkpoint or an inference file made by `export` has one, a plain state dict does not")
    state_dict_of(ckpt, path)
    return checked_hparams(ckpt.get("hyper_parameters", {}), f"checkpoint {path}")


def check_init_kwargs(cls: type, kwargs: dict, source: str) -> None:
    """One-line error unless every key of ``kwargs`` names an argument of ``cls``."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if not isinstance(k, str) or (k not in params and not takes_any)]
    if unknown:
        raise UserError(f"{source}: hyper-parameters {unknown[:3]} are not arguments of {cls.__name__}; refusing it")


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict(state_dict)`` with a one-line error when the weights do not fit the module."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise UserError(f"checkpoint {path}: its weights do not fit the model it records ({' '.join(lines[:2])[:300]})") from None


def load_tokenizer(path: str | os.PathLike, use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the tokenizer of a tokenizer checkpoint (EMA weights by default), frozen, in eval mode.

    The result offers ``encode(video) -> tokens`` and ``decode(tokens) -> video``. Only allow-listed classes
    are built from the checkpoint's recorded config (see :mod:`magvit_pl.models.config`).
    """
    meta, _, state_dict = read_model_checkpoint(path, "tokenizer")
    model = build_from_config(drop_legacy_flag(meta["tokenizer_config"]), f"checkpoint {path}")
    prefix = TOKENIZER_PREFIX if use_ema else "tokenizer."
    load_weights(model, {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, path)
    return model.eval().requires_grad_(False)


def latest_checkpoint(runs_root: str | os.PathLike = "runs", kind: str = "mtm") -> Path:
    """``RUNS_ROOT/KIND/latest/checkpoints/last.ckpt``, or a one-line error saying what to run first.

    ``latest`` must lead to a run folder inside ``RUNS_ROOT/KIND`` (never to a file elsewhere)."""
    path = Path(runs_root) / kind / "latest" / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise MissingFileError(f"no {kind} checkpoint at {path}; train one first: "
                               f"python cli.py fit --config configs/{kind}.yaml (or pass --ckpt_path)")
    resolved = path.resolve()
    if resolved.parent.parent.parent != (Path(runs_root) / kind).resolve():
        raise UserError(f"{path} leads to {resolved}, outside {Path(runs_root) / kind}; pass --ckpt_path explicitly if you trust it")
    return resolved


# --------------------------------------------------------------------- config.yaml found next to a checkpoint
# What a run's config.yaml may name when `test`/`validate` pick it up by themselves (no --config): the classes
# this package's runs record, and Lightning's three distributed strategies the shipped hardware configs use.
RUN_CONFIG_CLASSES = (
    *LIGHTNING_MODULES.values(), "magvit_pl.data.VideoDataModule", "magvit_pl.data.datamodule.VideoDataModule",
    "magvit_pl.losses.PerceptualLoss", "lightning.pytorch.strategies.DDPStrategy",
    "lightning.pytorch.strategies.DeepSpeedStrategy", "lightning.pytorch.strategies.FSDPStrategy",
)
# FSDP arguments that jsonargparse resolves to imported classes or callables: only these block classes
FSDP_POLICY_ARGS = ("auto_wrap_policy", "activation_checkpointing_policy", "activation_checkpointing")
FSDP_BLOCKS = ("magvit_pl.models.transformer.Block", "magvit_pl.models.blocks.ResBlock",
               "magvit_pl.models.discriminator.DiscriminatorBlock")


def check_run_config(path: str | os.PathLike) -> None:
    """One-line error unless the ``config.yaml`` at ``path`` names only classes magvit-pl trusts.

    ``test``/``validate --ckpt_path X`` read ``X/../../config.yaml`` without being told to, and that file can
    come from outside with the checkpoint. Every ``class_path`` in it must be in :data:`RUN_CONFIG_CLASSES` or
    on the model allow-list, FSDP policies may name only this package's blocks, and no value may point at
    another config file (jsonargparse would read it). A config given with ``--config`` is the user's own choice
    and is not restricted.
    """
    import yaml

    from magvit_pl.models.config import allowed_class

    hint = f"if you trust it, pass it explicitly: --config {path}"
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a readable YAML config ({type(err).__name__})") from None

    def walk(value: Any, where: str, depth: int = 0) -> None:
        if depth > 64:
            raise UserError(f"{path}: nested deeper than 64 levels at {where}; {hint}")
        if isinstance(value, dict):
            class_path = value.get("class_path")
            if class_path is not None and class_path not in RUN_CONFIG_CLASSES and (
                    not isinstance(class_path, str) or allowed_class(class_path) is None):
                raise UserError(f"{path} (found next to the checkpoint) names class {class_path!r} at {where}, which is not "
                                f"among the classes magvit-pl runs record; {hint}")
            if class_path == "lightning.pytorch.strategies.FSDPStrategy":
                for arg in FSDP_POLICY_ARGS:
                    policy = (value.get("init_args") or {}).get(arg)
                    items = policy if isinstance(policy, list) else [policy]
                    if policy is not None and not isinstance(policy, bool) and not all(p in FSDP_BLOCKS for p in items):
                        raise UserError(f"{path} (found next to the checkpoint): FSDP {arg} {policy!r} names other classes than "
                                        f"{', '.join(FSDP_BLOCKS)}; {hint}")
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key), depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]", depth + 1)
        elif isinstance(value, str) and value.lower().endswith((".yaml", ".yml", ".json", ".jsonnet")):
            raise UserError(f"{path} (found next to the checkpoint) refers to another config file {value!r} at {where}; {hint}")

    walk(config, "")
