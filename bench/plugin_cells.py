"""Cells defined in the cell language against the built-in fused LSTM, one shape:

  lstmrs            lstmrs.LSTM, the built-in fused kernel
  lstmrs-dsl        the built-in LSTM's cell-language description, compiled by the core
  lstmrs-peephole   the peephole LSTM of the lstmrs-cells plugin (found through the registry)
  torch             torch.nn.LSTM
  torch-peephole    the same peephole cell as a per-step torch loop (impls.TorchPeephole)
  lstmrs-peephole-onnx  (inference) the lstmrs peephole layer exported to ONNX (a Scan running
                    the cell's program, layer.to_onnx), run in ONNX Runtime

ratio_vs_builtin = time / lstmrs.LSTM's time (issue 4: the DSL LSTM within 1.5x of it);
ratio_vs_torch = time / torch's time for the same cell.
"""

from __future__ import annotations

import impls
import memory
import ort_models
from cases import add_ratios, attach_peaks, make_rows
from common import close, forward_flops, require_agreement, time_interleaved, training_flops

CASE = (64, 128, 128, 256, 1)
QUICK_CASE = (16, 32, 32, 64, 1)

# impl -> (library, impls variant), also what the memory child builds.
IMPLS = {
    "torch": ("torch", "lstm"),
    "torch-peephole": ("torch", "peephole_lstm"),
    "lstmrs": ("lstmrs", "lstm"),
    "lstmrs-dsl": ("lstmrs", "dsl_lstm"),
    "lstmrs-peephole": ("lstmrs", "peephole_lstm"),
}
REFS = {
    "lstmrs": {"torch": "torch"},
    "lstmrs-dsl": {"torch": "torch", "builtin": "lstmrs"},
    "lstmrs-peephole": {"torch": "torch-peephole", "builtin": "lstmrs"},
    "lstmrs-peephole-onnx": {"torch": "torch-peephole", "builtin": "lstmrs"},
}


def _verify(case, built: dict, fns: dict) -> None:
    problems = []
    for ours, ref in (
        ("lstmrs", "torch"),
        ("lstmrs-dsl", "torch"),
        ("lstmrs-peephole", "torch-peephole"),
    ):
        if ours not in fns:
            continue
        out_ref = fns[ref][0]().detach().numpy()
        problems.append(close(f"{ours} output", fns[ours][0](), out_ref, 1e-4))
        g = fns[ours][1]()
        tx = fns[ref][1]()
        for name, p in built[ref].named_parameters():
            problems.append(close(f"{ours} d{name}", g.params[name], p.grad.numpy(), 1e-3))
        problems.append(close(f"{ours} dinput", g.input, tx.grad.numpy(), 1e-3))
    require_agreement(
        f"plugin cells {case}: {', '.join(k for k in fns if k.startswith('lstmrs'))} agree with torch",
        problems,
    )


def run_section(args, torch, lstmrs) -> tuple[list[dict], dict]:
    b, t, i, h, layers = case = QUICK_CASE if args.quick else CASE
    info = {"case": list(case)}
    found = impls.plugin_cell_spec("peephole_lstm")
    names = list(IMPLS)
    if found is None:
        print(
            "  no installed plugin registers 'peephole_lstm' (pip install plugins/lstmrs-cells): skipping it"
        )
        names = [n for n in names if "peephole" not in n]
    else:
        info["peephole_plugin"] = f"lstmrs-cells {found[1]}"

    built = {}
    for name in names:
        lib, variant = IMPLS[name]
        if lib == "torch":
            built[name] = impls.torch_module(torch, variant, i, h, layers)
    for name in names:
        lib, variant = IMPLS[name]
        if lib == "lstmrs":
            layer = impls.lstmrs_layer(lstmrs, variant, i, h, layers)
            src = "torch-peephole" if variant == "peephole_lstm" else "torch"
            layer.load_state_dict(impls.state_dict_np(built[src]))
            built[name] = layer
    x = impls.make_input(b, t, i)
    fns = {
        n: (impls.torch_fns(torch, m, x) if IMPLS[n][0] == "torch" else impls.lstmrs_fns(m, x))
        for n, m in built.items()
    }
    _verify(case, built, fns)
    exported = {}
    if "lstmrs-peephole" in built and not args.no_ort and ort_models.available():
        sess = ort_models.exported_session(built["lstmrs-peephole"], args.threads)

        def peephole_onnx():
            return sess.run(None, {"x": x})[0]

        ref = fns["torch-peephole"][0]().detach().numpy()
        problem = close("lstmrs-peephole-onnx output", peephole_onnx(), ref, 1e-4)
        require_agreement(f"plugin cells {case}: lstmrs-peephole-onnx agrees with torch", [problem])
        exported["lstmrs-peephole-onnx"] = peephole_onnx

    fwd = forward_flops("lstm", b, t, i, h, layers)
    rows = []
    for mode in args.modes or ("inference", "training"):
        k, flops = (0, fwd) if mode == "inference" else (1, training_flops(fwd))
        timing = {n: f[k] for n, f in fns.items()}
        if mode == "inference":
            timing |= exported
        timed = time_interleaved(timing, args.warmup, args.repeats, args.min_time)
        group = f"plugin/{case}/{mode}"
        for n, times in timed.items():
            cell = "peephole_lstm" if "peephole" in n else "lstm"
            rows += make_rows(group, "plugin", cell, case, mode, {n: times}, flops)
        if mode == "training" and "memory" in args.sections:
            peaks = {n: memory.train_step_peak(*IMPLS[n], case, args.threads) for n in names}
            attach_peaks(rows, group, peaks)
    add_ratios(rows, REFS)
    return rows, info
