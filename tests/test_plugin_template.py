"""The plugin template in examples/task_plugin installs, is discovered, trains and is tested like a built-in."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MTM = ["--model.transformer.hidden_dim", "32", "--model.transformer.num_layers", "2", "--model.transformer.num_heads", "2",
            "--model.transformer.mlp_dim", "64", "--model.optim.warmup_steps", "1", "--model.sampling.steps", "4",
            "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """Install the template with pip into a private folder (the test environment itself is untouched)."""
    target = tmp_path_factory.mktemp("plugin_site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO / "examples" / "task_plugin")]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")
    subprocess.run(cmd, check=True, timeout=300)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env.pop("MAGVIT_PL_RUN_DIR", None)
    return env


def cli(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_plugin_is_listed_with_its_package(plugin_env):
    out = cli(plugin_env, "tasks").stdout
    assert "temporal_super_resolution" in out and "magvit-temporal-sr" in out
    assert "frame_prediction" in out  # built-ins still there


def test_plugin_condition_gives_every_other_frame():
    spec = importlib.util.spec_from_file_location("tsr", REPO / "examples" / "task_plugin" / "magvit_temporal_sr" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    video = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4).contiguous()
    cond = mod.TemporalSuperResolution().build_condition(video)
    given = cond.pixel_mask[0, 0, :, 0, 0]
    assert given.tolist() == [True, False] * 4
    # a linear ramp is reproduced exactly by linear blending between given frames (last frame repeats)
    assert torch.allclose(cond.video[:, :, :7], video[:, :, :7], atol=1e-6)
    assert torch.allclose(cond.video[:, :, 7], video[:, :, 6])


def test_plugin_trains_and_tests_like_a_builtin(plugin_env, tokenizer_run, data_args, tmp_path):
    runs = tmp_path / "runs"
    cli(plugin_env, "fit", "--config", str(REPO / "configs" / "mtm.yaml"), "--runs_root", str(runs),
        "--model.init_args.tokenizer_ckpt", str(tokenizer_run / "checkpoints" / "last.ckpt"),
        "--model.tasks.names", "[temporal_super_resolution, frame_prediction]",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        *TINY_MTM, *data_args)
    out = cli(plugin_env, "test", "--task", "temporal_super_resolution", "--runs_root", str(runs),
              "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false").stdout
    assert "temporal_super_resolution" in out
    res = json.loads(next((runs / "mtm").glob("*-test/results.json")).read_text())
    values = res["results"]["temporal_super_resolution"]
    assert {"psnr_given", "ssim_given", "psnr_generated"} <= set(values)
    assert all(0 < values[k] < 200 for k in ("psnr_given", "psnr_generated"))
