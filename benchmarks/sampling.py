"""Generation speed: 12-step COMMIT decoding vs autoregressive (KV-cache) decoding, and forward GFLOP/s.

For each transformer preset and batch size this times (median of repeats, after one warm-up forward):

- ``commit``: :func:`magvit_pl.sampling.decode`, ``--steps`` model calls on ``[task][class][N tokens]``;
- ``ar``: :func:`magvit_pl.sampling.decode_autoregressive` with a KV cache, N model calls;
- ``forward``: one full-sequence forward pass, reported as GFLOP/s (analytic FLOP count) next to a
  large fp32 matmul measured in the same run, so the ratio says how close the model runs to the
  machine's matmul speed.

On a shared CPU, pin ``--threads`` below the free cores: oversubscribed OpenMP threads made
decoding ~10x slower on the 2-core dev machine. Prints a rich table on stderr and ONE JSON line on
stdout::

    python benchmarks/sampling.py --quick --threads 1
    python benchmarks/sampling.py --presets tiny,small,B --batches 1,16 --repeats 3 --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from timing import matmul_gflops, timed
from magvit_pl.commit import Vocab, build_prefix
from magvit_pl.models.transformer import PRESETS, transformer_from_preset
from magvit_pl.sampling import decode, decode_autoregressive

TASKS = tuple(f"task{i}" for i in range(10))



def forward_flops(preset: str, batch: int, seq: int, codebook: int) -> float:
    """Multiply-adds ×2 of one forward pass: projections, MLPs, attention scores/values, head."""
    c = PRESETS[preset]
    H, M, n = c["hidden_dim"], c["mlp_dim"], c["num_layers"]
    per_token = n * (2 * (4 * H * H + 2 * H * M)) + 2 * (H * H + H * codebook)
    attn = n * 4 * seq * seq * H
    return batch * (seq * per_token + attn)



def bench_one(preset, batch, args, vocab, device, run_ar, repeats):
    """Time forward, COMMIT decoding and (if ``run_ar``) autoregressive decoding for one setting."""
    N, seq = args.tokens, args.tokens + 2
    torch.manual_seed(0)
    model = transformer_from_preset(preset, vocab.size, seq, vocab.codebook_size).to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    prefix = build_prefix(vocab, "task0", batch, torch.zeros(batch, dtype=torch.long, device=device))
    cond = torch.zeros(batch, N, dtype=torch.bool, device=device)
    cond[:, : N // 4] = True  # e.g. frame prediction: first latent frame given
    z_cond = torch.randint(0, vocab.codebook_size, (batch, N), generator=g, device=device)
    x = torch.cat([prefix, z_cond], 1)
    row = {"preset": preset, "batch": batch, "params_M": round(model.num_params() / 1e6, 2)}
    with torch.no_grad():
        model(x)  # warm-up
        t_fwd = timed(lambda: model(x), repeats, device)
    row["forward_s"] = t_fwd
    row["forward_gflops"] = forward_flops(preset, batch, seq, vocab.codebook_size) / t_fwd / 1e9
    t_commit = timed(lambda: decode(model, z_cond, cond, prefix, vocab, steps=args.steps, generator=g), repeats, device)
    row.update(commit_s=t_commit, commit_clips_per_s=batch / t_commit)
    if run_ar:
        t_ar = timed(lambda: decode_autoregressive(model, prefix, N, kv_cache=True, generator=g), repeats, device)
        row.update(ar_s=t_ar, ar_clips_per_s=batch / t_ar, ar_over_commit=t_ar / t_commit)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,B", help="comma-separated transformer presets")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--tokens", type=int, default=1024, help="video tokens N (4×16×16 = 1024)")
    p.add_argument("--steps", type=int, default=12, help="COMMIT decoding steps")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference fp32 matmul")
    p.add_argument(
        "--quick", action="store_true",
        help="large presets (B, L) only at batch 1, with 1 repeat",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = Vocab(codebook_size=1024, num_classes=101, task_names=TASKS)
    rows = []
    for preset in args.presets.split(","):
        large = PRESETS[preset]["hidden_dim"] >= 768
        for batch in (int(b) for b in args.batches.split(",")):
            if args.quick and large and batch > 1:
                continue
            repeats = 1 if (args.quick and large) else args.repeats
            run_ar = batch == 1 or not large
            rows.append(bench_one(preset, batch, args, vocab, device, run_ar, repeats))
            print(f"done {preset} batch {batch}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "sampling",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tokens": args.tokens,
        "steps": args.steps,
        "quick": args.quick,
        "matmul_gflops": matmul_gflops(device, args.matmul_n, 3),
        "rows": rows,
    }
    for r in rows:
        r["forward_vs_matmul"] = r["forward_gflops"] / result["matmul_gflops"]
    _table(result)
    print(json.dumps(result, separators=(",", ":")))
    return result


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sampling, N={result['tokens']} tokens, {result['device']}, "
                    f"matmul {result['matmul_gflops']:.0f} GFLOP/s")
    for col in ("preset", "batch", "params M", "COMMIT s", "COMMIT clips/s", "AR s", "AR clips/s",
                "AR/COMMIT", "fwd GFLOP/s", "fwd/matmul"):
        t.add_column(col, justify="right")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)
    for r in result["rows"]:
        t.add_row(r["preset"], str(r["batch"]), f(r["params_M"], ".2f"), f(r["commit_s"], ".3f"),
                  f(r["commit_clips_per_s"], ".3f"), f(r.get("ar_s"), ".2f"), f(r.get("ar_clips_per_s"), ".4f"),
                  f(r.get("ar_over_commit"), ".1f"), f(r["forward_gflops"], ".1f"), f(r["forward_vs_matmul"], ".2f"))
    Console(stderr=True, width=150).print(t)


if __name__ == "__main__":
    main()
