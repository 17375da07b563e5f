"""What ``infer_alone.py`` and ``train_alone.py`` share: the ``cell:B,T,I,H[,layers]`` case
argument and the loop that times one implementation's calls back to back in this process."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from cases import CASES, CELLS

Case = tuple[str, int, int, int, int, int]


def parse_case(text: str) -> Case:
    """``cell:B,T,I,H[,layers]``."""
    cell, dims = text.split(":")
    b, t, i, h, *rest = (int(v) for v in dims.split(","))
    return cell, b, t, i, h, rest[0] if rest else 1


def main(
    doc: str,
    choices: list[str],
    callable_for: Callable[..., Callable[[], object]],
    set_up: Callable[[argparse.Namespace], None] | None = None,
) -> None:
    """Parses ``which --threads --repeats --warmup --cases``, then prints per case the median,
    10th and 90th percentiles and fastest wall time and the median CPU time of all threads of
    ``callable_for(which, cell, b, t, i, h, layers, threads)``'s calls. ``set_up(args)`` runs once before the first case."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("which", choices=choices)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", nargs="*", type=parse_case, default=None)
    args = ap.parse_args()
    if set_up is not None:
        set_up(args)
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
            f"median {np.median(wall) * 1e3:8.3f} ms  p10 {np.percentile(wall, 10) * 1e3:8.3f}  "
            f"p90 {np.percentile(wall, 90) * 1e3:8.3f}  fastest {min(wall) * 1e3:8.3f} ms  "
            f"cpu median {np.median(cpu) * 1e3:8.2f} ms",
            flush=True,
        )
