"""Finding the source videos of ``prepare``: their paths, classes and splits, in one of three layouts.

- ``folder``: a directory of videos (class = parent folder name; a top-level train/val/test folder
  sets the split), a text file listing video paths, or one video file (a one-video 'train' set);
- ``ucf101``: the UCF-101 video root with its official split lists (classInd.txt, trainlist0N.txt,
  testlist0N.txt);
- ``csv``: a CSV file with rows path,label[,split].

Videos without a split go to 'val' with probability ``val_fraction``, chosen by a hash of the path, so
the same files land there on every run and machine; with ``val_fraction > 0`` and two or more such videos, at
least one goes to 'val' (the one with the smallest hash). Class names must survive ``classes.txt`` (one name
per line); list, CSV and classes files are read as UTF-8 text of bounded size.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from magvit_pl.data.shards import class_name_problem
from magvit_pl.run.errors import MissingFileError, UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".wmv", ".flv", ".3gp")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test", "eval": "test"}
MAX_LIST_BYTES = 1 << 30  # a list / CSV / classes file larger than this is not one


@dataclass(frozen=True)
class Item:
    """One source video: where it is, its name in the manifest, its class and split."""

    path: str
    rel: str
    label: int
    cls: str
    split: str


class Sources(NamedTuple):
    """What :func:`discover` found."""

    items: list[Item]  # the videos
    class_names: list[str]  # in label order
    unusable: list[dict]  # entries that cannot be used: {path, reason} (symlink loops, broken links, ...)


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _read_text(path: Path) -> str:
    """The text of a list / CSV / classes file; one line for a missing, unreadable or binary file."""
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise UserError(f"{path} is larger than {MAX_LIST_BYTES >> 20} MB: not a list of videos")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    if b"\0" in data[:1 << 20]:
        raise UserError(f"{path} is not a text file (it holds NUL bytes); give a folder, a single video, a list of "
                        f"paths or a CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); give a "
                        f"folder, a single video, a list of paths or a CSV") from None


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in _read_text(path).splitlines() if ln.strip() and not ln.startswith("#")]


def discover(input: str, layout: str, val_fraction: float = 0.05, split_dir: str | None = None, split_id: int = 1,
             video_root: str | None = None, classes: str | None = None) -> Sources:
    """All source videos of ``input`` in ``layout`` (the options are prepare's, see its docstring)."""
    src = Path(input).expanduser()
    if not src.exists():
        raise MissingFileError(f"input not found: {src}")
    unusable: list[dict] = []
    if layout == "ucf101":
        items, names = _discover_ucf101(src, val_fraction, split_dir, split_id)
        _check_class_names(names, "classInd.txt")
        return Sources(items, names, unusable)
    if layout == "csv":
        rows = _csv_rows(src)
        base = Path(video_root) if video_root else src.parent
    elif layout == "folder":
        if src.is_dir():
            paths, unusable = _walk_videos(src)
            base, rows = src, [(str(p.relative_to(src)), None, None) for p in paths]
        elif _is_video(src):  # one video file: a one-video training set
            base, rows = src.parent, [(src.name, None, "train")]
        else:
            base = Path(video_root) if video_root else src.parent
            rows = [(ln, None, None) for ln in _read_lines(src)]
        rows = [(rel, label or _folder_class(rel, base), split or _folder_split(rel)) for rel, label, split in rows]
    else:
        raise UserError(f"unknown --layout '{layout}': use folder, ucf101 or csv")
    for rel, cls, _ in rows:
        _check_class_names([cls], rel)
    names = _class_order([r[1] for r in rows], classes)
    _check_class_names(names, f"--classes {classes}")
    if len(set(names)) != len(names):
        twice = next(c for c in names if names.count(c) > 1)
        raise UserError(f"class '{twice}' is listed twice in --classes {classes}")
    index = {c: i for i, c in enumerate(names)}
    items, hashed = [], []
    for rel, cls, split in rows:
        if cls not in index:
            raise UserError(f"class '{cls}' of {rel} is not in the --classes file {classes}")
        given = _normalise_split(split, rel)
        split = given or ("val" if _hash_fraction(rel) < val_fraction else "train")
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        if given is None:
            hashed.append(len(items))
        items.append(Item(str(path), rel, index[cls], cls, split))
    return Sources(_at_least_one_val(items, hashed, val_fraction), names, unusable)


def _at_least_one_val(items: list[Item], hashed: list[int], val_fraction: float) -> list[Item]:
    """With ``val_fraction > 0``, no 'val' video, and at least two videos whose split the hash chose: the one of those
    with the smallest hash goes to 'val' (few videos: a fraction of them rounds to none, and ``fit`` needs a val split)."""
    if val_fraction <= 0 or len(hashed) < 2 or any(item.split == "val" for item in items):
        return items
    pick = min(hashed, key=lambda i: _hash_fraction(items[i].rel))
    items[pick] = dataclasses.replace(items[pick], split="val")
    return items


def _check_class_names(names: Iterable[str], where: str) -> None:
    """Refuse (one line) a class name that would not survive classes.txt (one name per line)."""
    for name in names:
        if (problem := class_name_problem(name)) is not None:
            raise UserError(f"class name {name!r:.80} (from {where}) {problem}; prepare refuses it because "
                            f"classes.txt holds one name per line: rename the folder or fix the label")


def _walk_videos(src: Path) -> tuple[list[Path], list[dict]]:
    """Video files under ``src`` (hidden entries ignored; folder symlinks followed, except one leading
    back to a folder above it), and the entries that cannot be used, each with a reason: symlink loops,
    broken symlinks, unreadable folders, video names that are not regular files."""
    found: list[Path] = []
    unusable: list[dict] = []

    def skip(path: Path, reason: str) -> None:
        unusable.append({"path": str(path.relative_to(src)), "reason": reason})

    top = os.stat(src)
    stack = [(src, frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skip(folder, f"unreadable folder ({e.strerror or e})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as e:
                if e.errno == errno.ELOOP:
                    skip(path, "symlink loop")
                elif entry.is_symlink() and e.errno == errno.ENOENT:
                    skip(path, "broken symlink (its target does not exist)")
                else:
                    skip(path, f"unreadable ({e.strerror or e})")
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in above:
                    skip(path, "symlink loop (links back to a folder above it)")
                else:
                    stack.append((path, above | {(st.st_dev, st.st_ino)}))
            elif _is_video(path):
                if stat.S_ISREG(st.st_mode):
                    found.append(path)
                else:
                    skip(path, "not a regular file")
    unusable.sort(key=lambda u: u["path"])
    return sorted(found), unusable


def _folder_split(rel: str) -> str | None:
    first = Path(rel).parts[0].lower() if len(Path(rel).parts) > 2 else ""
    first = SPLIT_ALIASES.get(first, first)
    return first if first in SPLITS else None


def _folder_class(rel: str, base: Path) -> str:
    parent = Path(rel).parent.name
    return parent or base.resolve().name


def _normalise_split(split: str | None, rel: str) -> str | None:
    if split is None or split == "":
        return None
    s = SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if s not in SPLITS:
        raise UserError(f"unknown split '{split}' for {rel}: use one of {', '.join(SPLITS)}")
    return s


def _class_order(found: Iterable[str], classes_file: str | None) -> list[str]:
    if classes_file:
        return _read_lines(Path(classes_file))
    names = sorted(set(found))
    if all(n.isdigit() for n in names):
        names.sort(key=int)
    return names


def _csv_rows(path: Path) -> list[tuple[str, str, str | None]]:
    """Rows (path, label, split or None) of a path,label[,split] CSV, with or without a header."""
    if not path.is_file():
        raise UserError(f"--layout csv needs a CSV file as --input, got the folder {path}")
    try:
        rows = [r for r in csv.reader(io.StringIO(_read_text(path), newline="")) if r and not r[0].startswith("#")]
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV ({e}); expected rows path,label[,split]") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    out = []
    for n, r in enumerate(rows, 1):
        if len(r) < 2:
            raise UserError(f"{path} row {n}: expected path,label[,split], got {','.join(r)!r}")
        out.append((r[0].strip(), r[1].strip(), r[2].strip() if len(r) > 2 else None))
    return out


def _discover_ucf101(root: Path, val_fraction: float, split_dir: str | None, split_id: int) -> tuple[list[Item], list[str]]:
    """UCF-101 official splits: classInd.txt ('1 ApplyEyeMakeup'), trainlist0N.txt ('Class/v_x.avi 1'),
    testlist0N.txt ('Class/v_x.avi'). 'val' (if val_fraction > 0) takes whole groups (v_*_gNN_*)
    out of train, because clips of one group come from one long video."""
    if split_id not in (1, 2, 3):
        raise UserError(f"--split_id must be 1, 2 or 3 for UCF-101, got {split_id}")
    candidates = [Path(split_dir)] if split_dir else [root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"]
    sdir = next((d for d in candidates if (d / "classInd.txt").is_file()), None)
    if sdir is None:
        raise MissingFileError(f"UCF-101 split files (classInd.txt, trainlist0{split_id}.txt) not found in "
                               f"{' or '.join(map(str, candidates))}; pass --split_dir")
    names = [ln.split()[1] for ln in _read_lines(sdir / "classInd.txt")]
    index = {c: i for i, c in enumerate(names)}
    items = []
    for split, fname in (("train", f"trainlist0{split_id}.txt"), ("test", f"testlist0{split_id}.txt")):
        for ln in _read_lines(sdir / fname):
            rel = ln.split()[0]
            cls = rel.split("/")[0]
            if cls not in index:
                raise UserError(f"{sdir / fname}: class '{cls}' of {rel} is not in classInd.txt")
            s = split
            if split == "train" and val_fraction > 0:
                group = Path(rel).stem.rsplit("_", 1)[0]  # v_Class_g08_c01 -> v_Class_g08
                s = "val" if _hash_fraction(group) < val_fraction else "train"
            items.append(Item(str(root / rel), rel, index[cls], cls, s))
    return items, names

