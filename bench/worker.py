"""The isolated timing worker: one library, one measurement, in a fresh process
(``isolated.py`` has the why and the parent side).

    python bench/worker.py '<job json>'      # prints one JSON line

Job kinds:
  case    a shape case (cases.py), ``mode`` inference or training, ``lib`` torch, lstmrs,
          onnxruntime (the hand-built graph) or lstmrs_onnx (lstmrs' export); weights
          (``sd.<torch name>``) and input ``x`` from ``npz``, the ORT graph from ``onnx``
  stream  one streamed step per call (stream.py), ``lib`` torch, lstmrs or onnxruntime;
          lstmrs.Model's state dict (``sd.<name>``) and four inputs ``xs`` from ``npz``
  gemm    the GEMM ceiling's [n,n]@[n,n] (gemm.py), ``lib`` torch, numpy or onnxruntime
  lowp    reduced-precision inference of a shape case (lowp.py), ``lib`` one of ``LOWP_LIBS``:
          lstmrs in float32 / bf16 / int8 (``quantize_dynamic``), torch in float32, under bf16
          autocast, or ``torch.ao.quantization.quantize_dynamic`` (qint8), ONNX Runtime on the
          float graph or its quantized copy (``onnx``); the lstmrs workers report the product
          kernel runtime dispatch chose as ``label``

The thread counts come from the environment (set by the parent before this process started)
and are also set through each library's own call. The worker imports only the library it times
(ONNX Runtime runs a serialized graph: no torch, no lstmrs, no onnx). Before timing it runs the
measured call once and writes that result to ``out`` (.npz) for the parent to check against
torch; then ``warmup`` untimed calls and back-to-back timed calls (``common.time_back_to_back``).
"""

from __future__ import annotations

import json
import os
import sys
import time

import impls
import numpy as np
import ort_models
import stream
from common import time_back_to_back

TIMED_LIBRARIES = ("torch", "lstmrs", "onnxruntime")


def _threads_torch(n: int):
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # fixed once parallel work ran; a fresh worker has run none
    return torch


def _threads_lstmrs(n: int):
    import lstmrs

    lstmrs.set_num_threads(n)
    return lstmrs


def _load(job: dict) -> tuple[dict, dict]:
    """(arrays, state dict) from the job's npz (state dict keys are stored as ``sd.<name>``)."""
    with np.load(job["npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    sd = {k[3:]: v for k, v in arrays.items() if k.startswith("sd.")}
    return arrays, sd


def _ort_session(job: dict):
    with open(job["onnx"], "rb") as f:
        return ort_models.session_from_bytes(f.read(), job["threads"])


def _case(job: dict):
    """(fn, its first result as named arrays) of a shape case."""
    arrays, sd = _load(job)
    x = arrays["x"]
    cell, lib, train = job["cell"], job["lib"], job["mode"] == "training"
    _, _, i, h, layers = job["case"]
    if lib == "torch":
        torch = _threads_torch(job["threads"])
        module = impls.torch_module(torch, cell, i, h, layers)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        infer, step = impls.torch_fns(torch, module, x)
        if not train:
            return infer, {"out": infer().numpy()}
        tx = step()
        grads = {f"d_{n}": p.grad.numpy() for n, p in module.named_parameters()}
        return step, {"d_input": tx.grad.numpy(), **grads}
    if lib == "lstmrs":
        lstmrs = _threads_lstmrs(job["threads"])
        layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
        layer.load_state_dict(sd)
        infer, step = impls.lstmrs_fns(layer, x)
        if not train:
            return infer, {"out": np.asarray(infer())}
        g = step()
        return step, {"d_input": g.input, **{f"d_{n}": g.params[n] for n in sd}}
    if lib in ("onnxruntime", "lstmrs_onnx") and not train:
        sess = _ort_session(job)

        def run():
            return sess.run(None, {"x": x})[0]

        return run, {"out": run()}
    raise ValueError(f"worker: no {job['mode']} case for lib {lib!r}")


LOWP_LIBS = (
    "lstmrs",
    "lstmrs_bf16",
    "lstmrs_int8",
    "torch",
    "torch_bf16_autocast",
    "torch_qint8_dynamic",
    "onnxruntime",
    "onnxruntime_qint8_dynamic",
)
_LSTMRS_DTYPES = {"lstmrs_bf16": "bfloat16", "lstmrs_int8": "qint8"}


def _lowp(job: dict):
    """(fn, its first result, label) of one reduced-precision (or float32 reference) inference."""
    arrays, sd = _load(job)
    x = arrays["x"]
    cell, lib = job["cell"], job["lib"]
    _, _, i, h, layers = job["case"]
    label = None
    if lib.startswith("lstmrs"):
        lstmrs = _threads_lstmrs(job["threads"])
        layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers).eval()
        layer.load_state_dict(sd)
        if lib in _LSTMRS_DTYPES:
            layer = lstmrs.quantize_dynamic(layer, _LSTMRS_DTYPES[lib])
            label = layer.kernel

        def fn():
            return layer(x)[0]

    elif lib.startswith("torch"):
        torch = _threads_torch(job["threads"])
        module = impls.torch_module(torch, cell, i, h, layers).eval()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        if lib == "torch_qint8_dynamic":
            module = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(module), {torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8
            )
        tx = torch.from_numpy(x)
        autocast = lib == "torch_bf16_autocast"

        def fn():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return module(tx)[0]

        label = torch.backends.cpu.get_cpu_capability()
    elif lib in ("onnxruntime", "onnxruntime_qint8_dynamic"):
        sess = _ort_session(job)

        def fn():
            return sess.run(None, {"x": x})[0]

    else:
        raise ValueError(f"worker: no lowp inference for lib {lib!r}")
    out = fn()
    out = out.float().numpy() if hasattr(out, "detach") else np.asarray(out)
    return fn, {"out": out}, label


def _stream(job: dict):
    """(fn = ``steps`` steps from one state, the first four steps' outputs from a zero state)."""
    arrays, sd = _load(job)
    xs = arrays["xs"]
    cell, lib, b, h = job["cell"], job["lib"], job["B"], job["H"]
    if lib == "torch":
        factory = stream.torch_factory(_threads_torch(job["threads"]), cell, sd, h)
    elif lib == "lstmrs":
        model = stream.lstmrs_model(_threads_lstmrs(job["threads"]), cell, h, sd)
        factory = stream.lstmrs_factory(model, b)
    elif lib == "onnxruntime":
        factory = stream.ort_factory(_ort_session(job), cell, b, h)
    else:
        raise ValueError(f"worker: no stream for lib {lib!r}")
    first = factory()
    outs = {f"step{k}": np.reshape(first(x), (b, 1)) for k, x in enumerate(xs)}
    return stream._repeat(factory(), xs[0], job["steps"]), outs


def _gemm(job: dict):
    import gemm

    lib = job["lib"]
    torch = _threads_torch(job["threads"]) if lib == "torch" else None
    found = gemm.candidate(lib, job["n"], job["threads"], torch)
    if found is None:
        raise ValueError(f"worker: no GEMM for lib {lib!r} here")
    label, fn = found
    fn()
    return fn, {}, label


def _threads_seen(job: dict) -> dict:
    """Each timed library's thread count as it reports it (for the libraries imported here;
    ONNX Runtime's is the session's intra-op option)."""
    seen: dict = {}
    if "torch" in sys.modules:
        seen["torch"] = sys.modules["torch"].get_num_threads()
    if "lstmrs" in sys.modules:
        seen["lstmrs"] = sys.modules["lstmrs"].get_num_threads()
    if "onnxruntime" in sys.modules:
        seen["onnxruntime_intra_op"] = job["threads"]
    seen["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "LSTMRS_NUM_THREADS")}
    return seen


def run(job: dict) -> dict:
    t0 = time.perf_counter()
    label = None
    if job["kind"] == "case":
        fn, first = _case(job)
    elif job["kind"] == "stream":
        fn, first = _stream(job)
    elif job["kind"] == "gemm":
        fn, first, label = _gemm(job)
    elif job["kind"] == "lowp":
        fn, first, label = _lowp(job)
    else:
        raise ValueError(f"worker: unknown job kind {job['kind']!r}")
    if job.get("out"):
        np.savez(job["out"], **{k: np.asarray(v) for k, v in first.items()})
    setup_s = time.perf_counter() - t0
    times = time_back_to_back(fn, job["warmup"], job["repeats"], job["min_seconds"])
    return {
        "times_ms": times,
        "label": label,
        "threads_seen": _threads_seen(job),
        "modules": [m for m in TIMED_LIBRARIES if m in sys.modules],
        "setup_s": round(setup_s, 3),
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
