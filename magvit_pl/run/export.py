"""``python cli.py export``: turn a checkpoint written under any strategy into one inference file.

Three kinds of input are recognised:

* a **Lightning checkpoint file** (single device, DDP, FSDP with ``state_dict_type: full``);
* a **DeepSpeed checkpoint folder**, as Lightning's ``DeepSpeedStrategy`` writes it: ``last.ckpt/`` holding
  ``latest`` (the tag, ``checkpoint``) and ``checkpoint/`` with the model states
  (``mp_rank_00_model_states.pt`` for ZeRO-1/2, ``zero_pp_rank_R_mp_rank_00_model_states.pt`` for ZeRO-3)
  and one ``*_optim_states.pt`` per rank. The fp32 master weights are gathered by DeepSpeed's own
  ``deepspeed.utils.zero_to_fp32``; Lightning's state (``hyper_parameters``, the ``magvit`` entry, ...)
  is the DeepSpeed *client state*, stored as top-level keys of the (rank 0) model-states file;
* an **FSDP sharded checkpoint folder**, as Lightning's ``FSDPStrategy(state_dict_type="sharded")`` writes
  it: a ``torch.distributed.checkpoint`` folder (``.metadata`` + ``__R_0.distcp``) holding ``model`` and
  ``optimizer_N``, and ``meta.pt`` with everything else. Only ``model`` is read, in one process, without
  a process group (:mod:`magvit_pl.run.fsdp_reader`).

The output keeps what inference and evaluation need: ``state_dict`` (floating-point tensors as fp32,
whatever the training precision), ``hyper_parameters``, the ``magvit`` entry and Lightning's version
stamp; optimizer states, LR schedulers, loop and callback states are dropped. It loads with
:func:`magvit_pl.load_tokenizer`, :meth:`magvit_pl.lit.mtm.MTMModule.from_checkpoint`,
``python cli.py test --ckpt_path`` and ``python cli.py generate --ckpt_path``.

Every file is read with ``torch.load(weights_only=True)``, DeepSpeed's shards included: DeepSpeed's
reader asks for full unpickling, so it runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` and exactly the
few plain DeepSpeed classes its optimizer files hold (loss scaler, ZeRO stage enum, fragment address)
allow-listed. An FSDP folder's ``.metadata`` is a plain pickle (torch reads it with ``pickle.load``): it is read
by an unpickler that allows only the checkpoint-metadata classes, and the shard files it names, like a DeepSpeed
tag, must be names inside the folder. The exported file is checked like a loaded one (allow-listed model
classes, plain data; :mod:`magvit_pl.run.checkpoint`), so a payload in the source is refused, never passed on.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from magvit_pl.models.config import check_config, check_values
from magvit_pl.run.checkpoint import DATA_MODULES, LIGHTNING_MODULES, checked_hparams, load_checkpoint, save_checkpoint, state_dict_of
from magvit_pl.run.errors import MissingFileError, UserError, first_line
from magvit_pl.run.files import check_output_file

ACCEPTED = ("a Lightning .ckpt file, a DeepSpeed checkpoint folder (latest + checkpoint/*_model_states.pt + *_optim_states.pt) "
            "or an FSDP sharded checkpoint folder (meta.pt + .metadata + *.distcp)")
# top-level entries of a Lightning checkpoint that the exported file keeps
KEEP_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "magvit", "pytorch-lightning_version", "epoch", "global_step",
             "datamodule_hparams_name", "datamodule_hyper_parameters")
FSDP_META = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME
DCP_METADATA = ".metadata"
DS_MODEL_STATES = "*_model_states.pt"
DS_OPTIM_STATES = "*_optim_states.pt"
KIND_NAMES = {"lightning": "a Lightning checkpoint file", "deepspeed": "a DeepSpeed folder", "fsdp": "an FSDP sharded folder"}
DS_INSTALL = 'pip install "magvit-pl[deepspeed]" (on a CPU-only machine: pip install deepspeed)'


def detect_kind(path: str | os.PathLike) -> str:
    """``"lightning"`` (one file), ``"deepspeed"`` or ``"fsdp"`` (folders); a one-line error for anything else."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"--ckpt_path {path}: not found; expected {ACCEPTED}")
    if path.is_file():
        return "lightning"
    if path.is_dir():
        if (path / FSDP_META).is_file() and (path / DCP_METADATA).is_file():
            return "fsdp"
        if _deepspeed_tag_dirs(path) or any(path.glob(DS_MODEL_STATES)):
            return "deepspeed"
    raise UserError(f"--ckpt_path {path}: not a checkpoint this command knows; expected {ACCEPTED}")


def export(ckpt_path: str, output: str, overwrite: bool = False, tag: str | None = None,
           format: Literal["ckpt", "safetensors"] = "ckpt", dtype: Literal["float32", "bfloat16"] = "float32",
           results: list[str] | None = None, push_to_hub: str | None = None) -> Path:
    """Write a single-file, inference-only copy of a checkpoint saved under any strategy (DDP, DeepSpeed, FSDP).

    Args:
        ckpt_path: The checkpoint to export: a Lightning ``.ckpt`` file, a DeepSpeed checkpoint folder
            (``checkpoints/last.ckpt/`` under ``DeepSpeedStrategy``) or an FSDP sharded checkpoint folder
            (``FSDPStrategy`` with ``state_dict_type: sharded``).
        output: The file to write (e.g. ``runs/mtm/RUN/checkpoints/inference.ckpt``: next to the run's
            ``config.yaml``, ``python cli.py test --ckpt_path`` finds the config by itself). Weights are
            fp32; optimizer, scheduler and loop states are left out. With ``--format safetensors``: the
            folder to write (``config.json``, ``model.safetensors``, ``README.md`` model card; an MTM's
            tokenizer in ``tokenizer/``), to share or load with ``from_pretrained``.
        overwrite: Replace ``output`` if it exists (it is never replaced otherwise).
        tag: DeepSpeed only: the tag folder inside ``ckpt_path`` (default: the one named in its ``latest``
            file; Lightning writes ``checkpoint``).
        format: ``ckpt`` (one Lightning file) or ``safetensors`` (a shareable model folder, no pickle).
        dtype: ``safetensors`` only: ``float32`` (exact) or ``bfloat16`` (half the size).
        results: ``safetensors`` only: ``results.json`` files of ``test`` runs to quote in the model card
            (the test runs of this checkpoint next to its run are found by themselves).
        push_to_hub: ``safetensors`` only: also upload the folder to this Hugging Face Hub repository
            (``user/repo``; needs ``pip install "magvit-pl[hub]"`` and a login).

    Returns:
        The path of the written file (or folder).
    """
    if format == "safetensors":  # the shareable folder: magvit_pl.pretrained
        from magvit_pl.pretrained import export_folder  # lazy: magvit_pl.pretrained imports this module

        return export_folder(ckpt_path, output, overwrite=overwrite, tag=tag, dtype=dtype, results=results or [], push_to_hub=push_to_hub)
    if format != "ckpt":
        raise UserError(f"--format {format}: choose ckpt or safetensors")
    if dtype != "float32" or results or push_to_hub:
        raise UserError("--dtype, --results and --push_to_hub apply to --format safetensors only")
    src, out = Path(ckpt_path), check_output_file(output, "--output", "inference.ckpt")
    if out.exists() and not overwrite:
        raise UserError(f"--output {out}: exists; pass --overwrite true to replace it")
    exported, label = read_for_export(src, tag)
    save_checkpoint(exported, out)
    values, tensors = _count(exported["state_dict"])
    model = exported["magvit"].get("kind", "?")
    print(f"exported {label} {src} -> {out}: {model}, {values / 1e6:.2f}M parameters in {tensors} tensors (fp32), "
          f"{_size(out.stat().st_size)}")
    return out


def read_for_export(src: str | os.PathLike, tag: str | None = None) -> tuple[dict[str, Any], str]:
    """The inference-only checkpoint (fp32 ``state_dict``, hyper-parameters, ``magvit`` entry; all checked) of a
    Lightning file, DeepSpeed folder or FSDP sharded folder, and a label naming what was read."""
    src = Path(src)
    kind = detect_kind(src)
    if tag is not None and kind != "deepspeed":
        raise UserError(f"--tag {tag}: only applies to a DeepSpeed checkpoint folder, and {src} is {KIND_NAMES[kind]}")
    if kind == "lightning":
        checkpoint, label = _read_lightning_file(src), "Lightning checkpoint file"
    elif kind == "deepspeed":
        checkpoint, label = _read_deepspeed(src, tag)
    else:
        from magvit_pl.run.fsdp_reader import read_fsdp_sharded  # lazy: torch.distributed.checkpoint takes ~2 s to import

        checkpoint, label = read_fsdp_sharded(src)
    return _inference_only(checkpoint, src, label), label


# ----------------------------------------------------------------------------------------- readers
def _read_lightning_file(path: Path) -> dict[str, Any]:
    checkpoint = read_dict(path)
    if "state_dict" not in checkpoint:
        raise UserError(f"--ckpt_path {path}: holds no Lightning 'state_dict'; expected {ACCEPTED}")
    return checkpoint


def name_inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` for a plain file or folder name that stays inside ``folder`` (no ``/``, ``..``, link leading out)."""
    target = folder / name
    plain = bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
    if not plain or (target.exists() and target.resolve().parent != folder.resolve()):
        raise UserError(f"--ckpt_path {folder}: {what} {name!r} is not a name inside it; refusing to read outside the checkpoint")
    return target


def _deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _deepspeed_tag_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and any(d.glob(DS_MODEL_STATES)))


def _read_deepspeed(path: Path, tag: str | None) -> tuple[dict[str, Any], str]:
    """The consolidated fp32 state dict (DeepSpeed's zero_to_fp32) plus Lightning's client state."""
    if any(path.glob(DS_MODEL_STATES)):  # pointed at the tag folder itself (last.ckpt/checkpoint/)
        if tag is not None and tag != path.name:
            raise UserError(f"--tag {tag}: {path} is itself the tag folder {path.name!r}")
        path, tag = path.parent, path.name
    tag_given = tag is not None
    if tag is None:
        latest = path / "latest"
        tags = _deepspeed_tag_dirs(path)
        if latest.is_file():
            try:
                tag = latest.read_bytes()[:256].decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UserError(f"--ckpt_path {path}: its 'latest' file is not a text tag; pass --tag NAME") from None
        elif len(tags) == 1:
            tag = tags[0].name
        else:
            raise UserError(f"--ckpt_path {path}: no 'latest' file and several tag folders ({', '.join(t.name for t in tags)}); pass --tag NAME")
    tag_dir = name_inside(path, tag, "--tag" if tag_given else f"the tag in {path / 'latest'}")
    if not tag_dir.is_dir() or not any(tag_dir.glob(DS_MODEL_STATES)):
        raise UserError(f"--ckpt_path {path}: tag folder {tag_dir} with {DS_MODEL_STATES} not found; pass --tag NAME")
    if not any(tag_dir.glob(DS_OPTIM_STATES)):
        raise UserError(f"--ckpt_path {path}: no {DS_OPTIM_STATES} in {tag_dir} (they hold the fp32 weights); the checkpoint is incomplete")
    if not _deepspeed_available():
        raise UserError(f"--ckpt_path {path} is a DeepSpeed checkpoint; consolidating it needs the deepspeed package: {DS_INSTALL}") from None

    model_files = sorted(tag_dir.glob(DS_MODEL_STATES))
    rank0 = tag_dir / "mp_rank_00_model_states.pt"
    if not rank0.is_file():
        rank0 = tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"  # ZeRO-3 writes one per rank
    if not rank0.is_file():
        raise UserError(f"--ckpt_path {path}: no rank-0 model states among {', '.join(f.name for f in model_files)}")
    client = read_dict(rank0)
    client["state_dict"] = _zero_to_fp32(path, tag)
    stage = (client.get("ds_config") or {}).get("zero_optimization", {}).get("stage", "?")
    shards = len(list(tag_dir.glob(DS_OPTIM_STATES)))
    return client, f"DeepSpeed ZeRO-{stage} checkpoint ({shards} shard{'s' * (shards != 1)})"


def _zero_to_fp32(path: Path, tag: str) -> dict[str, torch.Tensor]:
    """Run DeepSpeed's consolidation with weights-only loading; its progress prints are kept off the console."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # lazy: optional, GPU only

            with _deepspeed_weights_only():
                state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    except Exception as err:  # DeepSpeed raises ValueError/FileNotFoundError/UnpicklingError with long texts
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if foreign:
            raise UserError(f"--ckpt_path {path}: a DeepSpeed file in it holds a {foreign.group(1)} object, which magvit-pl does not "
                            "allow when loading weights-only; refusing to unpickle it") from None
        raise UserError(f"--ckpt_path {path}: DeepSpeed could not consolidate it ({type(err).__name__}: {first_line(err)})") from None
    return state_dict


@contextlib.contextmanager
def _deepspeed_weights_only() -> Iterator[None]:
    """Make DeepSpeed's own ``torch.load(weights_only=False)`` calls weights-only, allow-listing its plain classes."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler  # lazy: optional, GPU only
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def read_dict(path: Path) -> dict[str, Any]:
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a dict of checkpoint entries, found {type(checkpoint).__name__}")
    return checkpoint


# ------------------------------------------------------------------------------------------ output
def _inference_only(checkpoint: dict[str, Any], src: Path, label: str) -> dict[str, Any]:
    meta = checkpoint.get("magvit")
    if not isinstance(meta, dict) or "kind" not in meta:
        raise UserError(f"--ckpt_path {src}: has no 'magvit' entry, so it was not written by magvit-pl's tokenizer or MTM module")
    source = f"--ckpt_path {src}"
    # the file is copied for others to load: refuse what loading would refuse (never pass a payload on)
    out = {key: checkpoint[key] for key in KEEP_KEYS if key in checkpoint}
    out["state_dict"] = _clean_state_dict(state_dict_of(checkpoint, src))
    check_config(meta.get("tokenizer_config"), source)
    checked_hparams(out.get("hyper_parameters", {}), source)
    checked_hparams(out.get("datamodule_hyper_parameters", {}), source, DATA_MODULES)
    check_values({k: v for k, v in out.items() if k not in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")}, source)
    out["magvit"] = {**meta, "exported_from": label}
    hparams = out.get("hyper_parameters")
    if isinstance(hparams, dict) and "_class_path" not in hparams and meta["kind"] in LIGHTNING_MODULES:
        # LightningCLI rebuilds the model of `test --ckpt_path` from it; runs started from Python lack it
        out["hyper_parameters"] = {"_class_path": LIGHTNING_MODULES[meta["kind"]], **hparams}
    return out


def _clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 floating tensors (shared tensors stay shared), no ``_forward_module.`` prefix (DeepSpeed, Lightning < 2.1)."""
    prefix = "_forward_module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    converted: dict[int, torch.Tensor] = {}
    out = {}
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
            value = converted.setdefault(id(value), value.float())
        out[key] = value
    return out


def _count(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Floating-point values and tensors of a state dict, each storage counted once (tied weights)."""
    seen, values = set(), 0
    for value in state_dict.values():
        if torch.is_tensor(value) and value.is_floating_point():
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if ident not in seen:
                seen.add(ident)
                values += value.numel()
    return values, len(state_dict)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"
