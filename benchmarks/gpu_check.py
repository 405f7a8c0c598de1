"""One prepared check of every CUDA path the README promises, for the first machine with a GPU (issue 18).

Paths (each in its own subprocess with its own time budget, so a failure or a hang loses only itself):

- ``matmul_bf16``: the reference, an 8192^3 bf16 matmul: what this device reaches on plain matrix work.
- ``tokenizer_B_bf16`` / ``tokenizer_B_bf16_ckpt``: ``TokenizerModule`` (3D-VQ B + 3D StyleGAN discriminator
  base 64, GAN and R1 every step, no perceptual loss) fitted through Lightning's Trainer in ``bf16-mixed`` on
  16x128x128 clips, activation checkpointing off / on.
- ``mtm_B_bf16`` / ``mtm_B_bf16_ckpt``: ``MTMModule`` (B transformer, the frozen B tokenizer encoding each batch,
  UCF-101's 101 classes, frame prediction + class generation) in ``bf16-mixed``, checkpointing off / on.
- ``mtm_B_deepspeed_zero2`` / ``mtm_B_fsdp``: the same MTM fit on ONE device with the strategy of the shipped
  ``configs/hardware/deepspeed_zero2.yaml`` / ``fsdp.yaml`` (built from those files; devices forced to 1).
- ``attention_sdpa`` / ``attention_xformers`` / ``attention_math``: forward + backward of
  :func:`magvit_pl.models.attention.attention` at the B transformer's shape (12 heads x 64, 1026 tokens) in
  bf16; equality with the fp32 ``math`` reference on the same inputs: max |diff| <= 1e-3 with fp32 inputs and
  <= 5e-2 with bf16 inputs (``ATTN_TOL``). FLOPs are counted on the ``math`` step's matmuls for all three.
- ``fvd_i3d``: ``FrechetVideoDistance`` (I3D) on the GPU, 32 + 32 clips of 16x128x128; skipped with the
  reason when the I3D weights are not in ``~/.cache/magvit_pl``.
- ``tokenizer_compile_off`` / ``tokenizer_compile_on``: one B tokenizer generator step (L2 + quantizer loss,
  backward, Adam) in bf16 autocast, eager vs ``torch.compile`` (compile time reported; the compiled
  reconstruction must match eager to 5e-2).

Per path: pass/fail (with the one-line error), throughput (clips/s or calls/s, median of the timed steps
after warm-up), achieved TFLOP/s (FLOPs of one step counted with ``torch.utils.flop_counter.FlopCounterMode``,
on the last step of a fit, so a counting problem never hides a pass), its fraction of the device's bf16
dense peak (``PEAK_BF16_TFLOPS``; null for devices not in the table) and peak memory
(``torch.cuda.max_memory_allocated``). The whole run stays under ``--max-minutes`` (8): a path whose budget
no longer fits is cut to what is left, and skipped when nothing is.

``--dry-run`` (CPU, no CUDA needed) builds the same plan in this process: it checks that the shipped configs
parse and their classes import, names missing optional packages (``missing: deepspeed``), and counts each
step's FLOPs on tiny shapes on the CPU; status ``planned`` or ``missing: <what>``.

Prints a rich table on stderr and ONE JSON line on stdout, also written to ``--output``; on a GPU every worker's
stderr (warnings, the traceback of a failed path) goes to the same name with ``.log``::

    python benchmarks/gpu_check.py                        # on a GPU machine, pip install -e '.[gpu]'
    python benchmarks/gpu_check.py --dry-run --paths attention_sdpa,mtm_B_fsdp
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from timing import sync, timed

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "gpu_check.json"
# dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (first match wins)
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)
ATTN_TOL = {"fp32": 1e-3, "bf16": 5e-2}  # max |backend - math fp32| on N(0, 1) q, k, v
COMPILE_TOL = 5e-2  # max |compiled - eager| of a bf16 reconstruction
WARMUP, TIMED = 2, 5  # Trainer fits: warm-up steps, timed steps (+1 step whose FLOPs are counted)


@dataclass(frozen=True)
class Sizes:
    """Shapes of one run: ``real`` on the GPU, ``tiny`` for the CPU dry run."""
    tokenizer: str  # tokenizer preset
    clip: tuple[int, int, int]  # T, H, W
    disc_base: int
    transformer: dict  # TransformerConfig fields
    tok_batch: int
    mtm_batch: int
    attn: tuple[int, int, int, int]  # B, heads, L, head dim
    fvd: tuple[int, int]  # clips per side, frames


REAL = Sizes("B", (16, 128, 128), 64, dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
             tok_batch=8, mtm_batch=16, attn=(16, 12, 1026, 64), fvd=(32, 16))
TINY = Sizes("tiny", (8, 32, 32), 4, dict(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64),
             tok_batch=2, mtm_batch=2, attn=(1, 2, 16, 8), fvd=(1, 9))


@dataclass(frozen=True)
class CheckPath:
    name: str
    what: str
    needs: tuple[str, ...]  # optional packages (import names) the path needs on the GPU
    budget_s: int


PATHS: tuple[CheckPath, ...] = (
    CheckPath("matmul_bf16", "reference: an 8192^3 bf16 matmul (the device's reachable rate)", (), 20),
    CheckPath("tokenizer_B_bf16", "TokenizerModule B fit, bf16-mixed, G+D+R1", (), 55),
    CheckPath("tokenizer_B_bf16_ckpt", "the same with activation checkpointing", (), 45),
    CheckPath("mtm_B_bf16", "MTMModule B fit, bf16-mixed", (), 45),
    CheckPath("mtm_B_bf16_ckpt", "the same with activation checkpointing", (), 40),
    CheckPath("mtm_B_deepspeed_zero2", "MTM B fit, DeepSpeed ZeRO-2, 1 device", ("deepspeed",), 60),
    CheckPath("mtm_B_fsdp", "MTM B fit, FSDP, 1 device", (), 50),
    CheckPath("attention_sdpa", "attention fwd+bwd, torch SDPA, bf16", (), 20),
    CheckPath("attention_xformers", "attention fwd+bwd, xformers, bf16", ("xformers",), 20),
    CheckPath("attention_math", "attention fwd+bwd, plain math, bf16", (), 20),
    CheckPath("fvd_i3d", "FVD (I3D features + Frechet distance)", (), 35),
    CheckPath("tokenizer_compile_off", "tokenizer B G step, eager, bf16", (), 30),
    CheckPath("tokenizer_compile_on", "tokenizer B G step, torch.compile, bf16", ("triton",), 150),
)
BY_NAME = {p.name: p for p in PATHS}


# ------------------------------------------------------------------------------------------ helpers
def peak_bf16_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from :data:`PEAK_BF16_TFLOPS`, or None when it is not listed."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker: its forward hooks make ``autograd.grad`` on a leaf
    module input fail (pytorch/pytorch#131753), which is what the tokenizer's R1 penalty does."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def flop_counter():
    """A ``FlopCounterMode`` that counts totals only (no per-module attribution, no module hooks)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _NoModuleTracking()
    return counter


def count_flops(fn) -> float:
    with flop_counter() as counter:
        fn()
    return float(counter.get_total_flops())


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def shipped_strategy(name: str):
    """The Lightning strategy of ``configs/hardware/{name}.yaml``, built from the file for ONE device.

    Only the two strategy classes and the block classes of ``models/checkpointing.BLOCK_TYPES`` may be named."""
    import yaml
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    from magvit_pl.models.checkpointing import BLOCK_TYPES

    cfg = yaml.safe_load((REPO / "configs" / "hardware" / f"{name}.yaml").read_text())
    spec = cfg["trainer"]["strategy"]
    classes = {f"lightning.pytorch.strategies.{c.__name__}": c for c in (DeepSpeedStrategy, FSDPStrategy)}
    if spec["class_path"] not in classes:
        raise ValueError(f"{name}.yaml names the strategy {spec['class_path']!r}, not one of {', '.join(classes)}")
    kwargs = dict(spec.get("init_args", {}))
    if "auto_wrap_policy" in kwargs:
        blocks = {f"{c.__module__}.{c.__name__}": c for c in BLOCK_TYPES}
        unknown = [n for n in kwargs["auto_wrap_policy"] if n not in blocks]
        if unknown:
            raise ValueError(f"{name}.yaml: auto_wrap_policy names {unknown}, not blocks of {', '.join(blocks)}")
        kwargs["auto_wrap_policy"] = {blocks[n] for n in kwargs["auto_wrap_policy"]}
    return classes[spec["class_path"]], kwargs, cfg["trainer"]["precision"]


# --------------------------------------------------------------------------------- Trainer fits
def _clips(n: int, size: Sizes, num_classes: int):
    T, H, W = size.clip
    g = torch.Generator().manual_seed(0)
    return [{"video": torch.rand(3, T, H, W, generator=g) * 2 - 1, "label": i % max(num_classes, 1)} for i in range(n)]


def _tokenizer(size: Sizes):
    from magvit_pl.models.tokenizer import VQTokenizer

    overrides = dict(temporal_downsample=(True, False)) if size.tokenizer == "tiny" else {}
    return VQTokenizer.from_preset(size.tokenizer, **overrides)


def build_module(kind: str, size: Sizes, ckpt: bool):
    """(LightningModule, batch size, number of classes) of a ``tokenizer`` or ``mtm`` fit at ``size``."""
    torch.manual_seed(0)
    if kind == "tokenizer":
        from magvit_pl.lit.tokenizer import TokenizerModule
        from magvit_pl.models.discriminator import StyleGANDiscriminator3D

        T, H, _ = size.clip
        disc = StyleGANDiscriminator3D(base_channels=size.disc_base, num_frames=T, resolution=H)
        module = TokenizerModule(_tokenizer(size), disc, warmup_steps=1, val_fvd=False, activation_checkpointing=ckpt)
        return module, size.tok_batch, 0
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.lit.mtm_options import TaskConfig
    from magvit_pl.models.transformer import TransformerConfig

    T, H, _ = size.clip
    tok = _tokenizer(size).requires_grad_(False).eval()
    module = MTMModule(
        "(in memory)", num_classes=101, num_frames=T, resolution=H, tokenizer=tok, activation_checkpointing=ckpt,
        tasks=TaskConfig(names=["frame_prediction", "class_generation"]), transformer=TransformerConfig(**size.transformer),
    )
    return module, size.mtm_batch, 101


def _step_meter(count_flops_at: int):
    """A Callback timing every training batch and counting the FLOPs of batch ``count_flops_at``."""
    from lightning.pytorch import Callback

    class StepMeter(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.flops: float | None = None
            self.counter = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == count_flops_at:
                self.counter = flop_counter().__enter__()
            sync(pl_module.device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(pl_module.device)
            dt = time.perf_counter() - self.t0
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.flops, self.counter = float(self.counter.get_total_flops()), None
            elif batch_idx >= WARMUP:
                self.times.append(dt)

    return StepMeter()


def trainer_path(kind: str, strategy: str | None, ckpt: bool, device: torch.device, dry: bool) -> dict:
    """Fit ``WARMUP + TIMED + 1`` steps of a module through Lightning's Trainer (the last one FLOP-counted).

    Dry run: the strategy is resolved from its shipped YAML but not built (it needs CUDA), and ONE step of
    the tiny module runs on the CPU in fp32, FLOP-counted."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    size = TINY if dry else REAL
    row: dict = {}
    strat, precision = "auto", "bf16-mixed"
    if strategy is not None:
        cls, kwargs, precision = shipped_strategy(strategy)
        row["strategy"] = f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items() if k != 'auto_wrap_policy')})"
        if not dry:
            strat = cls(**kwargs)
    module, batch, num_classes = build_module(kind, size, ckpt)
    steps = 1 if dry else WARMUP + TIMED + 1
    meter = _step_meter(count_flops_at=steps - 1)
    trainer = Trainer(
        accelerator="cpu" if dry else "gpu", devices=1, strategy=strat, precision="32-true" if dry else precision,
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[meter], default_root_dir=tempfile.mkdtemp(prefix="gpu_check_"),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = DataLoader(_clips(batch * steps, size, num_classes), batch_size=batch, shuffle=False)
    trainer.fit(module, data)
    loss = trainer.callback_metrics.get("train/loss")
    if loss is None or not torch.isfinite(loss):
        raise RuntimeError(f"train/loss is {None if loss is None else float(loss)} after {steps} steps")
    row.update(batch=batch, clip="x".join(map(str, size.clip)), loss=float(loss), flops_per_step=meter.flops,
               precision=precision if not dry else "32-true")
    if meter.times:
        step_s = statistics.median(meter.times)
        row.update(step_s=step_s, throughput=batch / step_s, unit="clips/s")
    return row


# ---------------------------------------------------------------------------------- plain paths
def attention_path(backend: str, device: torch.device, dry: bool) -> dict:
    from magvit_pl.models.attention import attention, resolve_backend, xformers_unavailable

    size = TINY if dry else REAL
    B, nh, L, hs = size.attn
    if resolve_backend(backend, device) != backend and not dry:
        raise RuntimeError(f"backend {backend} falls back to {resolve_backend(backend, device)} here")
    if backend == "xformers" and not dry:
        for dt in (torch.float32, torch.bfloat16):  # attention() would quietly use sdpa: report it as a failure
            if (why := xformers_unavailable(device, dt)) is not None:
                raise RuntimeError(why)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, L, hs, generator=g).to(device) for _ in range(3))
    ref = attention(q, k, v, "math")  # fp32 reference
    dtypes = {"fp32": torch.float32} if dry else {"fp32": torch.float32, "bf16": torch.bfloat16}
    row: dict = {"shape": f"{B}x{nh}x{L}x{hs}"}
    for name, dt in dtypes.items():
        run_as = "sdpa" if dry and backend == "xformers" else backend  # xformers needs CUDA
        out = attention(q.to(dt), k.to(dt), v.to(dt), run_as).float()
        diff = float((out - ref).abs().max())
        row[f"max_abs_diff_{name}"] = diff
        if diff > ATTN_TOL[name]:
            raise RuntimeError(f"{backend} {name}: max |diff| vs math fp32 = {diff:.3g} > {ATTN_TOL[name]}")
    dt = torch.float32 if dry else torch.bfloat16
    qg, kg, vg = (t.to(dt).requires_grad_(True) for t in (q, k, v))
    grad = torch.randn(B, nh, L, hs, generator=g).to(device, dt)

    def step(which: str = backend) -> None:
        for t in (qg, kg, vg):
            t.grad = None
        attention(qg, kg, vg, which).backward(grad)

    row["flops_per_step"] = count_flops(lambda: step("math"))  # its matmuls; the same maths for every backend
    if dry:
        return row
    step()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    s = timed(step, 10, device)
    row.update(step_s=s, throughput=1 / s, unit="calls/s", peak_above_inputs_GB=(torch.cuda.max_memory_allocated(device) - base) / 2**30)
    return row


def matmul_path(device: torch.device, dry: bool) -> dict:
    """The reference every other path's TFLOP/s is read against: an n^3 bf16 matmul (n = 8192; 256 dry)."""
    n = 256 if dry else 8192
    dt = torch.float32 if dry else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dt) for _ in range(2))
    row: dict = {"shape": f"{n}x{n}x{n}", "dtype": str(dt).removeprefix("torch."), "flops_per_step": 2.0 * n**3}
    if dry:
        a @ b
        return row
    for _ in range(3):
        a @ b
    s = timed(lambda: a @ b, 10, device)
    row.update(step_s=s, throughput=1 / s, unit="calls/s")
    return row


def fvd_path(device: torch.device, dry: bool) -> dict:
    from magvit_pl.metrics.fvd import FrechetVideoDistance

    size = TINY if dry else REAL
    n, T = size.fvd
    H = 32 if dry else REAL.clip[1]
    fvd = FrechetVideoDistance().to(device)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(n, 3, T, H, H, generator=g).to(device) * 2 - 1
    fake = (real + 0.3 * torch.randn(real.shape, generator=g).to(device)).clamp(-1, 1)
    row: dict = {"clips": f"{n}+{n} x {T}x{H}x{H}"}
    row["flops_per_step"] = count_flops(lambda: fvd.update(real[:1], real=True)) * n  # per side of n clips
    if dry:
        return row
    fvd.reset()
    sync(device)
    t0 = time.perf_counter()
    fvd.update(real, real=True)
    fvd.update(fake, real=False)
    value = float(fvd.compute())
    sync(device)
    s = (time.perf_counter() - t0) / 2  # per side
    if not math.isfinite(value) or value < 0:
        raise RuntimeError(f"FVD = {value}")
    row.update(fvd=value, step_s=s, throughput=n / s, unit="clips/s")
    return row


def compile_path(compiled: bool, device: torch.device, dry: bool) -> dict:
    """One generator step of the tokenizer (L2 + quantizer loss, backward, Adam) in bf16 autocast."""
    import torch.nn.functional as F

    size = TINY if dry else REAL
    torch.manual_seed(0)
    tok = _tokenizer(size).to(device).train()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-4, betas=(0.0, 0.99))
    T, H, W = size.clip
    video = torch.rand(size.tok_batch, 3, T, H, W, device=device) * 2 - 1
    net = torch.compile(tok) if compiled and not dry else tok
    row: dict = {"batch": size.tok_batch, "clip": f"{T}x{H}x{W}"}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
            recon, q = net(video)
            loss = F.mse_loss(recon.float(), video) + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if dry:
        row["flops_per_step"] = count_flops(step)
        return row
    t0 = time.perf_counter()
    step()
    sync(device)
    row["first_step_s"] = time.perf_counter() - t0  # with compile: the compile time
    step()
    row["flops_per_step"] = count_flops(step) if not compiled else count_flops(lambda: _eager_step(tok, video, opt))
    torch.cuda.reset_peak_memory_stats(device)
    s = timed(step, TIMED, device)
    row.update(step_s=s, throughput=size.tok_batch / s, unit="clips/s")
    if compiled:
        tok.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            diff = float((net(video)[0].float() - tok(video)[0].float()).abs().max())
        row["max_abs_diff_vs_eager"] = diff
        if diff > COMPILE_TOL:
            raise RuntimeError(f"compiled reconstruction differs from eager by {diff:.3g} > {COMPILE_TOL}")
    return row


def _eager_step(tok, video, opt) -> None:
    """The eager step whose FLOPs stand for the compiled one's (the counter does not see inside compiled graphs)."""
    import torch.nn.functional as F

    with torch.autocast("cuda", dtype=torch.bfloat16):
        recon, q = tok(video)
        loss = F.mse_loss(recon.float(), video) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()


def run_path(name: str, device: torch.device, dry: bool) -> dict:
    """Run (or, ``dry``, plan) one path in this process; returns its row without status."""
    if name.startswith(("tokenizer_B_bf16", "mtm_B")):
        kind = "tokenizer" if name.startswith("tokenizer") else "mtm"
        strategy = {"mtm_B_deepspeed_zero2": "deepspeed_zero2", "mtm_B_fsdp": "fsdp"}.get(name)
        return trainer_path(kind, strategy, name.endswith("_ckpt"), device, dry)
    if name.startswith("attention_"):
        return attention_path(name.removeprefix("attention_"), device, dry)
    if name == "fvd_i3d":
        return fvd_path(device, dry)
    if name == "matmul_bf16":
        return matmul_path(device, dry)
    return compile_path(name.endswith("_on"), device, dry)


def missing(path: CheckPath) -> str | None:
    """``missing: <what>`` when a package or the I3D weights the path needs are absent, else None."""
    absent = [pkg for pkg in path.needs if importlib.util.find_spec(pkg) is None]
    if path.name == "fvd_i3d":
        from magvit_pl.run.errors import MissingWeightsError
        from magvit_pl.run.weights import weight_path

        try:
            weight_path("i3d")
        except MissingWeightsError:
            absent.append("i3d weights (python cli.py fetch-weights i3d)")
    return f"missing: {', '.join(absent)}" if absent else None


def one_line(err: BaseException) -> str:
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first}"[:300]


def finish_row(row: dict, peak: float | None) -> dict:
    """Add TFLOP/s and the fraction of the device's bf16 peak (when throughput and FLOPs are known)."""
    flops, s = row.get("flops_per_step"), row.get("step_s")
    row["tflops"] = flops / s / 1e12 if flops and s else None
    row["peak_fraction"] = row["tflops"] / peak if row["tflops"] is not None and peak else None
    return row


# ------------------------------------------------------------------------------------------ drivers
def worker(name: str) -> None:
    """Subprocess body: run one path on CUDA and print its row as one JSON line."""
    device = torch.device("cuda")
    t0 = time.perf_counter()
    try:
        row = {"status": "pass", **run_path(name, device, dry=False)}
    except Exception as err:  # noqa: BLE001 (every failure is reported, none stops the check)
        import traceback

        traceback.print_exc()  # into the log beside the JSON (run_in_subprocess keeps each worker's stderr)
        row = {"status": "fail", "error": one_line(err)}
    row["peak_memory_GB"] = peak_memory_gb(device)
    row["wall_s"] = time.perf_counter() - t0
    print(json.dumps(row, default=str), flush=True)


def run_in_subprocess(path: CheckPath, budget_s: float, log: Path | None = None) -> dict:
    """Run one path in a fresh process; its stderr (warnings, tracebacks) is appended to ``log``."""
    cmd = [sys.executable, __file__, "--worker", path.name]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=budget_s)
    except subprocess.TimeoutExpired as err:
        _append_log(log, path.name, err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or ""))
        return {"status": "fail", "error": f"timed out after {budget_s:.0f} s (budget)"}
    _append_log(log, path.name, proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return {"status": "fail", "error": (err[-1] if err else f"worker exit code {proc.returncode}")[:300]}
    return json.loads(lines[-1])


def _append_log(log: Path | None, name: str, text: str) -> None:
    if log is not None:
        with open(log, "a") as f:
            f.write(f"===== {name}\n{text}\n")


def check(names: list[str], dry: bool, max_minutes: float, log: Path | None = None) -> dict:
    device_name = torch.cuda.get_device_name(0) if not dry else "dry run (CPU)"
    peak = peak_bf16_tflops(device_name) if not dry else None
    deadline = time.monotonic() + max_minutes * 60
    rows = []
    for name in names:
        path = BY_NAME[name]
        row = {"path": name, "what": path.what, "budget_s": path.budget_s}
        why = missing(path)
        left = deadline - time.monotonic()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        if why:
            row["status"] = why
        elif dry:
            t0 = time.perf_counter()
            try:
                row.update(status="planned", **run_path(name, torch.device("cpu"), dry=True))
            except Exception as err:  # noqa: BLE001
                row.update(status="fail", error=one_line(err))
            row["wall_s"] = time.perf_counter() - t0
        elif left < 5:
            row["status"] = f"skipped: out of time ({max_minutes:g} min)"
        else:
            row.update(run_in_subprocess(path, min(path.budget_s, left), log))
        rows.append(finish_row(row, peak))
    return {"benchmark": "gpu_check", "dry_run": dry, "device": device_name, "peak_bf16_tflops": peak,
            "torch": torch.__version__, "paths": rows}


def table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gpu_check: {result['device']} (bf16 peak {result['peak_bf16_tflops'] or '?'} TFLOP/s)")
    for col in ("path", "status", "throughput", "GFLOP/step", "TFLOP/s", "of peak", "peak GB", "s"):
        t.add_column(col)
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for r in result["paths"]:
        status = r["status"] if "error" not in r else f"{r['status']}: {r['error']}"
        tp = f"{r['throughput']:.3g} {r['unit']}" if r.get("throughput") else "–"
        gflop = r["flops_per_step"] / 1e9 if r.get("flops_per_step") else None
        t.add_row(r["path"], status, tp, fmt(gflop, ".3g"), fmt(r.get("tflops"), ".3g"), fmt(r.get("peak_fraction"), ".2f"),
                  fmt(r.get("peak_memory_GB"), ".2f"), fmt(r.get("wall_s"), ".1f"))
    Console(stderr=True).print(t)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="check the plan on the CPU (no CUDA needed)")
    p.add_argument("--paths", default=",".join(BY_NAME), help="comma-separated subset of: " + ", ".join(BY_NAME))
    p.add_argument("--max-minutes", type=float, default=8.0, help="wall-clock budget of the whole run (default 8)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="the JSON is also written here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return None
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        p.error(f"--paths: unknown path(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BY_NAME)}")
    if args.max_minutes <= 0:
        p.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("torch sees no CUDA device; run with --dry-run to check the plan on a CPU")
    from magvit_pl.run.errors import UserError
    from magvit_pl.run.files import check_output_file, make_dir, write_json

    try:
        out = check_output_file(args.output, "--output", "gpu_check.json")
        make_dir(out.parent, "--output")
    except UserError as err:
        p.error(str(err))
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    log = out.with_suffix(".log")  # every worker's stderr, tracebacks included (GPU runs only)
    if not args.dry_run:
        log.write_text("")
    result = check(names, args.dry_run, args.max_minutes, None if args.dry_run else log)
    table(result)
    write_json(out, result)
    print(json.dumps(result, default=str), flush=True)
    return result


if __name__ == "__main__":
    main()
