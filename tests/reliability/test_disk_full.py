"""A disk that fills up (or a writer that fails) in the middle of a write: the file that was there
stays as it was, no temporary file is left behind, and the failure is reported in one line."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from magvit_pl.data import prepare as prepare_mod
from magvit_pl.data.shards import decode_sample, read_shard
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import atomic_path, write_json


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------- prepare


def test_prepare_disk_full_while_writing_a_shard(tmp_path, write_clip, pattern, monkeypatch, capsys):
    from magvit_pl.run.cli import main

    src, out = tmp_path / "src" / "c", tmp_path / "out"
    for i, name in enumerate(("a", "b")):
        write_clip(src / f"{name}.mp4", pattern(8, 32, 32, seed=i))
    args = ["prepare", "--input", str(tmp_path / "src"), "--output", str(out), "--resolution", "32",
            "--min_frames", "8", "--shard_size", "2", "--workers", "0", "--val_fraction", "0", "--quiet", "true"]
    main(args)  # run 1: train-000000.tar (a, b) and its manifest
    shard0, manifest = (out / "train-000000.tar").read_bytes(), (out / "manifest.json").read_bytes()
    listing = _listing(out)

    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)  # ~20 kB as a sample
    write_clip(src / "c.mp4", noise)  # two new videos -> a new shard train-000001.tar
    write_clip(src / "d.mp4", pattern(8, 16, 16, seed=3))
    real_write_shard = prepare_mod.write_shard
    half_written = []

    def disk_fills_up(path, samples):
        def first_sample_then_enospc():
            it = iter(samples)
            yield next(it)  # the first sample goes into the temporary tar ...
            half_written.extend(p.stat().st_size for p in path.parent.glob(".train-000001.*tmp*"))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full

        return real_write_shard(path, first_sample_then_enospc())

    monkeypatch.setattr(prepare_mod, "write_shard", disk_fills_up)
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # run 2 fails
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {out / 'train-000001.tar'}: "
                                                f"No space left on device"), err
    assert len(half_written) == 1 and half_written[0] > 8192  # the failure came with the temporary tar half-written
    assert _listing(out) == listing  # no half shard, no temporary file, no new record
    assert (out / "train-000000.tar").read_bytes() == shard0 and (out / "manifest.json").read_bytes() == manifest
    assert len(list(read_shard(out / "train-000000.tar"))) == 2  # run 1's data stays usable

    monkeypatch.setattr(prepare_mod, "write_shard", real_write_shard)
    main(args)  # run 3, with space again: keeps shard 0, writes shard 1
    summary = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in summary["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert (out / "train-000000.tar").read_bytes() == shard0
    keys = sorted(decode_sample(s)["meta"]["source"] for s in read_shard(out / "train-000001.tar"))
    assert keys == ["c/c.mp4", "c/d.mp4"]


def test_prepare_manifest_write_failure_keeps_the_old_manifest(tmp_path, write_clip, pattern, file_size_limit):
    src, out = tmp_path / "src" / "c", tmp_path / "out"
    write_clip(src / "a.mp4", pattern(8, 16, 16))
    kwargs = dict(resolution=16, min_frames=8, workers=0, val_fraction=0.0, quiet=True)
    prepare_mod.prepare(str(tmp_path / "src"), str(out), **kwargs)
    old = (out / "manifest.json").read_bytes()
    assert len(old) > 1024
    with file_size_limit(512):  # every file write past 512 bytes fails (EFBIG): the new manifest's does
        with pytest.raises(UserError, match=r"cannot write .*manifest\.json: File too large"):
            prepare_mod.prepare(str(tmp_path / "src"), str(out), **kwargs)
    assert (out / "manifest.json").read_bytes() == old
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


# ------------------------------------------------------------------------------- magvit_pl.run.files


def test_write_json_failing_midway_keeps_old_content_and_leaves_no_temp(tmp_path, file_size_limit):
    target = tmp_path / "results.json"
    write_json(target, {"psnr": 20.5})
    old = target.read_bytes()

    with file_size_limit(4096):  # the disk is full after 4 KiB
        with pytest.raises(OSError) as info:
            write_json(target, {"values": list(range(5000))})  # ~30 kB of JSON
    assert info.value.errno == errno.EFBIG
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["results.json"]

    class NotJSON:  # the serialiser fails half-way through the object
        pass

    with pytest.raises(TypeError):
        write_json(target, {"values": list(range(5000)), "z": NotJSON()})
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["results.json"]

    with pytest.raises(OSError, match="No space"):  # any writer inside atomic_path
        with atomic_path(tmp_path / "media.mp4") as tmp:
            tmp.write_bytes(b"half a video")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert os.listdir(tmp_path) == ["results.json"]


# -------------------------------------------------------------------------- Lightning checkpoints


def _tiny_trainer(tmp_path: Path, plugins):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 64)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)),
                                               batch_size=4)

    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, plugins=plugins,
                         default_root_dir=tmp_path)
    return trainer, Tiny()


def test_checkpoint_save_failing_midway_keeps_the_previous_last_ckpt(tmp_path, file_size_limit):
    from magvit_pl.run.checkpoint import load_checkpoint
    from magvit_pl.run.callbacks import AtomicCheckpointIO

    torch.manual_seed(0)
    trainer, model = _tiny_trainer(tmp_path, [AtomicCheckpointIO()])
    trainer.fit(model)
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    trainer.save_checkpoint(last)
    saved = load_checkpoint(last)
    assert saved["global_step"] == 2 and last.stat().st_size > 16_000
    old = last.read_bytes()

    with torch.no_grad():
        model.layer.weight.add_(1.0)  # the next checkpoint would differ
    with file_size_limit(4096):  # the disk fills up 4 KiB into the new checkpoint
        with pytest.raises(OSError) as info:
            trainer.save_checkpoint(last)
    assert info.value.errno == errno.EFBIG and str(last) in str(info.value)  # the cause, not torch's 'unexpected pos'
    assert last.read_bytes() == old and os.listdir(folder) == ["last.ckpt"]
    back = AtomicCheckpointIO().load_checkpoint(last)  # what Trainer.fit(ckpt_path=...) reads
    assert torch.equal(back["state_dict"]["layer.weight"], saved["state_dict"]["layer.weight"])

    trainer.save_checkpoint(last)  # with space again the new one replaces it whole
    assert torch.equal(load_checkpoint(last)["state_dict"]["layer.weight"], model.layer.weight)
    umask = os.umask(0)
    os.umask(umask)
    assert os.listdir(folder) == ["last.ckpt"] and last.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_checkpoint_io_keeps_lightning_semantics(tmp_path):
    from magvit_pl.run.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "nested" / "step=1.ckpt"
    io.save_checkpoint({"a": torch.arange(3)}, path)  # creates the folder, like TorchCheckpointIO
    assert torch.equal(io.load_checkpoint(path)["a"], torch.arange(3))
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"a": 1}, path, storage_options={"x": 1})
    io.remove_checkpoint(path)
    assert not path.exists() and os.listdir(path.parent) == []
