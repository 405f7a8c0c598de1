"""MTMModule: COMMIT training on a tiny tokenizer through the CLI, then `test --task` and `generate`."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from magvit_pl.run.checkpoint import load_checkpoint
from magvit_pl.run.cli import main
from magvit_pl.run.errors import UserError
from magvit_pl.lit.mtm import MTMModule
from magvit_pl.lit.mtm_options import upgrade_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mtm_run(fit_tiny_mtm, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("mtm_runs")
    fit_tiny_mtm(runs)
    return runs


def test_checkpoint_records_task_table_and_is_self_contained(mtm_run):
    ckpt = load_checkpoint(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt")
    meta = ckpt["magvit"]
    table = meta["task_table"]
    assert len(table) == 10 and len(set(table.values())) == 10  # every task its own token
    vocab = meta["vocab"]
    assert vocab["codebook_size"] == 64 and vocab["num_classes"] == 8
    # task tokens follow codes, classes, UNCOND and MASK
    assert min(table.values()) == 64 + 8 + 2
    assert ckpt["hyper_parameters"]["tasks"]["names"] == vocab["task_names"]
    assert any(k.startswith("tokenizer.") for k in ckpt["state_dict"])
    assert meta["token_grid"] == [4, 8, 8]
    media = [p.name for p in (mtm_run / "mtm" / "latest" / "media").iterdir()]
    assert any(n.startswith("samples_outpainting_central") and n.endswith(".mp4") for n in media)


@pytest.mark.parametrize("asked", ["sdpa", "xformers", "math"])
def test_the_run_log_says_which_attention_backend_ran(mtm_run, caplog, asked):
    model = MTMModule.from_checkpoint(str(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt"))
    model.transformer_config = dataclasses.replace(model.transformer_config, attention_backend=asked)
    with caplog.at_level("INFO"):
        model.on_fit_start()
    ran = "sdpa" if asked == "xformers" else asked  # xformers needs CUDA: the CPU falls back to sdpa
    assert f"attention backend: {ran} on cpu (asked for {asked})" in caplog.text


def test_test_task_family_prints_table_and_writes_results(mtm_run, capsys):
    main(["test", "--task", "outpainting", "--runs_root", str(mtm_run), "--trainer.limit_test_batches", "1",
          "--trainer.enable_progress_bar", "false"])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    out = capsys.readouterr().out
    assert "outpainting_central" in out and "mean" in out
    results_files = sorted((mtm_run / "mtm").glob("*-test/results.json"))
    assert results_files
    res = json.loads(results_files[-1].read_text())
    assert set(res["results"]) == {"outpainting_central", "outpainting_dynamic", "outpainting_horizontal", "outpainting_vertical"}
    for values in res["results"].values():
        assert 0.0 < values["psnr_given"] < 200.0
        assert 0.0 <= values["cond_token_agreement"] <= 1.0
    assert res["protocol"]["sample_steps"] == 4 and res["protocol"]["keep_condition"] is True  # configs/mtm.yaml
    for values in res["results"].values():  # the condition tokens are held: every one survives decoding
        assert values["cond_token_agreement"] == 1.0


def test_generate_is_deterministic_and_checks_its_inputs(mtm_run, tmp_path):
    from magvit_pl.data.video_io import read_video, write_video
    from magvit_pl.run.generate import generate

    ckpt = str(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt")
    clip = tmp_path / "in.mp4"
    frames = (torch.rand(10, 40, 48, 3) * 255).to(torch.uint8).numpy()
    write_video(clip, frames, fps=8)
    a = generate("frame_prediction", input=str(clip), output=str(tmp_path / "a.mp4"), ckpt_path=ckpt, seed=3, steps=4)
    b = generate("frame_prediction", input=str(clip), output=str(tmp_path / "b.mp4"), ckpt_path=ckpt, seed=3, steps=4)
    va, vb = read_video(a), read_video(b)
    assert va.shape == (8, 32, 32, 3)
    assert (va == vb).all()
    free = read_video(generate("frame_prediction", input=str(clip), output=str(tmp_path / "k.mp4"), ckpt_path=ckpt, seed=3, steps=4,
                               keep_condition=False))
    assert free.shape == va.shape and (free != va).any()  # the condition tokens re-predicted (the model holds them): another sample
    gif = generate("class_generation", class_id=2, output=str(tmp_path / "c.gif"), ckpt_path=ckpt, steps=4)
    assert read_video(gif).shape[0] == 8
    with pytest.raises(UserError, match="--class_id"):
        generate("class_generation", output=str(tmp_path / "d.mp4"), ckpt_path=ckpt)
    with pytest.raises(UserError, match="needs 8"):
        short = tmp_path / "short.mp4"
        write_video(short, frames[:3], fps=8)
        generate("frame_prediction", input=str(short), output=str(tmp_path / "e.mp4"), ckpt_path=ckpt)


def test_keep_condition_holds_the_condition_tokens(mtm_run):
    """sampling.keep_condition: the sampled tokens equal z̃ on every condition position (COMMIT decoding may
    change them), and the setting is what `generate --keep_condition` and the benchmark switch."""
    model = MTMModule.from_checkpoint(str(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt"))
    video = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outs = {}
    for keep in (False, True):
        model.sampling_config = dataclasses.replace(model.sampling_config, keep_condition=keep)
        outs[keep] = model.generate({"video": video}, "outpainting_central", seed=1, steps=3)
    kept, free = outs[True], outs[False]
    cond = kept.inputs.cond_mask.reshape(2, -1)
    z_cond = kept.inputs.z_cond.reshape(2, -1)
    assert cond.any() and (~cond).any()
    assert torch.equal(kept.tokens.reshape(2, -1)[cond], z_cond[cond])
    assert not torch.equal(free.tokens.reshape(2, -1)[cond], z_cond[cond])  # the untrained model re-predicts some
    assert torch.equal(kept.inputs.z_cond, free.inputs.z_cond)


def test_mismatched_tokenizer_is_named(mtm_run):
    model = MTMModule.from_checkpoint(str(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt"))
    ckpt = load_checkpoint(mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt")
    ckpt["magvit"]["vocab"]["codebook_size"] = 1024
    with pytest.raises(UserError, match="codebook size 64 .* 1024"):
        model.on_load_checkpoint(ckpt)
    ckpt["magvit"]["vocab"]["codebook_size"] = 64
    ckpt["magvit"]["token_grid"] = [4, 16, 16]
    with pytest.raises(UserError, match=r"\(4, 8, 8\).*\(4, 16, 16\)"):
        model.on_load_checkpoint(ckpt)


def test_a_checkpoint_of_the_old_flat_layout_still_loads(mtm_run, tmp_path):
    """Written before the options were grouped (and while the tokenizer carried its checkpointing flag):
    from_checkpoint maps it onto the groups and samples exactly what the grouped checkpoint samples."""
    path = mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    flat = {k: v for k, v in hp.items() if k not in ("transformer", "commit", "sampling", "optim", "tasks", "evaluation")}
    for group in ("transformer", "commit", "optim"):
        flat.update({k: v for k, v in hp[group].items() if k not in ("layer_norm_eps", "lr_schedule", "position_embedding")})
    s = hp["sampling"]
    flat.update(sample_steps=s["steps"], choice_temperature=s["choice_temperature"], sample_temperature=s["temperature"],
                top_k=s["top_k"], guidance_scale=s["guidance_scale"], tasks=hp["tasks"]["names"],
                num_cond_frames=hp["tasks"]["num_cond_frames"])
    ckpt["hyper_parameters"] = flat
    ckpt["magvit"]["tokenizer_config"]["init_args"]["activation_checkpointing"] = False
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    new_model, old_model = MTMModule.from_checkpoint(str(path)), MTMModule.from_checkpoint(str(old))
    # the flat layout always had a task token (here both have one: 10 tasks) and never held the condition tokens
    sampling = new_model.hparams["sampling"]
    sampling = dataclasses.replace(sampling, keep_condition=False) if dataclasses.is_dataclass(sampling) else {**sampling, "keep_condition": False}
    assert dict(old_model.hparams) == {**dict(new_model.hparams), "tasks": {**new_model.hparams["tasks"], "task_token": "always"},
                                       "sampling": sampling}
    new_model.sampling_config = dataclasses.replace(new_model.sampling_config, keep_condition=False)
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(2, 3, 8, 32, 32, generator=g) * 2 - 1, "label": torch.tensor([1, 2])}
    for task in ("frame_prediction", "class_generation"):
        a, b = new_model.generate(batch, task, seed=3, steps=2), old_model.generate(batch, task, seed=3, steps=2)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.generated, b.generated)
    # test/fit read the options through the CLI: refused in one line naming the upgrade, which then works
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(mtm_run / "mtm" / "latest" / "config.yaml"), "--ckpt_path", str(old),
              "--runs_root", str(tmp_path / "runs")])
    assert exit_info.value.code == 2 and not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="old flat layout"):
        new_model.on_load_checkpoint(load_checkpoint(old))
    upgrade_checkpoint(str(old), str(tmp_path / "upgraded.ckpt"))
    upgraded = load_checkpoint(tmp_path / "upgraded.ckpt")
    new_only = {"transformer": ("layer_norm_eps", "position_embedding"), "optim": ("lr_schedule",),  # fields the flat layout did not have
                "tasks": ("latent_rule", "task_token", "shared_task_tokens", "weights", "schedule"),
                "sampling": ("keep_condition",)}
    assert upgraded["hyper_parameters"] == {k: {f: x for f, x in v.items() if f not in new_only[k]} if k in new_only else
                                            ({} if k == "evaluation" else v) for k, v in hp.items()}
    assert upgraded["magvit"]["tokenizer_config"] == load_checkpoint(path)["magvit"]["tokenizer_config"]


def test_old_flat_layout_through_the_cli_is_one_line(mtm_run, tmp_path, capsys):
    path = mtm_run / "mtm" / "latest" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    ckpt["hyper_parameters"] = {**{k: v for k, v in ckpt["hyper_parameters"].items() if k != "tasks"},
                                "tasks": ckpt["hyper_parameters"]["tasks"]["names"], "lr": 0.1}
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(SystemExit):
        main(["test", "--config", str(mtm_run / "mtm" / "latest" / "config.yaml"), "--ckpt_path", str(tmp_path / "old.ckpt"),
              "--runs_root", str(tmp_path / "runs")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "old flat layout" in err[0] and "upgrade_checkpoint(" in err[0]
