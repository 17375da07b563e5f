"""Shared pieces of the benchmark: FLOP counts, the interleaved timer, the agreement check,
machine and library description."""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import subprocess
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


def run_child(job: dict, timeout: float = 900) -> dict:
    """Runs ``job`` in a fresh interpreter; returns its JSON result or {"error": ...}."""
    env = dict(os.environ)
    threads = str(job["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, LSTMRS_NUM_THREADS=threads)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(_HERE, "memory.py"), json.dumps(job)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])
