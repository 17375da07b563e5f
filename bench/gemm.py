"""The practical ceiling: a large square f32 matrix product at the run's thread count, timed
in the same run as the cases (torch.matmul when torch is installed, else NumPy's matmul)."""

from __future__ import annotations

import numpy as np
from common import summarize, time_interleaved


def measure(n: int, warmup: int, repeats: int, torch=None) -> dict:
    """GFLOP/s of C = A @ B, all [n, n] f32, writing into a preallocated C (no allocation is
    timed). FLOPs = 2 n^3."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        library = f"torch {torch.__version__} torch.matmul"

        def run():
            torch.matmul(ta, tb, out=tc)
    else:
        library = f"numpy {np.__version__} np.matmul"

        def run():
            np.matmul(a, b, out=c)

    times = time_interleaved({"gemm": run}, max(warmup, 1), repeats)["gemm"]
    return {
        "library": library,
        "shape": [n, n, n],
        "dtype": "float32",
        **summarize(times, 2.0 * n**3),
    }
