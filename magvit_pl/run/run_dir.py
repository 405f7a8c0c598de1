"""The run folder policy: where a Lightning command writes, which run ``latest`` is, what ``test`` finds.

::

    RUNS_ROOT/KIND/                 KIND: tokenizer | mtm (the model's class)
        STAMP/                      one folder per run: YYYYmmdd-HHMMSS (fit), ...-test / -validate; made
                                    exclusively (a second run in the same second gets STAMP-2, ...)
            config.yaml             the resolved config (LightningCLI)
            metrics.csv             every logged value (CSVLogger)
            checkpoints/            last.ckpt (resume point) and stepNNNNNNN.ckpt
            media/                  reconstructions, samples, loss_curves.png
            results.json            test results and their protocol
        latest -> STAMP             the last fit that wrote a checkpoint (moved only then)

RUNS_ROOT is ``--runs_root``, else ``--trainer.default_root_dir`` (Lightning's convention), else ``runs``.

:func:`resolve_run_dir` decides the folder from the command line alone (pure, tested without a Trainer).
Reading ``latest``, pointing it, finding the latest checkpoint and checking the ``config.yaml`` found next
to a checkpoint are the few functions below it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from magvit_pl.models.config import allowed_class
from magvit_pl.run.checkpoint import LIGHTNING_MODULES
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.files import make_dir

RUN_DIR_ENV = "MAGVIT_PL_RUN_DIR"  # set by a run for its DDP children, which re-run the same command line
KINDS = {"TokenizerModule": "tokenizer", "MTMModule": "mtm"}


@dataclass(frozen=True)
class RunDir:
    """Where a run writes, and whether ``RUNS_ROOT/KIND/latest`` follows it once training starts."""

    path: Path
    root: Path  # RUNS_ROOT/KIND
    point_latest: bool
    fresh: bool = False  # a new stamped folder: made exclusively (:func:`make_unique_dir`)


def run_kind(class_path: str | None) -> str:
    """The run kind of a model class path: ``tokenizer``, ``mtm`` (else the class name, lower case)."""
    name = (class_path or "run").rsplit(".", 1)[-1]
    return KINDS.get(name, name.lower())


def resolve_run_dir(subcommand: str, kind: str, runs_root: str | os.PathLike = "runs", run_dir: str | None = None,
                    inherited: str | None = None, ckpt_path: str | None = None, num_nodes: int = 1,
                    slurm_job_id: str | None = None, latest: Callable[[], Path | None] = lambda: None,
                    stamp: str | None = None) -> RunDir:
    """The folder of one Lightning command, first rule that applies:

    1. ``inherited`` (``$MAGVIT_PL_RUN_DIR``): a DDP child re-running its parent's command line writes with it;
    2. ``--run_dir``;
    3. ``fit --ckpt_path last``: the run ``latest()`` returns (resume in place); none is a one-line error;
    4. more than one node: every node must name the same folder: ``slurm-JOBID`` in a SLURM job, else
       ``--run_dir`` is required (a timestamp taken on each node would differ);
    5. a new ``RUNS_ROOT/KIND/STAMP`` (``STAMP-SUBCOMMAND`` for evaluations; ``stamp``: now).

    ``latest`` is called only for rule 3. ``latest`` moves to a fit's folder when it lies directly in ``RUNS_ROOT/KIND``.
    """
    root = Path(runs_root) / kind
    chosen = inherited or run_dir
    if not chosen and subcommand == "fit" and ckpt_path == "last":
        chosen = latest()
        if chosen is None:
            raise UserError(f"--ckpt_path last: no earlier run under {root}; start one without --ckpt_path")
    if not chosen and num_nodes > 1:
        if not slurm_job_id:
            raise UserError(f"--trainer.num_nodes {num_nodes}: pass --run_dir on a filesystem all nodes share "
                            f"(e.g. --run_dir {root}/my-run), the same on every node")
        chosen = root / f"slurm-{slurm_job_id}"
    fresh = not chosen
    if fresh:
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        chosen = root / (stamp if subcommand == "fit" else f"{stamp}-{subcommand}")
    path = Path(chosen)
    return RunDir(path, root, point_latest=subcommand == "fit" and path.parent == root, fresh=fresh)


def runs_root_of(runs_root: str | None, default_root_dir: str | None) -> str:
    """RUNS_ROOT: ``--runs_root``, else ``--trainer.default_root_dir`` (Lightning's convention: everything a run
    writes goes under it), else ``runs``."""
    return runs_root or default_root_dir or "runs"


def make_unique_dir(path: Path, flag: str, tries: int = 1000) -> Path:
    """Create ``path`` exclusively (``os.mkdir``, never an existing folder); when it exists, ``path-2``, ``path-3`` …:
    two runs started in the same second never share a folder. One-line error naming ``flag`` if none can be made."""
    make_dir(path.parent, flag)
    for i in range(1, tries + 1):
        candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"{flag}: cannot create the folder {candidate}: {err.strerror or type(err).__name__}") from None
    raise UserError(f"{flag}: {tries} run folders named {path.name}-N exist already; remove some")


def resume_checkpoint(run_dir: Path) -> Path:
    """``RUN/checkpoints/last.ckpt``, the checkpoint ``fit --ckpt_path last`` continues from; a one-line error when
    the run has none (training would otherwise silently start again from step 0)."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise MissingFileError(f"--ckpt_path last: nothing to resume, no checkpoint at {path}; "
                               "start the run again without --ckpt_path, or pass --ckpt_path FILE")
    return path


# files a run writes before its first step: a folder holding only these (and empty folders) holds no results
SETUP_FILES = ("config.yaml", "hparams.yaml")


def holds_results(run_dir: Path) -> bool:
    """Whether a run folder holds anything but its setup files (checkpoints, metrics, media, results)."""
    return any(p.is_file() or p.is_symlink() for p in Path(run_dir).rglob("*")
               if not (p.parent == Path(run_dir) and p.name in SETUP_FILES))


def read_latest(root: Path) -> Path | None:
    """The run ``root/latest`` points at; it must be a folder directly inside ``root`` (a link that leads
    elsewhere, e.g. in a runs folder from outside, is refused: `fit --ckpt_path last` would write there)."""
    link = root / "latest"
    if not link.exists():
        return None
    target = link.resolve()
    if target.parent != root.resolve() or not target.is_dir():
        raise UserError(f"{link} points at {target}, which is not a run folder inside {root}; remove the link or pass --run_dir")
    return target


def point_latest(root: Path, run_dir: Path) -> None:
    """Atomically make ``root/latest`` a symlink to ``run_dir`` (a link made aside, then renamed over it)."""
    tmp = root / f".latest.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, root / "latest")


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


def run_config_of(ckpt_path: str | os.PathLike) -> Path:
    """The ``config.yaml`` of the run a checkpoint file lies in (``RUN/checkpoints/X.ckpt`` → ``RUN/config.yaml``)."""
    return Path(ckpt_path).resolve().parent.parent / "config.yaml"


def media_dir(trainer: Any) -> Path:
    """``<run dir>/media``: where reconstructions, samples and curves are written (made if missing)."""
    root = Path(trainer.default_root_dir)  # the CLI sets it to the run dir; trainer.log_dir would sync ranks
    path = root / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------- config.yaml found next to a checkpoint
# What a run's config.yaml may name when `test`/`validate` pick it up by themselves (no --config): the classes
# this package's runs record, Lightning's three distributed strategies the shipped hardware configs use, and
# the loggers that write local files.
RUN_CONFIG_CLASSES = (
    *LIGHTNING_MODULES.values(), "magvit_pl.data.VideoDataModule", "magvit_pl.data.datamodule.VideoDataModule",
    "magvit_pl.losses.PerceptualLoss", "lightning.pytorch.strategies.DDPStrategy",
    "lightning.pytorch.strategies.DeepSpeedStrategy", "lightning.pytorch.strategies.FSDPStrategy",
    # loggers that write only local files (README "Experiment tracking"); those that send data elsewhere (W&B,
    # MLflow, ...) are not built from a config found next to a checkpoint: pass it with --config
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
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
                _check_fsdp_policies(value, path, hint)
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key), depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]", depth + 1)
        elif isinstance(value, str) and value.lower().endswith((".yaml", ".yml", ".json", ".jsonnet")):
            raise UserError(f"{path} (found next to the checkpoint) refers to another config file {value!r} at {where}; {hint}")

    walk(config, "")


def _check_fsdp_policies(strategy: dict, path: str | os.PathLike, hint: str) -> None:
    for arg in FSDP_POLICY_ARGS:
        policy = (strategy.get("init_args") or {}).get(arg)
        items = policy if isinstance(policy, list) else [policy]
        if policy is not None and not isinstance(policy, bool) and not all(p in FSDP_BLOCKS for p in items):
            raise UserError(f"{path} (found next to the checkpoint): FSDP {arg} {policy!r} names other classes than "
                            f"{', '.join(FSDP_BLOCKS)}; {hint}")
