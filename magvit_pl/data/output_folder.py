"""The folder ``prepare`` writes into: claimed, locked, and changed only where prepare's own records say.

Every option is checked before the folder is touched; a non-empty folder prepare did not make is
refused; one run at a time holds ``OUTPUT/.prepare.lock`` (an ``flock`` the kernel drops when the
process dies, so a killed run never blocks the next); and only files prepare recorded (shards listed
in its manifest or in ``.parts/NAME.json`` records, which are written before their shard) or its own
temporary files are ever removed or replaced.

The shard plan is fixed by the sources (per split, files sorted by name, ``shard_size`` per shard), so
a re-run with the same sources and settings keeps every shard whose tar and record match the plan.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from magvit_pl.data.discover import SPLITS, Item
from magvit_pl.data.manifest import CREATED_BY
from magvit_pl.data.shards import SHARD_NAME, shard_name
from magvit_pl.run.errors import UserError

LOCK_NAME = ".prepare.lock"
# the temporary names io.atomic_path gives prepare's own files (mkstemp: 8 random characters)
_OWN_TEMP = re.compile(r"\.(?:(?:train|val|test)-\d{6}\.[a-z0-9_]{8}\.tmp\.tar|manifest\.[a-z0-9_]{8}\.tmp\.json"
                       r"|classes\.[a-z0-9_]{8}\.tmp\.txt)")
_OWN_PART_TEMP = re.compile(r"\.(?:train|val|test)-\d{6}\.tar\.[a-z0-9_]{8}\.tmp\.json")


def claim_output(output: str) -> Path:
    """The output folder, created if absent; refused in one line when it is a file, cannot be created,
    or is a non-empty folder that prepare did not make."""
    out = Path(output).expanduser()
    if out.is_dir():
        try:
            entries = sorted(os.listdir(out))
        except OSError as e:
            raise UserError(f"--output {output}: cannot list the folder ({e.strerror or e})") from None
        if entries and not _made_by_prepare(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"--output {output} is a non-empty folder that prepare did not make ({shown}); prepare "
                            f"never deletes or replaces files it did not write: choose a new or empty folder")
        return out
    if out.exists() or out.is_symlink():
        raise UserError(f"--output {output} is {'a file' if out.is_file() else 'not a folder'}; "
                        f"give a folder for the shards (created if absent)")
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"--output {output}: cannot create the folder ({e.strerror or e})") from None
    return out


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _made_by_prepare(out: Path) -> bool:
    """Whether ``out`` holds prepare's lock file, its manifest, or its shard records."""
    if (out / LOCK_NAME).is_file():
        return True
    manifest = read_json(out / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("created_by") == CREATED_BY:
        return True
    return bool(_part_records(out))


def _part_records(out: Path) -> dict[str, dict]:
    """``.parts/NAME.json`` records (finished or pending) whose name field matches their file: name -> record."""
    records = {}
    parts = out / ".parts"
    for p in sorted(parts.glob("*.tar.json")) if parts.is_dir() else []:
        rec = read_json(p)
        name = p.name[: -len(".json")]
        if isinstance(rec, dict) and rec.get("name") == name and SHARD_NAME.fullmatch(name):
            records[name] = rec
    return records


def _recorded_shards(out: Path) -> set[str]:
    """Shard names prepare recorded in ``out``: listed in its manifest or in a part record. Only these
    (and prepare's temporary files) are ever removed or replaced."""
    names = set(_part_records(out))
    manifest = read_json(out / "manifest.json")
    ours = isinstance(manifest, dict) and manifest.get("created_by") == CREATED_BY
    if ours and isinstance(manifest.get("splits"), dict):
        for entry in manifest["splits"].values():
            for shard in entry.get("shards", []) if isinstance(entry, dict) else []:
                name = shard.get("name") if isinstance(shard, dict) else None
                if isinstance(name, str) and SHARD_NAME.fullmatch(name) and ".." not in name:
                    names.add(name)
    return names


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[int | None]:
    """Hold an exclusive ``flock`` on ``OUT/.prepare.lock`` (yields its descriptor); a second run is
    refused in one line. The kernel drops the lock when the holder dies, so a killed run never blocks
    the next one. (No ``fcntl``, e.g. Windows: no lock.)"""
    try:
        import fcntl  # POSIX only: without it (Windows) there is no lock
    except ImportError:
        yield None
        return
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise UserError(f"--output {out}: cannot create {LOCK_NAME} ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"--output {out}: cannot lock {path} ({e.strerror or e})") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise UserError(f"another prepare (pid {holder}) is writing to {out}; wait for it to finish or choose "
                            f"another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def remove_own_temp_files(out: Path) -> None:
    """Delete the temporary files a killed run of prepare left (only names io.atomic_path gave ours)."""
    for folder, pattern in ((out, _OWN_TEMP), (out / ".parts", _OWN_PART_TEMP)):
        for p in folder.iterdir() if folder.is_dir() else []:
            if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()


def refuse_unrecorded(out: Path, names: list[str]) -> None:
    """A shard this run would write whose name is taken by a file prepare did not record: one line."""
    recorded = _recorded_shards(out)
    for name in names:
        if (out / name).exists() or (out / name).is_symlink():
            if name not in recorded:
                raise UserError(f"{out / name} exists but prepare did not write it (no record lists it); move it "
                                f"away or choose another --output")



# ----------------------------------------------------------------------------------------------
# the shard plan and what earlier runs finished


def plan_shards(items: list[Item], shard_size: int) -> dict[str, list[Item]]:
    """Shard name -> its sources: per split, files sorted by name, ``shard_size`` per shard."""
    plan: dict[str, list[Item]] = {}
    for split in SPLITS:
        group = sorted((it for it in items if it.split == split), key=lambda it: it.rel)
        for s, first in enumerate(range(0, len(group), shard_size)):
            plan[shard_name(split, s)] = group[first : first + shard_size]
    return plan


def fingerprint(items: list[Item]) -> list[list[Any]]:
    out = []
    for it in items:
        try:
            st = os.stat(it.path)
            out.append([it.rel, it.label, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([it.rel, it.label, None, None])
    return out


def finished_part(out: Path, name: str, items: list[Item], settings: dict) -> dict | None:
    """The record of shard ``name`` if a previous run finished it with these sources and settings."""
    rec = read_json(out / ".parts" / f"{name}.json")
    if not isinstance(rec, dict) or rec.get("settings") != settings or rec.get("inputs") != fingerprint(items):
        return None
    tar = out / name
    if not isinstance(rec.get("count"), int):
        return None
    if rec["count"] > 0 and not (tar.is_file() and tar.stat().st_size == rec.get("bytes")):
        return None
    return rec


def check_previous_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Stop (one line) when ``out`` holds a manifest made with other settings; with ``overwrite``,
    delete what that run recorded instead (and nothing else)."""
    path = out / "manifest.json"
    if not path.is_file():
        return
    manifest = read_json(path)
    old = manifest.get("settings") if isinstance(manifest, dict) else None
    if old == settings:
        return
    if not overwrite:
        raise UserError(f"{out} holds shards made with other settings ({str(old)[:300]}); pass --overwrite true to "
                        f"replace them or choose another --output")
    _remove_recorded(out, _recorded_shards(out))
    path.unlink()


def remove_stale(out: Path, planned: set[str]) -> None:
    """Delete the shards (and records) prepare recorded that the current plan no longer has."""
    _remove_recorded(out, _recorded_shards(out) - planned)


def _remove_recorded(out: Path, names: set[str]) -> None:
    """Delete recorded shards ``names`` and their records (names are plain file names: SHARD_NAME)."""
    for name in sorted(names):
        for p in (out / name, out / ".parts" / f"{name}.json"):
            if p.is_file() or p.is_symlink():
                p.unlink()


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write (disk full, permissions) into one line; the atomic writers have already
    removed their temporary file, and every shard finished before stays valid for a re-run."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; the shards finished so far are kept and a "
                        f"re-run resumes from them") from None
