"""Training steps of one implementation alone in this process, calls back to back: lstmrs or
PyTorch (never both in one process), each step as the benchmark's training rows run it
(``impls.lstmrs_fns`` / ``impls.torch_fns``: forward + backward of ``output.sum()``). Prints per
case the median and fastest wall time and the median CPU time of all threads. For A/B
comparisons of builds, run it in turns with each build's extension module in place (see the
helpers' brief on timing); torch's row is the reference the ratios of issue 16 divide by.

    python bench/train_alone.py lstmrs --threads 2 --repeats 15
    python bench/train_alone.py torch --threads 2 --cases lstm:32,100,8,64 lstm:64,64,512,1024
"""

from __future__ import annotations

import argparse
import time

import impls
import numpy as np
from cases import CASES, CELLS


def parse_case(text: str) -> tuple[str, int, int, int, int, int]:
    """``cell:B,T,I,H[,layers]``."""
    cell, dims = text.split(":")
    b, t, i, h, *rest = (int(v) for v in dims.split(","))
    return cell, b, t, i, h, rest[0] if rest else 1


def callable_for(which: str, cell: str, b, t, i, h, layers, threads):
    """The timed training step of ``which`` on the case's input and seed-0 weights."""
    x = impls.make_input(b, t, i)
    if which == "lstmrs":
        import lstmrs  # only the library timed is imported: no second thread pool

        lstmrs.set_num_threads(threads)
        layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
        return impls.lstmrs_fns(layer, x)[1]
    import torch  # only the library timed is imported: no second thread pool

    torch.set_num_threads(threads)
    module = impls.torch_module(torch, cell, i, h, layers)
    return impls.torch_fns(torch, module, x)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["lstmrs", "torch"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", nargs="*", type=parse_case, default=None)
    args = ap.parse_args()
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
