"""The practical ceiling: a large square f32 matrix product at the run's thread count, timed
in the same run as the cases. Every f32 GEMM the run can reach is timed, taking turns inside
every repeat (torch.matmul when torch is installed, NumPy's matmul, and ONNX Runtime's MatMul
when onnxruntime imports), and the fastest is the ceiling: libraries pick different kernels on
one CPU (torch's BLAS may run AVX2 code where ONNX Runtime's MLAS runs AVX-512), so one library
alone can put the ceiling below what the machine does."""

from __future__ import annotations

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


def measure(n: int, warmup: int, repeats: int, torch=None, threads: int | None = None) -> dict:
    """GFLOP/s of C = A @ B, all [n, n] f32, FLOPs = 2 n^3, for every library at hand, each
    writing into a preallocated C. Returns the fastest as the ceiling (``library``, ``gflops``, ...) with every
    candidate under ``candidates``. ``threads``: ORT's intra-op threads (torch's and NumPy's
    BLAS threads are set by the caller and the environment)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    fns = {}
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        fns[f"torch {torch.__version__} torch.matmul"] = lambda: torch.matmul(ta, tb, out=tc)
    fns[f"numpy {np.__version__} np.matmul"] = lambda: np.matmul(a, b, out=c)
    if threads is not None:
        sess, name = _ort_matmul(n, threads)
        if sess is not None:
            # Bound to preallocated arrays, so no allocation is timed here either.
            c_ort = np.empty((n, n), np.float32)
            io = sess.io_binding()
            io.bind_cpu_input("a", a)
            io.bind_cpu_input("b", b)
            io.bind_output("c", "cpu", 0, np.float32, [n, n], c_ort.ctypes.data)
            fns[name] = lambda: sess.run_with_iobinding(io)

    times = time_interleaved(fns, max(warmup, 1), repeats)
    candidates = [{"library": name, **summarize(t, 2.0 * n**3)} for name, t in times.items()]
    best = max(candidates, key=lambda r: r["gflops"])
    return {
        **best,
        "shape": [n, n, n],
        "dtype": "float32",
        "candidates": [
            {k: r[k] for k in ("library", "median_ms", "min_ms", "gflops")} for r in candidates
        ],
    }
