"""Manifests and shards are files from outside: a crafted one never runs anything, never crashes or
hangs a run, and never feeds wrong pixels or labels to a model. Training skips a bad sample or shard
with a warning naming it (and stops, in one line, after too many in a row); evaluation stops at the
first, in one line; SIGTERM always stops a run.

Each test writes the hostile dataset itself with the project's own shard writer, then changes one
thing."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from magvit_pl.data.datamodule import VideoDataModule
from magvit_pl.data.shards import encode_sample, shard_name, write_shard
from magvit_pl.run.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b"]
T, R = 8, 32  # clip size the tiny tokenizer config reads


def _sample(key: str, pattern, label: int = 0, frames: int = T, size: int = R, fmt: str = "mp4", seed: int = 0) -> dict:
    meta = {"label": label, "class": CLASSES[label], "source": f"{key}.mp4", "split": "x", "fps": 8.0}
    return encode_sample(key, pattern(frames, size, size, seed=seed), meta, fmt=fmt, preset="ultrafast")


def _dataset(root: Path, splits: dict[str, list[list[dict]]]) -> Path:
    """Write ``splits`` (split -> shards -> samples) and a manifest like prepare's into ``root``."""
    root.mkdir(parents=True)
    manifest = {"format_version": 1, "created_by": "magvit_pl.data.prepare", "classes": CLASSES, "splits": {}}
    for split, shards in splits.items():
        entry = {"count": 0, "frames": 0, "shards": []}
        for i, samples in enumerate(shards):
            count, size = write_shard(root / shard_name(split, i), samples)
            entry["shards"].append({"name": shard_name(split, i), "count": count, "bytes": size})
            entry["count"] += count
        manifest["splits"][split] = entry
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _good(pattern, split: str, n: int = 3) -> list[dict]:
    return [_sample(f"{split}-{i:02d}", pattern, label=i % 2, seed=i) for i in range(n)]


def _one_error(code: int, err: list[str], *words: str) -> str:
    errors = [line for line in err if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and not any("Traceback" in line for line in err), (code, err)
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _fit_args(tiny_tokenizer_args, data_dir: str, runs: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--runs_root", str(runs), *tiny_tokenizer_args,
            "--data.init_args.data_dir", data_dir, "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
            "--data.init_args.train_samples_per_epoch", "4", "--trainer.max_steps", "1",
            "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "4",
            "--trainer.enable_progress_bar", "false", *extra]


# ------------------------------------------------------------------------- 3: pipe: and other names


def test_a_pipe_shard_name_in_the_manifest_never_runs(tmp_path, pattern, tiny_tokenizer_args, cli_in_process,
                                                      monkeypatch):
    root = _dataset(tmp_path / "data", {"train": [_good(pattern, "train")], "val": [_good(pattern, "val")]})
    marker = tmp_path / "PWNED"
    manifest = json.loads((root / "manifest.json").read_text())
    # webdataset's gopen runs a 'pipe:' URL in a shell; this one even hands back a valid shard
    manifest["splits"]["val"]["shards"][0]["name"] = f"pipe:touch {marker}; cat val-000000.tar"
    (root / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(root)  # data_dir '.': the shard path is the bare name
    code, err = cli_in_process(_fit_args(tiny_tokenizer_args, ".", tmp_path / "runs"))
    _one_error(code, err, "pipe:touch", "not a plain file name")
    assert not marker.exists()


def _mutate(manifest: dict, change: str) -> object:
    shard = manifest["splits"]["train"]["shards"][0]
    name_changes = {"pipe": "pipe:touch /tmp/x", "parent": "../train-000000.tar", "absolute": "/etc/x.tar",
                    "dash": "-rf.tar", "hidden": ".x.tar", "slash": "a/b.tar", "newline": "x.tar\nrm",
                    "no_tar": "train-000000", "not_a_string": 7, "missing": None}
    if change in name_changes:
        shard["name"] = name_changes[change]
    elif change.startswith("count="):
        shard["count"] = json.loads(change[6:])
    elif change == "split_count":
        manifest["splits"]["train"]["count"] += 1
    elif change == "split_name":
        manifest["splits"]["../train"] = manifest["splits"].pop("train")
    elif change == "classes_str":
        manifest["classes"] = "ab"
    elif change == "classes_ints":
        manifest["classes"] = [1, 2]
    elif change == "classes_twice":
        manifest["classes"] = ["a", "a"]
    elif change == "class_newline":
        manifest["classes"] = ["a", "b\nc"]
    elif change == "no_splits":
        del manifest["splits"]
    elif change == "shards_not_list":
        manifest["splits"]["train"]["shards"] = {"name": "train-000000.tar"}
    elif change == "shard_not_object":
        manifest["splits"]["train"]["shards"] = ["train-000000.tar"]
    elif change == "shard_twice":
        manifest["splits"]["train"]["shards"].append(dict(shard))
        manifest["splits"]["train"]["count"] *= 2
    elif change == "bytes":
        shard["bytes"] = -1
    elif change == "version":
        manifest["format_version"] = 99
    elif change == "a_list":
        return [manifest]
    return manifest


@pytest.mark.parametrize("change", [
    "pipe", "parent", "absolute", "dash", "hidden", "slash", "newline", "no_tar", "not_a_string", "missing",
    "count=-1", "count=1e30", 'count="3"', "count=true", "count=1000000000000", "split_count", "split_name",
    "classes_str", "classes_ints", "classes_twice", "class_newline", "no_splits", "shards_not_list",
    "shard_not_object", "shard_twice", "bytes", "version", "a_list", "deep",
])
def test_a_crafted_manifest_is_refused_in_one_line(tmp_path, pattern, change):
    root = _dataset(tmp_path / "data", {"train": [_good(pattern, "train", 1)]})
    path = root / "manifest.json"
    if change == "deep":  # nested past Python's recursion limit
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path.write_text(json.dumps(_mutate(json.loads(path.read_text()), change)))
    with pytest.raises(UserError) as info:
        VideoDataModule(data_dir=str(root), num_frames=T, resolution=R).setup("fit")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------- 7: broken shards


def _break(root: Path, name: str, how: str) -> None:
    path = root / name
    if how == "missing":
        path.unlink()
    elif how == "not_a_tar":  # same size as recorded, so only reading it finds out
        path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        raise KeyError(how)


@pytest.mark.parametrize("how, workers, words", [
    ("missing", "0", ["train-000000.tar", "listed in manifest.json but not found"]),
    ("not_a_tar", "1", ["100 training samples or shards in a row", "train-000000.tar", "not a readable tar"]),
])
def test_a_broken_train_shard_stops_fit_in_one_line(tmp_path, pattern, tiny_tokenizer_args, how, workers, words):
    """It used to resample the broken shard for ever (and so ignore SIGTERM too)."""
    root = _dataset(tmp_path / "data", {"train": [_good(pattern, "train")], "val": [_good(pattern, "val")]})
    _break(root, "train-000000.tar", how)
    args = _fit_args(tiny_tokenizer_args, str(root), tmp_path / "runs", "--data.init_args.num_workers", workers)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MAGVIT_PL_RUN_DIR", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=150)
    finally:  # the fit and its loader worker, whatever happened
        _kill_group(proc)
    _one_error(proc.returncode, stderr.splitlines(), *words)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process group of ``proc`` (its loader workers too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stderr.close()


@pytest.mark.parametrize("how, words", [
    ("missing", ["val-000000.tar", "not found"]),
    ("not_a_tar", ["val-000000.tar", "not a readable tar"]),
    ("fifo", ["val-000000.tar", "not a regular file"]),
    ("fewer_samples", ["val-000000.tar", "holds 2 samples, manifest.json says 3"]),
    ("label_1e30", ["val-bad", "'label'", "1e+30"]),
])
def test_a_broken_eval_shard_or_sample_is_one_line(tmp_path, pattern, tiny_tokenizer_args, cli_in_process, how, words):
    val = _good(pattern, "val")
    if how == "label_1e30":
        bad = _sample("val-bad", pattern)
        bad["json"] = json.dumps({**json.loads(bad["json"]), "label": 1e30}).encode()
        val[1] = bad
    root = _dataset(tmp_path / "data", {"train": [_good(pattern, "train")], "val": [val]})
    if how == "fewer_samples":  # a valid tar of the recorded size, one sample short
        size = (root / "val-000000.tar").stat().st_size
        write_shard(root / "val-000000.tar", val[:2])
        with open(root / "val-000000.tar", "ab") as fh:
            fh.truncate(size)
    elif how != "label_1e30":
        _break(root, "val-000000.tar", how)
    code, err = cli_in_process(_fit_args(tiny_tokenizer_args, str(root), tmp_path / "runs"))
    _one_error(code, err, *words)


HANG = textwrap.dedent('''
    import pathlib, time
    from lightning.pytorch import Callback
    from magvit_pl.data import datamodule

    class HangData(Callback):
        """After the first batch, every sample decode hangs (a stuck decoder or file system)."""
        def __init__(self, marker: str):
            self.marker = marker
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marker = self.marker
            def hang(self, sample, rng, start=None):
                pathlib.Path(marker).touch()
                time.sleep(3600)
            datamodule.ShardClips._clip = hang
''')


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_stops_a_fit_whose_data_stalls(tmp_path, pattern, tiny_tokenizer_args, fault_fit):
    root = _dataset(tmp_path / "data", {"train": [_good(pattern, "train")], "val": [_good(pattern, "val")]})
    marker = tmp_path / "waiting"
    config = fault_fit.callback("hang_data", HANG, "HangData", marker=str(marker))
    args = _fit_args(tiny_tokenizer_args, str(root), tmp_path / "runs", "--config", str(config),
                     "--trainer.max_steps", "1000", "--trainer.val_check_interval", "500",
                     "--data.init_args.train_samples_per_epoch", "2000")
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=fault_fit.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the fit never reached its second batch"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)  # used to wait for ever: Lightning only looks between batches
    finally:
        _kill_group(proc)
    assert proc.returncode == 143
    _one_error(proc.returncode, stderr.splitlines(), "stopped by SIGTERM while waiting for data")


# ------------------------------------------------------------------------- 9: crafted samples


class _Payload:
    """Unpickling this touches ``marker``: proof that a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _hostile(kind: str, pattern, marker: Path) -> dict:
    """One crafted sample, valid except for the one thing ``kind`` names."""
    key = "bad-sample"  # not the kind's name: the reason, not the key, must say what is wrong
    fmt = "npy" if kind in ("frames_1e9", "frames_int", "float64_npy", "pickled_npy", "npy_shape") else "mp4"
    sample = _sample(key, pattern, frames=12 if kind == "fps_zero" else T, fmt=fmt)
    meta = json.loads(sample["json"])
    if kind == "frames_1e9":
        meta["frames"] = 1e9
    elif kind == "frames_int":
        meta["frames"] = 10**6
    elif kind == "label_1e30":
        meta["label"] = 1e30
    elif kind == "label_7":
        meta["label"] = 7  # only 2 classes
    elif kind == "float64_npy":
        sample["npy"] = _npy(pattern(T, R, R).astype(np.float64))
    elif kind == "pickled_npy":
        objects = np.empty((T, R, R, 3), dtype=object)
        objects[0, 0, 0, 0] = _Payload(str(marker))
        sample["npy"] = _npy(objects, allow_pickle=True)
    elif kind == "npy_shape":
        sample["npy"] = _npy(pattern(T, R // 2, R // 2))
    elif kind == "mp4_size":
        sample["mp4"] = _sample(key, pattern, size=R // 2)["mp4"]
    elif kind == "fps_zero":
        meta["fps"] = 0
    elif kind == "json_list":
        meta = [meta]
    if kind == "no_json":
        del sample["json"]
    else:
        sample["json"] = json.dumps(meta).encode()
    return sample


HOSTILE_SAMPLES = ["frames_1e9", "frames_int", "label_1e30", "label_7", "float64_npy", "pickled_npy", "npy_shape",
                   "mp4_size", "fps_zero", "json_list", "no_json"]
REASONS = {"frames_1e9": "'frames'", "frames_int": "shape", "label_1e30": "'label'", "label_7": "'label'",
           "float64_npy": "dtype float64", "pickled_npy": "pickle", "npy_shape": "shape", "mp4_size": "16x16",
           "fps_zero": "'fps'", "json_list": "must be an object", "no_json": "no json"}


@pytest.mark.parametrize("kind", HOSTILE_SAMPLES)
def test_a_crafted_sample_is_skipped_in_training_and_one_line_in_evaluation(tmp_path, pattern, kind):
    marker = tmp_path / "UNPICKLED"
    bad = _hostile(kind, pattern, marker)
    good = _good(pattern, "ok", 3)
    root = _dataset(tmp_path / "data", {"train": [[good[0], bad, *good[1:]]], "val": [[good[0], bad, *good[1:]]]})
    dm = VideoDataModule(data_dir=str(root), num_frames=T, resolution=R, batch_size=2, shuffle_buffer=1,
                         train_samples_per_epoch=6)
    dm.setup("fit")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 6 and set(keys) <= {s["__key__"] for s in good}
    assert {int(label) for b in batches for label in b["label"]} <= {0, 1}
    skipped = [str(w.message) for w in caught if bad["__key__"] in str(w.message)]
    assert skipped and REASONS[kind] in skipped[0], [str(w.message) for w in caught]

    with pytest.raises(UserError) as info:
        list(dm.val_dataloader())
    message = str(info.value)
    assert bad["__key__"] in message and REASONS[kind] in message and "\n" not in message, message
    assert not marker.exists()
