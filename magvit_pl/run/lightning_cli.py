"""``fit`` / ``validate`` / ``test`` / ``predict``: :class:`MagvitCLI`, a LightningCLI with a run folder per run.

What it adds to LightningCLI:

* options ``--run_dir``, ``--runs_root``, ``--kind``, ``--task``, ``--num_samples``, ``--num_repeats``, ``--save_every_n_steps``; the folder comes from
  :func:`magvit_pl.run.run_dir.resolve_run_dir` (config.yaml, metrics.csv, checkpoints/, media/ in it);
* links (``parser.link_arguments``): the clip size is set once, on the data (``--data.num_frames``,
  ``--data.resolution``), and reaches the MTM (when the data module is built: it checks the sizes first) and
  the tokenizer's discriminator; ``--task`` sets the MTM's ``eval_task``. (The number of classes is read from the data's manifest after parsing, so it cannot be
  linked; the MTM checks it against the data in ``setup``.)
* the callbacks and checkpoint plugin of :mod:`magvit_pl.run.callbacks`, a rich progress bar, a CSV logger;
* the preflight check of the trainer config (:mod:`magvit_pl.run.preflight`) and of any ``--ckpt_path``
  file (read weights-only, hyper-parameters checked before jsonargparse builds anything they name);
* ``test``/``validate`` without ``--ckpt_path``: the latest run of the kind; with a model folder: a checkpoint made
  from it (:func:`complete_eval_args`).

Every user mistake is one :class:`~magvit_pl.run.errors.UserError` line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO

from magvit_pl.lit.mtm_options import explain_checkpoint_error, explain_option_error
from magvit_pl.pretrained import checkpoint_for_test
from magvit_pl.run.callbacks import AtomicCheckpointIO, LossCurves, PointLatest, RunCheckpoint
from magvit_pl.run.checkpoint import lightning_hparams
from magvit_pl.run.cli import LIGHTNING_COMMANDS
from magvit_pl.run.errors import UserError, one_line
from magvit_pl.run.files import make_dir
from magvit_pl.run.preflight import check_trainer_config
from magvit_pl.run.resume import ResumeState
from magvit_pl.run.run_dir import (RUN_DIR_ENV, check_run_config, latest_checkpoint, read_latest, resolve_run_dir,
                                   run_config_of, run_kind)

# clip sizes set once, on the data, and linked to the models that are built for them
SHARED_SIZES = ("num_frames", "resolution")


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

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None, help="Run directory (default: RUNS_ROOT/<tokenizer|mtm>/<timestamp>; with --ckpt_path last: the latest run).")
        parser.add_argument("--runs_root", type=str, default="runs", help="Folder holding one sub-folder per model kind and run.")
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

    def parse_arguments(self, parser, args) -> None:
        check_config_files(_preparse(sys.argv[1:] if args is None else args).config if not isinstance(args, dict) else [])
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise UserError(explain_option_error(one_line(err))) from None
        except UnicodeDecodeError as err:
            raise UserError(f"a config file is not UTF-8 text ({err.reason} at byte {err.start})") from None

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own step (merge the hyper-parameters of ``--ckpt_path`` into the model config), with
        the file read by :func:`~magvit_pl.run.checkpoint.load_checkpoint` (a text, truncated or pickled-payload file
        is one line, not a traceback) and its hyper-parameters checked (only this package's LightningModules
        and allow-listed classes, plain data) before jsonargparse imports or builds anything they name; a
        model trained on other clip sizes than the data gives is one line too."""
        if not self.config.get("subcommand"):
            return
        sub = self.config[self.config.subcommand]
        ckpt_path = sub.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():  # "last", "best" or a sharded folder: Lightning's business
            return
        hparams = dict(lightning_hparams(ckpt_path))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        _check_sizes(ckpt_path, hparams, sub.get("data"))
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except Exception as err:  # noqa: BLE001 - jsonargparse reports a mismatch in several ways
            raise UserError(explain_checkpoint_error(ckpt_path, one_line(err)[:300])) from None
        model = self.config[self.config.subcommand].model
        extra = model.get("dict_kwargs") or {}
        for size in SHARED_SIZES:  # recorded by the clip-size links of the fit; the data sets them (checked above)
            extra.pop(size, None)
        if "dict_kwargs" in model and not extra:  # an empty one would take the links a tokenizer has no argument for
            del model["dict_kwargs"]

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
        run = resolve_run_dir(self.subcommand, kind, cfg.runs_root, cfg.run_dir, inherited=os.environ.get(RUN_DIR_ENV),
                              ckpt_path=cfg.get("ckpt_path"), num_nodes=int(cfg.trainer.get("num_nodes") or 1),
                              slurm_job_id=os.environ.get("SLURM_JOB_ID"), latest=lambda: read_latest(Path(cfg.runs_root) / kind))
        self._made_run_dir = not run.path.exists()
        make_dir(run.path, f"--run_dir {cfg.run_dir}" if cfg.run_dir else f"--runs_root {cfg.runs_root}")
        os.environ[RUN_DIR_ENV] = str(run.path)  # DDP children re-run this command line: same folder
        self.run_dir = run.path
        self.latest_root = run.root if run.point_latest else None
        cfg.trainer.default_root_dir = str(run.path)

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

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a UserError (or Lightning configuration error) raised inside any
        constructor comes out as itself (one line), not wrapped in jsonargparse's trace."""
        try:
            super().instantiate_classes()
        except Exception as err:
            self._drop_empty_run_dir()
            user = user_error_in(err)
            if user is None:
                raise
            raise user from None

    def _drop_empty_run_dir(self) -> None:
        run_dir = getattr(self, "run_dir", None)
        if run_dir is not None and getattr(self, "_made_run_dir", False) and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()

    def instantiate_trainer(self, **kwargs: Any):
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(save_dir=str(self.run_dir), name="", version="")
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
            callbacks.append(RunCheckpoint(self.run_dir / "checkpoints", self._get(self.config, "save_every_n_steps", default=200)))
        if not any(isinstance(c, ResumeState) for c in callbacks):
            callbacks.append(ResumeState())
        if trainer_cfg.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar())
        if not any(isinstance(c, LossCurves) for c in callbacks):
            callbacks.append(LossCurves())
        if self.latest_root is not None:
            callbacks.append(PointLatest(self.latest_root, self.run_dir))
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
    """The project's own :class:`UserError` (or Lightning's configuration error, as one) behind ``err``.

    jsonargparse wraps what a constructor raises while LightningCLI instantiates the classes (a Union type
    turns it into a ValueError listing every alternative); the original stays in the exception chain.
    """
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        if isinstance(e, MisconfigurationException):
            return UserError(str(e))
        todo += [e.__cause__, e.__context__]
    return None


def run_lightning(args: Sequence[str] | None):
    """Build and run :class:`MagvitCLI` on ``args`` (``fit --config …`` etc.); returns the CLI object."""
    no_exit = {"exit_on_error": False}
    return MagvitCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{name: dict(no_exit) for name in LIGHTNING_COMMANDS}},
        args=None if args is None else list(args),
    )


def run_command(args: list[str], from_argv: bool) -> None:
    """One Lightning command: ``test``/``validate`` completed by :func:`complete_eval_args`, then :func:`run_lightning`.
    From ``sys.argv``, the completed line is written back there: DDP children re-run it."""
    if args[0] in ("test", "validate"):
        args = complete_eval_args(args)
        if from_argv:
            sys.argv[1:] = args
    try:
        run_lightning(None if from_argv else args)
    except MisconfigurationException as err:  # Lightning's verdict on a setting, raised mid-run (e.g. in fit)
        raise UserError(str(err)) from None


# ------------------------------------------------------------------------------- before LightningCLI parses
class _PreParser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - leave every mistake to LightningCLI's own parser
        raise ValueError(message)


def _preparse(args: Sequence[str]) -> argparse.Namespace:
    """The few options read before LightningCLI parses (declared here, everything else left for it): the
    config files to check, and for ``test``/``validate`` which run to evaluate."""
    parser = _PreParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config", "-c", action="append", default=[])
    for name in ("--ckpt_path", "--kind", "--model"):
        parser.add_argument(name)
    parser.add_argument("--runs_root", default="runs")
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
    for config in reversed(options.config):
        try:
            model = (yaml.safe_load(Path(config).read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # LightningCLI reports a bad --config itself
        if isinstance(model, dict) and model.get("class_path"):
            return run_kind(model["class_path"])
    return run_kind(options.model) if options.model else "mtm"


def complete_eval_args(args: list[str]) -> list[str]:
    """``test``/``validate`` without ``--ckpt_path``: the latest run of its kind (``--kind``, or the model of
    ``--config``; default mtm); without ``--config``: the config.yaml of the checkpoint's run."""
    rest = list(args[1:])
    options = _preparse(rest)
    if options.asks is not None:
        return list(args)
    ckpt = options.ckpt_path
    if ckpt is None:
        kind = _eval_kind(options)
        try:
            ckpt = str(latest_checkpoint(options.runs_root, kind))
        except UserError as err:
            if kind == "mtm" and options.kind is None and (Path(options.runs_root) / "tokenizer" / "latest").exists():
                raise type(err)(f"{err}; to test the latest tokenizer run instead: python cli.py test --kind tokenizer") from None
            raise
        rest += ["--ckpt_path", ckpt]
    elif Path(ckpt).is_dir() and (Path(ckpt) / "config.json").is_file():  # a model folder (export --format safetensors)
        ckpt = str(checkpoint_for_test(ckpt, options.runs_root))  # + its config.yaml, found below
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
