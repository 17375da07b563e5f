"""Sequence generation with a clockwork RNN (Koutník et al. 2014, section 4.1), against a plain
tanh RNN and an LSTM with about the same number of parameters.

The paper's task: a network with no input but a constant learns to emit one long 1-D signal (a
320-sample piece of audio in the paper), one value per step, trained on the whole sequence by
backpropagation through time; the score is the mean squared error of that fit. Here the signal
is generated (fixed seed): a sum of sinusoids with periods from 7 to 160 steps and slowly varying
amplitudes, normalised to [-1, 1], 320 steps. Every network gets the constant input 1, a linear
read-out of all its units, the same Adam settings and the same number of full-sequence updates;
the best MSE of each (over the updates) and its final MSE are printed, with the wall-clock time.

    python examples/clockwork_generation.py [--steps 3000] [--seed 0] [--plot out.png]
"""

from __future__ import annotations

import argparse
import time

import lstmrs
import numpy as np
from lstmrs.clockwork import TANH_CELL, ClockworkRNN


def make_signal(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    y = np.zeros(length)
    for period in (7, 16, 37, 80, 160):
        amp = 0.5 + 0.5 * np.sin(
            2 * np.pi * t / (length * rng.uniform(0.7, 1.5)) + rng.uniform(0, 6)
        )
        y += amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return (y / np.abs(y).max()).astype(np.float32)


class Adam:
    """Adam (Kingma & Ba, 2015) on one flat parameter vector."""

    def __init__(self, n: int, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class Readout:
    """The recurrent network's outputs -> one value per step, and the MSE's gradients."""

    def __init__(self, features: int, seed: int):
        rng = np.random.default_rng(seed)
        self.w = rng.uniform(-1, 1, features) / np.sqrt(features)
        self.b = 0.0

    @property
    def size(self) -> int:
        return self.w.size + 1

    def loss_and_grads(self, out: np.ndarray, y: np.ndarray):
        pred = out[0].astype(np.float64) @ self.w + self.b  # [T]
        err = pred - y
        mse = float(np.mean(err**2))
        d_pred = 2 * err / err.size
        d_out = (d_pred[:, None] * self.w[None, :])[None].astype(out.dtype)
        d_w = out[0].T.astype(np.float64) @ d_pred
        return mse, pred, d_out, np.concatenate([d_w, [d_pred.sum()]])


def train(name, net, y, steps, lr, seed):
    """Full-sequence BPTT with Adam on the recurrent net and the read-out together."""
    x = np.ones((1, y.size, 1), np.float32)
    features = net.hidden_size
    head = Readout(features, seed)
    n_rnn = net.num_parameters
    opt = Adam(n_rnn + head.size, lr)
    params = np.concatenate([net.parameters_flat().astype(np.float64), head.w, [head.b]])
    best, best_pred, mse, start = np.inf, None, np.inf, time.perf_counter()
    for _ in range(steps):
        out, _state, tape = net.forward_train(x)
        mse, pred, d_out, d_head = head.loss_and_grads(out, y)
        if mse < best:
            best, best_pred = mse, pred
        grads = net.backward(tape, d_out=d_out)
        g = np.concatenate([grads.flat.astype(np.float64), d_head])
        norm = np.linalg.norm(g)
        if norm > 1.0:  # clip the global norm, as usual for BPTT
            g *= 1.0 / norm
        params = opt.step(params, g)
        net.set_parameters_flat(params[:n_rnn].astype(np.float32))
        head.w, head.b = params[n_rnn:-1], float(params[-1])
    seconds = time.perf_counter() - start
    total = n_rnn + head.size
    print(f"{name:<34} {total:>6} params  best MSE {best:.5f}  final {mse:.5f}  {seconds:6.1f} s")
    return best, best_pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="full-sequence updates per network")
    ap.add_argument("--length", type=int, default=320)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="PNG of the signal and the three fits")
    args = ap.parse_args()
    y = make_signal(args.length, args.seed)
    print(
        f"signal: {args.length} steps; {args.steps} Adam updates each, lr {args.lr}, "
        f"{lstmrs.get_num_threads()} threads"
    )

    periods = [2**i for i in range(8)]  # 1 .. 128, the paper's exponential clock
    nets = {
        "clockwork RNN (8 modules x 4, T=1..128)": ClockworkRNN(1, 4, periods, seed=args.seed),
        # About the clockwork's 656 + 33 parameters: 25 tanh units, 12 LSTM units.
        "tanh RNN (25 units)": lstmrs.RNN(1, 25, cell=TANH_CELL, seed=args.seed),
        "LSTM (12 units)": lstmrs.LSTM(1, 12, seed=args.seed),
    }
    fits = {}
    for name, net in nets.items():
        fits[name] = train(name, net, y, args.steps, args.lr, args.seed)
    if args.plot:
        import matplotlib  # optional: only for --plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(fits), 1, figsize=(9, 2.2 * len(fits)), sharex=True)
        for ax, (name, (best, pred)) in zip(axes, fits.items()):
            ax.plot(y, "k", lw=1, label="target")
            ax.plot(pred, "C1", lw=1, label=f"{name}: MSE {best:.4f}")
            ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
