"""Record how a module was built, so a checkpoint can rebuild it without Lightning or pickles.

Classes that inherit :class:`ConfigMixin` remember their constructor arguments as a plain,
JSON-like ``{"class_path": ..., "init_args": {...}}`` dict (nested modules included), the same shape
LightningCLI YAML uses. :func:`build_from_config` turns such a dict back into a module.

A checkpoint is a file from outside, so the config in it is data, never a program: only the classes on
an explicit allow-list are built. The list holds this package's tokenizer, quantizer and discriminator
classes (:data:`BUILTIN_CLASSES`), plus the ``nn.Module`` classes a plugin package adds explicitly,
either with :func:`register_buildable` (from Python) or through the entry-point group
``magvit_pl.modules`` (for the command line: an installed package declares
``[project.entry-points."magvit_pl.modules"] my_quantizer = "my_pkg.quant:MyQuantizer"``). A module
prefix is never enough, and a function is never built. The whole config is checked before anything is
built: every ``class_path`` anywhere in it (nested dicts and lists included), every key and value type.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from typing import Any

from torch import nn

from magvit_pl.run.errors import UserError, first_line

#: the classes of this package that a recorded config may name
BUILTIN_CLASSES: tuple[str, ...] = (
    "magvit_pl.models.tokenizer.VQTokenizer",
    "magvit_pl.models.quantizers.vq.VectorQuantizer",
    "magvit_pl.models.quantizers.lfq.LookupFreeQuantizer",
    "magvit_pl.models.discriminator.StyleGANDiscriminator3D",
)
ENTRY_POINT_GROUP = "magvit_pl.modules"
MAX_DEPTH = 32  # nesting of dicts/lists in a recorded config (the tokenizer's is 4 deep)
_PLAIN = (type(None), bool, int, float, str)
_registered: dict[str, type] = {}


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
            config = {"class_path": class_path_of(cls), "init_args": init_args}
            object.__setattr__(self, "init_config", config)

        cls.__init__ = __init__  # type: ignore[method-assign]


def class_path_of(cls: type) -> str:
    """``module.QualName`` of a class: the ``class_path`` its configs carry."""
    return f"{cls.__module__}.{cls.__qualname__}"


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


# ------------------------------------------------------------------------------------- allow-list
def register_buildable(cls: type) -> type:
    """Allow :func:`build_from_config` to build ``cls`` (usable as a class decorator); returns ``cls``.

    ``cls`` must be an ``nn.Module`` subclass that records its config (:class:`ConfigMixin`). For the
    command line, where no user code runs before a checkpoint is read, declare it in the
    ``magvit_pl.modules`` entry-point group instead (see the module docstring).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and issubclass(cls, ConfigMixin)):
        raise TypeError(f"register_buildable needs an nn.Module subclass that inherits ConfigMixin, got {cls!r}")
    _registered[class_path_of(cls)] = cls
    return cls


def unregister_buildable(cls: type) -> None:
    """Take ``cls`` off the allow-list again (for tests and short-lived registrations)."""
    _registered.pop(class_path_of(cls), None)


def _builtin(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _from_entry_point(class_path: str) -> type | None:
    """The class an installed package declared under ``magvit_pl.modules`` for exactly ``class_path``."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.replace(":", ".").replace(" ", "") == class_path:
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, nn.Module) and issubclass(cls, ConfigMixin):
                return cls
            raise UserError(f"entry point '{ep.name}' ({ep.value}) in group {ENTRY_POINT_GROUP} is not an nn.Module class "
                            "that inherits magvit_pl.models.config.ConfigMixin; fix or uninstall that package")
    return None


def allowed_class(class_path: str) -> type | None:
    """The class ``class_path`` names if it is on the allow-list, else None. Nothing named elsewhere is imported."""
    if class_path in BUILTIN_CLASSES:
        return _builtin(class_path)
    if class_path in _registered:
        return _registered[class_path]
    return _from_entry_point(class_path)


def allowed_names() -> str:
    """The allow-list in words, for error messages."""
    return ", ".join([*(p.rsplit(".", 1)[1] for p in BUILTIN_CLASSES), *_registered]) + \
        f" (plugins add theirs with register_buildable or the '{ENTRY_POINT_GROUP}' entry point)"


# ------------------------------------------------------------------------------------ check, build
def check_config(config: Any, source: str = "config") -> None:
    """Raise a one-line :class:`UserError` unless ``config`` is a buildable ``{"class_path", "init_args"}`` dict.

    Walks all of it: every ``class_path`` (in nested dicts and lists too) must be on the allow-list,
    keys must be strings, values plain data (None, bool, int, float, str, lists and dicts of them).
    ``source`` names where the config came from (e.g. ``checkpoint runs/…/last.ckpt``).
    """
    if not (isinstance(config, dict) and "class_path" in config):
        raise UserError(f"{source}: the recorded model config is not a {{class_path, init_args}} dict "
                        f"(found {type(config).__name__}); refusing to build it")
    _check(config, source, "", 0)


def check_values(value: Any, source: str = "config") -> None:
    """Like :func:`check_config` for any value (e.g. a checkpoint's hyper-parameters): plain data, and every
    ``class_path`` inside it allow-listed."""
    _check(value, source, "", 0)


def _check(value: Any, source: str, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UserError(f"{source}: the recorded model config is nested deeper than {MAX_DEPTH} levels at {where or '<top>'}; refusing it")
    if isinstance(value, dict):
        if "class_path" in value:
            class_path = value["class_path"]
            if not isinstance(class_path, str) or allowed_class(class_path) is None:
                raise UserError(f"{source} names class {class_path!r} at {where or '<top>'}, which magvit-pl does not build "
                                f"from a file; allowed: {allowed_names()}")
            extra = sorted(set(map(str, value)) - {"class_path", "init_args"})
            if extra:
                raise UserError(f"{source}: the config of {class_path} at {where or '<top>'} has unexpected keys {extra}; refusing it")
            init_args = value.get("init_args", {})
            if not isinstance(init_args, dict):
                raise UserError(f"{source}: init_args of {class_path} at {where or '<top>'} must be a dict, found {type(init_args).__name__}")
            value, where = init_args, f"{where}.init_args" if where else "init_args"
        for key, item in value.items():
            if not isinstance(key, str):
                raise UserError(f"{source}: the recorded model config has a non-string key {key!r} at {where or '<top>'}")
            _check(item, source, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, source, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, _PLAIN):
        raise UserError(f"{source}: the recorded model config holds a {type(value).__name__} at {where}; "
                        "only None, bool, int, float, str, lists and dicts are allowed")


def build_from_config(config: dict[str, Any], source: str = "config") -> Any:
    """Instantiate ``{"class_path", "init_args"}`` recursively, after :func:`check_config` accepted all of it.

    A constructor that refuses the recorded arguments is a one-line :class:`UserError` naming the class.
    """
    check_config(config, source)
    return _build(config, source)


def _build(value: Any, source: str) -> Any:
    if isinstance(value, dict) and "class_path" in value:
        cls = allowed_class(value["class_path"])
        kwargs = {k: _build(v, source) for k, v in value.get("init_args", {}).items()}
        try:
            return cls(**kwargs)
        except UserError as err:
            raise UserError(f"{source}: cannot build {value['class_path']}: {err}") from None
        except (TypeError, ValueError, AssertionError) as err:
            raise UserError(f"{source}: cannot build {value['class_path']} from its recorded arguments "
                            f"({type(err).__name__}: {first_line(err)})") from None
    if isinstance(value, dict):
        return {k: _build(v, source) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_build(v, source) for v in value]
    return value
