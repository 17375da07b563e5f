"""Training-step time of issue 20's variants against their closest PyTorch equivalents, in one
run, the implementations taking turns (``common.time_interleaved``), outputs checked against
each other before timing.

  ln_lstm    lstmrs-cells' layer-normalised LSTM (the core's compiled cell) vs the same cell as
             a per-step torch loop with torch.nn.functional.layer_norm (torch has no fused one);
             torch nn.LSTM and lstmrs.LSTM beside them for scale
  ln_gru     the same for the layer-normalised GRU (nn.GRU and lstmrs.GRU for scale)
  clockwork  lstmrs.clockwork.ClockworkRNN (one native sweep per module) vs the usual torch
             implementation: a per-step loop over the dense block-triangular (masked) W_H that
             keeps the inactive modules' states with torch.where

A training step is forward + backward of ``output.sum()`` (parameter and input gradients).
Usage: python bench/variants.py [--batch 32 --steps 100 --input 64 --hidden 256 --threads 2
--repeats 5 --only ln_lstm,ln_gru,clockwork]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plugins" / "lstmrs-cells" / "src"))

from common import close, cpu_name, loadavg, require_agreement, set_threads, time_interleaved
from impls import lstmrs_fns, make_input


def torch_ln_cell_fns(torch, name: str, weights: dict, x: np.ndarray, h: int):
    """(forward, train) of the layer-normalised cell as a per-step torch loop."""
    ln = torch.nn.functional.layer_norm
    w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    xt = torch.tensor(x, requires_grad=True)

    def norm(a, k):
        return ln(a, (h,), w[f"ln_gain_{k}_l0"], w[f"ln_bias_{k}_l0"], eps=1e-5)

    def forward():
        b = xt.shape[0]
        hs = xt.new_zeros(b, h)
        cs = xt.new_zeros(b, h)
        xg_all = xt @ w["weight_ih_l0"].T + w["bias_ih_l0"]  # all steps' input products at once
        outs = []
        for t in range(xt.shape[1]):
            xg, hg = xg_all[:, t], hs @ w["weight_hh_l0"].T + w["bias_hh_l0"]
            if name == "ln_lstm":
                i, f, g, o = (
                    norm(a + c, k) for a, c, k in zip(xg.chunk(4, 1), hg.chunk(4, 1), "ifgo")
                )
                cs = torch.sigmoid(f) * cs + torch.sigmoid(i) * torch.tanh(g)
                hs = torch.sigmoid(o) * torch.tanh(norm(cs, "c"))
            else:
                (xr, xz, xn), (hr, hz, hn) = xg.chunk(3, 1), hg.chunk(3, 1)
                r, z = torch.sigmoid(norm(xr + hr, "r")), torch.sigmoid(norm(xz + hz, "z"))
                n = torch.tanh(norm(xn, "xn") + r * norm(hn, "hn"))
                hs = (1 - z) * n + z * hs
            outs.append(hs)
        return torch.stack(outs, 1)

    def infer():
        with torch.no_grad():
            return forward().numpy()

    def train():
        for p in (*w.values(), xt):
            p.grad = None
        forward().sum().backward()

    return infer, train


def torch_builtin_fns(torch, cls, x: np.ndarray, i: int, h: int):
    torch.manual_seed(0)
    m = cls(i, h, batch_first=True)
    xt = torch.tensor(x, requires_grad=True)

    def train():
        m.zero_grad()
        xt.grad = None
        m(xt)[0].sum().backward()

    return train


def torch_clockwork_fns(torch, cw, x: np.ndarray):
    w_i, w_h, b = (torch.tensor(a, requires_grad=True) for a in cw.dense())
    g, k = cw.num_modules, cw.module_size
    mask = torch.from_numpy(np.kron(np.triu(np.ones((g, g))), np.ones((k, k))).astype(np.float32))
    xt = torch.tensor(x, requires_grad=True)
    steps = x.shape[1]
    active = torch.tensor(
        np.repeat([[t % p == 0 for p in cw.periods] for t in range(steps)], k, axis=1)
    )

    def forward():
        hs = xt.new_zeros(xt.shape[0], g * k)
        xg = xt @ w_i.T + b
        wh = w_h * mask
        outs = []
        for t in range(steps):
            hs = torch.where(active[t], torch.tanh(xg[:, t] + hs @ wh.T), hs)
            outs.append(hs)
        return torch.stack(outs, 1)

    def infer():
        with torch.no_grad():
            return forward().numpy()

    def train():
        for p in (w_i, w_h, b, xt):
            p.grad = None
        forward().sum().backward()

    return infer, train


def report(title: str, times: dict) -> dict:
    print(title)
    base = statistics.median(next(iter(times.values())))
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_ms": med, "min_ms": min(ts)}
        print(f"  {name:<30}{med:>10.1f} ms  (min {min(ts):.1f})  {med / base:6.2f}x")
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--modules", type=int, default=8, help="clockwork: modules (periods 2^i)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="ln_lstm,ln_gru,clockwork")
    args = ap.parse_args(argv)

    import lstmrs
    import lstmrs_cells
    import torch
    from lstmrs.clockwork import ClockworkRNN

    set_threads(args.threads, torch=torch, lstmrs=lstmrs)
    b, t, i, h = args.batch, args.steps, args.input, args.hidden
    print(
        f"B={b} T={t} I={i} H={h}, float32, {args.threads} threads, {cpu_name()}, "
        f"{os.cpu_count()} CPUs, load average {loadavg()}, {args.repeats} repeats"
    )
    x = make_input(b, t, i)
    specs = {s.name: s for s in lstmrs_cells.CELLS}
    kw = {"batch_first": True, "dtype": "float32", "seed": 0}
    results = {}
    for name in args.only.split(","):
        if name in ("ln_lstm", "ln_gru"):
            layer = lstmrs.RNN(i, h, cell=specs[name], **kw)
            infer, train = lstmrs_fns(layer, x)
            t_infer, t_train = torch_ln_cell_fns(torch, name, layer.state_dict(), x, h)
            require_agreement(name, [close(name, infer(), t_infer(), 1e-4)])
            builtin = lstmrs.LSTM if name == "ln_lstm" else lstmrs.GRU
            tcls = torch.nn.LSTM if name == "ln_lstm" else torch.nn.GRU
            fns = {
                f"lstmrs {name}": train,
                f"torch {name} (per-step loop)": t_train,
                f"lstmrs {builtin.__name__} (no LN)": lstmrs_fns(builtin(i, h, **kw), x)[1],
                f"torch nn.{tcls.__name__} (no LN)": torch_builtin_fns(torch, tcls, x, i, h),
            }
        elif name == "clockwork":
            cw = ClockworkRNN(i, h // args.modules, [2**m for m in range(args.modules)], seed=0)
            ones = np.ones((b, t, cw.hidden_size), np.float32)

            def train_cw(cw=cw, ones=ones):
                _, _, tape = cw.forward_train(x)
                return cw.backward(tape, ones)

            t_infer, t_train = torch_clockwork_fns(torch, cw, x)
            require_agreement(name, [close(name, cw(x)[0], t_infer(), 1e-4)])
            fns = {
                f"lstmrs ClockworkRNN ({args.modules} modules)": train_cw,
                "torch masked dense loop": t_train,
            }
        else:
            raise SystemExit(f"--only: unknown variant {name!r}")
        times = time_interleaved(fns, args.warmup, args.repeats)
        results[name] = report(f"{name}: training step (forward + backward)", times)
    print(f"load average after: {loadavg()}")
    return results


if __name__ == "__main__":
    main()
