"""Reading magvit-pl checkpoints without Lightning.

A Lightning checkpoint written by :class:`~magvit_pl.lit.tokenizer.TokenizerModule` carries, besides
the usual state, a ``"magvit"`` entry with the tokenizer's constructor config; its EMA weights (the
tokenizer used by stage 2) live under the ``ema_tokenizer.`` prefix of the state dict. Everything is
read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from magvit_pl.errors import MissingFileError, UserError
from magvit_pl.models.config import build_from_config

TOKENIZER_PREFIX = "ema_tokenizer."


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated or foreign files and for folders."""
    path = Path(path)
    if path.is_dir():  # DeepSpeed / FSDP sharded checkpoints are folders
        raise UserError(f"checkpoint {path} is a folder (a sharded DeepSpeed or FSDP checkpoint); make one file of it first: "
                        f"python cli.py export --ckpt_path {path} --output FILE")
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({str(err).splitlines()[0]})") from None
    except Exception as err:  # pickle.UnpicklingError from weights_only for foreign objects
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain data; refusing to load it ({type(err).__name__})") from None


def load_tokenizer(path: str | os.PathLike, use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the tokenizer of a tokenizer checkpoint (EMA weights by default), frozen, in eval mode.

    The result offers ``encode(video) -> tokens`` and ``decode(tokens) -> video``.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("magvit", {})
    if meta.get("kind") != "tokenizer":
        raise UserError(f"{path} is not a magvit-pl tokenizer checkpoint (kind={meta.get('kind')!r}); train one with: python cli.py fit --config configs/tokenizer.yaml")
    model = build_from_config(meta["tokenizer_config"])
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
