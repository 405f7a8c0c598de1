"""Generation speed: 12-step COMMIT decoding vs autoregressive (KV-cache) decoding; transformer GFLOP/s.

For each transformer preset and batch size these paths run interleaved (``timing.interleaved``: after
``--warmup`` calls each, ``--repeats`` rounds in which every path runs once, each call between two
2048³ fp32 matmuls; medians, and each path's GFLOP/s as a fraction of its neighbouring matmuls', so
load from other processes hits both):

- ``commit``: :func:`magvit_pl.sampling.decode`, ``--steps`` model calls on ``[task][class][N tokens]``;
- ``ar``: :func:`magvit_pl.sampling.decode_autoregressive` with a KV cache, N model calls;
- ``forward``: one full-sequence forward pass without autograd (GFLOP/s from the analytic FLOP count);
- ``train``: one training step as in ``MTMModule`` (forward with dropout, cross-entropy over the video
  positions, backward, AdamW step; 3x the forward's FLOPs).

``--before REV`` adds each path as it ran at git revision REV (``magvit_pl/models/transformer.py`` and
``magvit_pl/sampling.py`` read from the repository's history, the same weights), interleaved with the
current ones, and checks that both decoders give the same tokens from the same seed (``same_tokens``).
``--demo`` is the CPU demo's setting: ``configs/mtm.yaml``'s transformer (the ``small`` preset: 4 layers,
128 wide), 8x32x32 clips through the demo tokenizer's 4x8x8 grid (256 tokens, 1024 codes), 8 classes, at
batches 1, 4 and 16.

On a shared CPU, pin ``--threads`` below the free cores (oversubscribed OpenMP threads made decoding
~10x slower on the 2-core dev machine); ``--clock cpu`` with ``--threads 1`` counts only this process's
CPU time. Prints a rich table on stderr and ONE JSON line on stdout::

    python benchmarks/sampling.py --demo --threads 1 --clock cpu --before d44114f
    python benchmarks/sampling.py --quick --threads 1
    python benchmarks/sampling.py --presets tiny,small,B --batches 1,16 --repeats 3 --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from timing import interleaved
from magvit_pl.commit import Vocab, build_prefix
from magvit_pl.models import transformer as transformer_mod
from magvit_pl.models.transformer import PRESETS
from magvit_pl import sampling as sampling_mod

REPO = Path(__file__).resolve().parents[1]
TASKS = tuple(f"task{i}" for i in range(10))
DEMO = dict(presets="small", batches="1,4,16", tokens=256, codebook=1024, classes=8)  # configs/mtm.yaml + tokenizer.yaml
DROPOUT = dict(dropout=0.1, attention_dropout=0.0)  # configs/mtm.yaml (the train path)


def forward_flops(preset: str, batch: int, seq: int, codebook: int) -> float:
    """Multiply-adds ×2 of one forward pass: projections, MLPs, attention scores/values, head."""
    c = PRESETS[preset]
    H, M, n = c["hidden_dim"], c["mlp_dim"], c["num_layers"]
    per_token = n * (2 * (4 * H * H + 2 * H * M)) + 2 * (H * H + H * codebook)
    attn = n * 4 * seq * seq * H
    return batch * (seq * per_token + attn)


def code_at(rev: str) -> dict[str, types.ModuleType]:
    """``{"transformer": …, "sampling": …}``: those two modules as they were at git revision ``rev``
    (run from this repository's history; their imports resolve to the current package)."""
    mods = {}
    for name, path in (("transformer", "magvit_pl/models/transformer.py"), ("sampling", "magvit_pl/sampling.py")):
        proc = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: --before {rev}: git cannot show {path} at that revision ({proc.stderr.strip()})")
        mod = types.ModuleType(f"before_{name}")
        mod.__file__ = f"{rev}:{path}"
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(proc.stdout, mod.__file__, "exec"), mod.__dict__)
        mods[name] = mod
    return mods


def build(code: dict, preset: str, vocab: Vocab, seq: int, device: torch.device, state: dict | None = None):
    """The preset's transformer from ``code`` (current or ``code_at``), with ``state`` loaded when given."""
    fields = {f.name for f in dataclasses.fields(code["transformer"].TransformerConfig)}
    config = code["transformer"].TransformerConfig(**{k: v for k, v in {**PRESETS[preset], **DROPOUT}.items() if k in fields})
    model = code["transformer"].BidirectionalTransformer(vocab.size, seq, config, codebook_size=vocab.codebook_size)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device)


def paths_of(model, code: dict, inputs: dict, vocab: Vocab, args, run_ar: bool) -> dict:
    """name → callable of the four paths for one model (its own AdamW for the training step)."""
    decode, decode_ar = code["sampling"].decode, code["sampling"].decode_autoregressive
    i = inputs
    opt = torch.optim.AdamW(model.param_groups(0.045), lr=1e-4, betas=(0.9, 0.96))
    P = vocab.prefix_len

    def forward():
        model.eval()
        with torch.no_grad():
            return model(i["seq"])

    def commit():
        model.eval()
        return decode(model, i["z_cond"], i["cond"], i["prefix"], vocab, steps=args.steps, generator=i["gen"])

    def ar():
        model.eval()
        return decode_ar(model, i["prefix"], args.tokens, kv_cache=True, generator=i["gen"])

    def train():
        model.train()
        logits = model(i["seq"])[:, P:]  # (B, N, K)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), i["target"].reshape(-1), label_smoothing=1e-4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"forward": forward, "train": train, "commit": commit}
    if run_ar:
        fns["ar"] = ar
    return fns


def bench_one(preset: str, batch: int, args, vocab: Vocab, device: torch.device, before: dict | None, run_ar: bool,
              repeats: int) -> list[dict]:
    """Rows (one per path and variant) of one preset and batch, every path interleaved with the others."""
    N, seq = args.tokens, args.tokens + vocab.prefix_len
    current = {"transformer": transformer_mod, "sampling": sampling_mod}
    torch.manual_seed(0)
    model = build(current, preset, vocab, seq, device)
    g = torch.Generator(device=device).manual_seed(0)
    prefix = build_prefix(vocab, "task0", batch, torch.arange(batch, device=device) % max(vocab.num_classes, 1))
    cond = torch.zeros(batch, N, dtype=torch.bool, device=device)
    cond[:, : N // 4] = True  # e.g. frame prediction: the first latent frame given
    z_cond = torch.randint(0, vocab.codebook_size, (batch, N), generator=g, device=device)
    inputs = {"prefix": prefix, "cond": cond, "z_cond": z_cond, "gen": g, "seq": torch.cat([prefix, z_cond], 1),
              "target": torch.randint(0, vocab.codebook_size, (batch, N), generator=g, device=device)}
    variants = {"": (model, current)}
    if before is not None:
        variants["/before"] = (build(before, preset, vocab, seq, device, model.state_dict()), before)
    fns, flops, same_tokens = {}, {}, None
    fwd = forward_flops(preset, batch, seq, vocab.codebook_size)
    for suffix, (m, code) in variants.items():
        for name, fn in paths_of(m, code, inputs, vocab, args, run_ar).items():
            fns[name + suffix] = fn
            flops[name + suffix] = 3 * fwd if name == "train" else fwd  # decoders: rated by their forward
    if before is not None:  # the same seed through both decoders (before any training step changes the weights)
        out = [code["sampling"].decode(m.eval(), z_cond, cond, prefix, vocab, steps=args.steps,
                                       generator=torch.Generator(device=device).manual_seed(1)) for m, code in variants.values()]
        same_tokens = bool(torch.equal(out[0], out[1]))
    # the training steps change the weights: both models take the same steps, so they stay equal
    timing = interleaved(fns, flops, repeats, args.warmup, device, args.matmul_n, clock=args.clock)
    rows = []
    for name, r in timing["rows"].items():
        path, _, variant = name.partition("/")
        row = {"preset": preset, "batch": batch, "path": path, "variant": variant or "now",
               "params_M": round(model.num_params() / 1e6, 2), "s": r["s"], "clips_per_s": batch / r["s"]}
        if path in ("forward", "train"):
            row.update(gflops=r["gflops"], vs_matmul=r["vs_matmul"])
        if same_tokens is not None and path == "commit":
            row["same_tokens"] = same_tokens
        rows.append(row)
    by = {(r["path"], r["variant"]): r for r in rows}
    for variant in {r["variant"] for r in rows}:
        if ("ar", variant) in by:
            by[("commit", variant)]["ar_over_commit"] = by[("ar", variant)]["s"] / by[("commit", variant)]["s"]
    return rows, timing["matmul_gflops"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,B", help="comma-separated transformer presets")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--tokens", type=int, default=1024, help="video tokens N (4×16×16 = 1024)")
    p.add_argument("--codebook", type=int, default=1024, help="codebook size (logit width)")
    p.add_argument("--classes", type=int, default=101, help="class tokens (UCF-101: 101)")
    p.add_argument("--steps", type=int, default=12, help="COMMIT decoding steps")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each path first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference fp32 matmul")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall time, or this process's CPU time (robust to load with --threads 1)")
    p.add_argument("--before", metavar="REV", help="also the transformer and decoder as at git revision REV")
    p.add_argument("--demo", action="store_true", help="the CPU demo's setting (overrides presets, batches, tokens, codebook, classes)")
    p.add_argument("--quick", action="store_true", help="large presets (B, L) only at batch 1, with 1 repeat")
    args = p.parse_args(argv)
    if args.demo:
        for k, v in DEMO.items():
            setattr(args, k, v)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    before = code_at(args.before) if args.before else None
    vocab = Vocab(codebook_size=args.codebook, num_classes=args.classes, task_names=TASKS)
    rows, matmul = [], []
    for preset in args.presets.split(","):
        large = PRESETS[preset]["hidden_dim"] >= 768
        for batch in (int(b) for b in args.batches.split(",")):
            if args.quick and large and batch > 1:
                continue
            repeats = 1 if (args.quick and large) else args.repeats
            new_rows, rate = bench_one(preset, batch, args, vocab, device, before, batch == 1 or not large, repeats)
            rows += new_rows
            matmul.append(rate)
            print(f"done {preset} batch {batch}: {json.dumps(new_rows, separators=(',', ':'))}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "sampling",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tokens": args.tokens,
        "codebook": args.codebook,
        "classes": args.classes,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "clock": args.clock,
        "before": args.before,
        "quick": args.quick,
        "matmul_gflops": sorted(matmul)[len(matmul) // 2],
        "rows": rows,
    }
    _table(result)
    print(json.dumps(result, separators=(",", ":")))
    return result


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sampling, N={result['tokens']} tokens, {result['codebook']} codes, {result['steps']} COMMIT steps, "
                    f"{result['device']} x{result['threads']} threads, {result['clock']} clock, medians of {result['repeats']}, "
                    f"matmul {result['matmul_gflops']:.0f} GFLOP/s")
    for col in ("preset", "batch", "path", "variant", "median s", "clips/s", "GFLOP/s", "vs matmul", "AR s / COMMIT s", "same tokens"):
        t.add_column(col, justify="right")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)
    for r in result["rows"]:
        t.add_row(r["preset"], str(r["batch"]), r["path"], r["variant"], f(r["s"], ".3f"), f(r["clips_per_s"], ".2f"),
                  f(r.get("gflops"), ".1f"), f(r.get("vs_matmul"), ".2f"), f(r.get("ar_over_commit"), ".2f"),
                  {True: "yes", False: "NO", None: "–"}[r.get("same_tokens")])
    Console(stderr=True, width=170).print(t)


if __name__ == "__main__":
    main()
