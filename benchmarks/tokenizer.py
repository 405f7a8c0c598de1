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

On a shared CPU, pin ``--threads`` below the free cores. Prints a rich table on stderr and ONE
JSON line on stdout::

    OMP_NUM_THREADS=2 python benchmarks/tokenizer.py --quick --threads 2
    python benchmarks/tokenizer.py --configs default,B,L --large-batch 4 --device cuda
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

from timing import matmul_gflops, sync, timed
from magvit_pl.losses import discriminator_gan_loss, generator_gan_loss, r1_penalty
from magvit_pl.models.discriminator import StyleGANDiscriminator3D
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



def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="default,B", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--large-batch", type=int, default=0,
                   help="batch of the large configurations (0 = 1 on CPU, 4 on CUDA)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference fp32 matmul")
    p.add_argument("--quick", action="store_true",
                   help="large configurations: encode/decode timed once, ONE training step")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON spec of one configuration
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

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
