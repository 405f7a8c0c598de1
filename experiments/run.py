"""Run one of the paper's comparisons end to end with the project's own commands, and write its results.

    python experiments/run.py 3d_vs_2d                     # 3 seeds, the budget in COMPARISONS
    python experiments/run.py inflation_vs_scratch --seeds 0 1 2 --steps 400
    python experiments/run.py 3d_vs_2d --smoke             # seconds: tiny model, data and steps
    python experiments/run.py --list

A comparison is a set of **arms** (one thing changed between them) trained and scored with the same data,
steps and seeds. An arm is a chain of training **stages**, each one ``python cli.py fit`` with configs
composed from the shipped ones (``configs/…``) and the overlays in ``experiments/configs/`` (LightningCLI
``--config`` stacking; nothing else configures a run), a stage optionally starting from the previous
stage's checkpoint (``init_from``: 2D → 3D inflation; ``tokenizer_ckpt``: the MTM's tokenizer). Every
arm is then scored by **evaluations**: ``benchmarks/reconstruction.py`` for tokenizers (real clips never
trained on, the embedded data's held-out split) or ``python cli.py test --task …`` for MTMs.

Every stage of every seed has its own folder ``RUNS/<stage chain>/seed<k>`` (named by the stages and their
steps, so two comparisons that train the same thing share it). The script **resumes**: a stage whose folder
holds ``experiment_done.json`` is skipped, a stage interrupted after its first checkpoint continues from its
``last.ckpt`` (``fit --ckpt_path``; bit-exact on CPU), one interrupted before it starts again, and an
evaluation whose ``eval-<name>.json`` exists is not run again. The end: ``RESULTS/<comparison>.json``
(per arm and evaluation: every metric's mean ± standard deviation over seeds, the per-seed values, the
exact commands; for two arms, the difference and whether it exceeds the seed spread) and
``RESULTS/<comparison>.png`` (bars with error bars, one dot per seed).

Real runs execute each command as a subprocess (its output in ``<folder>/<command>.log``, OMP_NUM_THREADS=1
unless set); ``--smoke`` runs them in this process on a tiny generated dataset, 2 steps each, in seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
CLIPS = REPO.parent / "shared" / "data" / "clips"  # real videos from outside; never trained on
DEMO_SHARDS = Path("data/shards/dead_leaves-16x32")  # where `fit` generates the embedded set (relative to REPO)
DONE = "experiment_done.json"

TOK, TOK2D, MTM = "configs/tokenizer.yaml", "configs/paper/tokenizer_2d.yaml", "configs/mtm.yaml"
PER_FRAME = "experiments/configs/per_frame_data.yaml"
TOK3D_T4S4 = "experiments/configs/tokenizer_3d_t4s4.yaml"
TOK2D_S8 = "experiments/configs/tokenizer_2d_s8.yaml"

#: metric -> True when higher is better (plots and the difference say which way is better)
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "rfvd": False, "fvd": False,
                    "psnr_given": True, "ssim_given": True, "cond_token_agreement": True, "seconds": False,
                    "given_psnr": True, "gen_psnr": True, "cond_agree": True, "token_acc": True}


# ------------------------------------------------------------------------------------------ definitions
@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``python cli.py fit``: ``configs`` stacked in order, then ``args``.

    ``share``: this stage's fraction of the comparison's step budget (a 2D stage of 0.5 and a 3D stage of
    0.5 cost the steps of one run from scratch); ``steps``: a fixed number of steps instead (e.g. the
    tokenizer under an MTM comparison); ``seed``: a fixed seed instead of the arm's (a tokenizer shared by
    every MTM seed). ``previous``: the flag that receives the previous stage's ``last.ckpt``.
    """

    name: str
    configs: tuple[str, ...]
    args: tuple[str, ...] = ()
    share: float = 1.0
    steps: int | None = None
    seed: int | None = None
    previous: str | None = None  # e.g. "--model.init_args.init_from", "--model.init_args.tokenizer_ckpt"
    kind: str = "tokenizer"      # "tokenizer" | "mtm": which smoke shrinkage applies


@dataclasses.dataclass(frozen=True)
class Eval:
    """One scoring command per arm and seed. ``kind``: ``reconstruction`` (``benchmarks/reconstruction.py``
    on ``--videos`` = the real clips or ``--shards`` = the training data's held-out split, plus ``args``),
    ``task`` (``cli.py test --task`` ``task`` on the last stage's checkpoint, plus ``args``) or ``generation``
    (``benchmarks/generation.py --task`` ``task`` on the training data's val split: PSNR of the generated
    pixels against the real clip, next to the padded condition as the no-learning baseline).
    ``metrics``: what the figure shows (the JSON keeps every number the command reports)."""

    name: str
    kind: str
    source: str = ""             # reconstruction: "videos" | "shards"
    args: tuple[str, ...] = ()
    task: str = ""
    metrics: tuple[str, ...] = ("psnr", "ssim", "lpips")


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    label: str
    stages: tuple[Stage, ...]
    eval_args: tuple[str, ...] = ()  # added to every `cli.py test` / reconstruction evaluation of this arm
    generation_args: tuple[str, ...] = ()  # added to its `benchmarks/generation.py` evaluations (e.g. --steps 4)


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    claim: str
    arms: tuple[Arm, ...]
    evals: tuple[Eval, ...]
    steps: int                       # step budget of one arm (stages share it)
    seeds: tuple[int, ...] = (0, 1, 2)


RECON_8F = ("--num_frames", "8", "--resolution", "32", "--clips_per_video", "4")
REAL_8F = Eval("real_clips_8f", "reconstruction", "videos", (*RECON_8F, "--no_fvd"))
# rFVD needs >= 9 frames; on the 36 real clips it is nearly meaningless (400-d covariances from 36 samples) and
# costs minutes of single-threaded I3D per checkpoint, so tokenizer comparisons score it only with --rfvd
REAL_16F_FVD = Eval("real_clips_16f_rfvd", "reconstruction", "videos",
                    ("--num_frames", "16", "--resolution", "32", "--clips_per_video", "4", "--no_lpips"), metrics=("rfvd",))
HELD_OUT = Eval("dead_leaves_test", "reconstruction", "shards", ("--split", "test", "--num_frames", "8", "--resolution", "32", "--no_fvd"))

TOK3D = Stage("tok3d_t4s4", (TOK, TOK3D_T4S4))
DEMO_TOKENIZER = Stage("tok_demo", (TOK,), steps=1500, seed=0)
# the paper's COMMIT decoding (condition tokens re-predicted): configs/mtm.yaml holds them for the demo, which
# would change what the MTM comparisons measure (and their runs made before the demo changed used this)
PAPER_DECODING = ("--model.sampling.keep_condition", "false")
MTM_COMMIT = Stage("mtm_commit", (MTM,), PAPER_DECODING, previous="--model.init_args.tokenizer_ckpt", kind="mtm")
MTM_STEPS = 1500


def mtm_arm(name: str, label: str, stage: str = "", args: tuple[str, ...] = ()) -> Arm:
    """An MTM arm on the shared demo tokenizer: ``configs/mtm.yaml`` plus ``args`` (its own run ``stage``)."""
    return Arm(name, label, (DEMO_TOKENIZER, dataclasses.replace(MTM_COMMIT, name=stage, args=(*MTM_COMMIT.args, *args)) if stage else MTM_COMMIT))


def generation_eval(task: str) -> Eval:
    """``benchmarks/generation.py``: PSNR of the sampled video on the generated and the given pixels, condition
    tokens kept; 32 val clips, sampling seeds 0 and 1 (their mean is one value per training seed)."""
    return Eval(f"{task}_samples", "generation", "shards", ("--seeds", "0", "1", "--max_clips", "32", "--threads", "1"),
                task=task, metrics=("gen_psnr", "given_psnr"))


def task_eval(task: str, *more: str) -> Eval:
    """``cli.py test --task TASK``: PSNR on the given region and the share of condition tokens kept (+ ``more``)."""
    return Eval(task, "task", task=task, metrics=("psnr_given", "cond_token_agreement", *more))

COMPARISONS = {c.name: c for c in (
    Comparison(
        "3d_vs_2d", "3D-VQ vs per-frame 2D-VQ at equal token count",
        "MAGVIT (tokenizer comparison): 3D-VQ reconstructs video far better than per-frame 2D VQ (UCF-101 rFVD 58 "
        "for MAGVIT 3D-VQ-B vs about 240 for MaskGIT's 2D-VQ)",
        arms=(Arm("3d", "3D-VQ, token = 4x4x4 px (2x8x8 tokens)", (TOK3D,)),
              Arm("2d", "2D-VQ per frame, token = 1x8x8 px (8x4x4 tokens)",
                  (Stage("tok2d_s8", (TOK, TOK2D, PER_FRAME, TOK2D_S8)),))),
        evals=(REAL_8F, HELD_OUT), steps=400),
    Comparison(
        "inflation_vs_scratch", "Central inflation of a 2D model vs the 3D model from scratch, equal steps",
        "MAGVIT section 3.1 and its tokenizer ablation: the 3D-VQ is initialised by central inflation of a 2D-VQ, "
        "which the paper finds better than training the 3D model from scratch (its headline 3D-VQ-B, UCF-101 "
        "rFVD 58, is an inflated model)",
        arms=(Arm("inflated", "2D (1/2 of the steps), inflated, then 3D (1/2)",
                  (Stage("tok2d_s4", (TOK, TOK2D, PER_FRAME), share=0.5),
                   dataclasses.replace(TOK3D, share=0.5, previous="--model.init_args.init_from"))),
              Arm("scratch", "3D from scratch (all steps)", (TOK3D,))),
        evals=(REAL_8F, HELD_OUT), steps=400),
    Comparison(
        "commit_vs_naive", "COMMIT vs naive masked-token conditioning",
        "MAGVIT section 3.2 and its ablation: COMMIT's conditional masking (condition tokens from the padded "
        "condition video inside the masked region) beats plain masked-token conditioning",
        arms=(mtm_arm("commit", "COMMIT (mode commit)"),
              mtm_arm("naive", "naive MTM (mode naive)", "mtm_naive", ("--model.commit.mode", "naive"))),
        evals=(task_eval("frame_prediction"), task_eval("outpainting_central"),
               generation_eval("frame_prediction"), generation_eval("outpainting_central")), steps=MTM_STEPS),
    Comparison(
        "multi_vs_single_task", "Multi-task vs single-task MTM at equal steps, scored on the single task",
        "MAGVIT section 4 (multi-task results): one model trained on many tasks matches or beats models "
        "trained on one task, on that task",
        arms=(mtm_arm("multi", "all tasks"),
              mtm_arm("single", "frame prediction only", "mtm_fp_only", ("--model.tasks.names", "[frame_prediction]"))),
        evals=(task_eval("frame_prediction"), generation_eval("frame_prediction")), steps=MTM_STEPS),
    Comparison(
        "decoding_steps", "COMMIT decoding steps: quality and wall time",
        "MAGVIT: 12 COMMIT decoding steps instead of one model call per token (1024 autoregressive steps)",
        arms=tuple(Arm(f"steps{k}", f"{k} steps", (DEMO_TOKENIZER, MTM_COMMIT), ("--model.sampling.steps", str(k)),
                       ("--steps", str(k))) for k in (4, 8, 12, 16, 24)),
        evals=(task_eval("frame_prediction", "seconds"), generation_eval("frame_prediction")), steps=MTM_STEPS),
)}

# --smoke: what shrinks every command to seconds (same overrides as the tests' tiny configs)
SMOKE_TOKENIZER = ("--model.init_args.tokenizer.init_args.base_channels", "8",
                   "--model.init_args.tokenizer.init_args.embedding_dim", "6",
                   "--model.init_args.tokenizer.init_args.quantizer.init_args.dim", "6",
                   "--model.init_args.discriminator.init_args.base_channels", "4", "--model.init_args.warmup_steps", "1")
SMOKE_MTM = ("--model.transformer.hidden_dim", "32", "--model.transformer.num_layers", "2",
             "--model.transformer.num_heads", "2", "--model.transformer.mlp_dim", "64",
             "--model.optim.warmup_steps", "1", "--model.sampling.steps", "2")
SMOKE_DATA = ("--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
              "--data.init_args.eval_batch_size", "4", "--data.init_args.train_samples_per_epoch", "8")
SMOKE_STEPS = 2


# ------------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; None for one value) and the values themselves."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "per_seed": list(values)}


def difference(a: dict[str, Any], b: dict[str, Any], higher_is_better: bool | None) -> dict[str, Any]:
    """Arm a minus arm b for one metric: the difference of the means, the seed spread (std a + std b), whether
    the difference exceeds it, and the same-seed differences (does every seed agree on the sign?)."""
    delta = a["mean"] - b["mean"]
    spread = (a["std"] or 0.0) + (b["std"] or 0.0)
    paired = [x - y for x, y in zip(a["per_seed"], b["per_seed"])]
    out = {"delta": delta, "spread": spread, "exceeds_spread": abs(delta) > spread and len(paired) > 1,
           "paired": paired, "same_sign_every_seed": len(paired) > 1 and (all(d > 0 for d in paired) or all(d < 0 for d in paired))}
    if higher_is_better is not None:
        out["better"] = "a" if (delta > 0) == higher_is_better else "b"
    return out


# ------------------------------------------------------------------------------------------ the runner
class CommandError(RuntimeError):
    pass


def display(cmd: Sequence[str]) -> str:
    """A command as a person types it from the repository root."""
    return " ".join(["python" if c == sys.executable else c for c in cmd])


class Runner:
    """Plans and executes the commands of one comparison; see the module docstring."""

    def __init__(self, comparison: Comparison, seeds: Sequence[int], steps: int, runs: Path, results: Path,
                 data: str | None, clips: Path, smoke: bool, in_process: bool, log: Callable[[str], None] = print):
        self.c, self.seeds, self.steps, self.runs, self.results = comparison, list(seeds), steps, runs, results
        self.data, self.clips, self.smoke, self.in_process, self.log = data, clips, smoke, in_process, log

    # ---- planning
    def stage_steps(self, stage: Stage) -> int:
        if self.smoke:
            return SMOKE_STEPS
        return stage.steps if stage.steps is not None else max(1, round(self.steps * stage.share))

    def stage_dirs(self, arm: Arm, seed: int) -> list[Path]:
        """The folder of each stage of ``arm`` for ``seed``: RUNS/<chain of stage-steps[@seed]>/seed<k>."""
        chain, dirs = [], []
        for stage in arm.stages:
            chain.append(f"{stage.name}-{self.stage_steps(stage)}" + ("" if stage.seed is None else f"@s{stage.seed}"))
            dirs.append(self.runs / "+".join(chain) / f"seed{seed if stage.seed is None else stage.seed}")
        return dirs

    def fit_command(self, stage: Stage, seed: int, run_dir: Path, previous: Path | None) -> list[str]:
        cmd = [sys.executable, "cli.py", "fit"]
        for cfg in stage.configs:
            cmd += ["--config", cfg]
        cmd += ["--run_dir", rel(run_dir), "--seed_everything", str(seed), "--trainer.max_steps", str(self.stage_steps(stage)),
                "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", *stage.args]
        if previous is not None:
            cmd += [stage.previous, rel(previous / "checkpoints" / "last.ckpt")]
        if self.data:
            cmd += ["--data.init_args.data_dir", self.data]
        if self.smoke:
            cmd += [*(SMOKE_MTM if stage.kind == "mtm" else SMOKE_TOKENIZER), *SMOKE_DATA, "--trainer.log_every_n_steps", "1"]
        return cmd

    def eval_command(self, ev: Eval, arm: Arm, run_dir: Path) -> list[str] | None:
        """The scoring command, or None when its data is absent (the real clips outside this repository)."""
        ckpt = rel(run_dir / "checkpoints" / "last.ckpt")
        if ev.kind == "task":
            extra = ("--trainer.limit_test_batches", "1") if self.smoke else ()
            return [sys.executable, "cli.py", "test", "--ckpt_path", ckpt, "--task", ev.task,
                    "--run_dir", rel(run_dir / f"test-{ev.name}{tag(arm)}"), *ev.args, *arm.eval_args, *extra]
        if ev.kind == "generation":
            args = ["--seeds", "0", "--max_clips", "2", "--batch", "2", "--threads", "1"] if self.smoke else list(ev.args)
            return [sys.executable, "benchmarks/generation.py", "--ckpt", ckpt, "--name", arm.name, "--task", ev.task,
                    "--shards", self.data or str(DEMO_SHARDS), *args, *arm.generation_args]
        args = [*ev.args, *arm.eval_args]
        if self.smoke:  # one clip a video, no LPIPS/I3D: seconds
            args = [a for i, a in enumerate(args) if a not in ("--no_lpips", "--no_fvd", "--clips_per_video")
                    and (i == 0 or args[i - 1] != "--clips_per_video")] + ["--clips_per_video", "1", "--no_lpips", "--no_fvd"]
        cmd = [sys.executable, "benchmarks/reconstruction.py", "--ckpt", ckpt, "--threads", "1", *args]
        if ev.source == "videos":
            if not self.clips.is_dir():
                return None
            return cmd + ["--videos", str(self.clips)]
        return cmd + ["--shards", self.data or str(DEMO_SHARDS)]

    # ---- executing
    def execute(self, cmd: list[str], log_path: Path) -> dict | None:
        """Run ``cmd`` (subprocess, output to ``log_path``; or in this process with ``in_process``); returns the
        benchmark's JSON for ``benchmarks/reconstruction.py``."""
        self.log(f"$ {display(cmd)}")
        if self.in_process:
            return run_in_process(cmd)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as out:
            rc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            raise CommandError(f"{display(cmd[:3])} … failed with exit code {rc}; its output: {log_path}")
        if cmd[1].startswith("benchmarks/"):
            for line in log_path.read_text().splitlines():
                if line.startswith("{"):
                    return json.loads(line)
            raise CommandError(f"{display(cmd[:2])} printed no JSON line; its output: {log_path}")
        return None

    def fit(self, stage: Stage, seed: int, run_dir: Path, previous: Path | None) -> str:
        """Train one stage unless it is done; resume it from its last.ckpt when it was interrupted."""
        cmd = self.fit_command(stage, seed if stage.seed is None else stage.seed, run_dir, previous)
        if (run_dir / DONE).is_file():
            return display(cmd)
        last = run_dir / "checkpoints" / "last.ckpt"
        run = list(cmd)
        if last.is_file():
            self.log(f"resuming {rel(run_dir)} from its last.ckpt")
            run += ["--ckpt_path", rel(last)]
        elif run_dir.exists():  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        self.execute(run, run_dir.parent / f"{run_dir.name}.fit.log")
        write_json(run_dir / DONE, {"command": display(cmd), "seconds": round(time.perf_counter() - t0, 1),
                                    "resumed": last.is_file() and "--ckpt_path" in run})
        return display(cmd)

    def evaluate(self, ev: Eval, arm: Arm, run_dir: Path) -> tuple[dict | None, str | None]:
        """Score one arm's last stage (cached in ``eval-<name>.json``); returns (result, command) or (None, None)."""
        cmd = self.eval_command(ev, arm, run_dir)
        if cmd is None:
            return None, None
        cached = run_dir / f"eval-{ev.name}{tag(arm)}.json"
        if cached.is_file():
            return json.loads(cached.read_text()), display(cmd)
        t0 = time.perf_counter()
        out = self.execute(cmd, run_dir / f"eval-{ev.name}{tag(arm)}.log")
        seconds = round(time.perf_counter() - t0, 2)
        if ev.kind == "task":
            out = json.loads((run_dir / f"test-{ev.name}{tag(arm)}" / "results.json").read_text())
        result = flatten(ev, out, seconds)
        write_json(cached, result)
        return result, display(cmd)

    def run(self) -> dict:
        """Train and score every arm for every seed (skipping what is done), then write the JSON and the figure."""
        from rich.progress import Progress

        per_arm: dict[str, dict] = {a.name: {"label": a.label, "commands": {}, "values": {}, "baselines": {}} for a in self.c.arms}
        skipped: dict[str, str] = {}
        jobs = [(arm, seed) for seed in self.seeds for arm in self.c.arms]
        with Progress(transient=False) as progress:
            bar = progress.add_task(f"{self.c.name}", total=len(jobs))
            for arm, seed in jobs:
                dirs = self.stage_dirs(arm, seed)
                commands = [self.fit(stage, seed, d, dirs[i - 1] if i else None) for i, (stage, d) in enumerate(zip(arm.stages, dirs))]
                for ev in self.c.evals:
                    result, cmd = self.evaluate(ev, arm, dirs[-1])
                    if result is None:
                        skipped[ev.name] = f"{self.clips} is absent (the real clips live outside this repository)"
                        continue
                    commands.append(cmd)
                    values = per_arm[arm.name]["values"].setdefault(ev.name, {})
                    for key, value in result["values"].items():
                        values.setdefault(key, []).append(value)
                    if result.get("baseline"):
                        per_arm[arm.name]["baselines"][ev.name] = result["baseline"]
                    per_arm[arm.name].setdefault("info", {})[ev.name] = result.get("info", {})
                per_arm[arm.name]["commands"][f"seed{seed}"] = commands
                progress.advance(bar)
        report = self.report(per_arm, skipped)
        self.results.mkdir(parents=True, exist_ok=True)
        write_json(self.results / f"{self.c.name}.json", report)
        plot(report, self.c, self.results / f"{self.c.name}.png")
        return report

    def report(self, per_arm: dict[str, dict], skipped: dict[str, str]) -> dict:
        arms = {}
        for name, a in per_arm.items():
            stats = {ev: {k: mean_std(v) for k, v in vals.items()} for ev, vals in a["values"].items()}
            arms[name] = {"label": a["label"], "metrics": stats, "baselines": a["baselines"], "info": a.get("info", {}),
                          "commands": a["commands"]}
        out = {"comparison": self.c.name, "title": self.c.title, "claim": self.c.claim, "smoke": self.smoke,
               "seeds": self.seeds, "steps": self.steps if not self.smoke else SMOKE_STEPS,
               "arms": arms, "skipped": skipped, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        if len(self.c.arms) == 2:
            a, b = (x.name for x in self.c.arms)
            out["difference"] = {"a": a, "b": b, "evals": {
                ev: {k: difference(arms[a]["metrics"][ev][k], arms[b]["metrics"][ev][k], HIGHER_IS_BETTER.get(k))
                     for k in arms[a]["metrics"][ev] if k in arms[b]["metrics"].get(ev, {})}
                for ev in arms[a]["metrics"]}}
        return out


def tag(arm: Arm) -> str:
    """Evaluation file suffix of an arm with its own evaluation options (arms that share a training run)."""
    return f"-{arm.name}" if arm.eval_args or arm.generation_args else ""


def rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (commands run from the root)."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def flatten(ev: Eval, out: dict, seconds: float) -> dict:
    """One evaluation's numbers: ``values`` (metric → number) for the tokenizer or the task, ``baseline`` for the
    reconstruction benchmark's pooled baseline, ``info`` (clips, grid, ...); ``seconds`` of the command."""
    if ev.kind == "task":
        values = {k: v for k, v in out["results"][ev.task].items() if isinstance(v, (int, float)) and not k.endswith("_std")}
        return {"values": {**values, "seconds": seconds}, "info": {"protocol": out.get("protocol", {})}}
    if ev.kind == "generation":
        rows = out["results"]
        sample = next((r for k, r in rows.items() if k.startswith(f"{ev.task} · sample of ")), None)
        if sample is None:
            raise CommandError(f"evaluation {ev.name}: the checkpoint was not trained on {ev.task}, so nothing was sampled; "
                               f"train the arm on {ev.task} or leave this evaluation out of the comparison")
        padded = rows.get(f"{ev.task} · padded condition", {})
        values = {k: sample[k] for k in ("given_psnr", "gen_psnr", "cond_agree", "token_acc") if sample.get(k) is not None}
        return {"values": values, "baseline": {"gen_psnr": padded["gen_psnr"]} if padded.get("gen_psnr") is not None else {},
                "info": {k: out[k] for k in ("clips", "seeds", "source", "num_frames", "resolution")}}
    rows = out["results"]
    base_key = next(k for k in rows if k.startswith("baseline"))
    ckpt_key = next(k for k in rows if k != base_key)
    pick = lambda r: {k: r[k] for k in ("psnr", "ssim", "lpips", "rfvd") if r.get(k) is not None}  # noqa: E731
    info = {k: rows[ckpt_key][k] for k in ("params", "codebook_size", "grid", "step", "clips")}
    info.update(clips_source={k: out[k] for k in ("videos", "shards", "split", "clips_per_video", "num_frames", "resolution") if k in out},
                skipped=rows[ckpt_key].get("skipped", {}))
    return {"values": pick(rows[ckpt_key]), "baseline": pick(rows[base_key]), "info": info}


def write_json(path: Path, obj: Any) -> None:
    from magvit_pl.run.files import write_json as atomic_write_json

    atomic_write_json(path, obj)


def run_in_process(cmd: list[str]) -> dict | None:
    """``cmd`` without a new interpreter (``--smoke``): ``cli.py`` through :func:`magvit_pl.run.cli.main`, a
    benchmark script through its ``main(argv)``."""
    argv = sys.argv
    sys.argv = cmd[1:]  # what the command would see (LightningCLI warns when args= and another sys.argv differ)
    try:
        with contextlib.chdir(REPO):
            if cmd[1] == "cli.py":
                from magvit_pl.run.cli import main

                main(cmd[2:])
                return None
            spec = importlib.util.spec_from_file_location(Path(cmd[1]).stem, REPO / cmd[1])
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.main(cmd[2:])
    finally:
        sys.argv = argv
        # a Lightning command in this process leaves its folder here for DDP children, and the next command
        # would write into it instead of its own --run_dir
        os.environ.pop("MAGVIT_PL_RUN_DIR", None)


# ------------------------------------------------------------------------------------------------- figure
def plot(report: dict, comparison: Comparison, path: Path) -> None:
    """One panel per (evaluation, metric): a bar per arm at the mean over seeds, the standard deviation as an error
    bar, every seed as a dot, and the reconstruction baseline at the arm's token grid as a dashed line."""
    from matplotlib.figure import Figure

    from magvit_pl.run.files import atomic_path

    panels = [(ev.name, m) for ev in comparison.evals for m in ev.metrics
              if any(m in a["metrics"].get(ev.name, {}) for a in report["arms"].values())]
    if not panels:
        return
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    names = list(report["arms"])
    for i, (ev, metric) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for x, name in enumerate(names):
            s = report["arms"][name]["metrics"].get(ev, {}).get(metric)
            if s is None:
                continue
            ax.bar(x, s["mean"], yerr=s["std"] or 0.0, capsize=6, color=f"C{x}", alpha=0.75)
            ax.plot([x] * len(s["per_seed"]), s["per_seed"], "k.", ms=5)
            base = report["arms"][name]["baselines"].get(ev, {}).get(metric)
            if base is not None:
                ax.hlines(base, x - 0.4, x + 0.4, colors="k", linestyles="--", lw=1)
        values = [v for n in names for v in report["arms"][n]["metrics"].get(ev, {}).get(metric, {}).get("per_seed", [])]
        values += [report["arms"][n]["baselines"].get(ev, {}).get(metric) for n in names]
        values = [v for v in values if v is not None]
        lo, hi = min(values), max(values)
        pad = 0.25 * (hi - lo) + 1e-3 * max(abs(hi), 1.0)
        ax.set_ylim(lo - pad if lo > 0 and lo - pad > 0 else min(0.0, lo - pad), hi + pad)
        ax.set_xticks(range(len(names)), names)
        better = {True: "higher is better", False: "lower is better"}.get(HIGHER_IS_BETTER.get(metric), "")
        ax.set_title(f"{ev}\n{metric} ({better})" if better else f"{ev}\n{metric}", fontsize=9)
    n = len(report["seeds"])
    fig.suptitle(f"{comparison.title}: mean ± std over {n} seed{'s' if n > 1 else ''}, dots = seeds, "
                 f"dashed = no-learning baseline (tokenizers: pooled to the arm's grid; samples: the padded condition)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


# ---------------------------------------------------------------------------------------------------- CLI
def smoke_data(runs: Path) -> str:
    """A tiny dataset of the embedded generator (8 clips a split of 8x32x32) for ``--smoke``."""
    from magvit_pl.data.synthetic import ensure_default_dataset

    root = ensure_default_dataset(runs / "data", num_train=8, num_val=4, num_test=4, num_frames=8, resolution=32,
                                  shard_size=4, workers=0)
    return rel(root)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("comparison", nargs="?", help=f"one of: {', '.join(COMPARISONS)}")
    ap.add_argument("--list", action="store_true", help="list the comparisons and their arms, then exit")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the comparison's, 0 1 2)")
    ap.add_argument("--steps", type=int, help="step budget of one arm (default: the comparison's)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, data and 2 steps: the whole pipeline in seconds")
    ap.add_argument("--data", help="training data folder (default: the embedded dead-leaves set, generated on first use)")
    ap.add_argument("--clips", type=Path, default=CLIPS, help="real videos to score on (skipped when absent)")
    ap.add_argument("--runs", type=Path, help="run folders (default experiments/runs, --smoke: experiments/runs/smoke)")
    ap.add_argument("--results", type=Path, help="where <comparison>.json/.png go (default experiments/results, "
                                                 "--smoke: RUNS/results)")
    ap.add_argument("--rfvd", action="store_true", help="tokenizer comparisons: also score rFVD on 16-frame real clips "
                                                       "(I3D weights fetched; 36 clips: ranks arms at best)")
    ap.add_argument("--in_process", action="store_true", help="run the commands in this process (default with --smoke)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.list:
        for c in COMPARISONS.values():
            print(f"{c.name}: {c.title} ({c.steps} steps an arm, seeds {' '.join(map(str, c.seeds))})")
            for arm in c.arms:
                print(f"  {arm.name}: {arm.label}")
        return None
    if args.comparison not in COMPARISONS:
        raise UsageError(f"comparison {args.comparison!r}: choose one of {', '.join(COMPARISONS)} (--list shows them)")
    if args.steps is not None and args.steps < 2:
        raise UsageError(f"--steps {args.steps}: must be >= 2 (stages share it)")
    if args.seeds is not None and any(s < 0 for s in args.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, args.seeds))}: seeds must be >= 0")
    c = COMPARISONS[args.comparison]
    if args.rfvd:
        if any(ev.kind != "reconstruction" for ev in c.evals):
            raise UsageError(f"--rfvd: {c.name} scores transformers, not reconstructions; it applies to tokenizer comparisons")
        c = dataclasses.replace(c, evals=(*c.evals, REAL_16F_FVD))
    runs = (args.runs or (EXPERIMENTS / "runs" / ("smoke" if args.smoke else ""))).absolute()
    data = args.data
    if data is not None and not Path(data).is_dir():
        raise UsageError(f"--data {data}: not a folder")
    if args.smoke and data is None:
        data = smoke_data(runs)
    runner = Runner(c, args.seeds or c.seeds, args.steps or c.steps, runs,
                    (args.results or (runs / "results" if args.smoke else EXPERIMENTS / "results")).absolute(),
                    data, args.clips, args.smoke, args.in_process or args.smoke)
    report = runner.run()
    print(f"wrote {rel(runner.results / (c.name + '.json'))} and .png")
    return report


class UsageError(ValueError):
    pass


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
