"""Peak memory of attention and of training steps, with and without activation checkpointing.

Two parts, every measured point in its own fresh subprocess (so one point's memory cannot hide in
another's: freed memory that malloc keeps would otherwise be reused without showing up):

- ``attention``: one forward + backward of :func:`magvit_pl.models.attention.attention` at a
  transformer-block size (batch 1, 12 heads x 64, the B transformer's), vs sequence length, for each
  backend that really runs on the device (``math`` and ``sdpa``; ``xformers`` on CUDA when it imports).
  Peaks are above the inputs (q, k, v and the output gradient), so they include the output, the three
  input gradients and whatever the kernel keeps for backward (``math``: the L x L attention matrix).
- ``train``: one training step (forward + backward, no optimiser) vs batch size, each with
  ``activation_checkpointing`` off and on, for the stage-2 transformer (presets ``tiny`` on
  [task][class] + 256 tokens, ``B`` on + 1024 tokens, the paper's dropouts 0.1 / 0.1, ``sdpa``, cross
  entropy on every position) and the stage-1 tokenizer's generator (encoder + quantizer + decoder,
  L1 + quantizer loss; ``tiny`` = configs/tokenizer.yaml's model on 8x32x32 clips, ``B`` = the paper's
  on 16x128x128). Peaks are above the model's parameters and the inputs, so they are activations +
  gradients + temporaries.

How memory is measured (the peak of ONE step, the first one the process runs):

- CUDA: ``torch.cuda.max_memory_allocated`` minus ``torch.cuda.memory_allocated`` before the step,
  after ``reset_peak_memory_stats`` (tensor bytes held by the caching allocator, not its cache).
- CPU, ``peak_MB`` (the headline, comparable with the CUDA number): the peak of the bytes live in
  torch's CPU allocator during the step, above the level when it started. torch's profiler with
  ``profile_memory=True`` receives every CPU allocation and free with the allocator's running total
  (``c10::ProfiledCPUMemoryReporter``); the maximum of that total over the step, minus its value at
  the first event before that event's own allocation, is the peak. Frees of blocks allocated before the
  step are not reported to the profiler, so the figure can only err high (by what the step frees of
  older memory; here: nothing, gradients are set to None before the step). Memory allocated outside
  torch's allocator (oneDNN scratch pads, the Python heap) is not in it.
- CPU, ``rss_MB`` (what the OS sees): the process's resident-set high-water mark during the step
  minus its resident set just before, after resetting the high-water mark (Linux: writing ``5`` to
  ``/proc/self/clear_refs``, then ``VmHWM`` - ``VmRSS`` from ``/proc/self/status``). It includes
  allocator rounding, malloc's kept free lists, oneDNN buffers and first-call setup, so it is higher
  and noisier than ``peak_MB``. Without ``clear_refs`` it falls back to ``ru_maxrss`` (``getrusage``)
  minus the RSS before the step, which is only right when the step sets the process's high-water mark.

Step times: the median of ``--repeats`` more unprofiled steps after the measured one, or, when the
measured (profiled, first) step took over 10 s, that step's own time; they show what
recomputation costs but are not a speed benchmark.

On a shared CPU, pin ``--threads`` below the free cores. Prints rich tables on stderr and ONE JSON
line on stdout::

    python benchmarks/memory.py --quick --threads 2
    python benchmarks/memory.py --threads 2                      # CPU: tokenizer B at batch 1 and 2
    python benchmarks/memory.py --device cuda                    # larger lengths and batches
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from timing import sync, timed
from magvit_pl.models.checkpointing import apply_activation_checkpointing

HEADS, HEAD_DIM = 12, 64  # the B transformer's attention
# model name → what it is, its sizes, and the batches to run: (cpu, cpu --quick, cuda, cuda --quick)
MODELS: dict[str, dict] = {
    "transformer_tiny": dict(kind="transformer", preset="tiny", tokens=256, codebook=256,
                             batches=((1, 4, 16), (1, 16), (8, 32, 128), (32,)), large=False),
    "transformer_B": dict(kind="transformer", preset="B", tokens=1024, codebook=1024,
                          batches=((1, 2), (1,), (8, 32), (8,)), large=True),
    "tokenizer_tiny": dict(kind="tokenizer", preset="tiny", overrides=dict(temporal_downsample=(True, False)),
                           clip=(8, 32, 32), batches=((1, 4, 16), (1, 16), (16, 64), (16,)), large=False),
    "tokenizer_B": dict(kind="tokenizer", preset="B", overrides={}, clip=(16, 128, 128),
                        batches=((1, 2), (1,), (1, 4, 8), (4,)), large=True),
}
SEQ_LENS = {  # attention: (cpu, cpu --quick, cuda, cuda --quick)
    "attention": ((256, 512, 1024, 2048, 4096), (256, 1024, 4096), (1024, 2048, 4096, 8192, 16384),
                  (1024, 4096, 16384)),
}
PREFIX = 2  # [task][class] before the video tokens
MAX_REPEATED_STEP_S = 10.0  # points whose measured step took longer are not timed again


# ------------------------------------------------------------------------------------------ meters
def _proc_status_kb(field: str) -> int | None:
    """A ``VmXXX`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _allocator_peak_bytes(prof) -> int | None:
    """Peak of torch's CPU allocator total during a ``profile_memory`` session, above its start
    (None when this torch's profiler does not expose its allocation events: a private API)."""
    try:
        from torch._C._profiler import _EventType

        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except (ImportError, AttributeError):
        return None
    events = []
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            f = node.extra_fields
            events.append((node.start_time_ns, f.total_allocated, f.alloc_size))
        stack.extend(node.children)
    if not events:
        return None
    events.sort()
    _, total0, size0 = events[0]
    base = total0 - size0
    return max(total for _, total, _ in events) - base


class PeakMeter:
    """Context manager measuring the peak memory of what runs inside it (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict = {}

    def __enter__(self) -> "PeakMeter":
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()  # started before the RSS baseline: its own setup is not counted
            self._hwm_reset = _reset_rss_high_water_mark()
            self._rss0 = _proc_status_kb("VmRSS")
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.result["step_s"] = time.perf_counter() - self._t0
        if exc[0] is not None:
            if self.device.type == "cpu":
                self._prof.__exit__(*exc)
            return
        if self.device.type == "cuda":
            self.result["peak_MB"] = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        hwm = _proc_status_kb("VmHWM") if self._hwm_reset else None
        if hwm is None:  # fall back to getrusage's high-water mark of the whole process
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._prof.__exit__(None, None, None)
        peak = _allocator_peak_bytes(self._prof)
        self.result["peak_MB"] = None if peak is None else peak / 2**20
        if self._rss0 is not None:
            self.result["rss_MB"] = (hwm - self._rss0) / 1024
            self.result["rss_before_MB"] = self._rss0 / 1024
        self.result["rss_method"] = "VmHWM after clear_refs" if self._hwm_reset else "ru_maxrss"


# --------------------------------------------------------------------------------------- workloads
def attention_point(backend: str, seq: int, device: torch.device) -> tuple[dict, callable]:
    """Row stub and step of one attention forward + backward."""
    from magvit_pl.models.attention import attention

    torch.manual_seed(0)
    shape = (1, HEADS, seq, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, device=device)

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        attention(q, k, v, backend=backend).backward(grad_out)

    row = {"part": "attention", "backend": backend, "seq": seq, "heads": HEADS, "head_dim": HEAD_DIM,
           "batch": 1, "inputs_MB": 4 * q.numel() * 4 / 2**20}
    return row, step


def train_point(name: str, batch: int, ckpt: bool, device: torch.device) -> tuple[dict, callable]:
    """Row stub and step (forward + backward) of one model at one batch size."""
    c = MODELS[name]
    torch.manual_seed(0)
    if c["kind"] == "transformer":
        from magvit_pl.models.transformer import transformer_from_preset

        seq, K = c["tokens"] + PREFIX, c["codebook"]
        model = transformer_from_preset(
            c["preset"], vocab_size=K + 128, seq_len=seq, codebook_size=K, dropout=0.1, attention_dropout=0.1,
            attention_backend="sdpa",
        )
        if ckpt:
            apply_activation_checkpointing(model)
        model = model.to(device).train()
        tokens = torch.randint(0, K + 128, (batch, seq), device=device)
        targets = torch.randint(0, K, (batch, seq), device=device)

        def loss_fn():
            return F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())

        size = f"{seq} tokens"
    else:
        from magvit_pl.models.tokenizer import VQTokenizer

        T, H, W = c["clip"]
        model = VQTokenizer.from_preset(c["preset"], **c["overrides"])
        if ckpt:
            apply_activation_checkpointing(model)
        model = model.to(device).train()
        video = torch.rand(batch, 3, T, H, W, device=device) * 2 - 1

        def loss_fn():
            recon, q = model(video)
            return F.l1_loss(recon, video) + q.loss

        size = f"{T}x{H}x{W}"

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn().backward()

    n_params = sum(p.numel() for p in model.parameters())
    row = {"part": "train", "model": name, "size": size, "batch": batch, "checkpointing": ckpt,
           "params_M": round(n_params / 1e6, 2), "params_MB": n_params * 4 / 2**20}
    return row, step


def run_point(spec: dict, device: torch.device) -> dict:
    """Measure one point in this process (the caller runs it in a fresh one)."""
    if spec["part"] == "attention":
        row, step = attention_point(spec["backend"], spec["seq"], device)
    else:
        row, step = train_point(spec["model"], spec["batch"], spec["checkpointing"], device)
    with PeakMeter(device) as meter:
        step()
    row.update(meter.result)
    if spec["repeats"] and row["step_s"] < MAX_REPEATED_STEP_S:
        row["step_s"] = timed(step, spec["repeats"], device)
        row["timed_calls"] = spec["repeats"]
    else:
        row["timed_calls"] = 1
    return row


def run_worker(spec: dict, device: str, threads: int) -> dict:
    """Run one point in a fresh Python process; returns its row (or one with an ``error``)."""
    cmd = [sys.executable, __file__, "--device", device, "--threads", str(threads), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = err[-1][:200] if err else f"worker exit code {proc.returncode}"
        if proc.returncode < 0 or proc.returncode == 137:
            reason = f"killed (signal {-proc.returncode if proc.returncode < 0 else 9}; out of memory?)"
        return {**spec, "error": reason}
    row = json.loads(lines[-1])
    row["wall_s"] = time.perf_counter() - t0
    return row


# --------------------------------------------------------------------------------------------- main
def plan(args, device: torch.device) -> list[dict]:
    """Every point to measure, in order."""
    col = (2 if device.type == "cuda" else 0) + (1 if args.quick else 0)
    points = []
    if "attention" in args.parts:
        backends = ["math", "sdpa"]
        if device.type == "cuda":
            from magvit_pl.models.attention import _xformers_ops

            if _xformers_ops() is not None:
                backends.append("xformers")
        seqs = [int(s) for s in args.seq_lens.split(",")] if args.seq_lens else SEQ_LENS["attention"][col]
        for seq in seqs:
            for b in backends:
                points.append({"part": "attention", "backend": b, "seq": seq, "repeats": args.repeats})
    if "train" in args.parts:
        for name in args.models.split(","):
            c = MODELS[name]
            batches = c["batches"][col]
            if c["large"] and args.large_batches:
                batches = [int(b) for b in args.large_batches.split(",")]
            for batch in batches:
                for ckpt in (False, True):
                    points.append({"part": "train", "model": name, "batch": batch, "checkpointing": ckpt,
                                   "repeats": args.repeats})
    return points


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, batch): peak without / with checkpointing and what checkpointing saved."""
    out = []
    by_key = {(r["model"], r["batch"], r["checkpointing"]): r for r in rows
              if r.get("part") == "train" and "error" not in r}
    for (model, batch, ckpt), off in by_key.items():
        on = by_key.get((model, batch, True))
        if ckpt or on is None:
            continue
        s = {"model": model, "batch": batch, "peak_MB": off["peak_MB"], "peak_ckpt_MB": on["peak_MB"],
             "step_s": off["step_s"], "step_ckpt_s": on["step_s"]}
        if off["peak_MB"] and on["peak_MB"] is not None:
            s["saved_MB"] = off["peak_MB"] - on["peak_MB"]
            s["saved_pct"] = 100 * s["saved_MB"] / off["peak_MB"]
        if "rss_MB" in off and "rss_MB" in on:
            s["rss_MB"], s["rss_ckpt_MB"] = off["rss_MB"], on["rss_MB"]
            s["rss_saved_MB"] = off["rss_MB"] - on["rss_MB"]
        s["slowdown"] = on["step_s"] / off["step_s"]
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="fewer sequence lengths and batch sizes")
    p.add_argument("--parts", default="attention,train", help="comma-separated: attention, train")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--seq-lens", default="", help="attention sequence lengths (default: per device)")
    p.add_argument("--large-batches", default="", help="batches of the B models (default: per device)")
    p.add_argument("--repeats", type=int, default=3,
                   help=f"unprofiled timed steps after the measured one (none when it took > {MAX_REPEATED_STEP_S:g} s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON spec of one point
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        row = run_point(json.loads(args.worker), device)
        print(json.dumps(row, separators=(",", ":")))
        return row
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    parts = args.parts.split(",")
    if bad := [x for x in parts if x not in ("attention", "train")]:
        p.error(f"unknown part(s) {', '.join(bad)}; choose from attention, train")
    args.parts = parts
    if bad := [m for m in args.models.split(",") if m not in MODELS]:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")

    rows = []
    points = plan(args, device)
    for i, spec in enumerate(points, 1):
        what = (f"attention {spec['backend']} seq {spec['seq']}" if spec["part"] == "attention" else
                f"{spec['model']} batch {spec['batch']} checkpointing {'on' if spec['checkpointing'] else 'off'}")
        print(f"[{i}/{len(points)}] {what}", file=sys.stderr, end="", flush=True)
        row = run_worker(spec, args.device, args.threads)
        rows.append(row)
        done = row.get("error") or f"peak {row.get('peak_MB') or 0:.0f} MB, {row['step_s']:.2f} s/step"
        print(f": {done}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "memory",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
        "memory": ("cuda max_memory_allocated above the step's start" if device.type == "cuda" else
                   "peak_MB: torch CPU allocator peak above the step's start (profiler); "
                   "rss_MB: VmHWM - VmRSS, fresh process per point"),
        "attention": [r for r in rows if r.get("part") == "attention"],
        "train": [r for r in rows if r.get("part") == "train"],
        "checkpointing": summarize(rows),
    }
    _tables(result)
    print(json.dumps(result, separators=(",", ":")))
    return result


def _tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=170)
    f = lambda v, fmt=".0f": "–" if v is None else format(v, fmt)
    cpu = result["device"] == "cpu"
    att = result["attention"]
    if att:
        backends = list(dict.fromkeys(r["backend"] for r in att))
        t = Table(title=f"attention fwd+bwd, batch 1 x {HEADS} heads x {HEAD_DIM}: peak MB above the inputs "
                        f"({result['device']}, {result['threads']} threads)")
        t.add_column("seq", justify="right")
        t.add_column("inputs MB", justify="right")
        for b in backends:
            t.add_column(f"{b} peak MB", justify="right")
        if cpu:
            for b in backends:
                t.add_column(f"{b} RSS MB", justify="right")
        for b in backends:
            t.add_column(f"{b} s", justify="right")
        for seq in dict.fromkeys(r["seq"] for r in att):
            cells = {r["backend"]: r for r in att if r["seq"] == seq}
            first = next(iter(cells.values()))
            row = [str(seq), f(first.get("inputs_MB"), ".1f")]
            keys = ["peak_MB"] + (["rss_MB"] if cpu else []) + ["step_s"]
            for key in keys:
                for b in backends:
                    r = cells.get(b, {})
                    row.append(r.get("error", "")[:20] if "error" in r else f(r.get(key), ".3f" if key == "step_s" else ".0f"))
            t.add_row(*row)
        console.print(t)
    if result["train"]:
        t = Table(title="training step (forward + backward): peak MB above parameters + inputs, "
                        "activation checkpointing off / on")
        cols = ["model", "size", "batch", "params M", "peak MB", "peak MB ckpt", "saved MB", "saved %"]
        cols += ["RSS MB", "RSS MB ckpt"] if cpu else []
        cols += ["s/step", "s/step ckpt", "ckpt time x"]
        for col in cols:
            t.add_column(col, justify="right")
        by = {(r["model"], r["batch"], r["checkpointing"]): r for r in result["train"]}
        summary = {(s["model"], s["batch"]): s for s in result["checkpointing"]}
        for (model, batch, ckpt), r in by.items():
            if ckpt:
                continue
            on = by.get((model, batch, True), {})
            s = summary.get((model, batch), {})
            if "error" in r or "error" in on:
                t.add_row(model, "–", str(batch), *["–"] * (len(cols) - 4), (r.get("error") or on.get("error"))[:40])
                continue
            row = [model, r["size"], str(batch), f(r["params_M"], ".1f"), f(r["peak_MB"]), f(on.get("peak_MB")),
                   f(s.get("saved_MB")), f(s.get("saved_pct"), ".0f")]
            row += [f(r.get("rss_MB")), f(on.get("rss_MB"))] if cpu else []
            row += [f(r["step_s"], ".2f"), f(on.get("step_s"), ".2f"), f(s.get("slowdown"), ".2f")]
            t.add_row(*row)
        console.print(t)


if __name__ == "__main__":
    main()
