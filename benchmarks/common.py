"""Shared helpers for the benchmarks: machine speed, interleaved timing, peak memory."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def machine() -> dict:
    """What ran the benchmark, and how fast it was at that moment (matmul GFLOP/s, fp32)."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        n += 1
    gflops = n * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops_fp32": round(gflops, 1),
    }


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaved (a, b, a, b, ...) so that a change in machine
    load affects both alike. Returns seconds per call, per function."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def median(v: list[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2]


def ratio_line(name: str, base: list[float], ours: list[float], what: str = "faster") -> str:
    r = median(base) / median(ours)
    return f"{name}: ours {median(ours) * 1e3:.1f} ms vs {median(base) * 1e3:.1f} ms -> {r:.2f}x {what}"
