"""`python cli.py export`: a checkpoint written under any strategy becomes one file that every inference path loads.

* Lightning files (single device / DDP): the tiny tokenizer and MTM trained through the CLI, for real.
* FSDP sharded folders: written from 2 gloo CPU processes by Lightning's own ``FSDPStrategy.save_checkpoint``
  (called on a stand-in strategy object) with the weights as DTensor shards along dim 0, as FSDP's sharded
  state dict cuts them. The FSDPStrategy itself cannot run here: torch's FSDP refuses a CPU-only machine
  ("FSDP needs a non-CPU accelerator device"), so only the tensors' sharding is emulated; the folder layout,
  the DCP save call and ``meta.pt`` are Lightning's.
* DeepSpeed folders: real ZeRO-2 and ZeRO-3 checkpoints from 2 CPU processes trained by Lightning's
  ``DeepSpeedStrategy`` (with its CUDA-only checks bypassed) on DeepSpeed's CPU accelerator; skipped
  when deepspeed is not installed. The first run on a machine compiles DeepSpeed's shm op (~1 min).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from magvit_pl.run.checkpoint import load_checkpoint, load_tokenizer
from magvit_pl.run.cli import main
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.export import export
from magvit_pl.lit.mtm import MTMModule

REPO = Path(__file__).resolve().parents[1]
DROPPED = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
SUBPROCESS_TIMEOUT_S = 240

FSDP_WRITER = r'''
"""Write an FSDP sharded checkpoint folder with Lightning's FSDPStrategy.save_checkpoint from 2 gloo CPU ranks."""
import os, socket, sys
import torch
import torch.distributed as dist


def worker(rank, src, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    shard = lambda t: distribute_tensor(t, mesh, [Shard(0)]) if t.ndim else t  # noqa: E731
    trainable = [k for k in ckpt["state_dict"] if k.startswith("transformer.")]
    # what FSDP.optim_state_dict gives under SHARDED_STATE_DICT: keyed by parameter name, moments sharded
    optim = {"state": {k: {"step": torch.tensor(6.0), "exp_avg": shard(torch.full_like(ckpt["state_dict"][k], 0.5)),
                           "exp_avg_sq": shard(torch.full_like(ckpt["state_dict"][k], 0.25))} for k in trainable},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.96), "weight_decay": 0.045, "params": trainable}]}
    checkpoint = {k: v for k, v in ckpt.items() if k != "optimizer_states"}
    checkpoint["state_dict"] = {k: shard(v) for k, v in ckpt["state_dict"].items()}
    checkpoint["optimizer_states"] = [optim]

    class Strategy:  # the attributes FSDPStrategy.save_checkpoint reads
        _state_dict_type = "sharded"
        global_rank = rank

        def broadcast(self, obj):
            return obj

    FSDPStrategy.save_checkpoint(Strategy(), checkpoint, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(worker, args=(sys.argv[1], sys.argv[2], port), nprocs=2, start_method="fork")
'''

DEEPSPEED_TRAINER = r'''
"""Train the tiny MTM 2 steps with Lightning's DeepSpeedStrategy on 2 CPU processes; save; dump gathered weights."""
import sys
import deepspeed
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from magvit_pl.lit.mtm import MTMModule

src, out, stage = sys.argv[1], sys.argv[2], int(sys.argv[3])


class CPUDeepSpeed(DeepSpeedStrategy):
    """Lightning allows DeepSpeed on CUDA only; DeepSpeed itself runs on its CPU accelerator over gloo."""

    def setup_environment(self):
        DDPStrategy.setup_environment(self)

    @property
    def root_device(self):  # DeepSpeed's engine wants a device index
        return torch.device("cpu", 0)

    def setup_distributed(self):  # without the CUDA device-index check
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


model = MTMModule.from_checkpoint(src).train()
g = torch.Generator().manual_seed(0)
data = [{"video": torch.rand(3, 8, 32, 32, generator=g) * 2 - 1, "label": torch.tensor(i % 8)} for i in range(8)]
trainer = Trainer(accelerator="cpu", devices=2, strategy=CPUDeepSpeed(stage=stage, process_group_backend="gloo"), max_steps=2,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=2))
trainer.save_checkpoint(out)
with deepspeed.zero.GatheredParameters(list(model.parameters())):  # ZeRO-3: every weight whole for a moment
    weights = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
if trainer.is_global_zero:
    torch.save(weights, out + ".gathered.pt")
'''


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def mtm_run(fit_tiny_mtm, tmp_path_factory) -> Path:
    """A 6-step tiny MTM trained through the CLI on the session's tiny tokenizer; returns its run dir."""
    return fit_tiny_mtm(tmp_path_factory.mktemp("export_mtm_runs"))


def run_script(tmp_path: Path, name: str, source: str, *args: str) -> str:
    """Run a helper script in its own process group (all of it killed on timeout); return its output."""
    script = tmp_path / name
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("MAGVIT_PL_RUN_DIR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{name} did not finish in {SUBPROCESS_TIMEOUT_S}s\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def sample_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"video": torch.rand(2, 3, 8, 32, 32, generator=g) * 2 - 1, "label": torch.tensor([1, 5])}


def generated_tokens(ckpt: Path, task: str = "frame_prediction") -> torch.Tensor:
    from magvit_pl.pretrained import load_mtm_any  # a checkpoint or a model folder

    return load_mtm_any(ckpt).generate(sample_batch(), task, seed=3, steps=4).tokens


def assert_inference_only(exported: dict, kind: str, label: str) -> None:
    assert not any(key in exported for key in DROPPED), sorted(exported)
    assert {"state_dict", "hyper_parameters", "magvit", "pytorch-lightning_version"} <= set(exported)
    assert exported["magvit"]["kind"] == kind and label in exported["magvit"]["exported_from"]
    floats = [v for v in exported["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)


def summary_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("exported ")]
    assert len(lines) == 1
    return lines[0]


# ------------------------------------------------------------------------------- (a) Lightning files
def test_tokenizer_file_export_is_inference_only_and_encodes_the_same(tokenizer_run, tmp_path, capsys):
    src = tokenizer_run / "checkpoints" / "last.ckpt"
    out = export(str(src), str(tmp_path / "tok.ckpt"))
    line = summary_line(capsys)
    source, exported = load_checkpoint(src), load_checkpoint(out)
    values = sum(v.numel() for v in source["state_dict"].values() if v.is_floating_point())
    size = out.stat().st_size / 1024
    assert re.fullmatch(rf"exported Lightning checkpoint file {src} -> {out}: tokenizer, {values / 1e6:.2f}M parameters in "
                        rf"{len(source['state_dict'])} tensors \(fp32\), ({size:.1f} KB|{size / 1024:.1f} MB)", line), line
    assert all(key in source for key in DROPPED)
    assert_inference_only(exported, "tokenizer", "Lightning checkpoint file")
    assert exported["hyper_parameters"] == source["hyper_parameters"]
    assert {k: v for k, v in exported["magvit"].items() if k != "exported_from"} == source["magvit"]
    assert exported["state_dict"].keys() == source["state_dict"].keys()
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in source["state_dict"].items())
    assert out.stat().st_size < src.stat().st_size  # the two Adam states are gone

    video = sample_batch()["video"]
    tokens = load_tokenizer(out).encode(video)
    assert torch.equal(tokens, load_tokenizer(src).encode(video))
    assert tokens.shape == (2, 4, 8, 8) and 0 <= int(tokens.min()) and int(tokens.max()) < 64


def test_mtm_file_export_serves_from_checkpoint_generate_and_test(mtm_run, tmp_path, capsys):
    src = mtm_run / "checkpoints" / "last.ckpt"
    out = mtm_run / "checkpoints" / "inference.ckpt"  # next to the run's config.yaml, as the README suggests
    export(str(src), str(out))
    assert "mtm" in summary_line(capsys)
    assert_inference_only(load_checkpoint(out), "mtm", "Lightning checkpoint file")
    assert torch.equal(generated_tokens(out), generated_tokens(src))

    video = tmp_path / "cls.gif"
    main(["generate", "--task", "class_generation", "--class_id", "2", "--output", str(video), "--ckpt_path", str(out), "--steps", "4"])
    assert video.is_file() and video.stat().st_size > 0

    main(["test", "--task", "outpainting_central", "--ckpt_path", str(out), "--runs_root", str(mtm_run.parent.parent),
          "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    os.environ.pop("MAGVIT_PL_RUN_DIR", None)
    results = json.loads(sorted(mtm_run.parent.glob("*-test/results.json"))[-1].read_text())
    values = results["results"]["outpainting_central"]
    assert 0.0 < values["psnr_given"] < 200.0 and 0.0 <= values["cond_token_agreement"] <= 1.0


# ----------------------------------------------------------------------------- (c) FSDP sharded folder
def test_fsdp_sharded_folder_is_consolidated_exactly(mtm_run, tmp_path, capsys):
    src = mtm_run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "fsdp" / "last.ckpt"
    run_script(tmp_path, "write_fsdp.py", FSDP_WRITER, str(src), str(folder))
    assert (folder / "meta.pt").is_file() and (folder / ".metadata").is_file()
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    with pytest.raises(UserError, match=r"is a folder .*python cli.py export --ckpt_path .* --output FILE"):
        MTMModule.from_checkpoint(str(folder))

    out = export(str(folder), str(tmp_path / "fsdp.ckpt"))
    assert "FSDP sharded checkpoint (2 shards)" in summary_line(capsys)
    source, exported = load_checkpoint(src), load_checkpoint(out)
    assert_inference_only(exported, "mtm", "FSDP sharded")
    assert exported["state_dict"].keys() == source["state_dict"].keys()
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in source["state_dict"].items())
    assert exported["hyper_parameters"] == source["hyper_parameters"] and exported["global_step"] == source["global_step"] == 6
    assert torch.equal(generated_tokens(out, "outpainting_central"), generated_tokens(src, "outpainting_central"))
    shared = export(str(folder), str(tmp_path / "fsdp_folder"), format="safetensors")  # the shareable model folder too
    assert "FSDP sharded checkpoint (2 shards)" in capsys.readouterr().out
    assert torch.equal(generated_tokens(shared, "outpainting_central"), generated_tokens(src, "outpainting_central"))

    (folder / "__1_0.distcp").unlink()  # a rank's shard lost
    with pytest.raises(UserError, match="reading its shards failed"):
        export(str(folder), str(tmp_path / "broken.ckpt"))
    assert not (tmp_path / "broken.ckpt").exists()


# ---------------------------------------------------------------------------------- (b) DeepSpeed folder
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_folder_is_consolidated_to_the_trained_fp32_weights(stage, mtm_run, tmp_path, capsys):
    pytest.importorskip("deepspeed")
    src = mtm_run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "ds" / "last.ckpt"
    run_script(tmp_path, "train_deepspeed.py", DEEPSPEED_TRAINER, str(src), str(folder), str(stage))
    assert (folder / "latest").read_text().strip() == "checkpoint"
    assert len(list((folder / "checkpoint").glob("*_optim_states.pt"))) == 2

    out = export(str(folder), str(tmp_path / "ds.ckpt"))
    assert f"DeepSpeed ZeRO-{stage} checkpoint (2 shards)" in summary_line(capsys)
    exported, source = load_checkpoint(out), load_checkpoint(src)
    assert_inference_only(exported, "mtm", f"ZeRO-{stage}")
    gathered = torch.load(str(folder) + ".gathered.pt", weights_only=True)
    assert exported["state_dict"].keys() == gathered.keys()
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in gathered.items())
    trained = [k for k in source["state_dict"] if k.startswith("transformer.") and not torch.equal(exported["state_dict"][k], source["state_dict"][k])]
    assert len(trained) > 10  # two optimizer steps moved the transformer ...
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in source["state_dict"].items() if k.startswith("tokenizer."))  # ... not the frozen tokenizer
    assert exported["global_step"] == 2 and exported["magvit"]["task_table"] == source["magvit"]["task_table"]
    # made from Python, not the CLI: the export adds the class path LightningCLI's `test --ckpt_path` needs
    assert exported["hyper_parameters"]["_class_path"] == "magvit_pl.lit.mtm.MTMModule"
    model = MTMModule.from_checkpoint(str(out))
    assert torch.equal(model.transformer.tok_emb.weight, gathered["transformer.tok_emb.weight"])

    if stage == 3:  # the whole evaluation path on the consolidated file, with the MTM run's config
        main(["test", "--task", "frame_prediction", "--ckpt_path", str(out), "--config", str(mtm_run / "config.yaml"),
              "--run_dir", str(tmp_path / "test_run"), "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)
        assert "frame_prediction" in json.loads((tmp_path / "test_run" / "results.json").read_text())["results"]

    rank1 = next((folder / "checkpoint").glob("*rank_1*_optim_states.pt"))
    torch.save({"optimizer_state_dict": Fraction(1, 3)}, rank1)  # DeepSpeed's reader unpickles anything; here it may not
    with pytest.raises(UserError, match=r"holds a fractions\.Fraction object, which magvit-pl does not allow"):
        export(str(folder), str(tmp_path / "broken.ckpt"))
    rank1.unlink()
    with pytest.raises(UserError, match="DeepSpeed could not consolidate it .*Expected 2 of"):
        export(str(folder), str(tmp_path / "broken.ckpt"))
    assert not (tmp_path / "broken.ckpt").exists()


def test_deepspeed_folder_without_deepspeed_names_the_install_command(tmp_path, monkeypatch):
    import magvit_pl.run.export as export_module

    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (folder / "checkpoint" / name).write_bytes(b"")
    monkeypatch.setattr(export_module, "_deepspeed_available", lambda: False)
    with pytest.raises(UserError, match=r'DeepSpeed checkpoint; consolidating it needs the deepspeed package: pip install "magvit-pl\[deepspeed\]"'):
        export(str(folder), str(tmp_path / "out.ckpt"))
    (folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(UserError, match=r"no \*_optim_states.pt in"):
        export(str(folder), str(tmp_path / "out.ckpt"))


# ------------------------------------------------------------------------------------------ mistakes
def test_wrong_inputs_and_outputs_are_one_line_errors(tokenizer_run, tmp_path):
    src = tokenizer_run / "checkpoints" / "last.ckpt"
    accepted = "expected a Lightning .ckpt file, a DeepSpeed checkpoint folder .* or an FSDP sharded checkpoint folder"
    with pytest.raises(MissingFileError, match=f"--ckpt_path {tmp_path}/nope.ckpt: not found; {accepted}"):
        export(str(tmp_path / "nope.ckpt"), str(tmp_path / "a.ckpt"))
    (tmp_path / "some_folder").mkdir()
    (tmp_path / "some_folder" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=f"some_folder: not a checkpoint this command knows; {accepted}"):
        export(str(tmp_path / "some_folder"), str(tmp_path / "a.ckpt"))
    with pytest.raises(UserError, match="notes.txt .*refusing to load it"):
        export(str(tmp_path / "some_folder" / "notes.txt"), str(tmp_path / "a.ckpt"))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(UserError, match="holds no Lightning 'state_dict'"):
        export(str(plain), str(tmp_path / "a.ckpt"))
    with pytest.raises(UserError, match="--tag x: only applies to a DeepSpeed checkpoint folder"):
        export(str(src), str(tmp_path / "a.ckpt"), tag="x")
    with pytest.raises(UserError, match="is a folder; give a file name"):
        export(str(src), str(tmp_path / "some_folder"))
    assert not (tmp_path / "a.ckpt").exists()

    existing = tmp_path / "existing.ckpt"
    existing.write_bytes(b"keep me")
    with pytest.raises(UserError, match="exists; pass --overwrite true to replace it"):
        export(str(src), str(existing))
    assert existing.read_bytes() == b"keep me"
    export(str(src), str(existing), overwrite=True)
    assert load_checkpoint(existing)["magvit"]["kind"] == "tokenizer"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_loading_a_folder_says_to_export_it_first(tmp_path):
    with pytest.raises(UserError, match=f"checkpoint {tmp_path} is a folder .*: python cli.py export --ckpt_path {tmp_path} --output FILE"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="python cli.py export"):
        load_tokenizer(tmp_path)


def test_cli_export_one_line_errors_and_success(tokenizer_run, tmp_path, capsys):
    # needs `export` registered in magvit_pl.run.cli.MODEL_FREE_COMMANDS
    for args, expected in [(["--ckpt_path", str(tmp_path / "missing"), "--output", str(tmp_path / "o.ckpt")], "missing: not found"),
                           (["--ckpt_path", str(tmp_path), "--output", str(tmp_path / "o.ckpt")], "not a checkpoint this command knows")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    out = tmp_path / "tok.ckpt"
    main(["export", "--ckpt_path", str(tokenizer_run / "checkpoints" / "last.ckpt"), "--output", str(out)])
    main(["export", "--ckpt_path", str(tokenizer_run / "checkpoints" / "last.ckpt"), "--output", str(out), "--overwrite", "true"])
    assert load_checkpoint(out)["magvit"]["kind"] == "tokenizer"
    assert capsys.readouterr().out.count("exported Lightning checkpoint file") == 2
