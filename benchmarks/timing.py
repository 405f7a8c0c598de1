"""Timing helpers shared by the benchmark scripts (imported as ``timing`` when a script runs from benchmarks/)."""
from __future__ import annotations

import statistics
import time

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
