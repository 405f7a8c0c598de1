"""``fit`` / ``validate`` / ``test``: :class:`MagvitCLI`, a LightningCLI with a run folder per run.

What it adds to LightningCLI:

* options ``--run_dir``, ``--runs_root``, ``--kind``, ``--task``, ``--num_samples``, ``--num_repeats``, ``--save_every_n_steps``; the folder comes from
  :func:`magvit_pl.run.run_dir.resolve_run_dir` (config.yaml, metrics.csv, checkpoints/, media/ in it);
* links (``parser.link_arguments``): the clip size is set once, on the data (``--data.num_frames``,
  ``--data.resolution``), and reaches the MTM (when the data module is built: it checks the sizes first) and
  the tokenizer's discriminator; ``--task`` sets the MTM's ``eval_task``. (The number of classes is read from the data's manifest after parsing, so it cannot be
  linked; the MTM checks it against the data in ``setup``.)
* the callbacks and checkpoint plugin of :mod:`magvit_pl.run.callbacks`, a rich progress bar, a CSV logger
  (``metrics.csv``) beside any loggers the config adds, a learning-rate monitor;
* the preflight check of the trainer config (:mod:`magvit_pl.run.preflight`) and of any ``--ckpt_path``
  file (read weights-only, hyper-parameters checked before jsonargparse builds anything they name; the
  resume policy of :meth:`MagvitCLI._parse_ckpt_path`);
* no ``--optimizer``/``--lr_scheduler``: each module configures its own (the tokenizer's discriminator has one);
* ``test``/``validate`` without ``--ckpt_path``: the latest run of the kind; with a model folder: a checkpoint made
  from it (:func:`complete_eval_args`).

Every user mistake is one :class:`~magvit_pl.run.errors.UserError` line.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from magvit_pl.lit.mtm_options import explain_checkpoint_error, explain_option_error
from magvit_pl.pretrained import checkpoint_for_test
from magvit_pl.run.callbacks import AtomicCheckpointIO, LossCurves, RunCheckpoint
from magvit_pl.run.checkpoint import LIGHTNING_MODULES, lightning_hparams
from magvit_pl.run.cli import LIGHTNING_COMMANDS, flags_take_no_value
from magvit_pl.run.errors import Terminated, UserError, first_line, one_line
from magvit_pl.run.files import make_dir
from magvit_pl.run.preflight import check_trainer_config
from magvit_pl.run.resume import ResumedOptimizerSettings, ResumeState
from magvit_pl.run.run_dir import (RUN_DIR_ENV, check_run_config, holds_results, latest_checkpoint, make_unique_dir,
                                   read_latest, resolve_run_dir, resume_checkpoint, run_config_of, run_kind, runs_root_of)

# clip sizes set once, on the data, and linked to the models that are built for them
SHARED_SIZES = ("num_frames", "resolution")
# Resume policy (``fit --ckpt_path``): the model's settings come from the checkpoint, except these, which a value
# typed on the command line changes (training schedule, loss weights, logging, evaluation: safe to change
# mid-run); a group name covers all its fields. Any other setting typed with a different value is refused.
RESUMABLE = {
    "magvit_pl.lit.tokenizer.TokenizerModule": (
        "lr", "disc_lr", "betas", "warmup_steps", "min_lr_ratio", "lr_schedule", "recon_weight", "perceptual_weight",
        "gan_weight", "disc_start_step", "r1_cost", "r1_every", "lecam_weight", "lecam_decay", "ema_decay",
        "max_consecutive_nonfinite", "val_fvd", "num_media_clips", "media_fps", "activation_checkpointing"),
    "magvit_pl.lit.mtm.MTMModule": (
        "optim", "sampling", "evaluation", "eval_task", "num_media_clips", "media_fps", "max_consecutive_nonfinite",
        "activation_checkpointing", "token_cache_clips"),
}
# what a missing `fit.data` / `fit.model` means, with the --config that gives it
NEEDS_CONFIG = ("no model and data given: start from a shipped config, e.g. --config configs/tokenizer.yaml "
                "(or configs/mtm.yaml)")
NEEDS_DATA = ("no data given: add a data config after the model's, e.g. --config configs/data/ucf101.yaml "
              "(paper recipes hold only the model), or --data.data_dir FOLDER with configs/tokenizer.yaml / configs/mtm.yaml")


class ClipSize:
    """``data -> data.<size>``: the compute function of a size link (the model is built for the data as built)."""

    def __init__(self, size: str):
        self.size = size
        self.__name__ = f"data.{size}"  # how jsonargparse names the link in --help

    def __call__(self, data: Any) -> int:
        if not hasattr(data, self.size):
            raise UserError(f"the data module {type(data).__name__} has no {self.size}; the model's clip size is read from it")
        return getattr(data, self.size)


def discriminator_frames(num_frames: int, per_frame: bool | None) -> int:
    """Frames of the clips the tokenizer's discriminator sees: the data's, or 1 when ``per_frame`` makes each frame a clip."""
    return 1 if per_frame else num_frames


class MagvitCLI(LightningCLI):
    """LightningCLI with one run directory per run: config.yaml, metrics.csv, checkpoints/, media/."""

    def __init__(self, *args: Any, **kwargs: Any):
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self.drop_run_dir_without_results()
            raise

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands this CLI offers (no ``predict``: ``reconstruct``, ``generate`` and ``sample`` write outputs)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in LIGHTNING_COMMANDS}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None, help="Run directory (default: RUNS_ROOT/<tokenizer|mtm>/<timestamp>; with --ckpt_path last: the latest run).")
        parser.add_argument("--runs_root", type=Optional[str], default=None, help="Folder holding one sub-folder per model kind and run (default: --trainer.default_root_dir if given, else runs).")
        parser.add_argument("--task", type=Optional[str], default=None, help="MTM only: task name or family to evaluate (test) — see `python cli.py tasks`.")
        parser.add_argument("--num_samples", type=Optional[int], default=None, help="MTM test: generated clips per repeat (default: the model's evaluation.num_samples, else one per test clip).")
        parser.add_argument("--num_repeats", type=Optional[int], default=None, help="MTM test: repeats of --num_samples clips; metrics are reported as mean and std over them (default: the model's evaluation.num_repeats).")
        parser.add_argument("--kind", type=Optional[Literal["tokenizer", "mtm"]], default=None, help="test/validate without --ckpt_path: use the latest run of this kind (default: the kind of --config's model, else mtm).")
        parser.add_argument("--save_every_n_steps", type=int, default=200, help="fit: write checkpoints/last.ckpt every N training steps (and after each validation); 0 = only after validation. A crash loses at most N steps: resume with --ckpt_path last.")
        for size in SHARED_SIZES:  # a link whose target the chosen model lacks is skipped by jsonargparse
            # the MTM's: on instantiation, so the data module is built (and checks the sizes it is given) first
            parser.link_arguments("data", f"model.init_args.{size}", compute_fn=ClipSize(size), apply_on="instantiate")
        # the tokenizer's discriminator (a class inside the model: linked on parse); with per_frame it sees 1-frame clips
        parser.link_arguments(("data.init_args.num_frames", "model.init_args.per_frame"),
                              "model.init_args.discriminator.init_args.num_frames", compute_fn=discriminator_frames)
        parser.link_arguments("data.init_args.resolution", "model.init_args.discriminator.init_args.resolution")
        parser.link_arguments("task", "model.init_args.eval_task")
        flags_take_no_value(parser)  # `--trainer.fast_dev_run`-style booleans: a bare flag means true

    def parse_arguments(self, parser, args) -> None:
        self._args = [] if isinstance(args, dict) else [str(a) for a in (sys.argv[1:] if args is None else args)]
        check_config_files(_preparse(self._args).config)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            message = one_line(err)
            missing = re.search(r"the following arguments are required: (\S+)", message)
            if missing and missing.group(1).rstrip(",").endswith(".data") and ".model" not in message:
                raise UserError(NEEDS_DATA) from None
            if missing and ".model" in message:
                raise UserError(NEEDS_CONFIG) from None
            raise UserError(explain_option_error(message)) from None
        except UnicodeDecodeError as err:
            raise UserError(f"a config file is not UTF-8 text ({err.reason} at byte {err.start})") from None

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own step (merge the hyper-parameters of ``--ckpt_path`` into the model config), with the
        file read by :func:`~magvit_pl.run.checkpoint.load_checkpoint` (a text, truncated or pickled-payload file is
        one line, not a traceback) and its hyper-parameters checked (only this package's LightningModules and
        allow-listed classes, plain data) before jsonargparse imports or builds anything they name.

        The resume policy (also for ``fit --ckpt_path last``, whose file must exist: no silent restart from step 0):

        * a checkpoint of another model class than the config's (an MTM for the tokenizer config) is refused;
        * a model trained on other clip sizes than the data gives is refused;
        * the model's settings come from the checkpoint (one ``info:`` line lists those that differ from the config),
          except those of :data:`RESUMABLE` typed on the command line, which win (listed too); any other setting
          typed with a different value is refused. Trainer options (``--trainer.max_steps`` …) are never in a
          checkpoint: yours always hold.
        """
        if not self.config.get("subcommand"):
            return
        sub = self.config[self.config.subcommand]
        ckpt_path = sub.get("ckpt_path")
        if ckpt_path == "last" and self.config.subcommand == "fit":
            ckpt_file = resume_checkpoint(self._resolve_run(sub).path)
        elif ckpt_path and Path(ckpt_path).is_file():
            ckpt_file = Path(ckpt_path)
        else:  # "best", a sharded folder, or none: Lightning's business
            return
        hparams = dict(lightning_hparams(ckpt_file))
        hparams.pop("_instantiator", None)
        trained_class = hparams.pop("_class_path", None)
        if not hparams:
            return
        model = sub.get("model") or {}
        configured = model.get("class_path")
        if trained_class and configured and trained_class != configured:
            kind = run_kind(trained_class)
            raise UserError(f"--ckpt_path {ckpt_path}: a {kind} checkpoint ({trained_class}), but the config's model is a "
                            f"{run_kind(configured)} ({configured}); pass the config of a {kind}, e.g. --config configs/{kind}.yaml")
        _check_sizes(ckpt_path, hparams, sub.get("data"))
        for size in SHARED_SIZES:  # recorded by the clip-size links of the fit; the data sets them (checked above)
            hparams.pop(size, None)
        class_path = trained_class or configured
        mine = _flat(_plain(model.get("init_args") or {}))
        typed = _typed_model_keys(self._args)
        resumable = RESUMABLE.get(class_path, ())
        taken, kept = {}, []
        for key, value in _flat(_plain(hparams)).items():
            ours = mine.get(key, _MISSING)
            if ours == value:
                continue
            if _covers(typed, key):
                if not _covers(resumable, key):
                    raise UserError(f"--model.{key} {_show(ours)}: the checkpoint's model has {_show(value)}, and this setting "
                                    f"cannot change when resuming a run; drop the option (settings that can: {', '.join(resumable)})")
                kept.append(f"{key}={_show(ours)} (checkpoint {_show(value)})")
                continue
            taken[key] = value
        try:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": {"class_path": class_path, "init_args": _nest(taken)}}}, self.config)
        except Exception as err:  # noqa: BLE001 - jsonargparse reports a mismatch in several ways
            raise UserError(explain_checkpoint_error(str(ckpt_path), one_line(err)[:300])) from None
        if self.config.subcommand == "fit" and RUN_DIR_ENV not in os.environ:  # once: not again in DDP children
            changed = [f"{k}={_show(v)} (config {_show(mine.get(k))})" for k, v in taken.items() if k in mine]
            print(f"info: resuming from {ckpt_file}: the model's settings come from the checkpoint"
                  + (f"; these differ from your config: {', '.join(changed)}" if changed else " (the same as your config)")
                  + (f"; yours win: {', '.join(kept)}" if kept else "")
                  + "; trainer settings are yours", file=sys.stderr)

    def _resolve_run(self, cfg: Any):
        """The run folder of this command (:func:`~magvit_pl.run.run_dir.resolve_run_dir` on the parsed options)."""
        runs_root = runs_root_of(cfg.get("runs_root"), cfg.trainer.get("default_root_dir"))
        kind = run_kind(cfg.model.get("class_path") if cfg.get("model") else None)
        return resolve_run_dir(self.config.subcommand, kind, runs_root, cfg.get("run_dir"),
                               inherited=os.environ.get(RUN_DIR_ENV), ckpt_path=cfg.get("ckpt_path"),
                               num_nodes=int(cfg.trainer.get("num_nodes") or 1), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                               latest=lambda: read_latest(Path(runs_root) / kind))

    def before_instantiate_classes(self) -> None:
        """Check the run's settings, then choose and make its folder (nothing is made for a refused run)."""
        cfg = self.config[self.subcommand]
        model = cfg.model.get("class_path") if cfg.get("model") else None
        check_trainer_config(cfg.trainer, model, self.subcommand)
        if cfg.get("save_every_n_steps", 0) < 0:
            raise UserError(f"--save_every_n_steps {cfg.save_every_n_steps}: must be >= 0 (0 = only after validation)")
        kind = run_kind(model)
        if cfg.get("kind") and cfg.kind != kind:
            raise UserError(f"--kind {cfg.kind}: the model ({model}) is a {kind}; pass --kind {kind}, or the config of a {cfg.kind} model")
        if cfg.get("task") and "eval_task" not in (cfg.model.get("init_args") or {}):
            raise UserError(f"--task {cfg.task}: only an MTM model (magvit_pl.lit.mtm.MTMModule) evaluates tasks")
        self._apply_test_protocol(cfg)
        run = self._resolve_run(cfg)
        flag = f"--run_dir {cfg.run_dir}" if cfg.run_dir else f"--runs_root {run.root.parent}"
        self._made_run_dir = run.fresh or not run.path.exists()
        path = make_unique_dir(run.path, flag) if run.fresh else make_dir(run.path, flag)
        os.environ[RUN_DIR_ENV] = str(path)  # DDP children re-run this command line: same folder
        self.run_dir = path
        self.latest_root = run.root if run.point_latest else None
        self._point_loggers_at_run_dir(cfg.trainer)

    @staticmethod
    def _apply_test_protocol(cfg: Any) -> None:
        """``--num_samples``/``--num_repeats`` into the MTM's ``evaluation`` (after the checkpoint's
        hyper-parameters were merged, so they win over the trained model's protocol)."""
        for flag in ("num_samples", "num_repeats"):
            value = cfg.get(flag)
            if value is None:
                continue
            if "evaluation" not in (cfg.model.get("init_args") or {}):
                raise UserError(f"--{flag} {value}: only an MTM model (magvit_pl.lit.mtm.MTMModule) has a test protocol")
            if value < 1:
                raise UserError(f"--{flag} {value}: must be >= 1")
            if cfg.model.init_args.evaluation is None:  # null in a config: the defaults
                cfg.model.init_args.evaluation = Namespace(num_samples=None, num_repeats=1)
            cfg.model.init_args.evaluation[flag] = value

    def _point_loggers_at_run_dir(self, trainer_cfg: Any) -> None:
        """Loggers the config adds with ``save_dir: .`` (W&B's default) write into the run folder. Only for building
        them: the saved config.yaml keeps ``.`` (restored in :meth:`instantiate_classes`), so a re-run of it writes
        into its own new folder."""
        self._relative_loggers = []
        loggers = trainer_cfg.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if args is not None and str(args.get("save_dir")) in (".", "./"):
                self._relative_loggers.append((args, args.save_dir))
                args.save_dir = str(self.run_dir)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a UserError (or Lightning configuration error) raised inside any
        constructor comes out as itself (one line), not wrapped in jsonargparse's trace, and so does a logger
        whose package is missing."""
        try:
            super().instantiate_classes()
        except Exception as err:
            user = user_error_in(err)
            if user is None:
                raise
            raise user from None
        finally:
            for args, save_dir in getattr(self, "_relative_loggers", []):
                args.save_dir = save_dir

    def drop_run_dir_without_results(self) -> None:
        """After a failed command: remove the run folder it made if nothing but its config is in it (no checkpoint,
        metrics, media or results): failed evaluations and refused runs leave no empty folders behind."""
        run_dir = getattr(self, "run_dir", None)
        if run_dir is None or not getattr(self, "_made_run_dir", False) or not run_dir.is_dir() or holds_results(run_dir):
            return
        shutil.rmtree(run_dir, ignore_errors=True)

    def instantiate_trainer(self, **kwargs: Any):
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        kwargs["default_root_dir"] = str(self.run_dir)  # given to the Trainer, not written into config.yaml
        logger = trainer_cfg.get("logger")
        if logger is not False:  # metrics.csv in the run folder, beside any loggers the config adds
            extra = [] if logger in (None, True) else list(logger) if isinstance(logger, (list, tuple)) else [logger]
            kwargs["logger"] = [CSVLogger(save_dir=str(self.run_dir), name="", version=""),
                                *[x for x in extra if not isinstance(x, CSVLogger)]]
        kwargs["callbacks"] = self._run_callbacks(trainer_cfg)
        plugins = trainer_cfg.get("plugins")
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # crash-safe saves, weights-only loads
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def _run_callbacks(self, trainer_cfg: Any) -> list:
        """The config's callbacks plus each of the run's own that the config does not replace."""
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            latest = (self.latest_root, self.run_dir) if self.latest_root is not None else None
            callbacks.append(RunCheckpoint(self.run_dir / "checkpoints", self._get(self.config, "save_every_n_steps", default=200), latest))
        if not any(isinstance(c, ResumeState) for c in callbacks):
            callbacks.append(ResumeState())
        if self.subcommand == "fit" and self._get(self.config, "ckpt_path"):
            callbacks.append(ResumedOptimizerSettings())
        if trainer_cfg.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar())
        if not any(isinstance(c, LossCurves) for c in callbacks):
            callbacks.append(LossCurves())
        if self.subcommand == "fit" and trainer_cfg.get("logger") is not False and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks


def _check_sizes(ckpt_path: str, hparams: dict, data: Any) -> None:
    """One line when the model of ``ckpt_path`` was trained on other clip sizes than the data config gives
    (the link would size the model after the data, and its weights would not fit)."""
    given = (data or {}).get("init_args") or {}
    for size in SHARED_SIZES:
        trained, wanted = hparams.get(size), given.get(size)
        if trained is not None and wanted is not None and trained != wanted:
            raise UserError(f"--ckpt_path {ckpt_path}: the model was trained with {size}={trained}, but data.{size}={wanted}; "
                            f"pass --data.{size} {trained}")


def user_error_in(err: BaseException) -> UserError | None:
    """The project's own :class:`UserError` (or Lightning's configuration error, or a class whose package is not
    installed, e.g. a logger's: as one) behind ``err``.

    jsonargparse wraps what a constructor raises while LightningCLI instantiates the classes (a Union type
    turns it into a ValueError listing every alternative); the original stays in the exception chain.
    """
    seen, todo, building = set(), [err], None
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        if isinstance(e, MisconfigurationException):
            return UserError(str(e))
        named = re.search(r"Problem with given class_path '([^']+)'", str(e))
        building = building or (named.group(1) if named else None)
        if isinstance(e, ModuleNotFoundError) and building:
            return UserError(f"{building}: a package it needs is not installed ({first_line(e)})")
        todo += [e.__cause__, e.__context__]
    return None


# ------------------------------------------------------------------------------- the resume policy's helpers
_MISSING = object()


def _plain(value: Any) -> Any:
    """Namespaces as dicts, tuples as lists: config values and checkpoint values compare equal when they are."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}``; a nested class config (class_path/init_args) stays one value."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and "class_path" not in value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *groups, leaf = key.split(".")
        node = out
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return out


def _typed_model_keys(args: Sequence[str]) -> list[str]:
    """The model settings typed on the command line, as dotted keys without ``init_args``
    (``--model.init_args.optim.lr=1`` → ``optim.lr``)."""
    keys = []
    for arg in args:
        if arg.startswith("--model."):
            parts = [p for p in arg[len("--model."):].split("=", 1)[0].split(".") if p != "init_args"]
            if parts and parts[0] not in ("help", "class_path", "dict_kwargs"):
                keys.append(".".join(parts))
    return keys


def _covers(prefixes: Sequence[str], key: str) -> bool:
    """Whether ``key`` is one of ``prefixes`` or inside one of them (a group covers its fields, and a field typed
    inside a group covers the group's leaf it names)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else str(value)


# Lightning's messages that are understood for this project's runs and say nothing a user can act on, each
# silenced once here (the test suite's filterwarnings in pyproject.toml names the same):
KNOWN_WARNINGS = (
    # the training stream's __len__ is the per-epoch sample count, which the data module splits over ranks and workers
    r".*IterableDataset. has .__len__. defined",
    # Lightning's own call of a torch API deprecated in torch's pytree (lightning/pytorch/utilities/_pytree.py)
    r".*isinstance.treespec, LeafSpec.",
    # EMA tokenizer, frozen tokenizer and perceptual network are in eval mode on purpose
    r"Found \d+ module.s. in eval mode at the start of training",
    # RunCheckpoint saves the state after the optimiser step, which is what resume continues from
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
)
KNOWN_INFO = ("💡 Tip:",)  # Lightning's advertisements for its cloud services


class _DropKnownInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(KNOWN_INFO)


def quiet_known_noise() -> None:
    """Silence :data:`KNOWN_WARNINGS` and :data:`KNOWN_INFO` (idempotent)."""
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownInfo) for f in logger.filters):
            logger.addFilter(_DropKnownInfo())


def run_lightning(args: Sequence[str] | None):
    """Build and run :class:`MagvitCLI` on ``args`` (``fit --config …`` etc.); returns the CLI object."""
    quiet_known_noise()
    no_exit = {"exit_on_error": False}
    return MagvitCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{name: dict(no_exit) for name in LIGHTNING_COMMANDS}},
        auto_configure_optimizers=False,  # no --optimizer/--lr_scheduler: they would replace the modules' own (and drop the discriminator's)
        args=None if args is None else list(args),
    )


def run_command(args: list[str], from_argv: bool) -> None:
    """One Lightning command: ``test``/``validate`` completed by :func:`complete_eval_args`, then :func:`run_lightning`.
    From ``sys.argv``, the completed line is written back there: DDP children re-run it."""
    if args[0] in ("test", "validate"):
        args = complete_eval_args(args)
        if from_argv:
            sys.argv[1:] = args
    options = _preparse(args[1:])
    try:
        run_lightning(None if from_argv else args)
    except MisconfigurationException as err:  # Lightning's verdict on a setting, raised mid-run (e.g. in fit)
        raise UserError(str(err)) from None
    except SIGTERMException as stop:  # a SystemExit without a code: it would exit 0, as if the run had finished
        if args[0] != "fit":
            raise Terminated(f"{args[0]} stopped by SIGTERM") from None
        step = getattr(stop, "saved_step", None)
        saved = (f"checkpoints/last.ckpt holds step {step}" if step is not None
                 else "the last periodic checkpoint is kept (several processes)")
        raise Terminated(f"stopped by SIGTERM; {saved}: run the same command with --ckpt_path last to continue") from None
    except SystemExit as done:
        if done.code in (0, None) and options.asks is True and any(a in ("-h", "--help") for a in args):
            print_model_and_data_help(args[0], options)
        raise


# the classes `fit --help` shows the options of when no --config names one
HELP_CLASSES = {"model": tuple(LIGHTNING_MODULES.values()), "data": ("magvit_pl.data.VideoDataModule",)}


def print_model_and_data_help(command: str, options: argparse.Namespace) -> None:
    """After LightningCLI's help (trainer and CLI options): the options of the model and the data, with their short
    forms (``--model.lr``, ``--data.data_dir``): of the classes the ``--config`` files name, else of every model and
    data module of this package. (LightningCLI itself shows only ``--model CLASS_PATH``.)"""
    from jsonargparse import ArgumentParser

    for key, defaults in HELP_CLASSES.items():
        named = _config_class(options.config, key)
        for class_path in [named] if named else defaults:
            module, _, name = class_path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                continue  # LightningCLI has said what is wrong with the config
            parser = ArgumentParser(prog=f"cli.py {command}", add_help=False)
            parser.add_class_arguments(cls, key, fail_untyped=False, sub_configs=True)
            text = parser.format_help()
            text = text[text.find("\n\n") + 2:] if text.startswith("usage:") else text  # the options, not the usage
            print(f"\n{key} options of {class_path} (set them as --{key}.NAME VALUE, or under {key}: init_args: in YAML):\n{text}")


def _config_class(configs: Sequence[str], key: str) -> str | None:
    """The ``class_path`` of ``key`` (model, data) in the last ``--config`` that names one."""
    for config in reversed(configs):
        try:
            value = (yaml.safe_load(Path(config).read_text()) or {}).get(key)
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(value, dict) and isinstance(value.get("class_path"), str):
            return value["class_path"]
    return None


# ------------------------------------------------------------------------------- before LightningCLI parses
class _PreParser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - leave every mistake to LightningCLI's own parser
        raise ValueError(message)


def _preparse(args: Sequence[str]) -> argparse.Namespace:
    """The few options read before LightningCLI parses (declared here, everything else left for it): the
    config files to check, and for ``test``/``validate`` which run to evaluate."""
    parser = _PreParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config", "-c", action="append", default=[])
    for name in ("--ckpt_path", "--kind", "--model", "--runs_root", "--trainer.default_root_dir"):
        parser.add_argument(name)
    parser.add_argument("-h", "--help", "--print_config", nargs="?", const=True, dest="asks")
    try:
        return parser.parse_known_args([str(a) for a in args])[0]
    except ValueError:  # a malformed option: LightningCLI says what is wrong with it
        return parser.parse_known_args([])[0]


def check_config_files(configs: Sequence[str]) -> None:
    """Every ``--config FILE`` must be a readable UTF-8 text file (YAML or JSON): one line naming it otherwise."""
    for value in configs:
        if not Path(value).is_file():
            continue  # jsonargparse reports a missing file (and accepts inline YAML) itself
        try:
            text = Path(value).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--config {value}: not a text file (a YAML or JSON config is expected)") from None
        except OSError as err:
            raise UserError(f"--config {value}: cannot read it ({err.strerror})") from None
        if "\x00" in text:
            raise UserError(f"--config {value}: not a text file (a YAML or JSON config is expected)")


def _eval_kind(options: argparse.Namespace) -> str:
    """The kind of run ``test``/``validate`` evaluate: ``--kind``, else the model of the last ``--config``
    (or ``--model``) that names one, else ``mtm``."""
    if options.kind is not None:
        if options.kind not in ("tokenizer", "mtm"):
            raise UserError(f"--kind {options.kind}: choose tokenizer or mtm")
        return options.kind
    model = _config_class(options.config, "model")  # a bad --config: LightningCLI reports it itself
    if model:
        return run_kind(model)
    return run_kind(options.model) if options.model else "mtm"


def complete_eval_args(args: list[str]) -> list[str]:
    """``test``/``validate`` without ``--ckpt_path``: the latest run of its kind (``--kind``, or the model of
    ``--config``; default mtm); without ``--config``: the config.yaml of the checkpoint's run."""
    rest = list(args[1:])
    options = _preparse(rest)
    if options.asks is not None:
        return list(args)
    ckpt = options.ckpt_path
    runs_root = runs_root_of(options.runs_root, getattr(options, "trainer.default_root_dir"))
    if ckpt is None:
        kind = _eval_kind(options)
        try:
            ckpt = str(latest_checkpoint(runs_root, kind))
        except UserError as err:
            if kind == "mtm" and options.kind is None and (Path(runs_root) / "tokenizer" / "latest").exists():
                raise type(err)(f"{err}; to test the latest tokenizer run instead: python cli.py test --kind tokenizer") from None
            raise
        rest += ["--ckpt_path", ckpt]
    elif Path(ckpt).is_dir() and (Path(ckpt) / "config.json").is_file():  # a model folder (export --format safetensors)
        ckpt = str(checkpoint_for_test(ckpt, runs_root))  # + its config.yaml, found below
        rest = [ckpt if i and rest[i - 1] == "--ckpt_path" else (f"--ckpt_path={ckpt}" if a.startswith("--ckpt_path=") else a)
                for i, a in enumerate(rest)]
    elif Path(ckpt).is_dir():
        raise UserError(f"--ckpt_path {ckpt} is a folder (a sharded DeepSpeed/FSDP checkpoint); make one file of it first: "
                        f"python cli.py export --ckpt_path {ckpt} --output FILE")
    elif not Path(ckpt).is_file():
        raise UserError(f"--ckpt_path {ckpt}: file not found")
    if not options.config:
        config = run_config_of(ckpt)
        if not config.is_file():
            raise UserError(f"--ckpt_path {ckpt}: no config.yaml in its run directory; pass --config")
        check_run_config(config)  # found, not given: it may come from outside like the checkpoint
        rest = ["--config", str(config), *rest]
    return [args[0], *rest]
