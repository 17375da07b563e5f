"""The practical ceiling: a large square f32 matrix product at the run's thread count, timed
in the same run as the cases. Every f32 GEMM the run can reach is timed (torch.matmul when torch
is installed, NumPy's matmul, and ONNX Runtime's MatMul when onnxruntime imports), each in its
own process like the cases (``measure_isolated``) or taking turns inside every repeat in this
one (``measure``, the record's ``--shared-process``), and the fastest is the ceiling: libraries
pick different kernels on one CPU (torch's BLAS may run AVX2 code where ONNX Runtime's MLAS runs
AVX-512), so one library alone can put the ceiling below what the machine does."""

from __future__ import annotations

import isolated
import numpy as np
from common import summarize, time_interleaved


def _ort_matmul(n: int, threads: int):
    """An ONNX Runtime session computing one [n,n]@[n,n] f32 MatMul (None without onnxruntime)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None, None
    shape = [n, n]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, f"onnxruntime {ort.__version__} MatMul"


LIBRARIES = ("torch", "numpy", "onnxruntime")


def candidate(lib: str, n: int, threads: int | None, torch=None):
    """(label, fn) of one library's [n,n]@[n,n] f32 product into a preallocated output, or None
    when the library is not at hand. ``torch``: the imported module (for lib "torch")."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    if lib == "torch":
        if torch is None:
            return None
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        return f"torch {torch.__version__} torch.matmul", lambda: torch.matmul(ta, tb, out=tc)
    if lib == "numpy":
        return f"numpy {np.__version__} np.matmul", lambda: np.matmul(a, b, out=c)
    if lib == "onnxruntime" and threads is not None:
        sess, name = _ort_matmul(n, threads)
        if sess is None:
            return None
        return name, _BoundRun(sess, a, b, c)
    return None


class _BoundRun:
    """``sess.run_with_iobinding`` on preallocated arrays (so no allocation is timed here
    either). The binding must go before its session: ORT's binding does not keep the session
    alive, and freeing the session first crashes the process (seen with ORT 1.32)."""

    def __init__(self, sess, a, b, c):
        self.sess, self.arrays = sess, (a, b, c)
        self.io = sess.io_binding()
        self.io.bind_cpu_input("a", a)
        self.io.bind_cpu_input("b", b)
        self.io.bind_output("c", "cpu", 0, np.float32, list(c.shape), c.ctypes.data)

    def __call__(self):
        self.sess.run_with_iobinding(self.io)

    def __del__(self):
        self.io = None
        self.sess = None


def ceiling(n: int, timed: dict[str, list[float]]) -> dict:
    """The fastest candidate as the ceiling (``library``, ``gflops``, ...), every candidate under
    ``candidates``."""
    candidates = [{"library": name, **summarize(t, 2.0 * n**3)} for name, t in timed.items()]
    best = max(candidates, key=lambda r: r["gflops"])
    keys = ("library", "median_ms", "min_ms", "iqr_rel", "calls", "gflops")
    return {
        **best,
        "shape": [n, n, n],
        "dtype": "float32",
        "candidates": [{k: r[k] for k in keys} for r in candidates],
    }


def measure(
    n: int,
    warmup: int,
    repeats: int,
    torch=None,
    threads: int | None = None,
    min_seconds: float = 0.0,
) -> dict:
    """GFLOP/s of C = A @ B, all [n, n] f32, FLOPs = 2 n^3, for every library at hand in this
    process, taking turns. ``threads``: ORT's intra-op threads (torch's and NumPy's BLAS
    threads are set by the caller and the environment)."""
    fns = dict(c for c in (candidate(lib, n, threads, torch) for lib in LIBRARIES) if c is not None)
    return ceiling(n, time_interleaved(fns, max(warmup, 1), repeats, min_seconds))


def measure_isolated(
    n: int, warmup: int, repeats: int, threads: int, min_seconds: float, libs
) -> dict:
    """:func:`measure` with each library in its own fresh process (worker.py), back to back."""
    timed = {}
    for lib in libs:
        res = isolated.run_worker(
            {
                "kind": "gemm",
                "lib": lib,
                "n": n,
                "threads": threads,
                "warmup": max(warmup, 1),
                "repeats": repeats,
                "min_seconds": min_seconds,
            }
        )
        timed[res["label"]] = res["times_ms"]
    out = ceiling(n, timed)
    out["isolation"] = "process per library"
    return out
