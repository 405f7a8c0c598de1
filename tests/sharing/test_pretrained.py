"""Model folders: a tiny trained tokenizer and MTM → ``export --format safetensors`` → ``from_pretrained`` gives the
same ``encode`` and the same logits, bit for bit; a folder is read without pickles; a crafted ``config.json`` that
names anything but an allow-listed model class is one ``error:`` line and nothing it names is imported or run."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

from magvit_pl.run.checkpoint import load_tokenizer
from magvit_pl.run.errors import UserError
from magvit_pl.lit.mtm import MTMModule
from magvit_pl.pretrained import from_pretrained, save_pretrained


def export(run_cli, ckpt: Path, out: Path, *extra: str) -> Path:
    code, err = run_cli(["export", "--ckpt_path", ckpt, "--output", out, "--format", "safetensors", *extra])
    assert code == 0, err
    return out


def test_tokenizer_round_trip_encodes_and_decodes_bit_identically(tiny_models, run_cli, video_batch, tmp_path):
    folder = export(run_cli, tiny_models.tokenizer_ckpt, tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    tok, ref = from_pretrained(folder), load_tokenizer(tiny_models.tokenizer_ckpt)
    video = video_batch["video"]
    tokens = tok.encode(video)
    assert torch.equal(tokens, ref.encode(video)) and tokens.shape == (2, 4, 8, 8)
    assert torch.equal(tok.decode(tokens), ref.decode(tokens))
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "tokenizer" and config["dtype"] == "float32" and config["downsample"] == [2, 4, 4]
    assert config["clip"] == {"num_frames": 8, "resolution": 32} and config["data"]["init_args"]["data_dir"] == str(tiny_models.data)

    # bf16 on request: half the weight bytes, loads as fp32, equal to the fp32 weights rounded to bf16
    half = export(run_cli, tiny_models.tokenizer_ckpt, tmp_path / "tok16", "--dtype", "bfloat16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (folder / "model.safetensors").stat().st_size
    tok16 = from_pretrained(half)
    for (name, p16), p32 in zip(tok16.state_dict().items(), ref.state_dict().values()):
        assert p16.dtype == p32.dtype and torch.equal(p16, p32.bfloat16().to(p32.dtype) if p32.is_floating_point() else p32), name


def test_mtm_round_trip_gives_identical_logits_and_samples(tiny_models, folders, video_batch, tmp_path):
    folder = folders["mtm"]
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model, ref = from_pretrained(folder), MTMModule.from_checkpoint(str(tiny_models.mtm_ckpt))
    ids = torch.randint(0, ref.vocab.size, (2, ref.vocab.prefix_len + 256), generator=torch.Generator().manual_seed(0))
    logits = model.transformer(ids)
    assert torch.equal(logits, ref.transformer(ids)) and logits.shape == (2, ref.vocab.prefix_len + 256, 64)
    assert torch.equal(model.generate(video_batch, "frame_prediction", seed=3).tokens,
                       ref.generate(video_batch, "frame_prediction", seed=3).tokens)
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab"] == ref.vocab.to_dict() and config["token_grid"] == [4, 8, 8]
    assert config["task_table"] == {name: ref.vocab.task_id(name) for name in ref.task_names}
    assert config["module"]["tokenizer_ckpt"] == "tokenizer" and config["tokenizer"] == "tokenizer"

    # the Python API: save_pretrained of the loaded model writes a folder that loads to the same logits again
    again = save_pretrained(model, tmp_path / "again")
    assert torch.equal(from_pretrained(again).transformer(ids), logits)
    with pytest.raises(UserError, match="exists; pass --overwrite true"):
        save_pretrained(model, again)


def test_loading_a_folder_never_unpickles(folders, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on the safetensors path")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model = from_pretrained(folders["mtm"])
    assert model.transformer is not None and from_pretrained(folders["tokenizer"]).codebook_size == 64


PAYLOAD = "h7_payload_module"


@pytest.mark.parametrize("where", ["model", "quantizer", "data", "module", "mtm_module", "mtm_tokenizer"])
def test_a_config_naming_another_callable_is_refused_and_nothing_runs(where, folders, tmp_path, monkeypatch, run_cli):
    import shutil

    marker = tmp_path / "ran"
    (tmp_path / f"{PAYLOAD}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Payload:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kind = "mtm" if where.startswith("mtm") else "tokenizer"
    folder = tmp_path / "crafted"
    shutil.copytree(folders[kind], folder)
    path = folder / ("tokenizer/config.json" if where == "mtm_tokenizer" else "config.json")
    config = json.loads(path.read_text())
    evil = {"class_path": f"{PAYLOAD}.Payload", "init_args": {}}
    if where in ("model", "mtm_tokenizer"):
        config["model"] = evil
    elif where == "quantizer":
        config["model"]["init_args"]["quantizer"] = evil
    elif where == "data":
        config["data"] = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    elif where == "module":
        config["module"] = {"_class_path": f"{PAYLOAD}.Payload"}
    else:
        config["module"]["transformer"] = evil
    path.write_text(json.dumps(config))

    with pytest.raises(UserError, match="does not build from a file|must name the data module"):
        from_pretrained(folder)
    if kind == "mtm":
        command = ["generate", "--task", "class_generation", "--class_id", "1", "--output", tmp_path / "x.mp4"]
    else:
        from magvit_pl.data import write_video

        write_video(tmp_path / "in.mp4", torch.zeros(8, 32, 32, 3, dtype=torch.uint8).numpy(), fps=8)
        command = ["reconstruct", "--input", tmp_path / "in.mp4", "--output", tmp_path / "x.mp4"]
    code, err = run_cli([*command, "--ckpt_path", folder])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert not marker.exists() and PAYLOAD not in sys.modules
