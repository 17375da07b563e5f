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

import json
import sys

import tbptt
from common import measure_peak, run_child

__all__ = ["measure_peak", "run_child", "train_step_peak"]


# ---------------------------------------------------------------------------------------------
# Parent side


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
    return tbptt.child(job)


def _child(job: dict) -> dict:
    kinds = {"train_step": _train_step_job, "tbptt": _tbptt_job}
    return {"job": job, **kinds[job["kind"]](job)}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
