"""lstmrs' performance record: lstmrs against PyTorch (CPU) and ONNX Runtime, one run, one
thread count.

    python bench/bench_rnn.py --threads 2 --json bench/results/run.json   # full record
    python bench/bench_rnn.py --quick                                     # smoke run

Sections (--modes, comma list; default all):
  inference  forward only, five shapes x LSTM/GRU (cases.py); torch, lstmrs, ONNX Runtime
  training   forward + backward of output.sum(), same cases; torch, lstmrs
  memory     peak RSS of one training step per library, each in a fresh process (memory.py);
             attached to the training rows of the cases and plugin sections
  plugin     the plugin peephole LSTM and the DSL-described LSTM against the built-in LSTM
             (plugin_cells.py), in the modes selected (both when neither is)
  stream     one streamed step per Python call, B 1/32 x H 128/512 (stream.py)
  tbptt      a T = 100,000 stream under truncated BPTT, time and memory (tbptt.py)
  proj       the projected LSTM (proj_size) against torch's, in the modes selected (proj.py);
             --proj-gpu adds lstmrs on the GPU
  gpu        lstmrs on the GPU against torch CUDA (TF32 off/on), T x B x H grid, plus the
             device's dispatch cost and matmul speed (gpu.py); only when named

Every library gets the same number of intra-op threads (torch.set_num_threads,
lstmrs.set_num_threads, ORT intra_op_num_threads; inter-op threads 1; in child processes also
OMP/MKL/OPENBLAS/LSTMRS_NUM_THREADS), float32. A large f32 GEMM timed in the same run (gemm.py)
is the ceiling that %GEMM refers to. Every case is verified against torch before it is timed;
the script exits with status 1 if any disagrees.

Timing (gemm, inference, training, stream): by default each library runs in its own fresh
process (isolated.py, worker.py), rebuilt from the same weights and input, its calls back to
back, as a deployment calls it; its first result is checked against torch too. The libraries
of one case run one after another, in an order rotated per case. --shared-process times them
in this one process instead, taking turns within each repeat (the plugin, tbptt and proj
sections always do). A row takes at least --repeats calls and at least --min-time seconds of
them; it reports the median, min and inter-quartile range. The end of the report checks
issue 16's goals (goals.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import cases
import gemm
import goals
import gpu
import isolated
import numpy as np
import ort_models
import plugin_cells
import proj
import report
import stream
import tbptt
from common import cpu_flags, cpu_identity, cpu_name, library_kernels, loadavg, set_threads

SECTIONS = ("inference", "training", "memory", "plugin", "stream", "tbptt", "proj", "gpu")
# The GPU section runs only when named: on a software Vulkan driver its grid takes hours.
DEFAULT_SECTIONS = SECTIONS[:-1]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every library")
    ap.add_argument(
        "--repeats", type=int, default=15, help="at least this many timed calls per measurement"
    )
    ap.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        metavar="S",
        help="and at least S seconds of timed calls (short calls get more samples)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    ap.add_argument(
        "--shared-process",
        action="store_true",
        help="time every library in this one process, taking turns (default: each library in "
        "its own fresh process, calls back to back)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm,gru (shape cases)")
    ap.add_argument(
        "--modes",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma list of {','.join(SECTIONS)} (default: all but gpu)",
    )
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n x n GEMM ceiling")
    ap.add_argument("--tbptt-steps", type=int, default=100_000, help="stream length T (tbptt)")
    ap.add_argument("--tbptt-window", type=int, default=200, help="truncation window (tbptt)")
    ap.add_argument("--tbptt-batch", type=int, default=8, help="parallel streams B (tbptt)")
    ap.add_argument("--tbptt-hidden", type=int, default=128, help="hidden size H (tbptt)")
    ap.add_argument("--tbptt-input", type=int, default=16, help="input size I (tbptt)")
    gpu.add_arguments(ap)
    proj.add_arguments(ap)
    ap.add_argument("--json", metavar="PATH", help="write the record as JSON")
    args = ap.parse_args(argv)
    args.sections = [m for m in args.modes.split(",") if m]
    args.cells = [c for c in args.cells.split(",") if c]
    if any(m not in SECTIONS for m in args.sections):
        ap.error(f"--modes: expected a comma list of {','.join(SECTIONS)}, got {args.modes!r}")
    if any(c not in cases.CELLS for c in args.cells):
        ap.error(f"--cells: expected a comma list of lstm,gru, got {args.cells!r}")
    if "memory" in args.sections and not {"training", "plugin"} & set(args.sections):
        ap.error("--modes: memory is measured for training rows; add training or plugin")
    # inference/training also select the modes of the plugin section (both when neither is given).
    args.modes = [m for m in ("inference", "training") if m in args.sections]
    if args.repeats < 1 or args.min_time < 0:
        ap.error("--repeats: expected >= 1; --min-time: expected >= 0 seconds")
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), 1
        args.min_time = min(args.min_time, 0.05)
        args.gemm_size = min(args.gemm_size, 1024)
        args.tbptt_steps, args.tbptt_window = (
            min(args.tbptt_steps, 4000),
            min(args.tbptt_window, 100),
        )
    if args.tbptt_steps < 10 * args.tbptt_window:
        ap.error("--tbptt-steps: need at least 10 windows (T and T/10 are compared)")
    return args


def timing_description(args) -> dict:
    """How the record times: where each library runs and how many calls a row's statistics
    take (also printed in the header)."""
    isolated_sections = ["gemm", *args.modes] if args.modes or "plugin" in args.sections else []
    isolated_sections += ["stream"] if "stream" in args.sections else []
    return {
        "isolation": isolated.SHARED if args.shared_process else isolated.ISOLATION,
        "isolated_sections": [] if args.shared_process else isolated_sections,
        "calls": (
            f"warm-up {args.warmup}, then timed calls until both >= {args.repeats} calls and "
            f">= {args.min_time:g} s of them"
            + (
                "; interleaved: each library called k times per turn, k from its warm-up time"
                if args.shared_process
                else "; back to back"
            )
        ),
        "statistics": "median, min, quartiles (IQR/median) over the calls",
    }


def describe(args, torch, lstmrs, ort_version) -> dict:
    return {
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "lstmrs_threads": lstmrs.get_num_threads(),
        "versions": {
            "lstmrs": getattr(lstmrs, "__version__", "unknown"),
            "torch": torch.__version__,
            "onnxruntime": ort_version,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_identity": cpu_identity(),
        "library_kernels": library_kernels(torch, lstmrs),
        "cpus_visible": os.cpu_count(),
        "platform": platform.platform(),
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "warmup": args.warmup,
        "timing": timing_description(args),
        "quick": args.quick,
        "sections": args.sections,
        "dtype": "float32",
        "loadavg_before": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import lstmrs
    import torch

    set_threads(args.threads, torch, lstmrs)
    ort_version = None if args.no_ort else ort_models.available()
    if not args.no_ort and ort_version is None:
        print("onnxruntime/onnx not installed: skipping ONNX Runtime")
    use_ort = ort_version is not None
    meta = describe(args, torch, lstmrs, ort_version)
    report.print_meta(meta)
    record = {"meta": meta}

    seconds = meta["section_seconds"] = {}

    def section(name, fn, *fn_args):
        t0 = time.perf_counter()
        out = fn(*fn_args)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}: {seconds[name]:.1f} s]", flush=True)
        return out

    if args.modes or "plugin" in args.sections:
        if args.shared_process:
            meta["gemm"] = section(
                "gemm",
                gemm.measure,
                *(args.gemm_size, args.warmup, args.repeats, torch, args.threads, args.min_time),
            )
        else:
            libs = ["torch", "numpy"] + (["onnxruntime"] if use_ort else [])
            meta["gemm"] = section(
                "gemm",
                gemm.measure_isolated,
                *(args.gemm_size, args.warmup, args.repeats, args.threads, args.min_time, libs),
            )
        report.print_gemm(meta["gemm"])
    if args.modes:
        record["cases"] = section("cases", cases.run_section, args, torch, lstmrs, use_ort)
    if "plugin" in args.sections:
        record["plugin"], meta["plugin"] = section(
            "plugin", plugin_cells.run_section, args, torch, lstmrs
        )
    for key in ("cases", "plugin"):
        for r in record.get(key, []):
            r["gemm_fraction"] = r["gflops"] / meta["gemm"]["gflops"]
    if "stream" in args.sections:
        record["stream"] = section("stream", stream.run_section, args, torch, lstmrs, use_ort)
    if "tbptt" in args.sections:
        record["tbptt"] = section("tbptt", tbptt.run_section, args, torch, lstmrs)
    if "proj" in args.sections:
        record["proj"] = section("proj", proj.run_section, args, torch, lstmrs)
    if "gpu" in args.sections:
        # The CPU path's best training speed in this run (else the GEMM ceiling, an upper bound)
        # estimates which grid cells are cheap enough to time on the CPU too.
        cpu = [
            r["gflops"]
            for r in record.get("cases", [])
            if r["impl"] == "lstmrs" and r["mode"] == "training"
        ]
        if not cpu:
            meta.setdefault(
                "gemm",
                gemm.measure(args.gemm_size, args.warmup, args.repeats, torch, args.threads),
            )
            cpu = [meta["gemm"]["gflops"]]
        record["gpu"] = section("gpu", gpu.run_section, args, torch, lstmrs, max(cpu))
    meta["loadavg_after"] = loadavg()

    print()
    if record.get("cases"):
        report.print_cases(record["cases"])
        print()
    if record.get("plugin"):
        report.print_plugin(record["plugin"], meta["plugin"])
        print()
    if record.get("stream"):
        report.print_stream(record["stream"], stream.INPUT)
        print()
    if record.get("tbptt"):
        report.print_tbptt(record["tbptt"])
        print()
    if record.get("proj"):
        proj.print_proj(record["proj"])
        print()
    if record.get("gpu"):
        report.print_gpu(record["gpu"])
        print()
    record["goals"] = goals.check(record)
    goals.print_goals(record["goals"], quick=args.quick)
    print()
    print(f"load average before: {meta['loadavg_before']}, after: {meta['loadavg_after']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
