"""Reading an FSDP sharded checkpoint folder in one process, without a process group (for ``export``).

Lightning's ``FSDPStrategy(state_dict_type="sharded")`` writes a ``torch.distributed.checkpoint`` folder
(``.metadata`` + ``__R_0.distcp``) holding ``model`` and ``optimizer_N``, and ``meta.pt`` with everything else.
Only ``model`` is read. The ``.metadata`` is a plain pickle (torch reads it with ``pickle.load``): here it goes
through an allow-list unpickler (:class:`magvit_pl.run.unpickle.AllowListUnpickler`) that builds only the
checkpoint-metadata classes, and the shard files it names must be names inside the folder.

A module of its own because ``torch.distributed.checkpoint`` takes seconds to import: :mod:`magvit_pl.run.export`
imports this module only for an FSDP folder.
"""
from __future__ import annotations

import collections
import functools
import pathlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, filesystem, load
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from magvit_pl.run.errors import UserError, first_line
from magvit_pl.run.export import DCP_METADATA, FSDP_META, name_inside, read_dict
from magvit_pl.run.unpickle import AllowListUnpickler


class _DCPMetadataUnpickler(AllowListUnpickler):
    """Unpickles a ``torch.distributed.checkpoint`` ``.metadata`` file allowing only its metadata classes, torch
    sizes/dtypes/layouts, paths and plain containers: torch's own ``FileSystemReader.read_metadata`` is a plain
    ``pickle.load``, which would run whatever a crafted file names."""

    refusal = "refusing to unpickle {what}: not checkpoint metadata"

    def allowed(self, module: str, name: str) -> Any | None:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _dcp_metadata_globals().get((module, name))


@functools.lru_cache(maxsize=1)
def _dcp_metadata_globals() -> dict[tuple[str, str], Any]:
    dcp = {("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING") if hasattr(dcp_metadata, n)}
    paths = {("pathlib", n): getattr(pathlib, n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}
    return {**dcp, **paths, ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
            ("torch", "Size"): torch.Size, ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
            ("collections", "OrderedDict"): collections.OrderedDict}


def read_dcp_metadata(path: Path) -> Any:
    """The ``.metadata`` of a DCP folder through :class:`_DCPMetadataUnpickler`, checked: a ``Metadata`` whose shard
    files are plain names inside ``path``. One-line errors for anything else."""
    try:
        with open(path / DCP_METADATA, "rb") as fh:
            metadata = _DCPMetadataUnpickler(fh).load()
    except Exception as err:  # noqa: BLE001 - refused globals, truncated or foreign files fail in several ways
        raise UserError(f"--ckpt_path {path}: unreadable {DCP_METADATA} ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise UserError(f"--ckpt_path {path}: its {DCP_METADATA} holds a {type(metadata).__name__}, not checkpoint metadata")
    for info in (metadata.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str):
            raise UserError(f"--ckpt_path {path}: its {DCP_METADATA} names a shard file of type {type(name).__name__}")
        name_inside(path, name, f"the shard file in {DCP_METADATA}")
    return metadata


class CheckedReader(FileSystemReader):
    """DCP's file reader whose metadata comes through :func:`read_dcp_metadata` (DCP's ``load()`` reads it again)."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = Path(folder)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        metadata = read_dcp_metadata(self.folder)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


def read_fsdp_sharded(path: Path) -> tuple[dict[str, Any], str]:
    """``meta.pt`` plus the ``model`` entry of the torch.distributed.checkpoint folder, read in this process."""
    checkpoint = read_dict(path / FSDP_META)
    reader = CheckedReader(path)
    metadata = reader.read_metadata()
    planner_data = metadata.planner_data or {}
    model: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, item in metadata.state_dict_metadata.items():
        where = planner_data.get(key) or tuple(key.split(".", 1))
        if not where or where[0] != "model":
            continue  # optimizer_N: not needed for inference
        name = ".".join(str(part) for part in where[1:])
        if not isinstance(item, TensorStorageMetadata):
            not_tensors.append(name)
            continue
        model[name] = torch.empty(item.size, dtype=item.properties.dtype)
    if not_tensors:  # DCP would unpickle these with weights_only=False: refuse instead
        raise UserError(f"--ckpt_path {path}: the model state holds non-tensor entries ({', '.join(not_tensors[:3])}); refusing to unpickle them")
    if not model:
        raise UserError(f"--ckpt_path {path}: its {DCP_METADATA} has no 'model' entry; not a Lightning FSDP checkpoint")
    try:
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process": intended
            warnings.simplefilter("ignore", UserWarning)
            load({"model": model}, storage_reader=reader, no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - missing/truncated .distcp shards
        if isinstance(err, CheckpointException) and err.failures:  # a BaseException wrapping each rank's error
            err = next(iter(err.failures.values()))[0]
        raise UserError(f"--ckpt_path {path}: reading its shards failed ({type(err).__name__}: {first_line(err)})") from None
    checkpoint["state_dict"] = model
    shards = len(list(path.glob("*.distcp")))
    return checkpoint, f"FSDP sharded checkpoint ({shards} shard{'s' * (shards != 1)})"
