"""Reduced-precision inference (issue 16): accuracy on trained models and speed beside the
references, in one run, and the bf16/int8 goals checked on it (goals.py).

    python bench/lowp.py --threads 2 --json bench/results/lowp.json            # speed, all cases
    python bench/lowp.py --accuracy runs/charlm-... runs/forecast-... --no-speed  # accuracy only
    python bench/lowp.py --cases 64,64,512,1024,1 --cells lstm --repeats 5

Speed: for each case (B, T, I, H, layers) and cell, float32 inference of lstmrs, lstmrs bf16
(``quantize_dynamic(layer, "bfloat16")``), lstmrs int8 (``"qint8"``), torch (``inference_mode``),
torch under ``torch.autocast("cpu", dtype=torch.bfloat16)``, torch's
``torch.ao.quantization.quantize_dynamic`` (qint8), ONNX Runtime on the float graph
(``ort_models.sequence_model``) and on ``onnxruntime.quantization.quantize_dynamic`` of it
(QInt8 weights), all from the same torch weights. Each output is compared with torch float32
(max|a-b|/max|b|, the ``rel_err`` column; a sanity bound per precision stops the run before
timing). The record states what each library ran on: lstmrs' dispatched kernels, torch's
``get_cpu_capability()``, ORT's build info and which ops its quantizer replaced.

Timing: by default each implementation runs in its own fresh process (``isolated.py``,
``worker.py`` kind ``lowp``), rebuilt from the same weights and input, with every library's
thread count set before import, its calls back to back (at least ``--repeats`` calls and
``--min-time`` seconds), the implementations of a case one after another in an order rotated
per case: as the f32 record (bench_rnn.py) does. ``--shared-process`` times them all in this
process instead, taking turns within each repeat (one library's spinning threads then tax the
others: the first record, lowp-2threads.txt, was taken that way).

Accuracy: for each run directory of ``lstmrs train`` (a ``charlm`` or a ``forecast`` run with a
linear head), the task's metric with the model's recurrent layers in float32, bf16 and int8: the
embedding and head stay float32, the recurrent network is ``lstmrs.LSTM/GRU`` loaded with the
run's weights (float32 must reproduce the model's own predictions, checked) or its quantized copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import goals
import impls
import isolated
import lstmrs
import numpy as np
import ort_models
import worker
from common import (
    close,
    forward_flops,
    loadavg,
    require_agreement,
    set_threads,
    summarize,
    time_interleaved,
)
from lstmrs import quantization
from lstmrs.rundir import RunDir
from lstmrs.tasks.runner import lookup_task, resolve_config

CASES = [
    (32, 100, 8, 64, 1),
    (64, 128, 128, 256, 1),
    (64, 128, 128, 256, 2),
    (64, 64, 512, 1024, 1),
    (8, 2000, 16, 128, 1),
]


def _numpy(v) -> np.ndarray:
    """A torch tensor (any float dtype) or array as a float64 NumPy array."""
    if hasattr(v, "detach"):
        v = v.detach().float().numpy()
    return np.asarray(v, np.float64)


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# accuracy on trained models


class RecurrentView:
    """A trained ``Model`` (embedding or features -> recurrent network -> linear head) with its
    recurrent network replaced by an lstmrs layer in float32 (``dtype`` None) or a quantized
    copy."""

    def __init__(self, model, dtype: str | None):
        cfg = model.config
        sd = model.state_dict()
        if cfg["bidirectional"] or cfg.get("attention_units"):
            raise SystemExit("accuracy: a unidirectional model without attention is expected")
        cls = {"lstm": lstmrs.LSTM, "gru": lstmrs.GRU}[cfg["cell"]]
        layer = cls(
            cfg["embedding_dim"] or cfg["input_size"],
            cfg["hidden_size"],
            num_layers=cfg["num_layers"],
            bias=cfg["bias"],
            seed=0,
        ).eval()
        layer.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
        self.rnn = layer if dtype is None else lstmrs.quantize_dynamic(layer, dtype)
        self.embedding = sd.get("embedding.weight")
        self.head = []
        while f"head.{len(self.head)}.weight" in sd:
            n = len(self.head)
            self.head.append((sd[f"head.{n}.weight"], sd[f"head.{n}.bias"]))
        self.activation = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0)}[cfg["activation"]]
        self.pooling = cfg["pooling"]

    def _head(self, f):
        for n, (w, b) in enumerate(self.head):
            f = f @ w.T + b
            if n + 1 < len(self.head):
                f = self.activation(f)
        return f

    def run(self, x, state=None):
        if self.embedding is not None:
            x = self.embedding[x]
        out, state = self.rnn(np.asarray(x, np.float32), state)
        return out, state

    def predict(self, x, batch_size: int = 512, **_):
        """The forecast task's ``model.predict``: pooling 'last', the head."""
        assert self.pooling == "last"
        out, _ = self.run(x)
        return self._head(out[:, -1])

    def stream_bpc(self, stream: np.ndarray, batch: int, seq_len: int = 256) -> float:
        """Bits per token of next-token prediction over ``batch`` parallel sub-streams read in
        chunks of ``seq_len`` with the state carried (``Model.evaluate_stream``'s split)."""
        x, y = stream[:-1], stream[1:]
        length = len(x) // batch
        x = x[: batch * length].reshape(batch, length)
        y = y[: batch * length].reshape(batch, length)
        state, total = None, 0.0
        for s in range(0, length, seq_len):
            out, state = self.run(x[:, s : s + seq_len], state)
            logits = self._head(out).astype(np.float64)
            logits -= logits.max(axis=-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            yy = y[:, s : s + seq_len]
            total -= np.take_along_axis(logp, yy[..., None], axis=-1).sum()
        return total / (batch * length) / np.log(2.0)


def _open_run(path: str):
    run = RunDir.open(path)
    cfg = run.read_config()
    task = lookup_task(cfg.get("task", ""))
    cfg = resolve_config(task, file_cfg=cfg, file_source=run.config_path, file_dir=run.path)
    state = run.read_state().get("task_state") or {}
    return task, cfg, task.prepare(cfg, state=state or None), run.load_model()


def accuracy(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        task, cfg, data, model = _open_run(path)
        views = {"float32": RecurrentView(model, None)}
        for dt in ("bfloat16", "qint8"):
            views[dt] = RecurrentView(model, dt)
        row: dict = {"run": path, "task": task.name, "model": repr(model)}
        if task.name == "charlm":
            val = data.test
            batch = max(1, min(8, (len(val) - 1) // 64))
            own = model.evaluate_stream(val, batch_size=batch, seq_len=256, metrics=["bpc"])
            own = float(own["bpc"])
            row["metric"] = "val_bpc"
            row["model_itself"] = own
            for name, v in views.items():
                row[name] = float(v.stream_bpc(val, batch))
        elif task.name == "forecast":
            x = data.test[0]
            own = model.predict(x, batch_size=512)
            float_pred = views["float32"].predict(x)
            err = _rel(float_pred, own)
            if err > 1e-4:
                raise SystemExit(f"{path}: the float32 view differs from the model by {err}")
            row["metric"] = "model_rmse"
            row["model_itself"] = float(task.evaluate(model, data, cfg)["model_rmse"])
            for name, v in views.items():
                summary = task.evaluate(v, data, cfg)
                row[name] = float(summary["model_rmse"])
                row[f"{name}_mape"] = float(summary["model_mape"])
        else:
            raise SystemExit(f"{path}: accuracy handles charlm and forecast runs, not {task.name}")
        for dt in ("bfloat16", "qint8"):
            row[f"{dt}_change"] = row[dt] - row["float32"]
            row[f"{dt}_change_pct"] = 100.0 * (row[dt] / row["float32"] - 1.0)
        rows.append(row)
        print(
            f"{task.name:9s} {row['metric']}: model {row['model_itself']:.4f}  float32 view "
            f"{row['float32']:.4f}  bf16 {row['bfloat16']:.4f} ({row['bfloat16_change_pct']:+.2f}%)"
            f"  int8 {row['qint8']:.4f} ({row['qint8_change_pct']:+.2f}%)",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------
# speed


def _ort_models(cell: str, sd: dict, case):
    """(float graph, its ``onnxruntime.quantization.quantize_dynamic`` copy, the op types the
    quantizer added) or None without onnxruntime."""
    if ort_models.available() is None:
        return None
    # Imported here: optional, like ONNX Runtime itself (ort_models.available checked them).
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    b, t, i, h, layers = case
    model = ort_models.sequence_model(cell, sd, b, t, i, h, layers)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        qmodel = onnx.load(dst)
    ops = sorted({n.op_type for n in qmodel.graph.node} - {n.op_type for n in model.graph.node})
    return model, qmodel, ops


# The check of each implementation's output against torch float32 before it is timed: a
# sanity bound per precision that catches wrong wiring (the bf16 goal's 1e-2 is judged in
# goals.py on the recorded error); torch's own qint8 LSTM is 2-4e-2 off on these cases.
SANITY_RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "qint8": 1.5e-1}


def _precision(impl: str) -> str:
    if "bf16" in impl:
        return "bfloat16"
    return "qint8" if ("int8" in impl or "qint8" in impl) else "float32"


def _impls(args) -> list[str]:
    """The implementations of ``--impls`` (default all), in ``worker.LOWP_LIBS``'s order."""
    wanted = set(args.impls.split(",")) if args.impls else set(worker.LOWP_LIBS)
    return [lib for lib in worker.LOWP_LIBS if lib in wanted]


def _setup(torch, cell: str, case):
    """torch's module (float32, eval), its weights as NumPy, the input and torch's output."""
    b, t, i, h, layers = case
    module = impls.torch_module(torch, cell, i, h, layers).eval()
    sd = impls.state_dict_np(module)
    x = impls.make_input(b, t, i)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x))[0].numpy().astype(np.float64)
    return module, sd, x, ref


def _time_shared(torch, cell: str, case, args, module, sd, x, ort):
    """(impl -> times, impl -> first output, impl -> lstmrs kernel): every implementation in
    this process, taking turns within each repeat."""
    _, _, i, h, layers = case
    layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers).eval()
    layer.load_state_dict(sd)
    q = {dt: lstmrs.quantize_dynamic(layer, dt) for dt in ("bfloat16", "qint8")}
    tq = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(module), {torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8
    )
    tx = torch.from_numpy(x)

    def torch_fn(mod, autocast: bool):
        def fn():
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
            ):
                return mod(tx)[0]

        return fn

    fns = {
        "lstmrs": lambda: layer(x)[0],
        "lstmrs_bf16": lambda: q["bfloat16"](x)[0],
        "lstmrs_int8": lambda: q["qint8"](x)[0],
        "torch": torch_fn(module, False),
        "torch_bf16_autocast": torch_fn(module, True),
        "torch_qint8_dynamic": torch_fn(tq, False),
    }
    if ort is not None:
        fs, qs = (ort_models._session(m, args.threads) for m in ort[:2])
        fns["onnxruntime"] = lambda: fs.run(None, {"x": x})[0]
        fns["onnxruntime_qint8_dynamic"] = lambda: qs.run(None, {"x": x})[0]
    fns = {name: fn for name, fn in fns.items() if name in _impls(args)}
    outs = {name: _numpy(fn()) for name, fn in fns.items()}
    times = time_interleaved(fns, args.warmup, args.repeats, args.min_time)
    kernels = {"lstmrs_bf16": q["bfloat16"].kernel, "lstmrs_int8": q["qint8"].kernel}
    return times, outs, kernels, {}


def _time_isolated(cell: str, case, args, sd, x, ort, ref, turn: int):
    """As :func:`_time_shared`, each implementation in its own fresh process (worker.py), one
    after another in an order rotated by ``turn``; each worker's first output is checked."""
    libs = [lib for lib in _impls(args) if ort is not None or "onnxruntime" not in lib]
    outs: dict = {}

    def check(lib, arrays):
        outs[lib] = np.asarray(arrays["out"], np.float64)
        return [close(f"{cell} {lib} out (worker)", outs[lib], ref, SANITY_RTOL[_precision(lib)])]

    with isolated.Workspace() as ws:
        npz = ws.save("case", x=x, **{f"sd.{k}": v for k, v in sd.items()})
        per_lib = {}
        if ort is not None:
            per_lib["onnxruntime"] = {"onnx": ws.save_model("f", ort[0])}
            per_lib["onnxruntime_qint8_dynamic"] = {"onnx": ws.save_model("q", ort[1])}
        base = {"kind": "lowp", "cell": cell, "case": list(case), "npz": npz}
        times, children = isolated.time_libs(
            base | isolated.timing_job(args), isolated.rotated(libs, turn), ws, check, per_lib
        )
    kernels = {
        lib: c["label"] for lib, c in children.items() if lib in ("lstmrs_bf16", "lstmrs_int8")
    }
    return {lib: times[lib] for lib in libs}, outs, kernels, children


def speed_case(torch, cell: str, case, args, turn: int = 0) -> list[dict]:
    b, t, i, h, layers = case
    module, sd, x, ref = _setup(torch, cell, case)
    ort = None if args.no_ort else _ort_models(cell, sd, case)
    if args.shared_process:
        times, outs, kernels, children = _time_shared(torch, cell, case, args, module, sd, x, ort)
        problems = [
            close(f"{cell} {name} out", out, ref, SANITY_RTOL[_precision(name)])
            for name, out in outs.items()
        ]
        require_agreement(f"lowp {cell} {case}: every implementation near torch f32", problems)
    else:
        times, outs, kernels, children = _time_isolated(cell, case, args, sd, x, ort, ref, turn)
    flops = forward_flops(cell, b, t, i, h, layers)
    rows = []
    for name, ts in times.items():
        row = {
            "cell": cell,
            "case": list(case),
            "impl": name,
            "precision": _precision(name),
            "rel_err_vs_torch_f32": _rel(outs[name], ref),
            **summarize(ts, flops),
        }
        if name in kernels:
            row["kernel"] = kernels[name]
        if name in children:
            row["child"] = children[name]
        if name == "onnxruntime_qint8_dynamic":
            row["ort_quantized_ops"] = ort[2]
        rows.append(row)
    med = {r["impl"]: r["median_ms"] for r in rows}
    # Each ratio where both implementations ran (--impls may leave some out).
    refs = {
        "lstmrs_int8": {
            "torch_qint8": "torch_qint8_dynamic",
            "ort_qint8": "onnxruntime_qint8_dynamic",
        },
        "lstmrs_bf16": {"torch_bf16": "torch_bf16_autocast"},
    }
    for r in rows:
        if "lstmrs" in med:
            r["speedup_vs_lstmrs_f32"] = med["lstmrs"] / r["median_ms"]
        for key, ref_impl in refs.get(r["impl"], {}).items():
            if ref_impl in med:
                r[f"ratio_vs_{key}"] = r["median_ms"] / med[ref_impl]
    return rows


def _print_speed(rows: list[dict]) -> None:
    print(
        f"{'cell':5s} {'case (B,T,I,H,L)':22s} {'impl':26s} {'median ms':>10s} {'GFLOP/s':>8s} "
        f"{'x lstmrs f32':>12s} {'rel_err':>8s}  notes"
    )
    for r in rows:
        notes = []
        for k in ("kernel", "ratio_vs_torch_qint8", "ratio_vs_ort_qint8", "ratio_vs_torch_bf16"):
            if k in r:
                v = r[k]
                notes.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
        if "ort_quantized_ops" in r:
            notes.append(f"ort ops added: {','.join(r['ort_quantized_ops']) or 'none'}")
        print(
            f"{r['cell']:5s} {tuple(r['case'])!s:22s} {r['impl']:26s} {r['median_ms']:10.2f} "
            f"{r['gflops']:8.1f} {r.get('speedup_vs_lstmrs_f32', float('nan')):12.2f} "
            f"{r['rel_err_vs_torch_f32']:8.1e}  {' '.join(notes)}",
            flush=True,
        )


def features(torch) -> dict:
    """What each library ran on."""
    out = {
        "lstmrs": {dt: quantization.kernels(dt) for dt in ("bfloat16", "qint8")},
        "torch": {
            "version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "quantized_engine": torch.backends.quantized.engine,
        },
    }
    try:
        import onnxruntime

        out["onnxruntime"] = {
            "version": onnxruntime.__version__,
            "build_info": onnxruntime.get_build_info(),
            "device": onnxruntime.get_device(),
        }
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="at least this many timed calls")
    p.add_argument(
        "--min-time", type=float, default=1.0, metavar="S", help="and at least S s of them"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--shared-process",
        action="store_true",
        help="time every implementation in this process, taking turns (default: each in its "
        "own fresh process, calls back to back)",
    )
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--cases", nargs="*", help="B,T,I,H,layers (default: the bench cases)")
    p.add_argument("--no-ort", action="store_true")
    p.add_argument(
        "--impls",
        help=f"comma list of the implementations to time (default all: {','.join(worker.LOWP_LIBS)})",
    )
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--accuracy", nargs="*", default=[], metavar="RUN_DIR")
    p.add_argument("--json")
    args = p.parse_args(argv)
    unknown = set(args.impls.split(",")) - set(worker.LOWP_LIBS) if args.impls else set()
    if unknown:
        p.error(f"--impls: expected names from {','.join(worker.LOWP_LIBS)}, got {sorted(unknown)}")

    import torch  # the references; the benchmark needs them

    set_threads(args.threads, torch, lstmrs)
    record: dict = {
        "meta": {
            "threads": args.threads,
            "repeats": args.repeats,
            "min_time_s": args.min_time,
            "warmup": args.warmup,
            "isolation": isolated.SHARED if args.shared_process else isolated.ISOLATION,
            "load_before": loadavg(),
            "features": features(torch),
        }
    }
    print(json.dumps(record["meta"]["features"]), flush=True)
    print(f"load average before: {record['meta']['load_before']}", flush=True)
    if args.accuracy:
        record["accuracy"] = accuracy(args.accuracy)
    if not args.no_speed:
        cases = [tuple(int(v) for v in c.split(",")) for c in args.cases] if args.cases else CASES
        rows, turn = [], 0
        for cell in args.cells.split(","):
            for case in cases:
                case_rows = speed_case(torch, cell, case, args, turn)
                turn += 1
                _print_speed(case_rows)
                rows += case_rows
        record["speed"] = rows
    record["meta"]["load_after"] = loadavg()
    record["goals"] = goals.check_lowp(record)
    print()
    goals.print_goals(record["goals"], title="issue 16 reduced-precision goals")
    print(f"load average after: {record['meta']['load_after']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
