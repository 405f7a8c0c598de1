"""Stage-2 training step with and without the token cache (``model.token_cache_clips``).

Builds the MTM of ``--config`` (default ``configs/mtm.yaml``) on a tokenizer checkpoint
and times one optimisation step (tokenize → COMMIT loss → backward → AdamW) on batches of real
shard clips, side by side in one run:

- ``off``: every step encodes the clips with the frozen tokenizer (z) and the task's condition (z̃);
- ``warm``: the cache already holds every clip (the steady state with augmentation off): only z̃ is encoded;
- ``encode``: the tokenizer's encode alone, for scale.

Both models cycle the same task sequence; steps of the modes alternate; medians of ``--repeats`` steps
after one warm-up step. Prints a rich
table on stderr and ONE JSON line on stdout::

    python benchmarks/token_cache.py --tokenizer_ckpt runs/tokenizer/latest/checkpoints/last.ckpt --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from timing import timed

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer_ckpt", default="runs/tokenizer/latest/checkpoints/last.ckpt")
    ap.add_argument("--config", default=str(REPO / "configs" / "mtm.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--data_dir", default=None, help="prepared shard folder (default: the config's, i.e. the embedded set)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.tokenizer_ckpt).is_file():
        sys.exit(f"error: tokenizer checkpoint {args.tokenizer_ckpt} not found; train one with: python cli.py fit --config configs/tokenizer.yaml")

    from magvit_pl.data.datamodule import VideoDataModule
    from magvit_pl.lit.mtm import MTMModule
    from magvit_pl.lit.mtm_batch import commit_step, tokenize
    from magvit_pl.lit.mtm_options import constructor_args

    cfg = yaml.safe_load(Path(args.config).read_text())
    m_args = dict(cfg["model"]["init_args"], tokenizer_ckpt=args.tokenizer_ckpt)
    d_args = dict(cfg["data"]["init_args"], batch_size=args.batch, num_workers=0, random_flip=False, random_crop=False)
    if args.data_dir:
        d_args["data_dir"] = args.data_dir
    dm = VideoDataModule(**d_args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)

    models = {}
    for mode, clips in (("off", 0), ("warm", 4096)):
        model = MTMModule(**constructor_args({**m_args, "token_cache_clips": clips}))  # YAML groups -> dataclasses
        model.configure_model()
        model.train()
        opt = torch.optim.AdamW(model.transformer.parameters(), lr=1e-4)
        models[mode] = (model, opt)
    b = models["warm"][0].on_before_batch_transfer(dict(batch), 0)
    models["warm"][0].clip_tokens(b)  # fill the cache

    def step(mode: str) -> None:
        model, opt = models[mode]
        data = b if mode == "warm" else batch
        task = model.task(model.schedule.task_at(0))  # the same task every step, for both modes
        inputs = tokenize(model.tokenizer, model.vocab, task, data["video"], data.get("label"), z=model.clip_tokens(data))
        loss, _, _ = commit_step(model.transformer, inputs, model.vocab, model.commit_config, drop_classes=task.uses_class)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tok = models["off"][0].tokenizer
    cpu = torch.device("cpu")
    for mode in models:
        step(mode)  # warm-up
    samples: dict[str, list[float]] = {mode: [] for mode in (*models, "encode")}
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits every mode alike
        for mode in models:
            samples[mode].append(timed(lambda m=mode: step(m), 1, cpu))
        samples["encode"].append(timed(lambda: tok.encode(batch["video"]), 1, cpu))
    times = {mode: statistics.median(v) for mode, v in samples.items()}
    rows = {mode: {"s_per_step": round(t, 4), "clips_per_s": round(args.batch / t, 1)} for mode, t in times.items()}
    result = {"benchmark": "token_cache", "batch": args.batch, "threads": torch.get_num_threads(),
              "clip": [d_args["num_frames"], d_args["resolution"], d_args["resolution"]], "modes": rows,
              "speedup_warm_vs_off": round(times["off"] / times["warm"], 2),
              "hit_rate_warm": models["warm"][0].token_cache.hit_rate}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MTM train step, batch {args.batch}, {torch.get_num_threads()} threads (median of {args.repeats})")
    for col in ("mode", "s / step", "clips / s"):
        table.add_column(col)
    for mode, r in rows.items():
        table.add_row(mode, f"{r['s_per_step']:.3f}", f"{r['clips_per_s']:.1f}")
    Console(stderr=True).print(table)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
