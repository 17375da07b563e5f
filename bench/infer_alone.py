"""Inference of one implementation alone in this process, calls back to back: lstmrs or ONNX
Runtime (never both in one process, so neither's threads spin beside the other's calls, unlike
the interleaved record of ``bench_rnn.py``). Prints per case the median and fastest wall time
and the median CPU time of all threads. For A/B comparisons of builds, run it in turns with
each build's extension module in place (see the helpers' brief on timing).

    python bench/infer_alone.py lstmrs --threads 2 --repeats 15
    python bench/infer_alone.py ort --threads 2 --cases lstm:64,128,128,256 gru:8,2000,16,128
"""

from __future__ import annotations

import argparse
import time

import impls
import lstmrs
import numpy as np
import ort_models
from cases import CASES, CELLS


def parse_case(text: str) -> tuple[str, int, int, int, int, int]:
    """``cell:B,T,I,H[,layers]``."""
    cell, dims = text.split(":")
    b, t, i, h, *rest = (int(v) for v in dims.split(","))
    return cell, b, t, i, h, rest[0] if rest else 1


def callable_for(which: str, cell: str, b, t, i, h, layers, threads):
    """The timed call; an ORT session is checked against the lstmrs layer it was built from."""
    layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
    x = impls.make_input(b, t, i)
    if which == "lstmrs":
        return lambda: layer(x)
    sd = {k: np.asarray(v) for k, v in layer.state_dict().items()}
    sess = ort_models.sequence_session(cell, sd, b, t, i, h, layers, threads)
    got, want = sess.run(None, {"x": x})[0], layer(x)[0]
    if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"ORT and lstmrs disagree: max |diff| {np.abs(got - want).max():.3g}")
    return lambda: sess.run(None, {"x": x})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["lstmrs", "ort"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", nargs="*", type=parse_case, default=None)
    args = ap.parse_args()
    lstmrs.set_num_threads(args.threads)
    cases = args.cases or [(c, *shape) for c in CELLS for shape in CASES]
    for cell, b, t, i, h, layers in cases:
        f = callable_for(args.which, cell, b, t, i, h, layers, args.threads)
        for _ in range(args.warmup):
            f()
        wall, cpu = [], []
        for _ in range(args.repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(
            f"{args.which:6s} {cell:4s} ({b},{t},{i},{h},{layers}) threads={args.threads}: "
            f"median {np.median(wall) * 1e3:8.2f} ms  fastest {min(wall) * 1e3:8.2f} ms  "
            f"cpu median {np.median(cpu) * 1e3:8.2f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
