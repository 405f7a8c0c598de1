"""Checkpoint files, read and written without Lightning (its face, the Trainer plugin and the
checkpoint callback, is :mod:`magvit_pl.run.callbacks`).

Writing (:func:`save_checkpoint`) goes through the one crash-safe write, :func:`magvit_pl.run.files.atomic_path`,
with a temporary name that is never taken for a checkpoint, and reports a failed write by its cause.
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

from magvit_pl.run.errors import MissingFileError, UserError, first_line
from magvit_pl.run.files import atomic_path
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
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first_line(err, default=type(err).__name__)})") from None
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
        raise UserError(f"checkpoint {path}: its weights do not fit the model it records ({first_line(err, 2)[:300]})") from None


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


# ------------------------------------------------------------------------------------------- writing
def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically: the destination holds the previous file or the new one,
    never a partial one. The temporary file is anonymous (``.tmp-XXXX.partial``: neither ``last`` nor
    ``.ckpt`` in it, see :func:`~magvit_pl.run.files.atomic_path`), and a write that fails (ENOSPC, EDQUOT,
    EFBIG …) raises that OSError naming ``path``, where torch's zip writer would say only 'unexpected pos'."""
    path = Path(path)
    with atomic_path(path, anonymous=True) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        writer = _FdWriter(fd)
        try:
            torch.save(obj, writer)
        except Exception:
            if writer.error is not None:
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
            raise
        finally:
            os.close(fd)
    return path


class _FdWriter:
    """A minimal file object for ``torch.save`` that writes every byte and keeps the first OSError
    (ENOSPC, EDQUOT, EFBIG …): torch's zip writer swallows it and reports only 'unexpected pos'."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as err:
            self.error = err
            raise
        return len(view)

    def flush(self) -> None:
        pass
