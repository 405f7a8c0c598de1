"""``prepare`` never loses, replaces or mixes data it did not write, and meets every bad option, path
or input with one ``error:`` line and a non-zero exit, before anything is written.

Each test builds the hostile situation itself (another tool's files in the output folder, a second
run, a killed run, nonsense options, odd class names, symlink loops, binary lists) and checks what is
on disk afterwards, byte for byte."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[2]


def _one_error(code: int, err: list[str], *words: str) -> str:
    assert code != 0 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def videos(tmp_path, pattern, write_raw) -> Path:
    """src/cls_a/{a0,a1}.mp4 and src/cls_b/b0.mp4: three 8-frame 16x16 videos."""
    src = tmp_path / "src"
    for i, rel in enumerate(("cls_a/a0.mp4", "cls_a/a1.mp4", "cls_b/b0.mp4")):
        write_raw(src / rel, pattern(8, 16, 16, seed=i))
    return src


def _prepare_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--input", str(src), "--output", str(out), "--resolution", "16", "--min_frames", "8",
            "--workers", "0", "--val_fraction", "0", "--quiet", "true", *extra]


# ------------------------------------------------------------------------------- 4: other tools' files


def test_output_folder_of_another_tool_is_refused_and_left_byte_identical(tmp_path, videos, cli_in_process):
    out = tmp_path / "theirs"
    out.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train-000000.tar", "backup.tar", "notes.txt"):  # another tool's files, one with our shard name
        (out / name).write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    before = _snapshot(out)

    code, err = cli_in_process(_prepare_args(videos, out))
    _one_error(code, err, str(out), "not make", "backup.tar")
    assert _snapshot(out) == before  # nothing replaced, removed or added (not even a lock file)
    assert sorted(p.name for p in out.iterdir()) == ["backup.tar", "notes.txt", "train-000000.tar"]


def test_overwrite_and_stale_shard_removal_touch_only_what_prepare_recorded(tmp_path, videos, cli_in_process):
    out = tmp_path / "ours"
    assert cli_in_process(_prepare_args(videos, out, "--shard_size", "1"))[0] == 0  # train-000000..2.tar
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-00000{i}.tar" for i in range(3)]
    # the user keeps their own files next to the shards, one of them with a shard-like name
    (out / "backup.tar").write_bytes(b"my backup " * 100)
    (out / "train-000007.tar").write_bytes(b"not from prepare " * 50)
    (out / "notes.txt").write_text("mine\n")
    (out / ".backup.tmp.tar").write_bytes(b"hidden, mine too")
    theirs = {n: (out / n).read_bytes() for n in ("backup.tar", "train-000007.tar", "notes.txt", ".backup.tmp.tar")}
    leftovers = [out / ".train-000001.k3j9_x0a.tmp.tar", out / ".parts" / ".train-000002.tar.ab12cd34.tmp.json"]
    for p in leftovers:  # what a killed run leaves: prepare's own temporary files, removed on the next run
        p.write_bytes(b"half a shard")

    # other settings + --overwrite: the three recorded shards are replaced by one shard of 3 videos
    assert cli_in_process(_prepare_args(videos, out, "--shard_size", "3", "--crf", "30", "--overwrite", "true"))[0] == 0
    assert {n: (out / n).read_bytes() for n in theirs} == theirs
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in out.glob("[!.]*.tar")) == ["backup.tar", "train-000000.tar", "train-000007.tar"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["splits"]["train"]["shards"]] == ["train-000000.tar"]
    assert manifest["splits"]["train"]["count"] == 3

    # same settings, a smaller plan (shard size 1 -> 3 shards, then 1 video -> 1 shard): stale shards of
    # ours go, the user's shard-like file stays
    assert cli_in_process(_prepare_args(videos, out, "--shard_size", "1", "--crf", "30", "--overwrite", "true"))[0] == 0
    (videos / "cls_a" / "a1.mp4").unlink()
    (videos / "cls_b" / "b0.mp4").unlink()
    assert cli_in_process(_prepare_args(videos, out, "--shard_size", "1", "--crf", "30"))[0] == 0
    assert sorted(p.name for p in out.glob("[!.]*.tar")) == ["backup.tar", "train-000000.tar", "train-000007.tar"]
    assert {n: (out / n).read_bytes() for n in theirs} == theirs


def test_an_unrecorded_file_with_a_planned_shard_name_is_never_replaced(tmp_path, videos, cli_in_process):
    out, later = tmp_path / "ours", tmp_path / "later"
    later.mkdir()
    for rel in ("cls_a/a1.mp4", "cls_b/b0.mp4"):  # two videos join the set later
        (later / rel.replace("/", "_")).write_bytes((videos / rel).read_bytes())
        (videos / rel).unlink()
    assert cli_in_process(_prepare_args(videos, out, "--shard_size", "1"))[0] == 0  # train-000000.tar only
    (out / "train-000001.tar").write_bytes(b"a file someone else put here " * 40)
    (videos / "cls_a" / "a1.mp4").write_bytes((later / "cls_a_a1.mp4").read_bytes())
    (videos / "cls_b" / "b0.mp4").write_bytes((later / "cls_b_b0.mp4").read_bytes())
    before = _snapshot(out)
    code, err = cli_in_process(_prepare_args(videos, out, "--shard_size", "1"))  # would write train-000000..2
    _one_error(code, err, str(out / "train-000001.tar"), "did not write it")
    assert _snapshot(out) == before


# ------------------------------------------------------------------------------- 5: one run at a time


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(tmp_path, videos, cli_in_process):
    """Run 1 (in a thread) blocks on a FIFO listed as a video, holding the lock; run 2 must be refused
    and write nothing; then run 1 is released and finishes with its own videos only."""
    fifo = tmp_path / "slow" / "cls_f" / "fifo.mp4"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    listing = tmp_path / "slow" / "list.txt"
    listing.write_text("cls_f/fifo.mp4\n" + "".join(f"{p}\n" for p in sorted(videos.rglob("*.mp4"))))
    out = tmp_path / "out"
    first: dict = {}

    def run_first():
        from magvit_pl.data.prepare import prepare

        try:
            first["summary"] = prepare(str(listing), str(out), resolution=16, min_frames=8, workers=0,
                                       val_fraction=0.0, quiet=True)
        except BaseException as err:  # noqa: BLE001  reported by the assertion below
            first["error"] = err

    thread = threading.Thread(target=run_first)
    thread.start()
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None:  # run 1 is reading the FIFO once a non-blocking writer can open it
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert time.monotonic() < deadline and thread.is_alive(), first
                time.sleep(0.02)
        before = _snapshot(out)
        other = tmp_path / "other"
        (other / "cls_z").mkdir(parents=True)
        (other / "cls_z" / "z.mp4").write_bytes((videos / "cls_a" / "a0.mp4").read_bytes())
        code, err = cli_in_process(_prepare_args(other, out))
        _one_error(code, err, "another prepare", str(out))
        assert _snapshot(out) == before
    finally:
        if writer is not None:
            os.close(writer)  # run 1 reads an empty file, skips it and goes on
        thread.join(60)
    assert "error" not in first, first
    summary = first["summary"]
    assert summary["videos"] == 3 and [s["path"] for s in summary["skipped"]] == ["cls_f/fifo.mp4"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["path"] for s in manifest["sources"] if s["status"] == "ok") == \
        sorted(str(p) for p in videos.rglob("*.mp4"))  # run 2's video never got in


# ------------------------------------------------------------------- 6: kill -9 takes the workers along


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_prepare_ends_its_workers_and_frees_the_output(tmp_path, videos, cli_in_process):
    fifo = tmp_path / "slow" / "cls_f" / "fifo.mp4"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # a worker opening it blocks for ever: the run cannot finish on its own
    listing = tmp_path / "slow" / "list.txt"
    listing.write_text("cls_f/fifo.mp4\n")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "prepare", "--input", str(listing), "--output",
                             str(out), "--workers", "2", "--timeout_s", "600", "--quiet", "true"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "prepare never started its 2 workers"
            time.sleep(0.1)
            workers = _children(proc.pid)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "decoder workers outlived the killed prepare"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for w in workers:  # never leave a worker behind, whatever happened
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        proc.stderr.close()

    # the killed run's lock does not block the next run into the same folder
    listing.write_text("".join(f"{p}\n" for p in sorted(videos.rglob("*.mp4"))))
    code, err = cli_in_process(["prepare", "--input", str(listing), "--output", str(out), "--resolution", "16",
                                "--min_frames", "8", "--workers", "0", "--val_fraction", "0", "--quiet", "true"])
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"] == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_synthetic_generation_ends_its_workers(tmp_path):
    """The synthetic set (generated by the first fit) uses a process pool too; its workers hold the
    dataset's lock, so a survivor would make every later fit wait for ever."""
    code = ("from magvit_pl.data.synthetic import ensure_default_dataset; "
            f"ensure_default_dataset({str(tmp_path / 'syn')!r}, num_train=512, workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the generator never started its 2 workers"
            time.sleep(0.05)
            workers = _children(proc.pid)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "generator workers outlived the killed process"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


# ------------------------------------------------------------------- 8: nonsense options, nothing written


@pytest.mark.parametrize("flag, value", [
    ("--fps", "0"), ("--fps", "-3"), ("--timeout_s", "0"),
    ("--max_frames", "0"), ("--resolution", "1000000"), ("--min_frames", "-5"), ("--crf", "99"), ("--crf", "-1"),
    ("--workers", "-1"), ("--workers", "257"), ("--shard_size", "1000000"), ("--split_id", "7"),
])
def test_nonsense_options_are_refused_before_the_output_is_touched(tmp_path, videos, cli_in_process, flag, value):
    out = tmp_path / "new_out"
    code, err = cli_in_process(_prepare_args(videos, out, flag, value))
    _one_error(code, err, flag, value)
    assert not out.exists()


def test_min_frames_above_max_frames_is_refused(tmp_path, videos, cli_in_process):
    out = tmp_path / "new_out"
    code, err = cli_in_process(_prepare_args(videos, out, "--max_frames", "4", "--min_frames", "8"))
    _one_error(code, err, "--min_frames 8", "--max_frames (4)")
    assert not out.exists()


def test_a_run_that_can_use_no_video_writes_no_manifest_and_fails(tmp_path, cli_in_process):
    src = tmp_path / "src" / "k"
    src.mkdir(parents=True)
    (src / "a.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    code, err = cli_in_process(_prepare_args(tmp_path / "src", out))
    _one_error(code, err, "none of the 1 videos", "k/a.mp4")
    assert not (out / "manifest.json").exists()


# ------------------------------------------------------------------- 10: class names, symlinks


def test_class_names_round_trip_through_classes_txt_or_are_refused(tmp_path, pattern, write_raw, cli_in_process):
    src = tmp_path / "src"
    write_raw(src / "pour, then stir" / "a.mp4", pattern(8, 16, 16))
    write_raw(src / "plain" / "b.mp4", pattern(8, 16, 16, seed=1))
    out = tmp_path / "out"
    assert cli_in_process(_prepare_args(src, out))[0] == 0
    classes = json.loads((out / "manifest.json").read_text())["classes"]
    assert classes == ["plain", "pour, then stir"]
    again = tmp_path / "again"  # classes.txt read back as --classes gives the same label order
    assert cli_in_process(_prepare_args(src, again, "--classes", str(out / "classes.txt")))[0] == 0
    assert json.loads((again / "manifest.json").read_text())["classes"] == classes

    bad = tmp_path / "bad"
    write_raw(bad / "pour,\nthen stir" / "a.mp4", pattern(8, 16, 16))
    write_raw(bad / "plain" / "b.mp4", pattern(8, 16, 16, seed=1))
    code, err = cli_in_process(_prepare_args(bad, tmp_path / "bad_out"))
    _one_error(code, err, repr("pour,\nthen stir"), "line break", "refuses")
    assert not (tmp_path / "bad_out").exists()


def test_symlink_loops_and_broken_links_are_listed_as_skipped(tmp_path, videos, cli_in_process):
    os.symlink("loop.mp4", videos / "cls_a" / "loop.mp4")  # a link to itself
    os.symlink(videos, videos / "cls_b" / "up")  # a folder link back to the top: would recurse for ever
    os.symlink(tmp_path / "gone.mp4", videos / "cls_b" / "gone.mp4")
    linked = tmp_path / "elsewhere"
    (linked / "cls_c").mkdir(parents=True)
    (linked / "cls_c" / "c.mp4").write_bytes((videos / "cls_a" / "a0.mp4").read_bytes())
    os.symlink(linked / "cls_c", videos / "cls_c")  # a folder link elsewhere: followed
    out = tmp_path / "out"
    assert cli_in_process(_prepare_args(videos, out))[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["path"]: s["reason"] for s in manifest["skipped"]} == {
        "cls_a/loop.mp4": "symlink loop",
        "cls_b/gone.mp4": "broken symlink (its target does not exist)",
        "cls_b/up": "symlink loop (links back to a folder above it)",
    }
    assert sorted(s["path"] for s in manifest["sources"]) == ["cls_a/a0.mp4", "cls_a/a1.mp4", "cls_b/b0.mp4",
                                                              "cls_c/c.mp4"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_listed_as_skipped(tmp_path, videos, cli_in_process):
    locked = videos / "cls_locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert cli_in_process(_prepare_args(videos, tmp_path / "out"))[0] == 0
    finally:
        locked.chmod(0o755)
    skipped = json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]
    assert skipped == [{"path": "cls_locked", "reason": "unreadable folder (Permission denied)"}]


# ------------------------------------------------------------------- 13: paths and inputs


def test_output_that_is_a_file_or_below_a_file_is_one_line(tmp_path, videos, cli_in_process):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    before = passwd.read_bytes()
    code, err = cli_in_process(_prepare_args(videos, passwd))
    _one_error(code, err, f"--output {passwd} is a file")
    code, err = cli_in_process(_prepare_args(videos, passwd / "sub"))
    _one_error(code, err, f"--output {passwd / 'sub'}", "cannot create the folder", "Not a directory")
    assert passwd.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["passwd", "src"]


def test_a_single_video_as_input_is_a_one_video_training_set(tmp_path, videos, cli_in_process):
    out = tmp_path / "one"
    code, err = cli_in_process(_prepare_args(videos / "cls_b" / "b0.mp4", out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["cls_b"] and manifest["splits"]["train"]["count"] == 1
    assert [s["path"] for s in manifest["sources"]] == ["b0.mp4"]


@pytest.mark.parametrize("layout", ["csv", "folder"])
def test_a_binary_list_or_csv_is_one_line(tmp_path, videos, cli_in_process, layout):
    binary = tmp_path / "list.csv"
    binary.write_bytes(bytes(range(256)) * 4)  # NUL bytes and invalid UTF-8
    code, err = cli_in_process(_prepare_args(binary, tmp_path / "out", "--layout", layout))
    _one_error(code, err, str(binary), "not a text file")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("cls_a/a0.mp4,caf\xe9\n".encode("latin-1"))
    code, err = cli_in_process(_prepare_args(latin, tmp_path / "out", "--layout", layout))
    _one_error(code, err, str(latin), "not UTF-8 text", "0xe9")
    assert not (tmp_path / "out").exists()
