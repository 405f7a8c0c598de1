"""Crafted pickles whose unpickling would run a command are refused by every loader of checkpoints and
cached statistics, before anything runs (the marker file the command would create never appears).

The numpy-only unpickler of the pretrained weights (``magvit_pl.run.unpickle.load_numpy_pickle``) has the
same tests in tests/metrics/test_weights.py (test_pickle_that_runs_code_is_refused, other globals,
object arrays, and test_numpy_pickle_round_trip for a pickle of numpy arrays only); they are not
repeated here.
"""
from __future__ import annotations

import os
import re
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from magvit_pl.run.checkpoint import load_checkpoint
from magvit_pl.run.errors import UserError


class RunsCode:
    """Unpickling this runs ``touch MARKER`` (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_is_live(path: Path, marker: Path, load) -> None:
    """Check that the crafted file really runs its command when read unsafely, then clean up."""
    load(path)
    assert marker.exists(), "the crafted file must run code when loaded unsafely"
    marker.unlink()


@pytest.mark.parametrize("fmt", ["torch_zip", "torch_legacy", "plain_pickle"])
def test_checkpoint_that_runs_code_is_refused(tmp_path, fmt, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": {"w": torch.zeros(3)}, "global_step": 7, "hook": RunsCode(marker)}
    if fmt == "plain_pickle":  # not a torch file at all
        path.write_bytes(pickle.dumps(ckpt))
        _payload_is_live(path, marker, lambda p: pickle.loads(p.read_bytes()))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=fmt == "torch_zip")
        _payload_is_live(path, marker, lambda p: torch.load(p, weights_only=False))

    from magvit_pl.run.callbacks import AtomicCheckpointIO

    # load_checkpoint (tokenizer, MTM, generate, test) and the Lightning resume path (fit --ckpt_path,
    # through our checkpoint plugin, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # turns torch.load(weights_only=None) unsafe
    for load in (load_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(UserError, match=re.escape(f"checkpoint {path} holds objects other than tensors and "
                                                      f"plain data; refusing to load it")) as info:
            load(path)
        assert "\n" not in str(info.value) and not marker.exists()


def test_checkpoint_of_tensors_and_plain_data_loads(tmp_path):
    from magvit_pl.run.callbacks import AtomicCheckpointIO

    path = tmp_path / "plain.ckpt"
    ckpt = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "global_step": 7, "magvit": {"kind": "mtm", "grid": [4, 8, 8]}}
    torch.save(ckpt, path)
    for back in (load_checkpoint(path), AtomicCheckpointIO().load_checkpoint(path)):
        assert torch.equal(back["state_dict"]["w"], ckpt["state_dict"]["w"]) and back["magvit"] == ckpt["magvit"]

    # a checkpoint cut short (a copy interrupted by a full disk) is a one-line error on resume too;
    # load_checkpoint's is tested in tests/lit/test_tokenizer_module.py::test_truncated_checkpoint_is_a_clear_error
    cut = tmp_path / "cut.ckpt"
    for fraction in (0.5, 0.9):  # torch fails with a RuntimeError, or a ValueError when cut near the end
        cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
        with pytest.raises(UserError, match=re.escape(f"checkpoint {cut} is truncated or corrupt")) as info:
            AtomicCheckpointIO().load_checkpoint(cut)
        assert "\n" not in str(info.value)


def test_fvd_statistics_with_a_pickled_object_are_refused(tmp_path):
    from magvit_pl.metrics.fvd import FrechetVideoDistance, read_real_stats

    marker = tmp_path / "pwned"
    path = tmp_path / "real.npz"
    np.savez(path, mu=np.array([RunsCode(marker)], dtype=object), sigma=np.eye(2), n=np.int64(2),
             key=np.str_("k"), protocol=np.str_("{}"))
    _payload_is_live(path, marker, lambda p: np.load(p, allow_pickle=True)["mu"])

    with pytest.raises(UserError, match=re.escape(f"{path} is not an FVD statistics file")):
        read_real_stats(path)
    fvd = FrechetVideoDistance(extractor=lambda clips: clips.flatten(1)[:, :4], resize=8)
    with pytest.raises(UserError, match="not an FVD statistics file"):
        fvd.load_real_stats(path, manifest_sha256="abc", num_real=2, frames=9)
    assert not marker.exists()
