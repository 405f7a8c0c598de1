"""The task contract and the entry-point loader. Defines no task itself.

A task tells the multi-task transformer (COMMIT, MAGVIT §3) what part of a clip is given:

* ``build_condition(video)`` → :class:`Condition`: the padded condition video Ṽ and a pixel mask of
  what is given (True = given);
* ``latent_mask(pixel_mask, downsample)`` → which token positions are condition (their z̃ token is
  used);
* ``metrics()`` → how generated clips are scored: torchmetrics whose ``update`` takes
  ``(generated, real, given)`` (``given`` = the pixel mask), one call signature for every metric.

A plugin is a subclass of :class:`Task`; its constructor arguments are its options. Options set once
for a whole run (``num_cond_frames``, ``latent_rule``) reach only the tasks whose constructor declares
them: a plugin that needs neither declares neither.

Tasks are plugins, loaded explicitly (pluggy-style) from the entry-point group ``magvit_pl.tasks``;
the ten built-ins (the folder ``tasks/``, installed as the import package ``magvit_pl_tasks`` so that no
user's ``tasks`` module can stand in for them) are registered exactly like third-party ones::

    [project.entry-points."magvit_pl.tasks"]
    my_task = "my_pkg.tasks:MyTask"          # entry-point name == MyTask.name

Nothing is registered at import time: :func:`discover_tasks` reads the entry points each time it is
called, and a task class is imported only when a spec is loaded.

Latent condition mask (``latent_rule``). DESIGN.md proposed "a token is condition if its whole patch
is given" (``'all'``). The official code (google-research/magvit, ``train_lib/cond_utils.py``) does
not pool the pixel mask: each task states its latent region directly on the latent grid. Frame
prediction marks the first ``cond_latent_frames = 1`` latent frame as condition although only one of
its four pixel frames is given (the rest is the repeated padding), interpolation the first and last
latent frame, and the spatial tasks apply their pixel formula (e.g. rows ``[h//4, 3h//4)``, the
dynamic stripe ``round(linspace(0, w//2, t))``) to the latent shape. Under ``'all'`` frame
prediction from one frame with temporal downsampling 4 would have no condition token at all. The
default ``'task'`` rule therefore reproduces the official masks: the base class pools with ``'any'``
(a token is condition if any pixel of its patch is given, which equals the official rule for frame
prediction/interpolation and for patch-aligned boxes), and tasks whose official latent region is
not a pooling of the pixel mask (the dynamic ones) override :meth:`Task.task_latent_mask`.
``'any'`` and ``'all'`` stay selectable per task instance.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib.metadata
import inspect
import logging
from typing import Any, ClassVar, Literal, Mapping, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from magvit_pl.run.errors import MissingWeightsError, UserError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "magvit_pl.tasks"
LatentRule = Literal["task", "any", "all"]
LATENT_RULES: tuple[str, ...] = get_args(LatentRule)

_skipped_metrics_logged: set[str] = set()  # metric names whose absence was already logged once


class TaskError(UserError):
    """A task name that does not exist, or a task plugin that breaks the contract (names the package)."""


@dataclasses.dataclass
class Condition:
    """What a task gives the model for a batch of clips.

    Attributes:
        video: the padded condition video Ṽ, ``(B, C, T, H, W)`` in [-1, 1], same shape as the input;
            given pixels are copied, the others filled by the task's padding rule.
        pixel_mask: bool ``(B, 1, T, H, W)``, True where the pixel is given.
    """

    video: Tensor
    pixel_mask: Tensor


def pool_mask(pixel_mask: Tensor, downsample: tuple[int, int, int], rule: str = "any") -> Tensor:
    """Pool a pixel mask ``(B, 1, T, H, W)`` onto the token grid → bool ``(B, T/dt, H/dh, W/dw)``.

    ``rule='any'``: a token is condition if any pixel of its (dt, dh, dw) patch is given;
    ``rule='all'``: only if its whole patch is given.
    """
    if rule not in ("any", "all"):
        raise TaskError(f"pooling rule must be 'any' or 'all', got {rule!r}")
    if pixel_mask.ndim != 5 or pixel_mask.shape[1] != 1:
        raise ValueError(f"pixel_mask must be (B, 1, T, H, W), got {tuple(pixel_mask.shape)}")
    t, h, w = latent_shape(tuple(pixel_mask.shape[2:]), downsample)
    m = pixel_mask.to(torch.float32)
    if rule == "all":
        m = 1.0 - m  # a patch is fully given iff no pixel of it is missing
    pooled = F.max_pool3d(m, kernel_size=downsample, stride=downsample)  # (B, 1, t, h, w)
    pooled = pooled[:, 0] > 0.5
    assert pooled.shape[1:] == (t, h, w)
    return ~pooled if rule == "all" else pooled


def latent_shape(video_shape: tuple[int, ...], downsample: tuple[int, int, int]) -> tuple[int, int, int]:
    """Token grid ``(t, h, w)`` of a ``(T, H, W)`` clip under the tokenizer's downsampling factors."""
    if len(downsample) != 3 or any(int(d) < 1 for d in downsample):
        raise TaskError(f"downsample must be three positive ints (t, h, w), got {downsample}")
    if any(s % d for s, d in zip(video_shape, downsample)):
        raise TaskError(
            f"clip size (T, H, W) = {tuple(video_shape)} is not divisible by the tokenizer downsampling {tuple(downsample)}"
        )
    return tuple(s // d for s, d in zip(video_shape, downsample))  # type: ignore[return-value]


class Task(abc.ABC):
    """Base class of a MAGVIT task plugin.

    Subclasses set the class attributes and implement :meth:`build_condition`; everything else has a
    default. Constructor arguments are the task's options: typed and documented (they become CLI help),
    each passed only to the tasks that declare it.

    Args:
        latent_rule: how the latent condition mask is derived: ``'task'`` (the task's own latent
            region, as in the official code), ``'any'`` (token given if any pixel of its patch is) or
            ``'all'`` (token given only if its whole patch is). A subclass with its own constructor
            declares it only if it wants it to be set (otherwise ``'task'``).
    """

    name: ClassVar[str] = ""
    """CLI name, a Python identifier, equal to the entry-point name (e.g. ``outpainting_central``)."""
    family: ClassVar[str] = ""
    """Group run together by ``--task FAMILY`` (e.g. ``outpainting``)."""
    uses_class: ClassVar[bool] = False
    """Whether the class label is fed to the model (otherwise the UNCOND token)."""
    description: ClassVar[str] = ""
    """One line for ``cli.py tasks``."""

    def __init__(self, latent_rule: LatentRule = "task") -> None:
        if latent_rule not in LATENT_RULES:
            raise TaskError(f"{self.name or type(self).__name__}: latent_rule must be one of {LATENT_RULES}, got {latent_rule!r}")
        self.latent_rule = latent_rule

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}(name={self.name!r}, {options})"

    @abc.abstractmethod
    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """Condition video and pixel mask for ``video`` ``(B, C, T, H, W)`` in [-1, 1].

        Must be vectorised over the batch and deterministic for a fixed ``generator``.
        """

    def latent_mask(self, pixel_mask: Tensor, downsample: tuple[int, int, int]) -> Tensor:
        """Bool ``(B, t, h, w)``: True where the token is condition, following ``self.latent_rule``."""
        if self.latent_rule == "task":
            return self.task_latent_mask(pixel_mask, tuple(downsample))
        return pool_mask(pixel_mask, tuple(downsample), self.latent_rule)

    def task_latent_mask(self, pixel_mask: Tensor, downsample: tuple[int, int, int]) -> Tensor:
        """The task's own latent region (``latent_rule='task'``). Default: ``'any'`` pooling."""
        return pool_mask(pixel_mask, downsample, "any")

    def metrics(self, include_fvd: bool = True) -> dict[str, Any]:
        """Fresh metrics for this task: FVD (when its weights are cached) and PSNR/SSIM on the given region.

        Every metric's ``update`` takes ``(generated, real, given)``: clips ``(B, C, T, H, W)`` in
        [-1, 1] and the bool pixel mask ``(B, 1, T, H, W)`` of what the task gave. A metric that cannot be
        built (I3D weights not fetched) is left out and logged once.
        """
        from magvit_pl.metrics.masked import MaskedPSNR, MaskedSSIM  # lazy: plugins import this module; metrics load with the first task that scores

        out: dict[str, Any] = {}
        if include_fvd:
            fvd = build_fvd(paired=True)
            if fvd is not None:
                out["fvd"] = fvd
        out["psnr_given"] = MaskedPSNR()
        out["ssim_given"] = MaskedSSIM()
        return out

    def update_metrics(self, metrics: dict[str, Any], generated: Tensor, real: Tensor, condition: Condition) -> None:
        """Feed one batch to every metric of ``metrics``: ``update(generated, real, condition.pixel_mask)``."""
        for metric in metrics.values():
            metric.update(generated, real, condition.pixel_mask)


def build_fvd(paired: bool = False) -> Any | None:
    """``FrechetVideoDistance()`` (``PairedFVD()``, the task-metric form, when ``paired``) or None (logged
    once) when its module or I3D weights are missing."""
    try:
        from magvit_pl.metrics.fvd import FrechetVideoDistance, PairedFVD  # lazy: pulls in the I3D network
    except ModuleNotFoundError as err:
        if err.name != "magvit_pl.metrics.fvd":
            raise
        _log_skip("fvd", "FVD skipped: magvit_pl.metrics.fvd is not available")
        return None
    try:
        return PairedFVD() if paired else FrechetVideoDistance()
    except MissingWeightsError as err:
        _log_skip("fvd", f"FVD skipped: {err}")  # the error names the fetch-weights command
        return None


def _log_skip(key: str, message: str) -> None:
    if key not in _skipped_metrics_logged:
        _skipped_metrics_logged.add(key)
        log.warning(message)


# ---------------------------------------------------------------------------------------------
# Contract check and loader
# ---------------------------------------------------------------------------------------------

def validate_task(obj: Any, package: str = "<unknown>") -> type[Task]:
    """Check that a loaded plugin object is a concrete :class:`Task` subclass with valid class attributes.

    Returns ``obj``; raises :class:`TaskError` naming ``package`` and the broken rule.
    """

    def broken(reason: str) -> TaskError:
        return TaskError(f"task plugin {_describe(obj)} from package '{package}' breaks the task contract: {reason}")

    if not isinstance(obj, type):
        raise broken("the entry point must name a class (a subclass of magvit_pl.tasks.Task)")
    if not issubclass(obj, Task):
        raise broken("the entry point must name a subclass of magvit_pl.tasks.Task (a class with the same methods is not one)")
    if not isinstance(obj.name, str) or not obj.name.isidentifier():
        raise broken(f"'name' must be a non-empty identifier string, got {obj.name!r}")
    if not isinstance(obj.family, str) or not obj.family.isidentifier():
        raise broken(f"'family' must be a non-empty identifier string, got {obj.family!r}")
    if not isinstance(obj.uses_class, bool):
        raise broken(f"'uses_class' must be a bool, got {obj.uses_class!r}")
    if not isinstance(obj.description, str):
        raise broken("'description' must be a string")
    abstract = sorted(obj.__abstractmethods__)
    if abstract:
        raise broken(f"abstract method(s) not implemented: {', '.join(abstract)}")
    return obj


def _describe(obj: Any) -> str:
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    return f"'{mod}:{qual}'" if mod and qual else repr(obj)


@dataclasses.dataclass
class TaskSpec:
    """One task entry point, not yet imported. ``load()`` imports, validates and returns the class."""

    name: str
    value: str
    package: str
    entry_point: Any = dataclasses.field(repr=False, default=None)

    def load(self) -> type[Task]:
        """Import the task class, check the contract and that its ``name`` equals the entry-point name."""
        try:
            obj = self.entry_point.load()
        except Exception as err:  # a plugin that cannot be imported is a plugin problem, not ours
            raise TaskError(
                f"task '{self.name}' from package '{self.package}' could not be loaded ({self.value}): {type(err).__name__}: {err}"
            ) from err
        validate_task(obj, self.package)
        if obj.name != self.name:
            raise TaskError(
                f"task plugin '{self.value}' from package '{self.package}' is registered as '{self.name}' "
                f"but its class declares name '{obj.name}'; they must be equal"
            )
        return obj


def _package_of(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>"
    name = getattr(dist, "name", None)
    return name or dist.metadata["Name"]


def discover_tasks(group: str = ENTRY_POINT_GROUP) -> dict[str, TaskSpec]:
    """Read the entry points of ``group`` (no task module is imported) → ``{name: TaskSpec}``.

    The same name from two distributions (or twice with different targets) raises :class:`TaskError`
    naming both packages. The same entry point seen twice (one distribution on two paths) is kept once.
    """
    specs: dict[str, TaskSpec] = {}
    for ep in importlib.metadata.entry_points(group=group):
        spec = TaskSpec(name=ep.name, value=ep.value, package=_package_of(ep), entry_point=ep)
        seen = specs.get(ep.name)
        if seen is None:
            specs[ep.name] = spec
        elif (seen.package, seen.value) != (spec.package, spec.value):
            raise TaskError(
                f"task name '{ep.name}' is registered twice: by package '{seen.package}' ({seen.value}) "
                f"and by package '{spec.package}' ({spec.value}); uninstall one of them"
            )
    return dict(sorted(specs.items()))


def _load_all(specs: dict[str, TaskSpec]) -> dict[str, type[Task]]:
    return {name: spec.load() for name, spec in specs.items()}


def _unknown(name: str, specs: dict[str, TaskSpec]) -> TaskError:
    families: set[str] = set()
    for spec in specs.values():
        try:
            families.add(spec.load().family)
        except TaskError:
            pass  # the broken plugin is reported when it is asked for by name
    return TaskError(
        f"unknown task '{name}'; available tasks: {', '.join(specs) or '(none)'}; "
        f"families: {', '.join(sorted(families)) or '(none)'}"
    )


def declared_options(cls: type[Task]) -> tuple[str, ...] | None:
    """The options (constructor keyword arguments) ``cls`` declares; None when it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def _instantiate(cls: type[Task], package: str, kwargs: dict[str, Any], shared: Mapping[str, Any] | None = None) -> Task:
    """``cls(**kwargs, **the shared options it declares)``; an option in ``kwargs`` it does not declare is an error."""
    declared = declared_options(cls)
    unknown = sorted(k for k in kwargs if declared is not None and k not in declared)
    if unknown:
        raise TaskError(f"task '{cls.name}' (package '{package}') does not take {', '.join(unknown)}; it takes: {', '.join(declared or ()) or 'nothing'}")
    picked = {k: v for k, v in (shared or {}).items() if declared is None or k in declared}
    return cls(**{**picked, **kwargs})


def get_task(name: str, group: str = ENTRY_POINT_GROUP, *, shared: Mapping[str, Any] | None = None, **task_kwargs: Any) -> Task:
    """Build the task registered as ``name`` (errors list what is available).

    Args:
        name: the task's name.
        group: entry-point group to read.
        shared: run-wide options (e.g. ``num_cond_frames``, ``latent_rule`` from the MTM config); each is
            passed only if the task's constructor declares it.
        task_kwargs: options for this task; one it does not declare is an error.
    """
    specs = discover_tasks(group)
    if name not in specs:
        raise _unknown(name, specs)
    spec = specs[name]
    return _instantiate(spec.load(), spec.package, task_kwargs, shared)


def resolve_tasks(name_or_family: str, group: str = ENTRY_POINT_GROUP, **task_kwargs: Any) -> list[Task]:
    """Tasks for a ``--task`` value: one task by name, or every task of a family sorted by name.

    A task name wins over a family of the same name. For a family, each task receives the
    ``task_kwargs`` it declares (e.g. ``pad_value`` reaches only zero-padded tasks); an argument no
    task of the family declares is an error.
    """
    specs = discover_tasks(group)
    if name_or_family in specs:
        return [get_task(name_or_family, group, **task_kwargs)]
    classes = _load_all(specs)
    members = sorted(n for n, cls in classes.items() if cls.family == name_or_family)
    if not members:
        raise _unknown(name_or_family, specs)
    options = [declared_options(classes[n]) for n in members]
    unused = sorted(k for k in task_kwargs if not any(o is None or k in o for o in options))
    if unused:
        raise TaskError(f"no task of family '{name_or_family}' takes {', '.join(unused)}; tasks: {', '.join(members)}")
    return [_instantiate(classes[n], specs[n].package, {}, task_kwargs) for n in members]


class TaskRow(NamedTuple):
    """One row of ``cli.py tasks``."""

    name: str
    family: str
    package: str
    uses_class: bool
    description: str


def task_table(group: str = ENTRY_POINT_GROUP) -> list[TaskRow]:
    """Every installed task (loaded and validated), sorted by family then name."""
    specs = discover_tasks(group)
    rows = [
        TaskRow(name, cls.family, specs[name].package, bool(cls.uses_class), cls.description)
        for name, cls in _load_all(specs).items()
    ]
    return sorted(rows, key=lambda r: (r.family, r.name))
