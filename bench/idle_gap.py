"""The cost of a call made after an idle gap: lstmrs LSTM inference (B, T, I, H) timed after
each gap in turn, with the process's minor page faults and voluntary context switches (all
threads, `getrusage`) per call. Gap 0 means back to back: another call right before.

    python bench/idle_gap.py [--calls 15] [--gaps 0,10,50,200,1200] [--case 64,128,128,256]

A call after a gap pays for what the idle time undid: buffers the allocator gave back (page
faults), pool threads and virtual CPUs that went to sleep (context switches, wake-up latency).
Run it on an idle machine for the wake-up part: on a busy one the CPUs never halt.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import lstmrs
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=15, help="calls per gap (median)")
    ap.add_argument("--gaps", default="0,10,50,200,1200", help="comma list of idle gaps in ms")
    ap.add_argument("--case", default="64,128,128,256", help="B,T,I,H of a one-layer LSTM")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    b, t, i, h = (int(v) for v in args.case.split(","))
    layer = lstmrs.LSTM(i, h, seed=0)
    x = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    for _ in range(3):
        layer(x)
    rows: dict[float, list[tuple[float, int, int]]] = {g: [] for g in gaps}
    for _ in range(args.calls):
        for gap in gaps:  # the gaps take turns, so a slow spell of the machine hits all alike
            if gap > 0:
                time.sleep(gap / 1e3)
            else:
                layer(x)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            layer(x)
            t1 = time.perf_counter()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rows[gap].append(
                ((t1 - t0) * 1e3, r1.ru_minflt - r0.ru_minflt, r1.ru_nvcsw - r0.ru_nvcsw)
            )
    print(f"LSTM (B,T,I,H)=({b},{t},{i},{h}) inference, {args.calls} calls per gap")
    print(f"{'gap ms':>7} {'median ms':>10} {'min ms':>8} {'faults':>7} {'vol. csw':>9}")
    for gap, r in rows.items():
        ms, faults, csw = zip(*r)
        print(
            f"{gap:7g} {statistics.median(ms):10.1f} {min(ms):8.1f} "
            f"{statistics.median(faults):7.0f} {statistics.median(csw):9.0f}"
        )


if __name__ == "__main__":
    main()
