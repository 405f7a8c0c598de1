"""Pickles from outside, read with an allow-list: nothing a file names is imported or called unless listed.

:class:`AllowListUnpickler` is the one restricted unpickler; each reader lists what it allows:
:func:`load_numpy_pickle` (the pretrained weights, numpy arrays in plain containers) here, and the FSDP
checkpoint metadata reader of :mod:`magvit_pl.run.export` (``torch.distributed.checkpoint`` metadata classes).
A persistent id (how a pickle refers to outside storage) is refused by both.
"""
from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from magvit_pl.run.errors import UserError


class AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds only the globals :meth:`allowed` returns (``(module, name)`` → object)
    and raises :attr:`error` with :attr:`refusal` for any other and for a persistent id."""

    error: type[Exception] = pickle.UnpicklingError
    refusal = "refusing to unpickle {what}: not an allowed class"  # ``what``: ``module.name`` or "a persistent id"

    def allowed(self, module: str, name: str) -> Any | None:
        raise NotImplementedError

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed(module, name)
        if found is None:
            raise self.error(self.refusal.format(what=f"{module}.{name}"))
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise self.error(self.refusal.format(what="a persistent id"))


class UnsafePickleError(UserError):
    """A pickle asked for a global that is not a numpy array piece or a plain container."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # which module holds them depends on the numpy version
        from numpy._core import multiarray  # numpy >= 2 (numpy.core is a deprecated alias there)
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # numpy 1.x

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("builtins", c.__name__): c for c in (dict, list, tuple, set, frozenset)},
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class _NumpyUnpickler(AllowListUnpickler):
    error = UnsafePickleError
    refusal = "refusing to unpickle global {what}: only numpy arrays and plain containers are allowed"
    globals_ = _numpy_globals()

    def allowed(self, module: str, name: str) -> Any | None:
        return self.globals_.get((module, name))


def _check_no_objects(obj: Any, where: str = "") -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError(f"refusing object-dtype array at '{where}' in a weights pickle")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_objects(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_no_objects(v, f"{where}/{i}")


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may hold only numpy arrays/scalars and dict/list/tuple containers.

    Any other global (functions, classes, ``os.system``…) raises :class:`UnsafePickleError` before
    it is called; object-dtype arrays are refused too.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such weights file: {path}")
    with open(path, "rb") as fh:
        try:
            obj = _NumpyUnpickler(fh).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise UserError(f"{path} is not a readable numpy pickle: {err}") from None
    _check_no_objects(obj)
    return obj


def flatten(tree: dict, prefix: str = "", sep: str = "/") -> dict[str, np.ndarray]:
    """Nested dicts of arrays → ``{'a/b/c': array}``."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out
