"""Peak memory, measured in a fresh child process per (library, case).

Method (Linux): the child imports one library only, builds the model and input, runs the step
once on a tiny input (so library code pages, thread pools and one-time caches are not charged
to the case), drops those gradients, then writes "5" to /proc/self/clear_refs, which resets the
peak resident set size VmHWM to the current VmRSS. After the measured work, peak = VmHWM -
VmRSS at the reset: the resident memory the work added at its high point (tapes, activations,
gradients, workspaces, allocator growth), not counting the model and input that existed before.

Where clear_refs cannot be written the peak is VmHWM since process start minus the baseline,
an upper bound; the result says which ("method").

Run as a script, this file is the child: ``python bench/memory.py '<job json>'`` prints one JSON
line.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys

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


# ---------------------------------------------------------------------------------------------
# Parent side


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


def train_step_peak(lib: str, variant: str, case, threads: int, steps: int = 2) -> dict:
    return run_child(
        {
            "kind": "train_step",
            "lib": lib,
            "variant": variant,
            "case": list(case),
            "threads": threads,
            "steps": steps,
        }
    )


# ---------------------------------------------------------------------------------------------
# Child side


def _train_step_job(job: dict) -> dict:
    from impls import lstmrs_fns, lstmrs_layer, make_input, torch_fns, torch_module

    b, t, i, h, layers = job["case"]
    x, tiny = make_input(b, t, i), make_input(2, 2, i, seed=1)
    if job["lib"] == "torch":
        import torch

        torch.set_num_threads(job["threads"])
        module = torch_module(torch, job["variant"], i, h, layers)
        train = torch_fns(torch, module, x)[1]
        torch_fns(torch, module, tiny)[1]()
        for p in module.parameters():
            p.grad = None
    else:
        import lstmrs

        lstmrs.set_num_threads(job["threads"])
        layer = lstmrs_layer(lstmrs, job["variant"], i, h, layers)
        train = lstmrs_fns(layer, x)[1]
        lstmrs_fns(layer, tiny)[1]()

    def steps():
        # Keep each step's gradients alive until the next one, as a training loop does.
        out = None
        for _ in range(job["steps"]):
            out = train()
        return out

    return measure_peak(steps)


def _tbptt_job(job: dict) -> dict:
    import tbptt

    return tbptt.child(job)


def _child(job: dict) -> dict:
    kinds = {"train_step": _train_step_job, "tbptt": _tbptt_job}
    return {"job": job, **kinds[job["kind"]](job)}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
