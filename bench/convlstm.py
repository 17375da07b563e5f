"""lstmrs.ConvLSTM against a PyTorch reference ConvLSTM: one training step (forward, then backward
of ``out.sum()`` with the input gradient), float32, at 1 and 2 threads, in one run.

    .venv/bin/python bench/convlstm.py                 # threads 1,2
    .venv/bin/python bench/convlstm.py --threads 2 --repeats 5

The PyTorch reference is the usual ConvLSTM written with ``torch.nn.Conv2d`` over the
concatenated ``[x_t, h_{t-1}]`` (one convolution per layer and step, gates i, f, g, o), given
lstmrs' weights; every case is checked against it (forward and gradients) before it is timed.
Implementations take turns within each repeat; medians are reported, with the ratio
torch / lstmrs (above 1: lstmrs is faster) and the load average before and after.
"""

from __future__ import annotations

import argparse
import sys

import lstmrs
import numpy as np
from common import close, loadavg, require_agreement, set_threads, summarize, time_interleaved

# (B, T, C, K, frame side, kernel, layers)
CASES = [
    (16, 9, 1, 16, 16, 5, 2),  # the moving-shapes example
    (8, 10, 3, 32, 32, 3, 1),
    (4, 8, 16, 64, 32, 3, 1),
]
QUICK_CASES = [(4, 4, 1, 8, 16, 3, 1)]


def torch_reference(layer: lstmrs.ConvLSTM, torch):
    """``run(x) -> out`` with ``layer``'s weights, as ``tests/test_convlstm.py`` writes it."""
    k = layer.hidden_channels
    sd = layer.state_dict()
    convs = []
    for n in range(layer.num_layers):
        conv = torch.nn.Conv2d(
            (layer.in_channels if n == 0 else k) + k,
            4 * k,
            layer.kernel_size,
            padding=layer.padding,
        )
        with torch.no_grad():
            w = np.concatenate([sd[f"weight_ih_l{n}"], sd[f"weight_hh_l{n}"]], axis=1)
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(sd[f"bias_l{n}"]))
        convs.append(conv)

    def run(x):
        seq = x
        b, _, _, hh, ww = x.shape
        for conv in convs:
            h = x.new_zeros(b, k, hh, ww)
            c = x.new_zeros(b, k, hh, ww)
            outs = []
            for t in range(seq.shape[1]):
                i, f, g, o = conv(torch.cat([seq[:, t], h], dim=1)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            seq = torch.stack(outs, dim=1)
        return seq

    return run, convs


def run_case(case, threads: int, args, torch) -> dict:
    b, t, c, k, side, kernel, layers = case
    set_threads(threads, torch, lstmrs)
    layer = lstmrs.ConvLSTM(c, k, kernel, num_layers=layers, seed=0)
    ref, convs = torch_reference(layer, torch)
    x = np.random.default_rng(0).standard_normal((b, t, c, side, side)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ones = np.ones((b, t, k, side, side), np.float32)

    def torch_step():
        for conv in convs:
            conv.weight.grad = conv.bias.grad = None
        tx.grad = None
        ref(tx).sum().backward()
        return tx.grad

    def ours_step():
        _, _, tape = layer.forward_train(x)
        return layer.backward(tape, ones)

    g = ours_step()
    torch_step()
    require_agreement(
        f"ConvLSTM {case} at {threads} thread(s)",
        [
            close("out", layer(x)[0], ref(tx).detach().numpy(), 1e-4),
            close("d_x", g.input, tx.grad.numpy(), 1e-4),
            close("d_weight_hh_l0", g.params["weight_hh_l0"], convs[0].weight.grad[:, c:], 1e-4),
        ],
    )
    times = time_interleaved({"torch": torch_step, "lstmrs": ours_step}, args.warmup, args.repeats)
    row = {name: summarize(v) for name, v in times.items()}
    return {
        "case": case,
        "threads": threads,
        "torch_ms": row["torch"]["median_ms"],
        "lstmrs_ms": row["lstmrs"]["median_ms"],
        "ratio": row["torch"]["median_ms"] / row["lstmrs"]["median_ms"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one small case: a smoke run")
    args = ap.parse_args(argv)
    try:
        import torch  # optional dependency: the reference this benchmark times against
    except ImportError:
        print("torch is not installed: nothing to compare with", file=sys.stderr)
        return 1
    print(f"load average before: {loadavg()}")
    print(
        f"{'B, T, C, K, side, kernel, layers':<34} {'thr':>3} {'torch ms':>10} "
        f"{'lstmrs ms':>10} {'torch/lstmrs':>12}"
    )
    for case in QUICK_CASES if args.quick else CASES:
        for threads in (int(v) for v in args.threads.split(",")):
            r = run_case(case, threads, args, torch)
            print(
                f"{case!s:<34} {threads:>3} {r['torch_ms']:>10.1f} {r['lstmrs_ms']:>10.1f} "
                f"{r['ratio']:>12.2f}"
            )
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
