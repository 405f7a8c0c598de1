"""Shareable model folders: ``save_pretrained`` / ``from_pretrained`` for the tokenizer and the MTM.

A folder holds only data, never code:

```
config.json          what to build (checked, then built through the model allow-list) and how it was trained
model.safetensors    the weights (fp32, or bf16 on request): the EMA tokenizer, or the MTM's transformer
README.md            the model card (magvit_pl.run.model_card)
training_config.yaml the run's resolved LightningCLI config, when exported from a run (documentation only)
tokenizer/           MTM only: the frozen tokenizer it was trained on, itself a tokenizer folder
```

Loading reads ``config.json`` as JSON and the weights with ``safetensors.torch.load_file``: no pickle anywhere.
The tokenizer's config (``model``) must pass :func:`~magvit_pl.models.config.check_config` and is built by
:func:`~magvit_pl.models.config.build_from_config`, the same allow-list as checkpoints; the MTM's options
(``module``) must be plain data naming arguments of :class:`~magvit_pl.lit.mtm.MTMModule` (the checks
``MTMModule.from_checkpoint`` applies); its vocabulary and task table are JSON and must equal what the rebuilt
model derives from them; ``data`` may name only the data module. Anything else is one
:class:`~magvit_pl.run.errors.UserError` line before anything is built. ``from_pretrained("user/repo")`` fetches
such a folder from the Hugging Face Hub (:mod:`magvit_pl.hub`, optional).

The CLI reaches these folders through three functions: :func:`load_tokenizer_any` (``reconstruct``, the MTM's
``tokenizer_ckpt``), :func:`load_mtm_any` (``generate``, ``sample``) and :func:`checkpoint_for_test` (``test``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from magvit_pl import __version__
from magvit_pl.data.manifest import read_manifest
from magvit_pl.hub import download, push_to_hub as push
from magvit_pl.models.checkpointing import drop_legacy_flag
from magvit_pl.models.config import build_from_config, check_config, check_values
from magvit_pl.run.checkpoint import (DATA_MODULES, LIGHTNING_MODULES, check_init_kwargs, checked_hparams, load_checkpoint,
                                      load_tokenizer, load_weights, save_checkpoint)
from magvit_pl.run.errors import MissingFileError, UserError, first_line
from magvit_pl.run.export import read_for_export
from magvit_pl.run.files import atomic_path
from magvit_pl.run.model_card import render_card, run_metrics
from magvit_pl.tasks import discover_tasks

FORMAT, FORMAT_VERSION = "magvit-pl", 1
CONFIG, WEIGHTS, CARD, TRAINING_CONFIG, TOKENIZER_DIR = "config.json", "model.safetensors", "README.md", "training_config.yaml", "tokenizer"
FILES = (CONFIG, WEIGHTS, CARD, TRAINING_CONFIG)  # what a folder may hold (plus tokenizer/ for an MTM)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Dtype = Literal["float32", "bfloat16"]
MAX_CONFIG_BYTES = 16 << 20
ALIASES_KEY = "magvit_pl_aliases"  # safetensors metadata: tensors stored once under another name (tied weights)
TOKENIZER_MODULE_PARTS = ("tokenizer", "discriminator", "perceptual", "init_from")  # rebuilt, not copied, for `test`


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_pretrained` (it holds ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


# ------------------------------------------------------------------------------------------ saving
def save_pretrained(model: nn.Module, folder: str | os.PathLike, dtype: Dtype = "float32", extra: dict[str, Any] | None = None,
                    metrics: Sequence[dict[str, Any]] = (), commands: Sequence[str] = (), files: dict[str, Path] | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``model`` as a shareable folder (see the module docstring).

    Args:
        model: a tokenizer (``VQTokenizer`` or any allow-listed tokenizer class), a ``TokenizerModule`` (its EMA
            tokenizer is saved) or an ``MTMModule`` (its transformer, plus its tokenizer in ``tokenizer/``).
        folder: the folder to write; written next to it under a temporary name, then renamed into place.
        dtype: ``float32`` (bit-identical to the model) or ``bfloat16`` (half the size; loads as fp32).
        extra: more ``config.json`` entries (plain data): ``data`` (the data module's config), ``training``
            (step, source), ``module`` (a tokenizer module's options, for ``test``), ``clip`` (training clip size).
        metrics: measured metrics for the model card (:func:`magvit_pl.run.model_card.run_metrics` tables).
        commands: the commands that made the model, for the model card.
        files: more files to copy in, by name inside the folder (e.g. ``training_config.yaml``: documentation only,
            never read when loading).
        overwrite: replace an existing folder (never replaced otherwise).
    """
    folder = Path(folder)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if folder.exists() and not overwrite:
        raise UserError(f"--output {folder}: exists; pass --overwrite true to replace it")
    if folder.exists() and not is_pretrained_folder(folder) and not (folder.is_dir() and not any(folder.iterdir())):
        raise UserError(f"--output {folder}: exists and is not a model folder written by magvit-pl; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        config = _write_folder(model, tmp, dtype, dict(extra or {}))
        _write_text(tmp / CARD, render_card(config, metrics, commands))
        for name, src in (files or {}).items():
            if name not in FILES and name not in (f"{TOKENIZER_DIR}/{f}" for f in FILES):
                raise ValueError(f"save_pretrained: {name} is not a file a model folder holds")
            if (tmp / name).parent.is_dir():
                shutil.copyfile(src, tmp / name)
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _write_folder(model: nn.Module, folder: Path, dtype: Dtype, extra: dict[str, Any]) -> dict[str, Any]:
    from magvit_pl.lit.mtm import MTMModule  # lazy: Lightning, and lit.mtm imports this module

    if isinstance(model, MTMModule):
        if model.transformer is None:
            model.configure_model()
        shared = {k: v for k, v in extra.items() if k in ("data", "training", "clip")}
        tokenizer_config = _write_folder(model.tokenizer, folder / TOKENIZER_DIR, dtype, shared)
        _write_text(folder / TOKENIZER_DIR / CARD, render_card(tokenizer_config, commands=["# the frozen tokenizer of the MTM one folder up"]))
        module = {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")}
        config = {"kind": "mtm", "module": {**module, "tokenizer_ckpt": TOKENIZER_DIR}, "tokenizer": TOKENIZER_DIR,
                  "vocab": model.vocab.to_dict(), "task_table": {n: model.vocab.task_id(n) for n in model.task_names},
                  "token_grid": list(model.grid)}
        weights = model.transformer
    else:
        tokenizer = getattr(model, "ema_tokenizer", model)  # a TokenizerModule shares its EMA tokenizer
        if not hasattr(tokenizer, "init_config") or not hasattr(tokenizer, "encode"):
            raise UserError(f"save_pretrained: {type(model).__name__} is neither a tokenizer (with init_config and encode) "
                            "nor an MTMModule")
        config = {"kind": "tokenizer", "model": tokenizer.init_config, "downsample": list(tokenizer.downsample_factors),
                  "codebook_size": int(tokenizer.codebook_size)}
        if tokenizer is not model and hasattr(model, "hparams"):  # a TokenizerModule: its options, for `test`
            extra.setdefault("module", {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")})
        weights = tokenizer
    params = sum(p.numel() for p in weights.state_dict().values() if p.is_floating_point())
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, "dtype": dtype,
              **config, "num_parameters": int(params), **extra}
    check_values({k: v for k, v in config.items() if k != "data"}, "save_pretrained")
    _write_text(folder / CONFIG, json.dumps(config, indent=2, allow_nan=False) + "\n")
    _save_weights(weights, folder / WEIGHTS, DTYPES[dtype])
    return config


def _save_weights(module: nn.Module, path: Path, dtype: torch.dtype) -> None:
    """``module``'s state dict as safetensors; floating tensors cast to ``dtype``; a tensor shared under two names
    (tied weights) stored once, the other name recorded in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in module.state_dict().items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if value.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        value = value.detach().cpu()
        tensors[name] = (value.to(dtype) if value.is_floating_point() else value).contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})
        os.chmod(tmp, 0o666 & ~_umask())  # the file is rewritten by safetensors: give it the usual permissions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` folder onto ``folder`` (the old one, if any, is moved aside first, then removed)."""
    for path in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        os.chmod(path, 0o777 & ~_umask())  # mkdtemp makes 0700
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------- loading
def from_pretrained(name_or_path: str | os.PathLike, revision: str | None = None) -> nn.Module:
    """The model in a folder written by :func:`save_pretrained`, or in a Hugging Face Hub repository
    (``"user/repo"`` or ``"hf://user/repo"``; needs ``pip install magvit-pl[hub]``): a frozen tokenizer in eval
    mode (``encode`` / ``decode``) or an ``MTMModule`` in eval mode (``generate``), on the CPU."""
    folder = local_folder(name_or_path, revision)
    kind = read_config(folder)["kind"]
    return load_tokenizer_folder(folder) if kind == "tokenizer" else load_mtm_folder(folder)


def local_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for ``name_or_path``: itself, or the Hub snapshot of a repository id."""
    text = str(name_or_path)
    if text.startswith("hf://"):
        return download(text[len("hf://"):], revision)
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is a file; from_pretrained reads a folder with {CONFIG} and {WEIGHTS} "
                            "(make one from a checkpoint: python cli.py export --format safetensors)")
        return path
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.startswith(("./", "../")):
        try:
            return download(text, revision)
        except UserError as err:
            raise UserError(f"{text}: no such local folder; as a Hub repository: {err}") from None
    raise MissingFileError(f"{path}: no such folder (nor a Hub repository id user/repo)")


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/config.json``, checked: a JSON object of this format and version, of a known kind and dtype, whose
    values are plain data naming only allow-listed model classes (``data`` only the data module). One line otherwise."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise MissingFileError(f"{folder}: no {CONFIG}; not a model folder written by magvit-pl (save_pretrained / export --format safetensors)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MB; not a config magvit-pl wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: not valid JSON ({first_line(err)[:100]})") from None
    source = str(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{source}: 'format' must be {FORMAT!r}; not a model folder written by magvit-pl")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{source}: format_version {version!r} is not one this version reads (1..{FORMAT_VERSION}); upgrade magvit-pl")
    if config.get("kind") not in ("tokenizer", "mtm"):
        raise UserError(f"{source}: 'kind' must be 'tokenizer' or 'mtm', found {config.get('kind')!r}")
    if config.get("dtype") not in DTYPES:
        raise UserError(f"{source}: 'dtype' must be one of {', '.join(DTYPES)}, found {config.get('dtype')!r}")
    data = config.get("data")
    check_values({k: v for k, v in config.items() if k != "data"}, source)  # every class_path allow-listed, plain values
    if data is not None:
        check_data_config(data, source)
    if config["kind"] == "tokenizer":
        check_config(config.get("model"), source)
    else:
        for key, kind in (("module", dict), ("vocab", dict), ("task_table", dict), ("token_grid", list)):
            if not isinstance(config.get(key), kind):
                raise UserError(f"{source}: an MTM config needs '{key}' as a JSON {'object' if kind is dict else 'list'}")
    if config.get("module") is not None:  # the LightningModule's options: plain data, no class of its own
        checked_hparams(config["module"], f"{source} 'module'")
    return config


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def check_data_config(data: Any, source: str) -> dict[str, Any]:
    """A recorded data-module config: ``{"class_path": <the data module>, "init_args": plain data}``; one line otherwise."""
    if not isinstance(data, dict) or data.get("class_path") not in DATA_MODULES or set(data) - {"class_path", "init_args"}:
        found = data.get("class_path") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{source}: 'data' must name the data module ({DATA_MODULES[0]}) with its init_args; found {found!r}")
    check_values(data.get("init_args", {}), source)
    return data


def load_tokenizer_folder(folder: str | os.PathLike, of_mtm: bool = True) -> nn.Module:
    """The frozen tokenizer of a tokenizer folder (or, with ``of_mtm``, of an MTM folder: its ``tokenizer/``), in eval mode."""
    folder = Path(folder)
    config = read_config(folder)
    if config["kind"] == "mtm":
        if not of_mtm:
            raise UserError(f"{folder} holds an MTM where a tokenizer folder belongs")
        return load_tokenizer_folder(_tokenizer_dir(folder, config), of_mtm=False)
    source = str(folder / CONFIG)
    model = build_from_config(drop_legacy_flag(config["model"]), source)
    if not (isinstance(model, nn.Module) and hasattr(model, "encode") and hasattr(model, "decode")):
        raise UserError(f"{source}: 'model' builds a {type(model).__name__}, which is not a tokenizer (no encode/decode)")
    _load_weights(model, folder / WEIGHTS, config["dtype"])
    return model.eval().requires_grad_(False)


def load_mtm_folder(folder: str | os.PathLike) -> nn.Module:
    """The ``MTMModule`` of an MTM folder, with its tokenizer, in eval mode; the stored vocabulary, task table and
    token grid must equal the rebuilt model's."""
    folder = Path(folder)
    config = read_config(folder)
    source = str(folder / CONFIG)
    if config["kind"] != "mtm":
        raise UserError(f"{folder} holds a {config['kind']}, not an MTM; generate/sample/test --task need an MTM folder")
    tokenizer = load_tokenizer_folder(_tokenizer_dir(folder, config), of_mtm=False)
    model = build_mtm(config["module"], tokenizer, source)
    _load_weights(model.transformer, folder / WEIGHTS, config["dtype"])
    derived = {"vocab": model.vocab.to_dict(), "task_table": {n: model.vocab.task_id(n) for n in model.task_names},
               "token_grid": list(model.grid)}
    for key, value in derived.items():
        if config[key] != value:
            raise UserError(f"{source}: its '{key}' {config[key]!r:.200} is not the model's {value!r:.200}; the folder is inconsistent")
    return model.eval()


def build_mtm(hparams: dict[str, Any], tokenizer: nn.Module, source: str) -> nn.Module:
    """An ``MTMModule`` (transformer built, weights untrained) from checked hyper-parameters and its frozen tokenizer."""
    from magvit_pl.lit.mtm import MTMModule  # lazy: Lightning, and lit.mtm imports this module
    from magvit_pl.lit.mtm_options import constructor_args  # with lit.mtm, above

    hparams = {k: v for k, v in checked_hparams(hparams, source).items() if not k.startswith("_")}
    args = constructor_args(hparams)
    check_init_kwargs(MTMModule, args, source)
    names = (args.get("tasks").names if args.get("tasks") is not None else None) or []
    missing = sorted(set(names) - set(discover_tasks()))
    if missing:
        raise UserError(f"{source}: the model was trained on tasks {', '.join(missing)}, which are not installed here; "
                        "install the plugin package that provides them (python cli.py tasks lists the installed ones)")
    try:
        model = MTMModule(**{**args, "tokenizer": tokenizer.eval().requires_grad_(False)})
        model.configure_model()
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{source}: cannot build the MTM from its recorded options ({type(err).__name__}: {str(err)[:200]})") from None
    return model


def _tokenizer_dir(folder: Path, config: dict[str, Any]) -> Path:
    name = config.get("tokenizer")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or ".." in name:
        raise UserError(f"{folder / CONFIG}: 'tokenizer' must name a folder inside it (e.g. {TOKENIZER_DIR!r}), found {name!r}")
    path = folder / name
    if not path.is_dir() or path.resolve().parent != folder.resolve():
        raise MissingFileError(f"{folder}: its tokenizer folder {name!r} is missing")
    return path


def _load_weights(module: nn.Module, path: Path, dtype: str) -> None:
    """``path`` (safetensors, no pickle) into ``module``, strictly: every name and shape must fit; floating tensors
    must be of the folder's recorded ``dtype``."""
    if not path.is_file():
        raise MissingFileError(f"{path.parent}: {path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path), device="cpu")
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err, default=type(err).__name__)[:160]})") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and v in tensors for k, v in aliases.items()):
        raise UserError(f"{path}: its '{ALIASES_KEY}' metadata must map names to stored tensors")
    wrong = next((k for k, v in tensors.items() if v.is_floating_point() and v.dtype != DTYPES[dtype]), None)
    if wrong is not None:
        raise UserError(f"{path}: tensor {wrong} is {tensors[wrong].dtype}, but config.json says {dtype}")
    load_weights(module, {**tensors, **{k: tensors[v] for k, v in aliases.items()}}, path)


# -------------------------------------------------------------------- what the CLI's call sites use
def _folder_of(path: str | os.PathLike) -> Path | None:
    """The model folder ``path`` names (a local one, or ``hf://user/repo`` fetched), or None for a checkpoint."""
    if str(path).startswith("hf://") or is_pretrained_folder(path):
        return local_folder(path)
    return None


def load_tokenizer_any(path: str | os.PathLike) -> nn.Module:
    """The frozen tokenizer of a tokenizer checkpoint, or of a model folder (a tokenizer's, or an MTM's: its tokenizer;
    ``hf://user/repo`` for one on the Hugging Face Hub)."""
    folder = _folder_of(path)
    return load_tokenizer_folder(folder) if folder is not None else load_tokenizer(path)


def load_mtm_any(path: str | os.PathLike) -> nn.Module:
    """The ``MTMModule`` of an MTM checkpoint or of an MTM folder (``hf://user/repo`` on the Hub), in eval mode."""
    from magvit_pl.lit.mtm import MTMModule  # lazy: Lightning, and lit.mtm imports this module

    folder = _folder_of(path)
    return load_mtm_folder(folder) if folder is not None else MTMModule.from_checkpoint(str(path))


def training_clip_frames(path: str | os.PathLike) -> int | None:
    """Frames per clip the model at ``path`` (checkpoint or folder) was trained on, when recorded."""
    folder = _folder_of(path)
    if folder is not None:
        frames = (read_config(folder).get("clip") or {}).get("num_frames")
    else:
        frames = (load_checkpoint(path).get("datamodule_hyper_parameters") or {}).get("num_frames")
    return int(frames) if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0 else None


def recorded_data(path: str | os.PathLike) -> dict[str, Any] | None:
    """The data module's init args the model at ``path`` (checkpoint or folder) was trained with, checked; or None."""
    folder = _folder_of(path)
    if folder is not None:
        data = read_config(folder).get("data")
        return dict(data.get("init_args", {})) if data else None
    hparams = load_checkpoint(path).get("datamodule_hyper_parameters")
    if not hparams:
        return None
    return {k: v for k, v in checked_hparams(hparams, f"checkpoint {path}", DATA_MODULES).items() if not k.startswith("_")}


def checkpoint_for_test(folder: str | os.PathLike, runs_root: str | os.PathLike = "runs") -> Path:
    """A Lightning checkpoint and run ``config.yaml`` made from a model folder, for ``test`` / ``validate``:
    ``RUNS_ROOT/pretrained/<digest>/checkpoints/last.ckpt`` (returned) and ``…/<digest>/config.yaml`` (model and data).

    Everything is rebuilt from the checked folder (the model through :func:`from_pretrained`), so the files hold
    only this package's classes; the MTM's ``tokenizer_ckpt`` points at the folder's tokenizer.
    """
    import lightning  # lazy: a tokenizer folder loads without Lightning

    folder = Path(folder).resolve()
    config = read_config(folder)
    model = from_pretrained(folder)
    if config["kind"] == "mtm":
        tokenizer_dir = _tokenizer_dir(folder, config)
        init_args = {**config["module"], "tokenizer_ckpt": str(tokenizer_dir)}
        meta = {"kind": "mtm", "vocab": config["vocab"], "task_table": config["task_table"], "token_grid": config["token_grid"],
                "tokenizer_config": model.tokenizer.init_config, "nonfinite_steps": 0}
        state_dict = model.state_dict()
    else:
        from magvit_pl.lit.tokenizer import TokenizerModule  # lazy: Lightning

        options = {k: v for k, v in (config.get("module") or {}).items() if k not in TOKENIZER_MODULE_PARTS and not k.startswith("_")}
        check_init_kwargs(TokenizerModule, options, str(folder / CONFIG))
        init_args = {"tokenizer": config["model"], "discriminator": None, "perceptual": None, **options}
        module = TokenizerModule(tokenizer=model.requires_grad_(True).train(), discriminator=None, perceptual=None, **options)
        meta = {"kind": "tokenizer", "tokenizer_config": config["model"], "token_grid_downsample": config.get("downsample"),
                "codebook_size": config.get("codebook_size"), "nonfinite_steps": 0}
        state_dict = module.state_dict()
    class_path = LIGHTNING_MODULES[config["kind"]]
    data = config.get("data") or {"class_path": DATA_MODULES[0], "init_args": dict(config.get("clip") or {})}
    digest = hashlib.sha256(json.dumps([str(folder), config], sort_keys=True).encode())
    for path in sorted(folder.rglob(WEIGHTS)):
        digest.update(f"{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    run = Path(runs_root) / "pretrained" / digest.hexdigest()[:16]
    ckpt = run / "checkpoints" / "last.ckpt"
    save_checkpoint({"state_dict": state_dict, "hyper_parameters": {"_class_path": class_path, **init_args}, "magvit": meta,
                     "pytorch-lightning_version": lightning.__version__, "epoch": 0,
                     "global_step": int((config.get("training") or {}).get("global_step") or 0)}, ckpt)
    with atomic_path(run / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"model": {"class_path": class_path, "init_args": init_args}, "data": data}, sort_keys=False))
    return ckpt


# ------------------------------------------------------------------------------- export --format safetensors
def export_folder(ckpt_path: str, output: str, overwrite: bool = False, tag: str | None = None, dtype: Dtype = "float32",
                  results: Sequence[str] = (), push_to_hub: str | None = None) -> Path:
    """``python cli.py export --format safetensors``: the model folder of any run checkpoint (Lightning file,
    DeepSpeed or FSDP folder, consolidated by :func:`magvit_pl.run.export.read_for_export`), with a model card quoting
    the run's measured metrics and the commands that made it."""
    out = Path(output)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if out.exists() and not overwrite:
        raise UserError(f"--output {out}: exists; pass --overwrite true to replace it")
    missing = [r for r in results if not Path(r).is_file()]
    if missing:
        raise MissingFileError(f"--results {missing[0]}: file not found")
    src = Path(ckpt_path)
    exported, label = read_for_export(src, tag)
    model = _model_of_checkpoint(exported, f"--ckpt_path {src}")
    data = {k: v for k, v in (exported.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    extra: dict[str, Any] = {"training": {"global_step": exported.get("global_step"), "epoch": exported.get("epoch"),
                                          "source": f"{label} {src.name}", **_data_summary(data)}}
    if data:
        extra["data"] = {"class_path": DATA_MODULES[0], "init_args": data}
        extra["clip"] = {"num_frames": data.get("num_frames"), "resolution": data.get("resolution")}
    if exported["magvit"]["kind"] == "tokenizer":
        hparams = exported.get("hyper_parameters") or {}
        extra["module"] = {k: v for k, v in hparams.items() if not k.startswith("_") and k not in TOKENIZER_MODULE_PARTS}
    run = src.resolve().parent.parent if src.resolve().parent.name == "checkpoints" else None
    files, commands = {}, []
    if run is not None and (run / "config.yaml").is_file():
        files[TRAINING_CONFIG] = run / "config.yaml"
        commands.append(f"python cli.py fit --config {TRAINING_CONFIG}   # the run's resolved config, in this folder")
    tokenizer_ckpt = (exported.get("hyper_parameters") or {}).get("tokenizer_ckpt")
    if exported["magvit"]["kind"] == "mtm" and isinstance(tokenizer_ckpt, str):
        tok_run = Path(tokenizer_ckpt).resolve().parent.parent
        if (tok_run / "config.yaml").is_file():
            files[f"{TOKENIZER_DIR}/{TRAINING_CONFIG}"] = tok_run / "config.yaml"
            commands.insert(0, f"python cli.py fit --config {TOKENIZER_DIR}/{TRAINING_CONFIG}   # the tokenizer first")
    command = f"python cli.py export --ckpt_path {src} --output {out} --format safetensors" + \
        (f" --dtype {dtype}" if dtype != "float32" else "") + (f" --results '[{', '.join(map(str, results))}]'" if results else "")
    metrics = run_metrics(src, results) if src.is_file() or src.is_dir() else []
    save_pretrained(model, out, dtype=dtype, extra=extra, metrics=metrics, commands=[*commands, command], files=files,
                    overwrite=overwrite)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {label} {src} -> {out}/: {exported['magvit']['kind']}, {WEIGHTS} ({dtype}) + {CONFIG} + {CARD}, "
          f"{size / 2**20:.1f} MB")
    if push_to_hub:
        print(f"uploaded to the Hugging Face Hub: {push(out, push_to_hub)}")
    return out


def _model_of_checkpoint(exported: dict[str, Any], source: str) -> nn.Module:
    """The inference model of an exported (checked) checkpoint: the EMA tokenizer, or the MTM with its tokenizer."""
    meta, state = exported["magvit"], exported["state_dict"]
    tokenizer = build_from_config(drop_legacy_flag(meta["tokenizer_config"]), source)
    if meta.get("kind") == "tokenizer":
        load_weights(tokenizer, _prefixed(state, "ema_tokenizer."), source)
        return tokenizer.eval()
    if meta.get("kind") != "mtm":
        raise UserError(f"{source}: a {meta.get('kind')!r} checkpoint; export --format safetensors takes a tokenizer or an MTM")
    load_weights(tokenizer, _prefixed(state, "tokenizer."), source)
    model = build_mtm(exported.get("hyper_parameters") or {}, tokenizer, source)
    load_weights(model.transformer, _prefixed(state, "transformer."), source)
    return model.eval()


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Class names and video counts of the training data, when its manifest is on this machine."""
    if not data:
        return {}
    try:
        if data.get("data_dir"):
            manifest = read_manifest(data["data_dir"])
        else:
            from magvit_pl.data import VideoDataModule  # lazy: Lightning

            root = VideoDataModule(**{k: v for k, v in data.items() if k != "data_dir"}).root
            manifest = read_manifest(root) if (root / "manifest.json").is_file() else {}
    except (UserError, TypeError):
        return {}
    splits = {name: entry.get("count") for name, entry in (manifest.get("splits") or {}).items()}
    return {k: v for k, v in (("classes", manifest.get("classes") or None), ("videos", splits or None)) if v is not None}
