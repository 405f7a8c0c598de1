"""Tokenizer cost: encode / decode throughput, one G+D training step, peak memory and GFLOP/s.

For each configuration (``--configs``) a fresh subprocess builds the 3D-VQ tokenizer and its 3D
StyleGAN discriminator on random clips in [-1, 1] and measures (median of ``--repeats``):

- ``encode``: ``VQTokenizer.encode`` (video → token ids), no grad, clips/s;
- ``decode``: ``VQTokenizer.decode`` (token ids → video), no grad, clips/s;
- ``train``: one full step as in ``TokenizerModule`` with the GAN on: G forward (L2 + quantizer +
  GAN loss) + backward + Adam step, then D on real and fake with R1 every step + backward + Adam
  step (no EMA, LeCam or perceptual loss), clips/s;
- FLOPs of each, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the first (warm-up)
  call, as achieved GFLOP/s; the training step's also next to a large fp32 matmul measured in the
  same run;
- peak memory: on CPU the subprocess's peak RSS (``getrusage`` high-water mark) after inference and
  after training, also as a delta over the RSS after the imports (``*_delta_MB``); on CUDA
  ``torch.cuda.max_memory_allocated`` per phase.

Configurations: ``default`` is ``configs/tokenizer.yaml`` (preset tiny with temporal_downsample
[true, false], 8x32x32 clips, batch 4, discriminator base 8); ``B`` / ``L`` are the paper's 128 px
models on 16x128x128 clips (discriminator base 64), ``bair_B`` the 64 px one. Large configurations
run at batch 1 on CPU (``--large-batch``). With ``--quick`` they run ONE encode, ONE decode and
ONE training step, each timed while its FLOPs are counted, with no warm-up (the counter's per-op
overhead and first-call setup are small next to convolutions of this size).

``--matched`` instead measures the configuration of the side-by-side comparison with the peer
tokenizers (issue 18): 64² clips of 16 frames, base 32, multipliers (1, 2, 4), 2 res blocks, time /4,
LFQ with 2^10 codes (8.7 M parameters), batch 1, fp32, in this process: ``encode`` and ``decode`` as
above, and ``train`` = one autoencoder step (L2 + quantizer loss, backward, Adam step; no GAN, whose
discriminators differ between the tokenizers compared). The paths run interleaved for ``--repeats``
rounds after ``--warmup`` calls each, every call between two 2048³ fp32 matmuls; the JSON line and the
table give median wall time, frames/s, achieved GFLOP/s (FLOPs counted on the plain-op reference path,
see ``magvit_pl.models.kernels``) and GFLOP/s as a fraction of the neighbouring matmuls' (robust to
load from other processes). ``--before`` adds the same paths as they ran before the CPU fast kernels
(plain ops, contiguous memory, encode computing the quantizer losses), interleaved with the fast ones;
``--compile`` adds ``torch.compile``d ones (compile time reported).

On a shared CPU, pin ``--threads`` below the free cores. Prints a rich table on stderr and ONE
JSON line on stdout::

    OMP_NUM_THREADS=2 python benchmarks/tokenizer.py --quick --threads 2
    python benchmarks/tokenizer.py --configs default,B,L --large-batch 4 --device cuda
    python benchmarks/tokenizer.py --matched --threads 2 --before
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
from torch.utils.flop_counter import FlopCounterMode

from timing import interleaved, matmul_gflops, sync, timed
from magvit_pl.losses import discriminator_gan_loss, generator_gan_loss, r1_penalty
from magvit_pl.models.discriminator import StyleGANDiscriminator3D
from magvit_pl.models.kernels import reference_kernels
from magvit_pl.models.quantizers import LookupFreeQuantizer
from magvit_pl.models.tokenizer import VQTokenizer, count_parameters

# name → tokenizer preset + overrides, clip (T, H, W), discriminator width, whether "large"
CONFIGS: dict[str, dict] = {
    "default": dict(preset="tiny", overrides=dict(temporal_downsample=(True, False)), clip=(8, 32, 32),
                    disc_base=8, batch=4, large=False),
    "B": dict(preset="B", overrides={}, clip=(16, 128, 128), disc_base=64, batch=None, large=True),
    "L": dict(preset="L", overrides={}, clip=(16, 128, 128), disc_base=64, batch=None, large=True),
    "bair_B": dict(preset="bair_B", overrides={}, clip=(16, 64, 64), disc_base=64, batch=None, large=True),
}
GAN_WEIGHT, R1_COST, LR, BETAS = 0.1, 10.0, 1e-4, (0.0, 0.99)  # configs/tokenizer.yaml, paper Adam betas
# the side-by-side comparison's scale (issue 18): 16x64x64 clips -> 4x16x16 tokens, 2^10 LFQ codes
MATCHED = dict(base_channels=32, channel_multipliers=(1, 2, 4), num_res_blocks=2, embedding_dim=10)
MATCHED_CLIP = (16, 64, 64)



def measure(fn, repeats: int, device: torch.device) -> tuple[object, float, float]:
    """(result, FLOPs, seconds) of ``fn``: one call under a FLOP counter (the warm-up), then the median
    of ``repeats`` timed calls; with ``repeats`` 0 the counted call itself is the one timed."""
    counter = FlopCounterMode(display=False)
    sync(device)
    t0 = time.perf_counter()
    with counter:
        out = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    if repeats:
        seconds = timed(fn, repeats, device)
    return out, float(counter.get_total_flops()), seconds


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_step(tok, disc, opt_g, opt_d, video: torch.Tensor) -> None:
    """One generator step then one discriminator step (with R1), as ``TokenizerModule`` with the GAN on."""
    disc.requires_grad_(False)  # Lightning's toggle_optimizer: no D weight grads in the G step
    recon, q = tok(video)
    loss_g = F.mse_loss(recon, video) + q.loss + GAN_WEIGHT * generator_gan_loss(disc(recon))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()

    disc.requires_grad_(True)
    # R1 input as a (free) view, not a leaf: FlopCounterMode's module hooks make autograd.grad fail on
    # a leaf module input (pytorch/pytorch#131753)
    real = video.detach().requires_grad_(True).view_as(video)
    real_logits, fake_logits = disc(real), disc(recon.detach())
    loss_d = discriminator_gan_loss(real_logits, fake_logits) + r1_penalty(real_logits, real, cost=R1_COST)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()  # double backward through D for R1
    opt_d.step()


def bench_config(name: str, batch: int, repeats: int, device: torch.device) -> dict:
    """Measure one configuration in this process (call it in a fresh one: RSS peaks are per process)."""
    rss0 = peak_rss_mb()
    c = CONFIGS[name]
    T, H, W = c["clip"]
    torch.manual_seed(0)
    tok = VQTokenizer.from_preset(c["preset"], **c["overrides"]).to(device)
    disc = StyleGANDiscriminator3D(base_channels=c["disc_base"], num_frames=T, resolution=H).to(device)
    video = torch.rand(batch, 3, T, H, W, device=device) * 2 - 1
    row = {
        "config": name, "preset": c["preset"], "clip": f"{T}x{H}x{W}", "batch": batch,
        "tokens": "x".join(map(str, tok.token_grid(T, H, W))),
        "tok_params_M": round(count_parameters(tok) / 1e6, 2),
        "disc_params_M": round(count_parameters(disc) / 1e6, 2),
    }
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    # ---- inference, no grad
    tok.eval()
    with torch.no_grad():
        tokens, enc_flops, t_enc = measure(lambda: tok.encode(video), repeats, device)
        print(f"  {name}: encode {t_enc:.3f} s", file=sys.stderr, flush=True)
        _, dec_flops, t_dec = measure(lambda: tok.decode(tokens), repeats, device)
        print(f"  {name}: decode {t_dec:.3f} s", file=sys.stderr, flush=True)
    row.update(
        encode_s=t_enc, encode_clips_per_s=batch / t_enc, encode_gflops=enc_flops / t_enc / 1e9,
        decode_s=t_dec, decode_clips_per_s=batch / t_dec, decode_gflops=dec_flops / t_dec / 1e9,
        timed_calls=repeats or 1, timed_while_counting=not repeats,
    )
    if cuda:
        row["peak_infer_MB"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        row["peak_infer_MB"] = peak_rss_mb()

    # ---- training
    tok.train()
    opt_g = torch.optim.Adam(tok.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(disc.parameters(), lr=LR, betas=BETAS)
    _, train_flops, t_train = measure(lambda: train_step(tok, disc, opt_g, opt_d, video), repeats, device)
    print(f"  {name}: train step {t_train:.3f} s", file=sys.stderr, flush=True)
    row.update(
        train_s=t_train, train_clips_per_s=batch / t_train, train_gflop_per_step=train_flops / 1e9,
        train_gflops=train_flops / t_train / 1e9,
    )
    if cuda:
        row["peak_train_MB"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["memory"] = "cuda max_memory_allocated"
    else:
        row["peak_train_MB"] = peak_rss_mb()
        row["rss_after_import_MB"] = rss0
        row["peak_infer_delta_MB"] = row["peak_infer_MB"] - rss0
        row["peak_train_delta_MB"] = row["peak_train_MB"] - rss0
        row["memory"] = "peak RSS of the subprocess"
    return row


def run_worker(spec: dict, device: str, threads: int) -> dict:
    """Run one configuration in a fresh Python process; returns its row (or an error row)."""
    cmd = [sys.executable, __file__, "--device", device, "--threads", str(threads), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)  # progress goes to our stderr
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"config": spec["name"], "batch": spec["batch"], "error": f"worker exit code {proc.returncode}"}
    return json.loads(lines[-1])



def matched_tokenizer(norm_groups: int = 32) -> VQTokenizer:
    """The tokenizer of the side-by-side comparison: 8.7 M parameters, 16x64x64 → 4x16x16, LFQ 2^10."""
    return VQTokenizer(**MATCHED, quantizer=LookupFreeQuantizer(MATCHED["embedding_dim"]), norm_groups=norm_groups)


def autoencoder_step(tok: VQTokenizer, opt: torch.optim.Optimizer, video: torch.Tensor) -> None:
    """One training step of the autoencoder alone: L2 + quantizer loss, backward, optimiser step."""
    recon, q = tok(video)
    loss = F.mse_loss(recon, video) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def matched_paths(tok: VQTokenizer, video: torch.Tensor, adam: str, before: bool, compiled: bool) -> dict:
    """name → (path, variant, callable) for ``bench_matched``; ``compile_s`` holds compile times."""
    adam_flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam]
    opt = torch.optim.Adam(tok.parameters(), lr=LR, betas=BETAS, **adam_flags)
    with torch.no_grad():
        tokens = tok.encode(video)

    def plain(fn):
        def run():
            with reference_kernels():
                return fn()
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    paths = {
        "encode": ("encode", "fast", no_grad(lambda: tok.encode(video))),
        "decode": ("decode", "fast", no_grad(lambda: tok.decode(tokens))),
        "train": ("train", "fast", lambda: autoencoder_step(tok, opt, video)),
    }
    if before:  # the code as it was: plain ops, contiguous memory, encode through the full quantizer
        paths.update({
            "encode/before": ("encode", "before", plain(no_grad(lambda: tok.quantize(video).indices))),
            "decode/before": ("decode", "before", plain(no_grad(lambda: tok.decode(tokens)))),
            "train/before": ("train", "before", plain(lambda: autoencoder_step(tok, opt, video))),
        })
    compile_s = {}
    if compiled:  # torch.compile (inductor) of the plain-op model: what it makes of GN + SiLU + conv
        enc, dec = torch.compile(tok.encoder), torch.compile(tok.decoder)
        for name, fn in (("encode", lambda: tok.quantizer.indices(enc(video))), ("decode", lambda: dec(tok.quantizer.embed(tokens)))):
            fn = plain(no_grad(fn))
            t0 = time.perf_counter()
            fn()
            compile_s[name] = time.perf_counter() - t0
            paths[f"{name}/compiled"] = (name, "compiled", fn)
    return paths, compile_s


def profile_paths(paths: dict, top: int) -> dict:
    """name → the ``top`` operators of one call by self CPU time (torch profiler, after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, (_, _, fn) in paths.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = list(prof.key_averages())
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        out[name] = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
                     for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]]
    return out


def _profile_table(profiles: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="operators by self CPU time, one call of each path (torch profiler)")
    for col in ("path", "operator", "calls", "self ms", "share"):
        t.add_column(col, justify="right" if col != "operator" else "left")
    for name, rows in profiles.items():
        for i, r in enumerate(rows):
            t.add_row(name if i == 0 else "", r["op"], str(r["calls"]), f"{r['self_ms']:.1f}", f"{r['share']:.0%}")
    Console(stderr=True, width=160).print(t)


def bench_matched(args, device: torch.device) -> dict:
    """The side-by-side configuration, every path interleaved with the others and with the matmul."""
    T, H, W = MATCHED_CLIP
    torch.manual_seed(0)
    tok = matched_tokenizer(args.norm_groups).to(device)
    video = torch.rand(args.batch, 3, T, H, W, device=device) * 2 - 1
    paths, compile_s = matched_paths(tok, video, args.adam, args.before, args.compile)
    flops = {}
    with reference_kernels():  # FlopCounterMode counts aten convolutions, not the oneDNN calls
        for name, (_, _, fn) in paths.items():
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            flops[name] = float(counter.get_total_flops())
    timing = interleaved({k: v[2] for k, v in paths.items()}, flops, args.repeats, args.warmup, device, args.matmul_n,
                         clock=args.clock)
    rows = []
    for name, (path, variant, _) in paths.items():
        r = timing["rows"][name]
        rows.append({
            "path": path, "variant": variant, "s": r["s"], "frames_per_s": args.batch * T / r["s"],
            "gflop": flops[name] / 1e9, "gflops": r["gflops"], "vs_matmul": r["vs_matmul"],
            **({"compile_s": compile_s[path]} if variant == "compiled" else {}),
        })
    result = {
        "benchmark": "tokenizer_matched",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": {**MATCHED, "quantizer": "LFQ 2^10", "norm_groups": args.norm_groups, "clip": f"{T}x{H}x{W}",
                   "tokens": "x".join(map(str, tok.token_grid(T, H, W))), "batch": args.batch,
                   "train_step": "autoencoder: L2 + quantizer loss, backward, Adam", "adam": args.adam},
        "params_M": round(count_parameters(tok) / 1e6, 2),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "clock": args.clock,
        "matmul_n": args.matmul_n,
        "matmul_gflops": timing["matmul_gflops"],
        "rows": rows,
    }
    _matched_table(result)
    if args.profile:
        result["profile"] = profile_paths(paths, args.profile)
        _profile_table(result["profile"])
    print(json.dumps(result, separators=(",", ":")))
    return result


def _matched_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    t = Table(title=f"tokenizer at the matched scale ({result['params_M']} M params, {c['clip']} → {c['tokens']}, batch "
                    f"{c['batch']}), {result['device']} x{result['threads']} threads, {result['clock']} clock, matmul {result['matmul_gflops']:.0f} GFLOP/s")
    for col in ("path", "variant", "median s", "frames/s", "GFLOP", "GFLOP/s", "vs matmul", "compile s"):
        t.add_column(col, justify="right")
    for r in result["rows"]:
        t.add_row(r["path"], r["variant"], f"{r['s']:.3f}", f"{r['frames_per_s']:.1f}", f"{r['gflop']:.1f}",
                  f"{r['gflops']:.0f}", f"{r['vs_matmul']:.2f}", f"{r['compile_s']:.0f}" if "compile_s" in r else "–")
    Console(stderr=True, width=160).print(t)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="default,B", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported; default 3, --matched 5)")
    p.add_argument("--large-batch", type=int, default=0,
                   help="batch of the large configurations (0 = 1 on CPU, 4 on CUDA)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference fp32 matmul")
    p.add_argument("--quick", action="store_true",
                   help="large configurations: encode/decode timed once, ONE training step")
    p.add_argument("--matched", action="store_true",
                   help="the side-by-side configuration of issue 18 instead of --configs (see the module docstring)")
    p.add_argument("--before", action="store_true", help="--matched: also the paths as before the fast kernels")
    p.add_argument("--compile", action="store_true", help="--matched: also torch.compile'd encode and decode")
    p.add_argument("--warmup", type=int, default=2, help="--matched: untimed calls of each path first")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="--matched: wall time, or this process's CPU time (robust to load with --threads 1)")
    p.add_argument("--batch", type=int, default=1, help="--matched: clips per call")
    p.add_argument("--norm-groups", type=int, default=32, help="--matched: GroupNorm groups (the CPU demo uses 4)")
    p.add_argument("--adam", default="default", choices=("default", "foreach", "fused"),
                   help="--matched: torch.optim.Adam implementation of the training step")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="--matched: also the top N operators of each path by self CPU time (torch profiler)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON spec of one configuration
    args = p.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.matched else 3)
    for flag in ("repeats", "batch", "matmul_n"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0 or args.norm_groups < 0 or args.profile < 0:
        p.error(f"--warmup, --norm-groups and --profile must be >= 0, got {args.warmup}, {args.norm_groups} and {args.profile}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.matched:
        return bench_matched(args, device)

    if args.worker:
        spec = json.loads(args.worker)
        row = bench_config(spec["name"], spec["batch"], spec["repeats"], device)
        print(json.dumps(row, separators=(",", ":")))
        return row

    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    large_batch = args.large_batch or (4 if device.type == "cuda" else 1)
    rows = []
    for name in names:
        c = CONFIGS[name]
        quick_large = args.quick and c["large"]
        spec = {
            "name": name,
            "batch": large_batch if c["large"] else c["batch"],
            "repeats": 0 if quick_large else args.repeats,
        }
        print(f"running {name} (batch {spec['batch']}) in a subprocess", file=sys.stderr, flush=True)
        rows.append(run_worker(spec, args.device, args.threads))
    result = {
        "benchmark": "tokenizer",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
        "matmul_n": args.matmul_n,
        "matmul_gflops": matmul_gflops(device, args.matmul_n, 3),
        "rows": rows,
    }
    for r in rows:
        if "train_gflops" in r:
            r["train_vs_matmul"] = r["train_gflops"] / result["matmul_gflops"]
    _table(result)
    print(json.dumps(result, separators=(",", ":")))
    return result


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"tokenizer, {result['device']} x{result['threads']} threads, "
                    f"matmul {result['matmul_gflops']:.0f} GFLOP/s")
    cols = ("config", "clip", "batch", "params G/D M", "enc clips/s", "dec clips/s", "train s/step",
            "train clips/s", "GFLOP/step", "train GFLOP/s", "train/matmul", "peak MB infer/train")
    for col in cols:
        t.add_column(col, justify="right")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)
    for r in result["rows"]:
        if "error" in r:
            t.add_row(r["config"], "–", str(r["batch"]), *(["–"] * 8), r["error"])
            continue
        t.add_row(
            r["config"], r["clip"], str(r["batch"]), f"{r['tok_params_M']:.1f}/{r['disc_params_M']:.1f}",
            f(r["encode_clips_per_s"], ".3g"), f(r["decode_clips_per_s"], ".3g"), f(r["train_s"], ".2f"),
            f(r["train_clips_per_s"], ".3g"), f(r["train_gflop_per_step"], ".0f"), f(r["train_gflops"], ".1f"),
            f(r.get("train_vs_matmul"), ".2f"), f"{r['peak_infer_MB']:.0f}/{r['peak_train_MB']:.0f}",
        )
    Console(stderr=True, width=160).print(t)


if __name__ == "__main__":
    main()
