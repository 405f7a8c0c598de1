"""magvit_pl.run.files / run.checkpoint: the one atomic write and its temporary names."""
import os
import re

import pytest
import torch

from magvit_pl.run import checkpoint as ckpt_mod
from magvit_pl.run.checkpoint import load_checkpoint, save_checkpoint
from magvit_pl.run.errors import first_line, one_line
from magvit_pl.run.files import atomic_path, sha256_file


def test_temporary_names_keep_the_suffix_or_are_anonymous(tmp_path):
    seen = {}
    with atomic_path(tmp_path / "clip.mp4") as tmp:
        seen["named"] = tmp.name
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "last.ckpt", anonymous=True) as tmp:
        seen["anonymous"] = tmp.name
        tmp.write_bytes(b"y")
    assert re.fullmatch(r"\.clip\.[a-z0-9_]{8}\.tmp\.mp4", seen["named"])  # data.prepare recognises its own by this
    assert re.fullmatch(r"\.tmp-[a-z0-9_]{8}\.partial", seen["anonymous"])
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "last.ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "clip.mp4").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_checkpoint_being_written_never_looks_like_one(tmp_path, monkeypatch):
    """While ``save_checkpoint`` writes, the folder holds no other name with ``last`` or ``.ckpt`` in it, and
    a write that fails leaves the previous file whole."""
    save_checkpoint({"w": torch.arange(4)}, tmp_path / "last.ckpt")
    during = []
    real_save = torch.save

    def watching_save(obj, f):
        during.extend(os.listdir(tmp_path))
        real_save(obj, f)
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(ckpt_mod.torch, "save", watching_save)
    with pytest.raises(RuntimeError, match="killed half-way"):
        save_checkpoint({"w": torch.zeros(4)}, tmp_path / "last.ckpt")
    temps = [n for n in during if n != "last.ckpt"]
    assert len(temps) == 1 and "last" not in temps[0] and ".ckpt" not in temps[0], during
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(load_checkpoint(tmp_path / "last.ckpt")["w"], torch.arange(4))


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: several chunks
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_error_lines():
    err = RuntimeError("\n  Error(s) in loading state_dict:\n\tsize mismatch for w\n")
    assert first_line(err) == "Error(s) in loading state_dict:"
    assert first_line(err, 2) == "Error(s) in loading state_dict: size mismatch for w"
    assert first_line(ValueError(""), default="ValueError") == "ValueError"
    assert one_line("a\n  b\n") == "a b"
    nested = ("Problem with given class_path 'magvit_pl.lit.mtm.MTMModule': model.lr=-1: must be > 0\n"
              " - Expected a <class 'NoneType'>")
    assert one_line(nested) == "model.lr=-1: must be > 0 (in magvit_pl.lit.mtm.MTMModule)"
