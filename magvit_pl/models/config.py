"""Record how a module was built, so a checkpoint can rebuild it without Lightning or pickles.

Classes that inherit :class:`ConfigMixin` remember their constructor arguments as a plain,
JSON-like ``{"class_path": ..., "init_args": {...}}`` dict (nested modules included), the same shape
LightningCLI YAML uses. :func:`build_from_config` turns such a dict back into a module. Only classes
from trusted module prefixes are built, so a checkpoint from outside cannot name arbitrary code.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from magvit_pl.errors import UserError

TRUSTED_PREFIXES: tuple[str, ...] = ("magvit_pl.", "tasks.")


class ConfigMixin:  # noqa: D101 - documented below
    """Mixin that records the constructor arguments of every subclass in ``self.init_config``."""

    init_config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__dict__["__init__"]
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            original(self, *args, **kw)
            if type(self) is not cls:  # the most derived class records itself
                return
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            init_args = {}
            for name, value in list(bound.arguments.items())[1:]:
                param = signature.parameters[name]
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    init_args.update({k: to_config(v) for k, v in value.items()})
                elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
                    init_args[name] = to_config(value)
            config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
            object.__setattr__(self, "init_config", config)

        cls.__init__ = __init__  # type: ignore[method-assign]


def to_config(value: Any) -> Any:
    """Convert a constructor argument to plain data (nested configurable modules become dicts)."""
    if isinstance(value, ConfigMixin):
        return value.init_config
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_config(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record constructor argument of type {type(value).__name__}: {value!r}")


def build_from_config(config: dict[str, Any], trusted: tuple[str, ...] = TRUSTED_PREFIXES) -> Any:
    """Instantiate ``{"class_path", "init_args"}`` recursively; refuses classes outside ``trusted``."""
    class_path = config["class_path"]
    if not class_path.startswith(trusted):
        raise UserError(f"refusing to build '{class_path}' from a config: only classes under {', '.join(trusted)} are allowed")
    module_name, _, qualname = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), qualname)
    kwargs = {k: _from_config(v, trusted) for k, v in config.get("init_args", {}).items()}
    return cls(**kwargs)


def _from_config(value: Any, trusted: tuple[str, ...]) -> Any:
    if isinstance(value, dict) and "class_path" in value:
        return build_from_config(value, trusted)
    if isinstance(value, list):
        return [_from_config(v, trusted) for v in value]
    return value
