"""magvit-pl: MAGVIT in PyTorch Lightning.

``magvit_pl.load_tokenizer(path)`` rebuilds the tokenizer of a checkpoint (``encode`` / ``decode``);
docs/architecture.md maps the package.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_tokenizer"]


def __getattr__(name: str) -> Any:
    if name == "load_tokenizer":
        from magvit_pl.run.checkpoint import load_tokenizer  # lazy: `import magvit_pl` must not import torch

        return load_tokenizer
    raise AttributeError(f"module 'magvit_pl' has no attribute '{name}'")
