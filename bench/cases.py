"""The shape cases: LSTM and GRU over five shapes, inference and training, lstmrs against
torch and (inference) ONNX Runtime, each case verified before it is timed."""

from __future__ import annotations

import impls
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
        if r["impl"] == "lstmrs" and r["mode"] == "inference" and "ratio_vs_torch" in r:
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


def run_case(cell: str, case, args, torch, lstmrs, use_ort: bool, measure_memory: bool):
    b, t, i, h, layers = case
    tnet = impls.torch_module(torch, cell, i, h, layers)
    sd = impls.state_dict_np(tnet)
    ours = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
    ours.load_state_dict(sd)
    x = impls.make_input(b, t, i)
    torch_infer, torch_train = impls.torch_fns(torch, tnet, x)
    ours_infer, ours_train = impls.lstmrs_fns(ours, x)
    sess = (
        ort_models.sequence_session(cell, sd, b, t, i, h, layers, args.threads) if use_ort else None
    )
    exported = ort_models.exported_session(ours, args.threads) if use_ort else None

    def ort_infer():
        return sess.run(None, {"x": x})[0]

    def exported_infer():
        return exported.run(None, {"x": x})[0]

    # Verify every case before timing it.
    ref = torch_infer().numpy()
    problems = [close(f"{cell} lstmrs output", ours_infer(), ref, 1e-4)]
    if sess is not None:
        problems.append(close(f"{cell} onnxruntime output", ort_infer(), ref, 1e-4))
        problems.append(close(f"{cell} lstmrs_onnx output", exported_infer(), ref, 1e-4))
    g = ours_train()
    tx_grad = torch_train()
    for name, p in tnet.named_parameters():
        problems.append(close(f"{cell} lstmrs d{name}", g.params[name], p.grad.numpy(), 1e-3))
    problems.append(close(f"{cell} lstmrs dinput", g.input, tx_grad.grad.numpy(), 1e-3))
    others = "lstmrs" + (", onnxruntime, lstmrs_onnx" if sess is not None else "")
    require_agreement(f"{cell} {case}: {others} agree with torch", problems)

    fwd = forward_flops(cell, b, t, i, h, layers)
    modes = {
        "inference": (
            {"torch": torch_infer, "lstmrs": ours_infer}
            | (
                {"onnxruntime": ort_infer, "lstmrs_onnx": exported_infer}
                if sess is not None
                else {}
            ),
            fwd,
        ),
        "training": ({"torch": torch_train, "lstmrs": ours_train}, training_flops(fwd)),
    }
    rows = []
    for mode in args.modes:
        if mode not in modes:
            continue
        fns, flops = modes[mode]
        group = f"cases/{cell}/{case}/{mode}"
        rows += make_rows(
            group,
            "cases",
            cell,
            case,
            mode,
            time_interleaved(fns, args.warmup, args.repeats),
            flops,
        )
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
    for cell in args.cells:
        for n, case in enumerate(cases):
            # --quick measures memory on the first case only, to stay a smoke run.
            mem = "memory" in args.sections and (n == 0 or not args.quick)
            rows += run_case(cell, case, args, torch, lstmrs, use_ort, mem)
            print(f"  done {cell} {case}", flush=True)
    add_ratios(rows, REFS)
    return rows
