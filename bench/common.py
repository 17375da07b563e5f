"""Shared pieces of the benchmark: FLOP counts, the interleaved timer, the agreement check,
machine and library description."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import numpy as np

GATES = {"lstm": 4, "gru": 3, "peephole_lstm": 4}


def forward_flops(cell: str, b: int, t: int, i: int, h: int, layers: int, dirs: int = 1) -> float:
    """Gate matmul FLOPs of one forward pass (multiply-add = 2): sum over layers and directions
    of 2 * T * B * G * H * (I_l + H). Element-wise work is ignored."""
    total = 0.0
    for layer in range(layers):
        in_size = i if layer == 0 else dirs * h
        total += dirs * 2.0 * t * b * GATES[cell] * h * (in_size + h)
    return total


def training_flops(forward: float) -> float:
    # Backward = input-gradient and weight-gradient matmuls, each the size of the forward ones.
    return 3.0 * forward


def time_interleaved(fns: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall-clock ms of each function, the implementations taking turns within every repeat so
    that a slow spell of the machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times: list[float], flops: float | None = None) -> dict:
    med = statistics.median(times)
    row = {"median_ms": med, "min_ms": min(times), "times_ms": times}
    if flops is not None:
        row["flops"] = flops
        row["gflops"] = flops / (med * 1e-3) / 1e9
    return row


def close(name: str, got, ref, rtol: float) -> str | None:
    """None when ``got`` agrees with ``ref`` (max |a-b| / max |b| <= rtol), else the problem."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return f"{name}: shape {got.shape} != {ref.shape}"
    err = float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-30)
    return None if err <= rtol else f"{name}: max|a-b|/max|b| = {err:.3e} > {rtol:.0e}"


def require_agreement(what: str, problems: list[str | None]) -> None:
    """Exits with status 1 (nothing gets timed) if any check failed."""
    problems = [p for p in problems if p]
    if problems:
        print(f"verification FAILED ({what}), not timing:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"verified {what}")


def set_threads(threads: int, torch=None, lstmrs=None) -> None:
    if torch is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set by an earlier parallel call
    if lstmrs is not None:
        lstmrs.set_num_threads(threads)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD extensions that matter for f32 kernels, as /proc/cpuinfo lists them."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512vl", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
