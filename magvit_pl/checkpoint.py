"""Reading magvit-pl checkpoints without Lightning.

A Lightning checkpoint written by :class:`~magvit_pl.lit.tokenizer.TokenizerModule` carries, besides
the usual state, a ``"magvit"`` entry with the tokenizer's constructor config; its EMA weights (the
tokenizer used by stage 2) live under the ``ema_tokenizer.`` prefix of the state dict. Everything is
read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import torch

from magvit_pl.errors import MissingFileError, UserError
from magvit_pl.models.checkpointing import drop_legacy_flag
from magvit_pl.models.config import build_from_config

TOKENIZER_PREFIX = "ema_tokenizer."


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


def load_tokenizer(path: str | os.PathLike, use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the tokenizer of a tokenizer checkpoint (EMA weights by default), frozen, in eval mode.

    The result offers ``encode(video) -> tokens`` and ``decode(tokens) -> video``.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("magvit", {})
    if meta.get("kind") != "tokenizer":
        raise UserError(f"{path} is not a magvit-pl tokenizer checkpoint (kind={meta.get('kind')!r}); train one with: python cli.py fit --config configs/tokenizer.yaml")
    model = build_from_config(drop_legacy_flag(meta["tokenizer_config"]))
    prefix = TOKENIZER_PREFIX if use_ema else "tokenizer."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def latest_checkpoint(runs_root: str | os.PathLike = "runs", kind: str = "mtm") -> Path:
    """``RUNS_ROOT/KIND/latest/checkpoints/last.ckpt``, or a one-line error saying what to run first."""
    path = Path(runs_root) / kind / "latest" / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise MissingFileError(f"no {kind} checkpoint at {path}; train one first: "
                               f"python cli.py fit --config configs/{kind}.yaml (or pass --ckpt_path)")
    return path.resolve()
