"""Training-step time of the cell language's second-version cells against the built-in LSTM,
measured in one run with the implementations taking turns (``common.time_interleaved``).

  lstm       lstmrs.LSTM, the built-in fused kernel
  ln_lstm    the layer-normalised LSTM of lstmrs-cells (5 row reductions x 2 per step)
  slstm      xLSTM's sLSTM of lstmrs-cells (exp, softplus, max, division; 4 states)
  decay_rnn  the learned-decay tanh RNN of lstmrs-cells (1 gate block, not an LSTM's 4)
  peephole   the peephole LSTM of lstmrs-cells (the first version's language), for scale

A training step is ``forward_train`` + ``backward`` (d_out = ones) of one layer, float32, CPU.
Usage: python bench/cellv2_cells.py [--batch 32 --steps 100 --input 64 --hidden 256
--repeats 7 --threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plugins" / "lstmrs-cells" / "src"))

from common import time_interleaved
from impls import lstmrs_fns, make_input

CELLS = ("ln_lstm", "slstm", "decay_rnn", "peephole_lstm")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)

    import lstmrs
    import lstmrs_cells

    specs = {s.name: s for s in lstmrs_cells.CELLS}
    b, t, i, h = args.batch, args.steps, args.input, args.hidden
    x = make_input(b, t, i)
    kw = {"batch_first": True, "dtype": "float32", "seed": 0}
    layers = {"lstm": lstmrs.LSTM(i, h, **kw)}
    layers.update({name: lstmrs.RNN(i, h, cell=specs[name], **kw) for name in CELLS})
    train = {name: lstmrs_fns(layer, x)[1] for name, layer in layers.items()}
    times = time_interleaved(train, args.warmup, args.repeats)
    base = statistics.median(times["lstm"])
    print(
        f"training step (forward_train + backward), B={b} T={t} I={i} H={h}, float32, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"{args.repeats} repeats"
    )
    print(f"{'cell':<14}{'median ms':>10}{'min ms':>9}{'vs lstm':>9}")
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_ms": med, "min_ms": min(ts), "vs_lstm": med / base}
        print(f"{name:<14}{med:>10.2f}{min(ts):>9.2f}{med / base:>8.2f}x")
    return rows


if __name__ == "__main__":
    main()
