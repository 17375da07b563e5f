"""The shape cases: LSTM and GRU over five shapes, inference and training, lstmrs against
torch and (inference) ONNX Runtime, each case verified before it is timed. Each library is
timed in its own process (isolated.py, worker.py), or with ``--shared-process`` taking turns in
this one."""

from __future__ import annotations

import impls
import isolated
import memory
import ort_models
from common import (
    close,
    forward_flops,
    require_agreement,
    summarize,
    time_interleaved,
    training_flops,
)

# (B, T, I, H, layers)
CASES = [
    (32, 100, 8, 64, 1),
    (64, 128, 128, 256, 1),
    (64, 128, 128, 256, 2),
    (64, 64, 512, 1024, 1),
    (8, 2000, 16, 128, 1),
]
QUICK_CASES = [(32, 100, 8, 64, 1), (16, 32, 32, 64, 2)]
CELLS = ("lstm", "gru")

# Reference implementations of each lstmrs row: ratio_vs_<key> = lstmrs time / reference time.
# "lstmrs_onnx": the lstmrs layer exported by layer.to_onnx and run in ONNX Runtime (the
# deployment path); "onnxruntime": the hand-built graph from torch's weights.
REFS = {
    "lstmrs": {"torch": "torch", "ort": "onnxruntime"},
    "lstmrs_onnx": {"torch": "torch", "ort": "onnxruntime"},
}


def make_rows(group: str, section: str, cell: str, case, mode: str, timed: dict, flops: float):
    b, t, i, h, layers = case
    shape = {"B": b, "T": t, "I": i, "H": h, "layers": layers}
    return [
        {"section": section, "group": group, "cell": cell, **shape, "mode": mode, "impl": impl}
        | summarize(times, flops)
        for impl, times in timed.items()
    ]


def add_ratios(rows: list[dict], refs: dict) -> None:
    """ratio_vs_<key> on each row whose impl has references (time ratio), and
    peak_ratio_vs_torch where both rows have a measured peak."""
    by = {(r["group"], r["impl"]): r for r in rows}
    for r in rows:
        for key, ref_impl in refs.get(r["impl"], {}).items():
            ref = by.get((r["group"], ref_impl))
            if ref is None:
                continue
            r[f"ratio_vs_{key}"] = r["median_ms"] / ref["median_ms"]
            if key == "torch" and "peak_rss_increase_mb" in r and "peak_rss_increase_mb" in ref:
                r["peak_ratio_vs_torch"] = r["peak_rss_increase_mb"] / max(
                    ref["peak_rss_increase_mb"], 1e-3
                )
        # "The faster of torch and ORT" needs both: without ORT the goal is not measured.
        if r["impl"] == "lstmrs" and r["mode"] == "inference" and "ratio_vs_ort" in r:
            ratios = [r[k] for k in ("ratio_vs_torch", "ratio_vs_ort") if k in r]
            r["ratio_vs_fastest_reference"] = max(ratios)


def attach_peaks(rows: list[dict], group: str, peaks: dict) -> None:
    for r in rows:
        if r["group"] == group and r["impl"] in peaks:
            p = peaks[r["impl"]]
            if "error" in p:
                r["peak_error"] = p["error"]
            else:
                r["peak_rss_increase_mb"] = p["peak_rss_increase_mb"]
                r["peak_method"] = p["method"]


def _time_isolated(args, cell, case, mode, libs, sd, x, models, reference, turn):
    """(lib -> times, lib -> worker details): each library of ``libs`` in its own worker process
    (worker.py), one after another in an order rotated by ``turn``; each worker rebuilds the
    case from the same weights and input and its first result is checked against torch's."""
    rtol = 1e-4 if mode == "inference" else 1e-3
    expected = {k for k in reference if (k == "out") == (mode == "inference")}
    with isolated.Workspace() as ws:
        npz = ws.save("case", x=x, **{f"sd.{k}": v for k, v in sd.items()})
        per_lib = {lib: {"onnx": ws.save_model(lib, m)} for lib, m in models.items() if lib in libs}
        base = {"kind": "case", "cell": cell, "case": list(case), "mode": mode, "npz": npz}

        def check(lib, outs):
            problems = [f"{cell} {lib} worker: no {k}" for k in sorted(expected - set(outs))]
            for k, v in outs.items():
                problems.append(close(f"{cell} {lib} {k} (worker)", v, reference[k], rtol))
            return problems

        return isolated.time_libs(
            base | isolated.timing_job(args), isolated.rotated(libs, turn), ws, check, per_lib
        )


def run_case(cell: str, case, args, torch, lstmrs, use_ort: bool, measure_memory: bool, turn=0):
    b, t, i, h, layers = case
    tnet = impls.torch_module(torch, cell, i, h, layers)
    sd = impls.state_dict_np(tnet)
    ours = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
    ours.load_state_dict(sd)
    x = impls.make_input(b, t, i)
    torch_infer, torch_train = impls.torch_fns(torch, tnet, x)
    ours_infer, ours_train = impls.lstmrs_fns(ours, x)
    # The ONNX graphs: built by hand from torch's weights, and lstmrs' own export.
    models = (
        {
            "onnxruntime": ort_models.sequence_model(cell, sd, b, t, i, h, layers),
            "lstmrs_onnx": ours.to_onnx(lengths=False),
        }
        if use_ort
        else {}
    )
    sessions = {
        lib: ort_models.session_from_bytes(m.SerializeToString(), args.threads)
        for lib, m in models.items()
    }

    def ort_fn(lib):
        return lambda: sessions[lib].run(None, {"x": x})[0]

    # Verify every case before timing it.
    ref = torch_infer().numpy()
    problems = [close(f"{cell} lstmrs output", ours_infer(), ref, 1e-4)]
    for lib in sessions:
        problems.append(close(f"{cell} {lib} output", ort_fn(lib)(), ref, 1e-4))
    g = ours_train()
    tx_grad = torch_train()
    for name, p in tnet.named_parameters():
        problems.append(close(f"{cell} lstmrs d{name}", g.params[name], p.grad.numpy(), 1e-3))
    problems.append(close(f"{cell} lstmrs dinput", g.input, tx_grad.grad.numpy(), 1e-3))
    others = ", ".join(["lstmrs", *sessions])
    require_agreement(f"{cell} {case}: {others} agree with torch", problems)
    # torch's results, the reference of the isolated workers' own first results.
    reference = {"out": ref, "d_input": tx_grad.grad.numpy().copy()}
    reference |= {f"d_{n}": p.grad.numpy().copy() for n, p in tnet.named_parameters()}

    fwd = forward_flops(cell, b, t, i, h, layers)
    modes = {
        "inference": (
            {"torch": torch_infer, "lstmrs": ours_infer} | {lib: ort_fn(lib) for lib in sessions},
            fwd,
        ),
        "training": ({"torch": torch_train, "lstmrs": ours_train}, training_flops(fwd)),
    }
    if not args.shared_process:
        sessions.clear()  # their thread pools would idle in this process while workers time
    rows = []
    for mode in args.modes:
        if mode not in modes:
            continue
        fns, flops = modes[mode]
        group = f"cases/{cell}/{case}/{mode}"
        if args.shared_process:
            timed = time_interleaved(fns, args.warmup, args.repeats, args.min_time)
            children = {}
        else:
            timed, children = _time_isolated(
                args, cell, case, mode, list(fns), sd, x, models, reference, turn
            )
        timed = {lib: timed[lib] for lib in fns}  # the table's order, whatever the run order
        rows += make_rows(group, "cases", cell, case, mode, timed, flops)
        for r in rows:
            if r["group"] == group and r["impl"] in children:
                r["child"] = children[r["impl"]]
        if mode == "training" and measure_memory:
            peaks = {
                lib: memory.train_step_peak(lib, cell, case, args.threads)
                for lib in ("torch", "lstmrs")
            }
            attach_peaks(rows, group, peaks)
    return rows


def run_section(args, torch, lstmrs, use_ort: bool) -> list[dict]:
    rows = []
    cases = QUICK_CASES if args.quick else CASES
    turn = 0
    for cell in args.cells:
        for n, case in enumerate(cases):
            # --quick measures memory on the first case only, to stay a smoke run.
            mem = "memory" in args.sections and (n == 0 or not args.quick)
            rows += run_case(cell, case, args, torch, lstmrs, use_ort, mem, turn)
            turn += 1
            print(f"  done {cell} {case}", flush=True)
    add_ratios(rows, REFS)
    return rows
