"""``prepare``: folder / ucf101 / csv layouts, bad files skipped with reasons, resume, time limit."""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from magvit_pl.data import prepare as prepare_mod
from magvit_pl.data.prepare import prepare
from magvit_pl.data.shards import decode_sample, read_shard
from magvit_pl.run.errors import MissingFileError, UserError


def _samples(out):
    """Every sample of every shard listed in the manifest, decoded: {source path: decoded}."""
    manifest = json.loads((out / "manifest.json").read_text())
    found = {}
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            raw = list(read_shard(out / shard["name"]))
            assert len(raw) == shard["count"]
            for s in raw:
                d = decode_sample(s)
                assert d["meta"]["split"] == split
                found[d["meta"]["source"]] = d
    return manifest, found


@pytest.fixture
def source(tmp_path, pattern, write_raw, broken_files):
    """Two classes of small valid videos in odd formats, plus every kind of broken file."""
    src = tmp_path / "src"
    (src / "cls_a").mkdir(parents=True)
    (src / "cls_b").mkdir(parents=True)
    write_raw(src / "cls_a" / "tiny_33x17.mp4", pattern(20, 17, 33), pix_fmt="yuv444p")
    write_raw(src / "cls_a" / "gray.mkv", pattern(20, 24, 32, seed=1), codec="ffv1", pix_fmt="gray")
    write_raw(src / "cls_b" / "vfr.mp4", pattern(20, 32, 32, seed=2), pts_ms=[i * 40 + (i % 3) * 9 for i in range(20)])
    write_raw(src / "cls_b" / "plain.avi", pattern(24, 48, 64, seed=3), codec="mpeg4")
    bad = broken_files(src / "cls_b")
    return src, bad


def test_folder_prepare_skips_bad_files_and_resumes(tmp_path, source):
    src, bad = source
    out = tmp_path / "out"
    summary = prepare(str(src), str(out), resolution=32, max_frames=16, min_frames=8, shard_size=2, workers=2,
                      val_fraction=0.0, quiet=True)
    assert summary["videos"] == 4 and summary["splits"] == {"train": 4} and summary["frames"] == 4 * 16
    skipped = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {f"cls_b/{p.name}" for p, _ in bad.values()}
    for path, words in bad.values():
        assert words in skipped[f"cls_b/{path.name}"], (path.name, skipped[f"cls_b/{path.name}"])

    manifest, found = _samples(out)
    assert manifest["classes"] == ["cls_a", "cls_b"] and (out / "classes.txt").read_text() == "cls_a\ncls_b\n"
    assert set(found) == {"cls_a/tiny_33x17.mp4", "cls_a/gray.mkv", "cls_b/vfr.mp4", "cls_b/plain.avi"}
    assert found["cls_a/tiny_33x17.mp4"]["frames"].shape == (16, 32, 62, 3)  # 33 * 32 / 17 -> 62
    assert found["cls_b/plain.avi"]["frames"].shape == (16, 32, 42, 3)
    gray = found["cls_a/gray.mkv"]["frames"].astype(int)
    assert np.abs(gray[..., 0] - gray[..., 2]).mean() < 3  # grey stays grey through the 4:4:4 payload
    assert {d["label"] for k, d in found.items() if k.startswith("cls_a")} == {0}
    assert {d["label"] for k, d in found.items() if k.startswith("cls_b")} == {1}
    for s in manifest["sources"]:  # every source has its hash and status
        assert s["sha256"] in (None, hashlib.sha256((src / s["path"]).read_bytes()).hexdigest())
        assert s["status"] == ("skipped" if s["path"] in skipped else "ok")
    assert not [p for p in out.iterdir() if "tmp" in p.name]
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == [s["name"] for s in manifest["splits"]["train"]["shards"]]

    # a second run keeps every finished shard untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
    again = prepare(str(src), str(out), resolution=32, max_frames=16, min_frames=8, shard_size=2, workers=2,
                    val_fraction=0.0, quiet=True)
    assert again["processed_files"] == 0 and again["reused_shards"] == 5 and again["videos"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes

    # a lost shard is redone (and comes back byte for byte), the others are kept
    lost = shards[0]
    before = lost.read_bytes()
    lost.unlink()
    redo = prepare(str(src), str(out), resolution=32, max_frames=16, min_frames=8, shard_size=2, workers=2,
                   val_fraction=0.0, quiet=True)
    assert redo["processed_files"] == 2 and redo["reused_shards"] == 4
    assert lost.read_bytes() == before

    with pytest.raises(UserError, match="--overwrite"):
        prepare(str(src), str(out), resolution=16, quiet=True)
    small = prepare(str(src), str(out), resolution=16, max_frames=8, min_frames=8, workers=0, overwrite=True,
                    val_fraction=0.0, quiet=True)
    assert small["videos"] == 4 and _samples(out)[1]["cls_b/vfr.mp4"]["frames"].shape == (8, 16, 16, 3)


def test_real_clips_with_split_folders_and_fps(tmp_path, clips_dir):
    src = tmp_path / "real"
    layout = {"train/people/rawvideo_part_0.mp4": "rawvideo_part_0.mp4",
              "train/phone/carphone_pristine.mp4": "carphone_pristine.mp4",
              "val/people/ucf_style_eye_makeup.avi": "ucf_style_eye_makeup.avi",
              "test/phone/kinetics_arm_wrestling.mp4": "kinetics_arm_wrestling.mp4"}
    for rel, name in layout.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(clips_dir / name, src / rel)
    out = tmp_path / "shards"
    summary = prepare(str(src), str(out), resolution=32, fps=10, max_frames=8, min_frames=8, workers=2, quiet=True)
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1} and not summary["skipped"]
    manifest, found = _samples(out)
    assert manifest["classes"] == ["people", "phone"] and manifest["fps"] == 10
    eye = found["val/people/ucf_style_eye_makeup.avi"]
    assert eye["frames"].shape == (8, 32, 42, 3) and eye["label"] == 0 and eye["meta"]["fps"] == 10
    assert found["test/phone/kinetics_arm_wrestling.mp4"]["frames"].shape == (8, 32, 42, 3)
    assert 30 < eye["frames"].mean() < 225 and eye["frames"].std() > 10
    src_sha = hashlib.sha256((clips_dir / "rawvideo_part_0.mp4").read_bytes()).hexdigest()
    assert {s["path"]: s["sha256"] for s in manifest["sources"]}["train/people/rawvideo_part_0.mp4"] == src_sha


def test_ucf101_layout_uses_official_lists_and_group_val(tmp_path, pattern, write_raw):
    root = tmp_path / "UCF-101"
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    classes = ["ApplyEyeMakeup", "Basketball"]
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n")
    train, test = [], []
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for g in range(1, 5):
            for clip in (1, 2):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{clip:02d}.avi"
                write_raw(root / rel, pattern(8, 16, 16, seed=g), codec="mpeg4")
                (test if g == 1 else train).append((rel, c + 1))
    (lists / "trainlist01.txt").write_text("".join(f"{r} {c}\n" for r, c in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\n" for r, _ in test))
    out = tmp_path / "ucf"
    prepare(str(root), str(out), layout="ucf101", resolution=16, min_frames=8, val_fraction=0.4, workers=0, quiet=True)
    manifest, found = _samples(out)
    assert manifest["classes"] == classes
    assert {k for k, d in found.items() if d["meta"]["split"] == "test"} == {r for r, _ in test}
    assert {k for k, d in found.items() if d["meta"]["split"] != "test"} == {r for r, _ in train}
    groups = {}
    for k, d in found.items():
        groups.setdefault(k.rsplit("_", 1)[0], set()).add(d["meta"]["split"])
        assert d["label"] == classes.index(k.split("/")[0])
    assert all(len(s) == 1 for s in groups.values())  # a group never straddles train and val
    assert {"train", "val", "test"} == {s for v in groups.values() for s in v}
    with pytest.raises(MissingFileError, match="split_dir"):
        prepare(str(root), str(tmp_path / "x"), layout="ucf101", split_dir=str(tmp_path / "nowhere"), quiet=True)


def test_csv_layout_and_list_file(tmp_path, pattern, write_raw):
    vids = tmp_path / "vids"
    vids.mkdir()
    for name in ("a", "b", "c", "d"):
        write_raw(vids / f"{name}.mp4", pattern(8, 16, 16))
    (tmp_path / "classes.txt").write_text("zebra\napple\n")
    (tmp_path / "list.csv").write_text("path,label,split\nvids/a.mp4,apple,train\nvids/b.mp4,zebra,validation\n"
                                       "vids/c.mp4,apple,test\nvids/d.mp4,zebra,train\n")
    out = tmp_path / "csv_out"
    summary = prepare(str(tmp_path / "list.csv"), str(out), layout="csv", classes=str(tmp_path / "classes.txt"),
                      resolution=16, min_frames=8, workers=0, quiet=True)
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1}
    manifest, found = _samples(out)
    assert manifest["classes"] == ["zebra", "apple"]
    assert {k: d["label"] for k, d in found.items()} == {"vids/a.mp4": 1, "vids/b.mp4": 0, "vids/c.mp4": 1,
                                                          "vids/d.mp4": 0}
    (tmp_path / "bad.csv").write_text("vids/a.mp4,apple,holdout\n")
    with pytest.raises(UserError, match="unknown split 'holdout'"):
        prepare(str(tmp_path / "bad.csv"), str(tmp_path / "o2"), layout="csv", quiet=True)
    (tmp_path / "files.txt").write_text("vids/a.mp4\nvids/b.mp4\n")
    listed = prepare(str(tmp_path / "files.txt"), str(tmp_path / "o3"), resolution=16, min_frames=8, workers=0,
                     val_fraction=0.0, quiet=True)
    assert listed["splits"] == {"train": 2} and listed["classes"] == 1  # class = parent folder 'vids'


def test_hung_or_crashing_decoder_is_killed_and_listed(tmp_path, pattern, write_raw, monkeypatch):
    src = tmp_path / "src" / "k"
    src.mkdir(parents=True)
    for name in ("ok", "hang", "crash"):
        write_raw(src / f"{name}.mp4", pattern(8, 16, 16))
    real = prepare_mod.process_file

    def misbehaving(path, *args, **kwargs):  # runs in the forked worker
        if os.path.basename(path) == "hang.mp4":
            time.sleep(60)
        if os.path.basename(path) == "crash.mp4":
            os._exit(3)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "process_file", misbehaving)
    t0 = time.monotonic()
    summary = prepare(str(tmp_path / "src"), str(tmp_path / "out"), resolution=16, min_frames=8, workers=2,
                      timeout_s=0.5, val_fraction=0.0, quiet=True)
    assert time.monotonic() - t0 < 45  # the hung worker (60 s) was killed; generous for a loaded machine
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {"k/hang.mp4": "timed out after 3 s", "k/crash.mp4": "decoder process crashed"}
    assert summary["videos"] == 1


def test_missing_input_and_bad_arguments(tmp_path):
    with pytest.raises(MissingFileError, match="input not found"):
        prepare(str(tmp_path / "none"), str(tmp_path / "o"), quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos found"):
        prepare(str(tmp_path / "empty"), str(tmp_path / "o"), quiet=True)
    with pytest.raises(UserError, match="even"):
        prepare(str(tmp_path / "empty"), str(tmp_path / "o"), resolution=33, quiet=True)
