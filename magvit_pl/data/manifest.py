"""``manifest.json``: what a shard folder holds, read as a file from outside and written by ``prepare``.

A manifest names the classes (label order) and, per split, its shards with their sample counts and
byte sizes. :func:`read_manifest` checks it as a whole before anything uses it
(:func:`check_manifest`), and :func:`check_shard_file` checks a listed shard against it before a
loader opens it. :func:`build_manifest` is the one ``prepare`` writes.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from magvit_pl import __version__
from magvit_pl.data.shards import FORMAT_VERSION, ShardError, check_shard_name, class_name_problem
from magvit_pl.run.errors import MissingFileError, UserError

CREATED_BY = "magvit_pl.data.prepare"  # recorded in prepare's manifests (and how it knows its own folders)
MAX_MANIFEST_BYTES = 1 << 30
MAX_SHARD_COUNT = 10_000_000  # samples in one shard
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of a shard folder; MissingFileError naming the prepare command."""
    path = Path(data_dir) / "manifest.json"
    if not Path(data_dir).is_dir():
        raise MissingFileError(f"data folder {data_dir} not found; make it with: "
                               f"python cli.py prepare --input VIDEOS --output {data_dir}")
    if not path.is_file():
        raise MissingFileError(f"{path} not found ({data_dir} is not a prepared dataset); make it with: "
                               f"python cli.py prepare --input VIDEOS --output {data_dir}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB; it is not a manifest this project wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path} is not valid JSON ({str(e)[:100]}); prepare the data again") from None
    return check_manifest(manifest, str(path))


def _is_int(value: object, low: int = 0, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def check_manifest(manifest: object, where: str = "manifest.json") -> dict:
    """``manifest`` if everything the loader reads from it is well-formed, else one UserError line:
    ``format_version`` one this code reads; ``classes`` a list of distinct names that survive
    classes.txt; ``splits`` a non-empty object whose names are plain words, each with a list of
    ``shards`` ``{name, count[, bytes]}`` (names plain file names, see ``check_shard_name``; counts
    integers that add up to the split's ``count``)."""
    def bad(message: str):
        raise UserError(f"{where}: {message}; prepare the data again")

    if not isinstance(manifest, dict):
        bad(f"expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not _is_int(version, 1, FORMAT_VERSION):
        bad(f"format_version {version!r:.40} is not one this version reads (1..{FORMAT_VERSION})")
    classes = manifest.get("classes", [])
    if not isinstance(classes, list):
        bad(f"'classes' must be a list of names, got {type(classes).__name__}")
    for name in classes:
        if (problem := class_name_problem(name)) is not None:
            bad(f"class name {name!r:.60} {problem}")
    if len(set(classes)) != len(classes):
        bad(f"class '{next(c for c in classes if classes.count(c) > 1)}' is listed twice")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        bad("'splits' must be a non-empty object of split name -> {count, shards}")
    for split, entry in splits.items():
        _check_split(split, entry, where, bad)
    return manifest


def _check_split(split: str, entry: object, where: str, bad) -> None:
    """One split entry of check_manifest; ``bad(message)`` raises."""
    if not SPLIT_NAME.fullmatch(split):
        bad(f"split name {split!r:.60} is not a plain word (letters, digits, '_', '-')")
    if not isinstance(entry, dict) or not isinstance(entry.get("shards", []), list):
        bad(f"split '{split}' must be an object with a list of 'shards'")
    seen, total = set(), 0
    for shard in entry.get("shards", []):
        if not isinstance(shard, dict):
            bad(f"split '{split}': every shard must be an object {{name, count}}, got {type(shard).__name__}")
        name = check_shard_name(shard.get("name"), f"{where}, split '{split}'")
        if name in seen:
            bad(f"split '{split}' lists shard {name} twice")
        seen.add(name)
        if not _is_int(shard.get("count"), 0, MAX_SHARD_COUNT):
            bad(f"shard {name}: 'count' must be an integer in [0, {MAX_SHARD_COUNT}], got {shard.get('count')!r:.40}")
        if "bytes" in shard and not _is_int(shard["bytes"]):
            bad(f"shard {name}: 'bytes' must be an integer >= 0, got {shard['bytes']!r:.40}")
        total += shard["count"]
    if entry.get("count", total) != total or not _is_int(entry.get("count", total)):
        bad(f"split '{split}': 'count' {entry.get('count')!r:.40} is not the sum of its shards' counts ({total})")
    if "frames" in entry and not _is_int(entry["frames"]):
        bad(f"split '{split}': 'frames' must be an integer >= 0, got {entry['frames']!r:.40}")


def check_shard_file(path: str, size: int | None) -> None:
    """ShardError unless ``path`` is a regular file of ``size`` bytes (None: any size)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(path, "listed in manifest.json but not found; prepare the data again") from None
    except OSError as e:
        raise ShardError(path, f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(path, "not a regular file")
    if size is not None and st.st_size != size:
        raise ShardError(path, f"has {st.st_size} bytes, manifest.json says {size}: it was changed or cut short; "
                               f"prepare the data again")


def build_manifest(out: Path, input: str, layout: str, settings: dict, class_names: list[str], records: list[dict],
                   unusable: list[dict], seconds: float) -> dict:
    """prepare's manifest from its shard ``records`` (in plan order; see prepare's ``finish_shard``)."""
    splits: dict[str, dict] = {}
    sources = []
    for rec in records:
        split = rec["name"].rsplit("-", 1)[0]
        entry = splits.setdefault(split, {"count": 0, "frames": 0, "shards": []})
        if rec["count"]:
            entry["shards"].append({"name": rec["name"], "count": rec["count"], "bytes": rec["bytes"]})
        entry["count"] += rec["count"]
        entry["frames"] += sum(s.get("frames", 0) for s in rec["sources"])
        sources.extend(rec["sources"])
    return {
        "format_version": FORMAT_VERSION,
        "version": __version__,
        "name": out.name,
        "created_by": CREATED_BY,
        "input": str(input),
        "layout": layout,
        "settings": settings,
        "storage": settings["storage"],
        "resolution": settings["resolution"],
        "fps": settings["fps"],
        "classes": class_names,
        "splits": splits,
        "sources": sources,
        "skipped": [*unusable, *({"path": s["path"], "reason": s["reason"]} for s in sources if s["status"] != "ok")],
        "seconds": round(seconds, 2),
    }
