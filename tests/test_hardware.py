"""magvit_pl.run.preflight: one-line errors for impossible hardware choices, in-place fixes for the safe ones."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace

from magvit_pl.run import preflight as hardware
from magvit_pl.run.errors import UserError
from magvit_pl.run.preflight import check_trainer_config
from magvit_pl.lit.tokenizer import TokenizerModule

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = "magvit_pl.lit.tokenizer.TokenizerModule"
MTM = "magvit_pl.lit.mtm.MTMModule"


def trainer_of(*configs: str) -> Namespace:
    """The merged ``trainer:`` section of shipped YAMLs, as the Namespace LightningCLI would hand over."""
    merged: dict = {}
    for name in configs:
        for key, value in yaml.safe_load((REPO / "configs" / name).read_text())["trainer"].items():
            merged[key] = value
    strategy = merged.get("strategy")
    if isinstance(strategy, dict):
        merged["strategy"] = Namespace(class_path=strategy["class_path"], init_args=Namespace(**strategy.get("init_args", {})))
    return Namespace(**merged)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


@pytest.mark.parametrize("config", ["hardware/deepspeed_zero2.yaml", "hardware/deepspeed_zero3_offload.yaml"])
def test_deepspeed_yaml_without_cuda_is_one_line_error_naming_cpu_configs(no_cuda, config):
    cfg = trainer_of("mtm.yaml", config)
    with pytest.raises(UserError) as err:
        check_trainer_config(cfg, MTM)
    msg = str(err.value)
    assert "\n" not in msg
    assert "lightning.pytorch.strategies.DeepSpeedStrategy needs CUDA GPUs" in msg
    assert "configs/hardware/cpu.yaml" in msg and "cpu_ddp.yaml" in msg


@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed_stage_2", "deepspeed_stage_3_offload"])
def test_deepspeed_string_on_cpu_accelerator_is_refused_even_with_cuda(cuda, strategy):
    with pytest.raises(UserError, match=f"strategy {strategy} needs CUDA GPUs .* but accelerator is cpu"):
        check_trainer_config({"accelerator": "cpu", "strategy": strategy, "precision": "32-true"}, MTM)


def test_deepspeed_without_the_package_names_the_install_command(cuda, monkeypatch):
    monkeypatch.setattr(hardware, "_deepspeed_installed", lambda: False)
    with pytest.raises(UserError, match=r"deepspeed package, which is not installed: pip install 'magvit-pl\[deepspeed\]'"):
        check_trainer_config(trainer_of("mtm.yaml", "hardware/deepspeed_zero2.yaml"), MTM)


def test_deepspeed_with_cuda_and_package_accepts_the_mtm_unchanged(cuda, monkeypatch):
    monkeypatch.setattr(hardware, "_deepspeed_installed", lambda: True)
    cfg = trainer_of("mtm.yaml", "hardware/deepspeed_zero3.yaml")
    check_trainer_config(cfg, MTM)
    assert cfg.precision == "bf16-mixed"
    assert cfg.strategy.init_args.stage == 3


@pytest.mark.parametrize("cuda_present", [True, False])
def test_deepspeed_refuses_to_train_the_two_optimizer_tokenizer(monkeypatch, cuda_present):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_present)
    monkeypatch.setattr(hardware, "_deepspeed_installed", lambda: True)
    cfg = trainer_of("tokenizer.yaml", "hardware/deepspeed_zero2.yaml")
    with pytest.raises(UserError) as err:
        check_trainer_config(cfg, TOKENIZER)
    msg = str(err.value)
    assert "one optimizer" in msg and "two (generator + discriminator" in msg and "gpu_ddp.yaml" in msg


def test_deepspeed_may_evaluate_the_tokenizer(cuda, monkeypatch):
    """Evaluation builds no optimizer, so DeepSpeed's one-optimizer limit does not apply."""
    monkeypatch.setattr(hardware, "_deepspeed_installed", lambda: True)
    cfg = trainer_of("tokenizer.yaml", "hardware/deepspeed_zero2.yaml")
    check_trainer_config(cfg, TOKENIZER, subcommand="validate")
    assert cfg.strategy.init_args.stage == 2


class SubTokenizer(TokenizerModule):
    """A user's subclass: still two optimizers."""


def test_a_tokenizer_subclass_is_recognised():
    assert hardware._is_tokenizer(TOKENIZER) and not hardware._is_tokenizer(MTM)
    assert hardware._is_tokenizer(f"{__name__}.SubTokenizer")
    assert hardware._is_tokenizer("no.such.module.TokenizerModule")  # unimportable: judged by name
    assert not hardware._is_tokenizer(None)


def test_fsdp_without_cuda_is_refused(no_cuda):
    with pytest.raises(UserError, match="FSDPStrategy needs CUDA GPUs .* no CUDA GPU is visible"):
        check_trainer_config(trainer_of("mtm.yaml", "hardware/fsdp.yaml"), MTM)


@pytest.mark.parametrize(
    "accelerator, cuda_present, precision, expected",
    [
        ("cpu", False, "bf16-mixed", "32-true"),
        ("cpu", True, "16-mixed", "32-true"),
        ("cpu", False, 16, "32-true"),
        ("cpu", False, "bf16-true", "32-true"),
        ("auto", False, "bf16-mixed", "32-true"),
        ("auto", True, "bf16-mixed", "bf16-mixed"),
        ("gpu", True, "bf16-mixed", "bf16-mixed"),
        ("cpu", False, "64-true", "64-true"),
        ("cpu", False, "32-true", "32-true"),
    ],
)
def test_half_precision_on_cpu_is_rewritten_to_fp32_with_a_warning(monkeypatch, caplog, accelerator, cuda_present, precision, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_present)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = Namespace(accelerator=accelerator, devices=1, strategy="auto", precision=precision)
    with caplog.at_level(logging.WARNING, logger="magvit_pl.run.preflight"):
        check_trainer_config(cfg, MTM)
    assert cfg.precision == expected
    warned = [r.getMessage() for r in caplog.records if r.name == "magvit_pl.run.preflight"]
    if expected != precision:
        assert warned == [f"precision={precision} on CPU runs ~500x slower than fp32 here; using precision=32-true (set by magvit_pl.run.preflight)"]
    else:
        assert warned == []


def test_the_precision_warning_is_said_once_per_node(no_cuda, monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child
    cfg = {"accelerator": "cpu", "precision": "bf16-mixed"}
    with caplog.at_level(logging.WARNING, logger="magvit_pl.run.preflight"):
        check_trainer_config(cfg, MTM)
    assert cfg["precision"] == "32-true" and not caplog.records


@pytest.mark.parametrize(
    "strategy, devices, expected",
    [
        ("ddp", 2, "ddp_find_unused_parameters_true"),
        ("ddp_spawn", 2, "ddp_spawn_find_unused_parameters_true"),
        ("auto", 2, "ddp_find_unused_parameters_true"),
        ("auto", "0,1", "ddp_find_unused_parameters_true"),
        ("auto", 1, "auto"),
        ("ddp_find_unused_parameters_true", 2, "ddp_find_unused_parameters_true"),
        ("single_device", 1, "single_device"),
    ],
)
def test_tokenizer_ddp_gets_find_unused_parameters(no_cuda, strategy, devices, expected):
    cfg = Namespace(accelerator="cpu", devices=devices, strategy=strategy, precision="32-true")
    check_trainer_config(cfg, TOKENIZER)
    assert cfg.strategy == expected
    mtm = Namespace(accelerator="cpu", devices=devices, strategy=strategy, precision="32-true")
    check_trainer_config(mtm, MTM)
    assert mtm.strategy == strategy  # the MTM has one backward per step: plain DDP (cheaper)


def test_tokenizer_ddp_class_path_gets_find_unused_parameters(no_cuda):
    cfg = Namespace(accelerator="cpu", devices=2, precision="32-true", strategy=Namespace(class_path="lightning.pytorch.strategies.DDPStrategy"))
    check_trainer_config(cfg, TOKENIZER)
    assert cfg.strategy.init_args.find_unused_parameters is True
    multinode = trainer_of("tokenizer.yaml", "hardware/multinode_ddp.yaml")
    assert hardware._process_count(multinode, "gpu") == 32


# ------------------------------------------------------------- through the CLI (MagvitCLI.before_instantiate_classes)
def test_cli_refuses_deepspeed_for_the_tokenizer_in_one_line(tmp_path, capsys, data_args):
    from magvit_pl.run.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tokenizer.yaml", "--config", "configs/hardware/deepspeed_zero2.yaml",
              "--runs_root", str(tmp_path), *data_args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: strategy lightning.pytorch.strategies.DeepSpeedStrategy cannot train") and "\n" not in err
    assert not (tmp_path / "tokenizer").exists()  # refused before a run directory was made


def test_cli_runs_bf16_on_cpu_as_fp32_and_records_it(tmp_path, monkeypatch, data_args):
    from magvit_pl.run.lightning_cli import run_lightning
    from magvit_pl.run.run_dir import RUN_DIR_ENV

    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    cli = run_lightning(["fit", "--config", "configs/tokenizer.yaml", "--config", "configs/hardware/cpu.yaml", "--runs_root", str(tmp_path),
                "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                "--trainer.enable_progress_bar", "false",
                "--model.init_args.tokenizer.init_args.base_channels", "8", "--model.init_args.discriminator.init_args.base_channels", "4",
                *data_args])
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    assert cli.trainer.precision == "32-true" and cli.trainer.global_step == 1
    saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "32-true"


def test_multinode_fit_needs_a_shared_run_dir(tmp_path, capsys, monkeypatch, data_args):
    """Each node would stamp its own run folder: without --run_dir (or a SLURM job id) it is refused."""
    from magvit_pl.run.cli import main
    from magvit_pl.run.run_dir import RUN_DIR_ENV

    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tokenizer.yaml", "--trainer.num_nodes", "2", "--runs_root", str(tmp_path), *data_args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --trainer.num_nodes 2: pass --run_dir") and "\n" not in err
    assert not (tmp_path / "tokenizer").exists()
