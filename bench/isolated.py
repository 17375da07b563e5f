"""Timing each library in its own fresh process: the record's default (``--shared-process``
times them taking turns in one process instead).

Why: users deploy one library per process and call it in a loop. Timed in one process, a
library pays for the others: torch's OpenMP threads spin on every core for a while after each
of its calls, and each library's pool wakes from sleep after the others' turns. On a 2-core
machine that is a large, unequal tax.

How (parent side, this module): the parent writes the case's weights and inputs once to a
temporary ``.npz`` (and the ONNX graphs to ``.onnx`` files), then runs ``python bench/worker.py
'<job json>'`` for each library, one after another, with every library's thread count set by
environment before import (``common.child_env``). The worker imports only the library it times,
rebuilds the torch module, lstmrs layer or ORT session from those files, runs it once and writes
that result back (the parent checks it against torch, so what is timed is what was verified),
warms up, times its calls back to back (``common.time_back_to_back``) and prints the times as
one JSON line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Self

import numpy as np
from common import require_agreement, run_child

ISOLATION = "process per library"
SHARED = "shared process, interleaved"


def timing_job(args) -> dict:
    """The timing fields of every worker job, from the record's options."""
    return {
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "min_seconds": args.min_time,
    }


def rotated(seq: list, turn: int) -> list:
    """``seq`` started at position ``turn`` (mod its length): each case runs its libraries in a
    different order, so a slow spell of the machine does not always hit the same one."""
    k = turn % len(seq) if seq else 0
    return list(seq[k:]) + list(seq[:k])


class Workspace:
    """A temporary directory for one case's files, removed on exit."""

    def __enter__(self) -> Self:
        self.path = tempfile.mkdtemp(prefix="lstmrs-bench-")
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def save(self, name: str, **arrays) -> str:
        path = self.file(f"{name}.npz")
        np.savez(path, **arrays)
        return path

    def save_model(self, name: str, model) -> str:
        """An ``onnx.ModelProto``, serialized (the ORT workers need neither onnx nor lstmrs)."""
        path = self.file(f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        return path


def run_worker(job: dict, timeout: float = 1800) -> dict:
    """One worker's result; exits the record with status 1 if the worker failed."""
    res = run_child(job, timeout, script="worker.py")
    if "error" in res:
        print(f"worker {job['kind']} {job['lib']} failed: {res['error']}", file=sys.stderr)
        sys.exit(1)
    return res


def time_libs(
    base: dict, libs: list[str], ws: Workspace, check, per_lib: dict | None = None
) -> tuple[dict, dict]:
    """Runs one worker per library of ``libs``, in that order, each on ``base`` + its ``lib``
    (+ ``per_lib[lib]``, e.g. its ONNX file);
    ``check(lib, outputs)`` returns the problems of the worker's own first result (the arrays
    it wrote). Returns (lib -> times in ms, lib -> what the worker saw: its libraries' thread
    counts, the timed libraries it imported, its setup seconds, and its ``label`` if any)."""
    timed, details, problems = {}, {}, []
    for lib in libs:
        out = ws.file(f"out-{lib}.npz")
        res = run_worker(base | (per_lib or {}).get(lib, {}) | {"lib": lib, "out": out})
        with np.load(out) as data:
            problems += check(lib, {k: data[k] for k in data.files})
        timed[lib] = res["times_ms"]
        details[lib] = {k: res[k] for k in ("threads_seen", "modules", "setup_s")}
        if res.get("label") is not None:
            details[lib]["label"] = res["label"]  # e.g. the kernel a lowp worker ran
    what = f"{base['kind']} {base.get('cell', '')} workers {', '.join(libs)}"
    require_agreement(f"{what}: their own results agree with torch", problems)
    return timed, details
