"""Model folders where the CLI takes a checkpoint: ``test``, ``generate``, ``reconstruct`` and the MTM's
``tokenizer_ckpt`` give what the checkpoint gives; broken folders, misplaced options and a missing or unreachable
Hugging Face Hub are one ``error:`` line each."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from magvit_pl.run.checkpoint import load_tokenizer
from magvit_pl.run.errors import UserError
from magvit_pl.pretrained import from_pretrained


def test_test_command_takes_model_folders(folders, tmp_path, run_cli):
    runs = tmp_path / "runs"
    code, err = run_cli(["test", "--task", "outpainting_central", "--ckpt_path", folders["mtm"], "--runs_root", runs,
                         "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert code == 0, err
    results = json.loads(next((runs / "mtm").glob("*-test/results.json")).read_text())
    values = results["results"]["outpainting_central"]
    assert 0 < values["psnr_given"] < 200 and 0 <= values["cond_token_agreement"] <= 1
    assert results["protocol"]["tokenizer_ckpt"] == str((folders["mtm"] / "tokenizer").resolve())

    code, err = run_cli(["test", "--kind", "tokenizer", "--ckpt_path", folders["tokenizer"], "--runs_root", runs,
                         "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert code == 0, err
    results = json.loads(next((runs / "tokenizer").glob("*-test/results.json")).read_text())
    assert results["evaluation"] == "reconstruction" and results["protocol"]["clips"] == 4
    assert 0 < results["results"]["tokenizer"]["psnr"] < 100 and 0 < results["results"]["tokenizer"]["codebook_usage"] <= 1


def test_generate_and_reconstruct_take_folders_and_match_the_checkpoint(tiny_models, folders, tmp_path, run_cli):
    from magvit_pl.data import read_video, write_video

    videos = {}
    for name, ckpt in (("ckpt", tiny_models.mtm_ckpt), ("folder", folders["mtm"])):
        code, err = run_cli(["generate", "--task", "class_generation", "--class_id", "2", "--steps", "4", "--seed", "5",
                             "--output", tmp_path / f"{name}.mp4", "--ckpt_path", ckpt])
        assert code == 0, err
        videos[name] = read_video(tmp_path / f"{name}.mp4")
    assert videos["folder"].shape == (8, 32, 32, 3) and np.array_equal(videos["folder"], videos["ckpt"])

    write_video(tmp_path / "in.mp4", np.random.default_rng(0).integers(0, 256, (12, 36, 40, 3), dtype=np.uint8), fps=8)
    reports = {}
    for name, ckpt in (("ckpt", tiny_models.tokenizer_ckpt), ("folder", folders["tokenizer"])):
        code, err = run_cli(["reconstruct", "--input", tmp_path / "in.mp4", "--output", tmp_path / f"rec_{name}.mp4",
                             "--ckpt_path", ckpt, "--resolution", "32", "--lpips", "false"])
        assert code == 0, err
        reports[name] = json.loads(next(line for line in run_cli.out.splitlines() if line.startswith("{")))
    assert reports["folder"]["chunk_frames"] == 8  # the training clip length, recorded in the folder
    assert reports["folder"]["tokenizer"] == reports["ckpt"]["tokenizer"] and reports["folder"]["tokenizer"]["psnr"] > 0


def test_tokenizer_ckpt_takes_a_tokenizer_or_mtm_folder(tiny_models, folders, video_batch):
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.models.transformer import TransformerConfig

    want = load_tokenizer(tiny_models.tokenizer_ckpt).encode(video_batch["video"])
    for folder in (folders["tokenizer"], folders["mtm"]):
        model = MTMModule(tokenizer_ckpt=str(folder), num_classes=8, num_frames=8, resolution=32,
                          transformer=TransformerConfig(hidden_dim=8, num_layers=1, num_heads=1, mlp_dim=8))
        model.configure_model()
        assert torch.equal(model.tokenizer.encode(video_batch["video"]), want)


def test_broken_folders_and_misplaced_options_are_one_line(tiny_models, folders, tmp_path, run_cli):
    def broken(kind: str, name: str):
        folder = tmp_path / name
        shutil.copytree(folders[kind], folder)
        return folder

    cut = broken("tokenizer", "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        from_pretrained(cut)
    no_tok = broken("mtm", "no_tok")
    shutil.rmtree(no_tok / "tokenizer")
    with pytest.raises(UserError, match="tokenizer folder 'tokenizer' is missing"):
        from_pretrained(no_tok)
    def edited(kind: str, name: str, change) -> Path:  # a copy of the folder whose config.json is changed
        folder = broken(kind, name)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change(config)}))
        return folder

    for kind, name, change, says in [
        ("mtm", "outside", lambda c: {"tokenizer": "../tok"}, "must name a folder inside it"),
        ("mtm", "shifted", lambda c: {"task_table": {**c["task_table"], "frame_prediction": 3}},
         "its 'task_table' .* is not the model's"),
        ("tokenizer", "half", lambda c: {"dtype": "bfloat16"}, "is torch.float32, but config.json says bfloat16"),
    ]:
        with pytest.raises(UserError, match=says):
            from_pretrained(edited(kind, name, change))

    out = tmp_path / "out"
    for args, message in (
            (["--format", "ckpt", "--dtype", "bfloat16"], "apply to --format safetensors only"),
            (["--format", "safetensors", "--results", f"[{tmp_path / 'none.json'}]"], "--results .*none.json: file not found"),
            (["--format", "safetensors", "--output", folders["tokenizer"]], "exists; pass --overwrite true")):
        code, err = run_cli(["export", "--ckpt_path", tiny_models.tokenizer_ckpt, "--output", out, *args])
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and __import__("re").search(message, err[0]), err
    code, err = run_cli(["generate", "--task", "frame_prediction", "--input", tmp_path / "x.mp4", "--ckpt_path", cut])
    assert code == 2 and len(err) == 1 and "holds a tokenizer, not an MTM" in err[0], err
    cut_mtm = broken("mtm", "cut_mtm")
    (cut_mtm / "tokenizer" / "model.safetensors").write_bytes(data[:100])
    code, err = run_cli(["generate", "--task", "frame_prediction", "--input", tmp_path / "x.mp4", "--ckpt_path", cut_mtm])
    assert code == 2 and len(err) == 1 and "not a readable safetensors file" in err[0], err


def test_hub_without_the_package_or_the_network_is_one_line(monkeypatch, tmp_path, folders):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as when it is not installed
    with pytest.raises(UserError, match=r'needs the huggingface_hub package: pip install "magvit-pl\[hub\]"'):
        from_pretrained("someone/some-model")
    from magvit_pl.hub import push_to_hub

    with pytest.raises(UserError, match="needs the huggingface_hub package"):
        push_to_hub(folders["tokenizer"], "someone/some-model")
    monkeypatch.undo()

    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has been disabled.")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"cannot fetch 'someone/some-model' from the Hugging Face Hub \(LocalEntryNotFoundError"):
        from_pretrained("hf://someone/some-model")

    def snapshot(repo_id, **kwargs):  # what the Hub would hand back: the folder's files, and only those asked for
        local = tmp_path / "snapshot"
        shutil.copytree(folders["tokenizer"], local)
        assert "model.safetensors" in kwargs["allow_patterns"] and not any(p.endswith((".bin", ".ckpt", ".pt")) for p in kwargs["allow_patterns"])
        return str(local)

    monkeypatch.setattr(hub, "snapshot_download", snapshot)
    assert from_pretrained("someone/some-model").codebook_size == 64
