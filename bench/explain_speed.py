"""Explaining against training: integrated gradients (50 steps) on 1,000 sequences of the
default forecast model, against one training epoch of that model on the same 1,000 sequences.

    python bench/explain_speed.py --threads 2
    python bench/explain_speed.py --data ../shared/data/timeseries/daily-min-temperatures.csv

The model and the windows come from the forecast task itself (its defaults: lookback 24,
horizon 12, a 64-unit LSTM, batches of 16, Adam), on the given CSV. Both timings are the
median of ``--repeats`` runs, taken in turns; the model trains from the same weights in every
repeat. Integrated gradients run 1,000 x 50 = 50,000 forward and backward passes, the epoch
1,000, so the question is how much the large batched calls gain over training's small ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import lstmrs
import numpy as np
from lstmrs.cli import lookup_task, resolve_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(
    os.path.join(HERE, "..", "..", "shared", "data", "timeseries", "daily-min-temperatures.csv")
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="a CSV the forecast task reads")
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        lstmrs.set_num_threads(args.threads)

    task = lookup_task("forecast")
    cfg = resolve_config(task, sets=[f"data.path={args.data}"])
    data = task.prepare(cfg)
    x, y = data.train
    if len(x) < args.sequences:
        raise SystemExit(f"{args.data}: {len(x)} training windows, fewer than {args.sequences}")
    x, y = x[: args.sequences], y[: args.sequences]
    model = task.build_model(cfg, data)
    t = cfg["train"]
    model.compile(t["optimizer"], lr=t["lr"])
    start = model.get_weights()
    print(f"model: {model!r}")
    print(
        f"data: {os.path.basename(args.data)}, {len(x)} windows of {x.shape[1]} steps x "
        f"{x.shape[2]} features; threads {lstmrs.get_num_threads()}; batch size "
        f"{t['batch_size']}"
    )

    def epoch() -> float:
        model.set_weights(start)
        t0 = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=t["batch_size"], verbose=0, seed=0)
        return time.perf_counter() - t0

    def explain() -> tuple[float, float]:
        model.set_weights(start)
        t0 = time.perf_counter()
        e = model.explain(x, method="integrated_gradients", steps=args.steps)
        dt = time.perf_counter() - t0
        gap = np.abs(e.output - e.baseline_output)
        return dt, float(np.max(np.abs(e.delta) / np.maximum(gap, 1e-12)))

    epochs, explains, worst = [], [], 0.0
    for _ in range(args.repeats):
        epochs.append(epoch())
        dt, rel = explain()
        explains.append(dt)
        worst = max(worst, rel)
    te, tx = statistics.median(epochs), statistics.median(explains)
    print(f"one training epoch ({len(x)} sequences):      {te:8.3f} s  (runs {epochs})")
    print(
        f"integrated gradients, {args.steps} steps, {len(x)} seqs: {tx:8.3f} s  (runs {explains})"
    )
    print(f"ratio explain / epoch: {tx / te:.2f}")
    print(f"largest completeness gap |delta| / |F(x) - F(x')|: {worst:.2e}")


if __name__ == "__main__":
    main()
