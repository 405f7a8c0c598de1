"""Timing helpers shared by the benchmark scripts (imported as ``timing`` when a script runs from benchmarks/)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, seconds."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(device: torch.device, n: int, repeats: int) -> float:
    """GFLOP/s of an n×n fp32 matmul: the reference the models' achieved GFLOP/s are compared with."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    return 2 * n**3 / timed(lambda: a @ b, repeats, device) / 1e9


def interleaved(
    fns: dict[str, Callable[[], object]],
    flops: dict[str, float],
    repeats: int,
    warmup: int,
    device: torch.device,
    matmul_n: int = 2048,
    clock: str = "wall",
) -> dict:
    """Time several callables fairly on a shared machine: ``warmup`` calls each, then ``repeats`` rounds in
    which every callable runs once, each call between two n×n fp32 matmuls. A call's efficiency is its
    FLOP rate over the faster of its two neighbouring matmuls', so load that comes and goes hits both.
    ``clock="cpu"`` times with this process's CPU time instead of the wall clock: with one thread it does
    not count the time other processes hold the core (with more, it counts threads spinning at barriers).

    Returns ``{"matmul_gflops": median, "rows": {name: {"s": median seconds, "gflops": FLOPs / median s,
    "vs_matmul": median of the per-call ratios}}}``.
    """
    now = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    a = torch.randn(matmul_n, matmul_n, device=device)
    b = torch.randn(matmul_n, matmul_n, device=device)

    def matmul_s() -> float:
        sync(device)
        t0 = now()
        a @ b
        sync(device)
        return now() - t0

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    matmul_s()
    seconds = {k: [] for k in fns}
    ratios = {k: [] for k in fns}
    matmul_rates = []
    for _ in range(repeats):
        for name, fn in fns.items():
            before = matmul_s()
            sync(device)
            t0 = now()
            fn()
            sync(device)
            s = now() - t0
            rate = 2 * matmul_n**3 / min(before, matmul_s())
            matmul_rates.append(rate)
            seconds[name].append(s)
            ratios[name].append(flops[name] / s / rate)
    rows = {}
    for name in fns:
        s = statistics.median(seconds[name])
        rows[name] = {"s": s, "gflops": flops[name] / s / 1e9, "vs_matmul": statistics.median(ratios[name])}
    return {"matmul_gflops": statistics.median(matmul_rates) / 1e9, "rows": rows}
