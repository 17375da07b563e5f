"""Shared pieces of the benchmark: FLOP counts, the timers (back to back in one process,
interleaved between implementations), robust statistics, the agreement check, machine and
library description, child processes."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def calls_needed(est_ms: float, repeats: int, min_seconds: float) -> int:
    """Timed calls of one measurement: at least ``repeats``, and enough to fill ``min_seconds``
    at ``est_ms`` per call (short calls get more samples, so their median settles)."""
    if min_seconds <= 0 or est_ms <= 0:
        return repeats
    return max(repeats, math.ceil(min_seconds * 1e3 / est_ms))


def time_back_to_back(fn, warmup: int, repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock ms of ``fn`` called back to back, as a deployed loop calls it: ``warmup``
    untimed calls, then timed calls until there are at least ``repeats`` of them and they add
    up to at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or total < min_seconds * 1e3:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        total += times[-1]
    return times


def time_interleaved(
    fns: dict, warmup: int, repeats: int, min_seconds: float = 0.0
) -> dict[str, list[float]]:
    """Wall-clock ms of each function, the implementations taking turns within every repeat so
    that a slow spell of the machine hits all of them alike. With ``min_seconds``, a function
    whose ``repeats`` calls would take less than that is called k times back to back in its turn
    (each call timed), k from its last warm-up call, so every function gets
    ``calls_needed`` samples while the turns stay ``repeats`` rounds."""
    warmup = max(warmup, 1) if min_seconds > 0 else warmup
    per_turn = dict.fromkeys(fns, 1)
    for name, fn in fns.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            est = (time.perf_counter() - t0) * 1e3
        if min_seconds > 0:
            per_turn[name] = math.ceil(calls_needed(est, repeats, min_seconds) / repeats)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(per_turn[name]):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times: list[float], flops: float | None = None) -> dict:
    """Median, min, quartiles and the inter-quartile range (absolute and / median) of the
    calls' times; GFLOP/s at the median when ``flops`` is given."""
    med = statistics.median(times)
    q1, _, q3 = (
        statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (med,) * 3
    )
    row = {
        "median_ms": med,
        "min_ms": min(times),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "iqr_rel": (q3 - q1) / med if med > 0 else 0.0,
        "calls": len(times),
        "times_ms": times,
    }
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


def cpu_identity() -> dict:
    """Family, model and stepping (/proc/cpuinfo) and core 0's cache sizes (sysfs, e.g.
    ``{"L1d": "32K", "L2": "1024K", "L3": "32768K"}``): one model name ("AMD EPYC") covers VMs
    of different generations (stop 19's Zen 5 with a 48 KiB L1d, stop 20's Zen 4 with 32 KiB),
    and records compare only on the same one."""
    ident: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key not in ident:
                    ident[key] = value.strip()
                if not line.strip() and ident:
                    break  # the first processor's block is enough
    except OSError:
        pass
    caches = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            d = Path(base, index)
            try:
                level, kind, size = (
                    (d / name).read_text().strip() for name in ("level", "type", "size")
                )
            except OSError:
                continue
            if kind != "Instruction":
                caches[f"L{level}" + ("d" if kind == "Data" else "")] = size
    except OSError:
        pass
    if caches:
        ident["caches"] = caches
    return ident


def library_kernels(torch=None, lstmrs=None) -> dict:
    """The instruction sets each library's f32 kernels use in this process, as far as the
    library says: lstmrs per kernel family (``_lstmrs.cpu_kernels``), torch's ATen capability
    (its BLAS, MKL, picks its own kernels), NumPy's OpenBLAS core (through threadpoolctl, when
    installed). ONNX Runtime's MLAS picks its kernels at run time and reports nothing."""
    out: dict = {}
    kernels = getattr(getattr(lstmrs, "_lstmrs", None), "cpu_kernels", None)
    if kernels is not None:
        out["lstmrs"] = dict(kernels())
    if torch is not None:
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        out["torch"] = {"aten": cap() if cap else "unknown", "blas": "MKL's own dispatch"}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for lib in threadpool_info():
            if lib.get("internal_api") == "openblas" and "numpy" in lib.get("filepath", ""):
                out["numpy"] = {"openblas_core": lib.get("architecture", "unknown")}
    out["onnxruntime"] = "MLAS run-time dispatch (not reported)"
    return out


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Peak memory (Linux), shared by memory.py and tbptt.py; memory.py's docstring has the method.

_HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kib(field: str) -> int:
    return rss_hwm_kib()[field]


def rss_hwm_kib() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size in KiB, from one read."""
    with open("/proc/self/status") as f:
        text = f.read()
    return {
        k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.MULTILINE).group(1))
        for k in ("VmRSS", "VmHWM")
    }


def reset_peak() -> bool:
    """Resets VmHWM to VmRSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def measure_peak(fn) -> dict:
    """Runs ``fn`` once and returns its peak RSS increase (MiB) over the RSS just before."""
    gc.collect()
    reset = reset_peak()
    base = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    del result
    return {
        "peak_rss_increase_mb": (peak - base) / 1024,
        "baseline_rss_mb": base / 1024,
        "rss_after_mb": after / 1024,
        "method": "VmHWM after clear_refs reset" if reset else "VmHWM since start (upper bound)",
    }


def child_env(threads: int) -> dict[str, str]:
    """The environment of a child process: every library's thread count set before import."""
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, LSTMRS_NUM_THREADS=n)
    return env


def run_child(job: dict, timeout: float = 900, script: str = "memory.py") -> dict:
    """Runs ``job`` in a fresh interpreter (``python bench/<script> '<job json>'``, the thread
    counts set by environment); returns its JSON result or {"error": ...}."""
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(_HERE, script), json.dumps(job)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(job["threads"]),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])
