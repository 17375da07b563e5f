"""Times lstmrs against PyTorch (CPU) and ONNX Runtime at the same thread count.

    python bench/bench_rnn.py --threads 2 [--repeats 7] [--quick] [--json results.json]

Every implementation runs in this one process with the same number of intra-op threads
(torch.set_num_threads, lstmrs.set_num_threads, ORT intra_op_num_threads; inter-op threads 1),
float32, batch-first input [B, T, I], unidirectional, no initial state.

Modes:
  inference  forward only (torch under inference_mode; lstmrs in eval mode; ORT session.run)
  training   forward + backward of loss = output.sum(): torch output.sum().backward() with
             parameters and the input requiring grad (lstmrs always returns the input gradient,
             so both do the same work); lstmrs forward_train + backward(d_out=ones).
             ONNX Runtime is inference only.

FLOP count (multiply-add = 2 FLOPs, gate matmuls only; elementwise work is ignored):
  forward  = sum over layers and directions of 2 * T * B * G * H * (I_l + H)
             with G = 4 (LSTM) or 3 (GRU) and I_l the layer's input size (I, then D*H)
  training = 3 * forward (backward = input-gradient and weight-gradient matmuls of the same size)

Implementations take turns within each repeat (torch, lstmrs, ORT, torch, ...), so a busy
spell of the machine falls on all of them alike; the median of the repeats is reported.

Before timing, the first case of each cell checks that the outputs (and, for lstmrs, the
training gradients) of every implementation agree with torch; the script aborts if not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

# (B, T, I, H, layers)
CASES = [
    (32, 100, 8, 64, 1),
    (64, 128, 128, 256, 1),
    (64, 128, 128, 256, 2),
    (64, 64, 512, 1024, 1),
    (8, 2000, 16, 128, 1),
]
QUICK_CASES = [(32, 100, 8, 64, 1), (16, 32, 32, 64, 2)]
CELLS = ["lstm", "gru"]
GATES = {"lstm": 4, "gru": 3}


def forward_flops(cell: str, b: int, t: int, i: int, h: int, layers: int, dirs: int = 1) -> float:
    total = 0.0
    for layer in range(layers):
        in_size = i if layer == 0 else dirs * h
        total += dirs * 2.0 * t * b * GATES[cell] * h * (in_size + h)
    return total


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: the ONNX LSTM/GRU node built directly from torch's weights.


def _onnx_gate_order(cell: str, h: int) -> np.ndarray:
    # torch LSTM gates i,f,g,o -> ONNX i,o,f,c; torch GRU r,z,n -> ONNX z,r,h.
    blocks = [0, 3, 1, 2] if cell == "lstm" else [1, 0, 2]
    return np.concatenate([np.arange(k * h, (k + 1) * h) for k in blocks])


def build_ort_session(
    cell: str, state_dict: dict, b: int, t: int, i: int, h: int, layers: int, threads: int
):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    order = _onnx_gate_order(cell, h)
    nodes = [helper.make_node("Transpose", ["x"], ["x_tm0"], perm=[1, 0, 2])]
    inits = []
    for layer in range(layers):
        sd = {k: state_dict[f"{k}_l{layer}"] for k in ("weight_ih", "weight_hh")}
        w = sd["weight_ih"][order][None]
        r = sd["weight_hh"][order][None]
        bias = np.concatenate(
            [state_dict[f"bias_ih_l{layer}"][order], state_dict[f"bias_hh_l{layer}"][order]]
        )[None]
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        for arr, name in zip((w, r, bias), names):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        attrs = {"hidden_size": h}
        if cell == "gru":
            attrs["linear_before_reset"] = 1  # torch: n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
        nodes.append(
            helper.make_node(cell.upper(), [f"x_tm{layer}", *names], [f"y{layer}"], **attrs)
        )
        # Y is [T, num_directions, B, H].
        inits.append(numpy_helper.from_array(np.array([1], np.int64), f"axes{layer}"))
        nodes.append(
            helper.make_node("Squeeze", [f"y{layer}", f"axes{layer}"], [f"x_tm{layer + 1}"])
        )
    nodes.append(helper.make_node("Transpose", [f"x_tm{layers}"], ["out"], perm=[1, 0, 2]))
    graph = helper.make_graph(
        nodes,
        f"{cell}_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, t, i])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [b, t, h])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------


def close(name: str, got, ref, rtol: float) -> str | None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return f"{name}: shape {got.shape} != {ref.shape}"
    err = float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-30)
    return None if err <= rtol else f"{name}: max|a-b|/max|b| = {err:.3e} > {rtol:.0e}"


def run_case(cell, case, args, torch, lstmrs, ort_ok, verify):
    b, t, i, h, layers = case
    torch.manual_seed(0)
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    tnet = cls(i, h, num_layers=layers, batch_first=True)
    sd = {k: v.detach().numpy().copy() for k, v in tnet.state_dict().items()}
    ours = (lstmrs.LSTM if cell == "lstm" else lstmrs.GRU)(
        i, h, num_layers=layers, batch_first=True, dtype="float32"
    )
    ours.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    ones = np.ones((b, t, h), np.float32)
    tx = torch.from_numpy(x)
    tx_grad = tx.clone().requires_grad_()
    sess = build_ort_session(cell, sd, b, t, i, h, layers, args.threads) if ort_ok else None

    def torch_infer():
        with torch.inference_mode():
            return tnet(tx)[0]

    def ours_infer():
        return ours(x)[0]

    def ort_infer():
        return sess.run(None, {"x": x})[0]

    def torch_train():
        for p in tnet.parameters():
            p.grad = None
        tx_grad.grad = None
        tnet(tx_grad)[0].sum().backward()

    def ours_train():
        _, _, tape = ours.forward_train(x)
        return ours.backward(tape, d_out=ones)

    ours.eval()
    if verify:
        problems = []
        ref = torch_infer().numpy()
        problems.append(close(f"{cell} lstmrs output", ours_infer(), ref, 1e-4))
        if sess is not None:
            problems.append(close(f"{cell} onnxruntime output", ort_infer(), ref, 1e-4))
        ours.train()
        g = ours_train()
        ours.eval()
        torch_train()
        for name, p in tnet.named_parameters():
            problems.append(close(f"{cell} lstmrs d{name}", g.params[name], p.grad.numpy(), 1e-3))
        problems.append(close(f"{cell} lstmrs dinput", g.input, tx_grad.grad.numpy(), 1e-3))
        problems = [p for p in problems if p]
        if problems:
            print("verification FAILED, not timing:", *problems, sep="\n  ", file=sys.stderr)
            sys.exit(1)
        print(
            f"verified {cell} {case}: lstmrs"
            + (", onnxruntime" if sess else "")
            + " agree with torch"
        )

    fwd = forward_flops(cell, b, t, i, h, layers)
    impls = {
        "inference": [("torch", torch_infer), ("lstmrs", ours_infer)]
        + ([("onnxruntime", ort_infer)] if sess is not None else []),
        "training": [("torch", torch_train), ("lstmrs", ours_train)],
    }
    rows = []
    for mode in args.modes:
        flops = fwd if mode == "inference" else 3 * fwd
        if mode == "training":
            ours.train()
        else:
            ours.eval()
        timed = time_interleaved(dict(impls[mode]), args.warmup, args.repeats)
        for impl, times in timed.items():
            med = statistics.median(times)
            rows.append(
                {
                    "cell": cell,
                    "B": b,
                    "T": t,
                    "I": i,
                    "H": h,
                    "layers": layers,
                    "mode": mode,
                    "impl": impl,
                    "median_ms": med,
                    "min_ms": min(times),
                    "times_ms": times,
                    "flops": flops,
                    "gflops": flops / (med * 1e-3) / 1e9,
                }
            )
    return rows


STREAM_CASES = [(1, 128), (32, 128), (1, 512), (32, 512)]  # (batch, hidden)
STREAM_INPUT = 32


def run_stream(args, torch, lstmrs) -> list[dict]:
    """One streamed time step (state kept between calls) of LSTM(STREAM_INPUT -> H) -> linear(1):
    lstmrs' `Model.stepper` against torch's nn.LSTM + nn.Linear on a length-1 sequence with the
    state passed back in, both called from Python the way a real-time loop calls them."""
    rows = []
    steps = 200 if args.quick else 2000
    for b, h in STREAM_CASES:
        model = lstmrs.Model(
            input_size=STREAM_INPUT, hidden_size=h, pooling="per_step", output_size=1, seed=0
        )
        stepper = model.stepper(batch=b)
        x_np = np.random.default_rng(0).standard_normal((b, STREAM_INPUT)).astype(np.float32)
        t_lstm = torch.nn.LSTM(STREAM_INPUT, h)
        t_head = torch.nn.Linear(h, 1)
        x_t = torch.from_numpy(x_np)[None]
        state = [None]

        def torch_step(t_lstm=t_lstm, t_head=t_head, x_t=x_t, state=state):
            with torch.no_grad():
                out, state[0] = t_lstm(x_t, state[0])
                t_head(out)

        def lstmrs_step(stepper=stepper, x_np=x_np):
            stepper.step(x_np)

        fns = {"torch": torch_step, "lstmrs": lstmrs_step}
        per_step = {}
        for name, fn in fns.items():
            for _ in range(steps // 10):
                fn()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                times.append((time.perf_counter() - t0) / steps * 1e6)
            per_step[name] = float(np.median(times))
        rows.append(
            {
                "mode": "stream",
                "B": b,
                "H": h,
                "I": STREAM_INPUT,
                "torch_us": per_step["torch"],
                "lstmrs_us": per_step["lstmrs"],
                "ratio_vs_torch": per_step["lstmrs"] / per_step["torch"],
            }
        )
    return rows


def print_stream(rows):
    print(f"streaming one step, LSTM({STREAM_INPUT} -> H) -> linear(1), microseconds per call")
    print(f"{'B':>4} {'H':>5} {'torch':>10} {'lstmrs':>10} {'/torch':>8}")
    for r in rows:
        print(
            f"{r['B']:>4} {r['H']:>5} {r['torch_us']:>10.1f} {r['lstmrs_us']:>10.1f} "
            f"{r['ratio_vs_torch']:>7.2f}x"
        )


def print_table(rows):
    def find(row, impl):
        for r in rows:
            if r["impl"] == impl and all(
                r[k] == row[k] for k in ("cell", "B", "T", "I", "H", "layers", "mode")
            ):
                return r
        return None

    head = f"{'cell':4s} {'case (B,T,I,H,L)':22s} {'mode':9s} {'impl':11s} {'median ms':>10s} {'GFLOP/s':>8s} {'/torch':>7s} {'/ort':>7s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        case = f"({r['B']},{r['T']},{r['I']},{r['H']},{r['layers']})"
        vs_torch = vs_ort = ""
        if r["impl"] == "lstmrs":
            tr, orr = find(r, "torch"), find(r, "onnxruntime")
            r["ratio_vs_torch"] = r["median_ms"] / tr["median_ms"] if tr else None
            r["ratio_vs_ort"] = r["median_ms"] / orr["median_ms"] if orr else None
            vs_torch = f"{r['ratio_vs_torch']:.2f}x" if tr else ""
            vs_ort = f"{r['ratio_vs_ort']:.2f}x" if orr else ""
        print(
            f"{r['cell']:4s} {case:22s} {r['mode']:9s} {r['impl']:11s} "
            f"{r['median_ms']:10.2f} {r['gflops']:8.2f} {vs_torch:>7s} {vs_ort:>7s}"
        )
    print("ratios: lstmrs median time / other median time (below 1 = lstmrs faster)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every library")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    ap.add_argument("--quick", action="store_true", help="small cases, few repeats: a smoke run")
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm,gru")
    ap.add_argument(
        "--modes",
        default="inference,training,stream",
        help="comma list of inference,training,stream",
    )
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    stream = "stream" in args.modes
    args.modes = [m for m in args.modes if m != "stream"]
    cells = [c for c in args.cells.split(",") if c]
    if any(c not in CELLS for c in cells) or any(
        m not in ("inference", "training") for m in args.modes
    ):
        ap.error("unknown cell or mode")
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), 1
    cases = QUICK_CASES if args.quick else CASES

    import lstmrs
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set by an earlier parallel call
    lstmrs.set_num_threads(args.threads)
    ort_version = None
    if not args.no_ort:
        try:
            import onnx
            import onnxruntime

            ort_version = f"{onnxruntime.__version__} (onnx {onnx.__version__})"
        except ImportError:
            print("onnxruntime/onnx not installed: skipping ONNX Runtime")

    meta = {
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
        "cpus_visible": os.cpu_count(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "dtype": "float32",
    }
    print(
        f"threads: torch {meta['torch_threads']}, lstmrs {meta['lstmrs_threads']}, ORT intra-op {args.threads}"
    )
    print("versions:", ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    print(
        f"cpu: {meta['cpu']} ({meta['cpus_visible']} visible); median of {args.repeats} after {args.warmup} warm-up"
    )

    rows = []
    for cell in cells if args.modes else []:
        for n, case in enumerate(cases):
            rows += run_case(cell, case, args, torch, lstmrs, ort_version is not None, n == 0)
            print(f"  done {cell} {case}", flush=True)
    print()
    if rows:
        print_table(rows)
    stream_rows = run_stream(args, torch, lstmrs) if stream else []
    if stream_rows:
        print()
        print_stream(stream_rows)
    rows += stream_rows
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
