"""CUDA paths (issue 18), skipped without a GPU: the bf16 quantizer path, the attention backends' equality and a
checkpoint written on the GPU read on the CPU. Plus a CPU test of ``benchmarks/gpu_check.py --dry-run``."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magvit_pl.models.attention import BACKENDS, attention, xformers_unavailable
from magvit_pl.models.quantizers import LookupFreeQuantizer
from magvit_pl.models.quantizers.vq import VectorQuantizer

REPO = Path(__file__).resolve().parents[2]
# bf16 keeps 8 bits of mantissa: a latent rounded to bf16 may cross to a neighbouring code only when it lies
# within ~2^-8 of the boundary; on N(0, 1) latents that is well under these fractions of the tokens
CODE_AGREEMENT = {"lfq": 0.99, "vq": 0.98}


def quantizer(kind: str):
    torch.manual_seed(0)
    return LookupFreeQuantizer(dim=10) if kind == "lfq" else VectorQuantizer(codebook_size=1024, embedding_dim=16)


def bf16_codes(kind: str, device: str) -> tuple[float, bool, bool]:
    """(fraction of codes equal to fp32's for bf16-rounded input, finite bf16 outputs, exact codes for fp32 input
    under autocast) of a seeded quantizer on a seeded (4, D, 2, 8, 8) latent."""
    q = quantizer(kind).to(device).train()
    dim = 10 if kind == "lfq" else 16
    z = torch.randn(4, dim, 2, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    ref = q(z, step=0)
    with torch.autocast(device, dtype=torch.bfloat16):
        same_input = q(z, step=0)
        rounded = q(z.bfloat16(), step=0)
    finite = all(bool(torch.isfinite(t).all()) for t in (rounded.quantized, rounded.loss, same_input.quantized, same_input.loss))
    agree = float((rounded.indices == ref.indices).float().mean())
    return agree, finite, bool(torch.equal(same_input.indices, ref.indices))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["lfq", "vq"])
def test_quantizer_bf16_autocast_gives_finite_outputs_and_fp32_codes(kind):
    agree, finite, exact = bf16_codes(kind, "cuda")
    assert finite
    assert exact  # the quantizer runs in fp32 inside autocast: fp32 input gives exactly fp32's codes
    assert agree >= CODE_AGREEMENT[kind]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 5e-2)])
def test_attention_backends_agree_on_cuda(dtype, tol):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 77, 64, generator=g).cuda() for _ in range(3))
    backends = [b for b in BACKENDS if b != "xformers" or xformers_unavailable("cuda", dtype) is None]
    for causal in (False, True):
        ref = attention(q, k, v, "math", causal=causal)
        for backend in backends:
            out = attention(q.to(dtype), k.to(dtype), v.to(dtype), backend, causal=causal).float()
            assert (out - ref).abs().max() <= tol, (backend, causal)


def _written_during_fit_then_loaded(tmp_path, accelerator: str) -> None:
    """Fit 2 steps on ``accelerator``; ModelCheckpoint saves while the weights are still on that device (after
    fit Lightning moves the module back to the CPU); the checked loader reads the file onto the CPU."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from magvit_pl.lit.tokenizer import TokenizerModule
    from magvit_pl.models.tokenizer import VQTokenizer
    from magvit_pl.run.checkpoint import TOKENIZER_PREFIX, load_tokenizer

    torch.manual_seed(0)
    tok = VQTokenizer(base_channels=8, channel_multipliers=(1, 2), embedding_dim=8, quantizer=VectorQuantizer(16, 8))
    module = TokenizerModule(tok, None, warmup_steps=1, val_fvd=False)
    g = torch.Generator().manual_seed(0)
    clips = [{"video": torch.rand(3, 4, 16, 16, generator=g) * 2 - 1} for _ in range(4)]
    saver = ModelCheckpoint(dirpath=tmp_path, filename="written", every_n_train_steps=2, save_top_k=-1)
    trainer = Trainer(accelerator=accelerator, devices=1, max_steps=2, logger=False, callbacks=[saver],
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(clips, batch_size=2))
    path = tmp_path / "written.ckpt"
    raw = torch.load(path, weights_only=True)  # no map_location: each tensor comes back where it was saved
    ema = {k.removeprefix(TOKENIZER_PREFIX): v for k, v in raw["state_dict"].items() if k.startswith(TOKENIZER_PREFIX)}
    assert ema and all(v.device.type == accelerator for v in ema.values())
    loaded = load_tokenizer(path)  # weights_only, checked config, onto the CPU
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for name, p in loaded.state_dict().items():
        torch.testing.assert_close(p, ema[name].cpu(), rtol=0, atol=0, msg=name)
    video = torch.stack([c["video"] for c in clips])
    assert torch.equal(loaded.encode(video), module.ema_tokenizer.cpu().encode(video))


@pytest.mark.cuda
def test_checkpoint_written_on_gpu_loads_on_cpu_through_the_checked_loader(tmp_path):
    _written_during_fit_then_loaded(tmp_path, "cuda")


DRY_PATHS = ["mtm_B_deepspeed_zero2", "mtm_B_fsdp", "attention_sdpa", "attention_xformers", "attention_math",
             "tokenizer_compile_off", "tokenizer_compile_on"]


def test_gpu_check_dry_run_plans_every_path(tmp_path):
    """The dry run on a CPU lists each asked path as planned (config resolved, FLOPs of a tiny step counted) or
    missing an optional package; the JSON on stdout is the one written to --output. A subset keeps it fast: one
    Trainer fit (FSDP's, from the shipped YAML) stands for the other fits, which build the same modules; FVD's I3D
    alone takes ~20 s on this CPU."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--paths", ",".join(DRY_PATHS),
                           "--output", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    assert result["dry_run"] is True
    rows = {r["path"]: r for r in result["paths"]}
    assert list(rows) == DRY_PATHS
    for name, row in rows.items():
        assert row["status"] == "planned" or row["status"].startswith("missing: "), (name, row)
        if row["status"] == "planned":
            assert row["flops_per_step"] > 0, name
    deps = {"mtm_B_deepspeed_zero2": "deepspeed", "attention_xformers": "xformers", "tokenizer_compile_on": "triton"}
    for name, pkg in deps.items():
        assert (rows[name]["status"] == f"missing: {pkg}") == (importlib.util.find_spec(pkg) is None), name
    assert rows["mtm_B_fsdp"]["strategy"].startswith("FSDPStrategy(")  # built from configs/hardware/fsdp.yaml
    assert rows["attention_sdpa"]["max_abs_diff_fp32"] <= 1e-3


def test_gpu_check_rejects_an_unknown_path(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # where the script finds its `timing` helper
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--paths", "attention_flash"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "attention_flash" in err and "attention_sdpa" in err
