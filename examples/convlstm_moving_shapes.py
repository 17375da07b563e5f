"""Next-frame prediction with lstmrs.ConvLSTM on generated moving shapes.

    .venv/bin/python examples/convlstm_moving_shapes.py               # ~10 min on 2 cores
    .venv/bin/python examples/convlstm_moving_shapes.py --minutes 1   # a quick look

The data (generated here, fixed seed): 16×16 frames in which one to three squares and discs move
with constant velocity and bounce off the walls. The network reads frames 0..T-2 and predicts
frames 1..T-1: a stacked ConvLSTM, then a 1×1 convolution to one channel and a sigmoid, trained
with per-pixel binary cross-entropy by the project's Adam (``lstmrs.optim.Adam``, the Rust
optimizer over one flat buffer holding the ConvLSTM's and the read-out's weights).

It reports the validation mean squared error of the predicted frames against copying the last
frame (the baseline a model that learns nothing about motion cannot beat), over all predicted
steps and over the steps from the third on (by then the velocity is observable), and draws
true and predicted frames side by side into ``docs/convlstm/moving_shapes.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import lstmrs
import numpy as np


def moving_shapes(n: int, steps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, steps, 1, size, size]`` float32 frames in {0, 1}: 1–3 squares (side 3–4) or discs
    (radius 1.5–2.2) per sequence, each with its own constant velocity (1–2 pixels a step on each
    axis, either sign), reflected at the walls."""
    frames = np.zeros((n, steps, 1, size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for s in range(n):
        for _ in range(rng.integers(1, 4)):
            disc = rng.random() < 0.5
            half = rng.uniform(1.5, 2.2) if disc else rng.integers(3, 5) / 2
            lo, hi = half, size - half
            pos = rng.uniform(lo, hi, 2)
            vel = rng.uniform(1.0, 2.0, 2) * rng.choice([-1.0, 1.0], 2)
            for t in range(steps):
                cy, cx = pos
                if disc:
                    mask = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= half**2
                else:
                    mask = (np.abs(yy + 0.5 - cy) <= half) & (np.abs(xx + 0.5 - cx) <= half)
                frames[s, t, 0][mask] = 1.0
                pos = pos + vel
                for a in range(2):  # bounce: reflect the position and the velocity
                    if pos[a] < lo:
                        pos[a], vel[a] = 2 * lo - pos[a], -vel[a]
                    elif pos[a] > hi:
                        pos[a], vel[a] = 2 * hi - pos[a], -vel[a]
    return frames


class NextFrame:
    """ConvLSTM -> 1×1 convolution -> logits of the next frame, with one flat parameter vector
    (the ConvLSTM's followed by the read-out's ``K`` weights and one bias)."""

    def __init__(self, hidden: int, layers: int, kernel: int, seed: int) -> None:
        self.rnn = lstmrs.ConvLSTM(1, hidden, kernel, num_layers=layers, seed=seed)
        rng = np.random.default_rng(seed)
        self.w = rng.uniform(-1, 1, hidden).astype(np.float32) / np.sqrt(hidden)
        self.b = np.float32(0.0)

    @property
    def num_parameters(self) -> int:
        return self.rnn.num_parameters + self.w.size + 1

    def flat(self) -> np.ndarray:
        return np.concatenate([self.rnn.parameters_flat(), self.w, [self.b]]).astype(np.float32)

    def set_flat(self, flat: np.ndarray) -> None:
        n = self.rnn.num_parameters
        self.rnn.set_parameters_flat(flat[:n])
        self.w, self.b = flat[n:-1].copy(), np.float32(flat[-1])

    def logits(self, h: np.ndarray) -> np.ndarray:
        # h [B, T, K, H, W] -> [B, T, 1, H, W]
        return np.einsum("btkyx,k->btyx", h, self.w)[:, :, None] + self.b

    def predict(self, x: np.ndarray) -> np.ndarray:
        h, _ = self.rnn(x)
        return 1.0 / (1.0 + np.exp(-self.logits(h)))

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean binary cross-entropy of the predicted frames and its gradient (flat)."""
        h, _, tape = self.rnn.forward_train(x)
        z = self.logits(h)
        p = 1.0 / (1.0 + np.exp(-z))
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        dz = ((p - y) / y.size).astype(np.float32)  # [B, T, 1, H, W]
        d_w = np.einsum("btyx,btkyx->k", dz[:, :, 0], h)
        d_b = dz.sum()
        d_h = dz * self.w[None, None, :, None, None]
        g = self.rnn.backward(tape, d_h.astype(np.float32))
        return loss, np.concatenate([g.flat, d_w, [d_b]]).astype(np.float32)


def evaluate(model: NextFrame, frames: np.ndarray, batch: int) -> dict[str, float]:
    """Validation MSE of the model and of copying the last frame, over all predicted steps
    and from the third predicted step on."""
    sq_model, sq_copy = [], []
    for i in range(0, len(frames), batch):
        f = frames[i : i + batch]
        x, y = f[:, :-1], f[:, 1:]
        sq_model.append(((model.predict(x) - y) ** 2).mean(axis=(2, 3, 4)))
        sq_copy.append(((x - y) ** 2).mean(axis=(2, 3, 4)))
    m, c = np.concatenate(sq_model), np.concatenate(sq_copy)
    return {
        "mse": float(m.mean()),
        "copy_mse": float(c.mean()),
        "mse_from_step3": float(m[:, 2:].mean()),
        "copy_mse_from_step3": float(c[:, 2:].mean()),
    }


def plot(model: NextFrame, frames: np.ndarray, path: str, rows: int = 3) -> None:
    """True next frames above the predicted ones, for ``rows`` validation sequences."""
    import matplotlib  # optional dependency: only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = frames[:rows]
    pred = model.predict(f[:, :-1])
    steps = f.shape[1] - 1
    fig, axes = plt.subplots(2 * rows, steps, figsize=(steps * 1.1, 2 * rows * 1.15))
    for r in range(rows):
        for t in range(steps):
            for k, (img, label) in enumerate(((f[r, t + 1, 0], "true"), (pred[r, t, 0], "pred"))):
                ax = axes[2 * r + k, t]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(f"{label} {r}", fontsize=8)
                if r == 0 and k == 0:
                    ax.set_title(f"t+1={t + 1}", fontsize=8)
    fig.suptitle("lstmrs.ConvLSTM next-frame prediction (validation): true vs predicted")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    ap.add_argument("--train", type=int, default=3000, help="training sequences")
    ap.add_argument("--val", type=int, default=300, help="validation sequences")
    ap.add_argument("--steps", type=int, default=10, help="frames per sequence")
    ap.add_argument("--size", type=int, default=16, help="frame side in pixels")
    ap.add_argument("--hidden", type=int, default=16, help="hidden channels per layer")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="docs/convlstm/moving_shapes.png")
    args = ap.parse_args(argv)

    lstmrs.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    train = moving_shapes(args.train, args.steps, args.size, rng)
    val = moving_shapes(args.val, args.steps, args.size, rng)
    model = NextFrame(args.hidden, args.layers, args.kernel, args.seed)
    opt = lstmrs.optim.Adam(lr=args.lr).build(model.num_parameters, "float32")
    flat = model.flat()
    print(
        f"{model.num_parameters} parameters; {args.train} training and {args.val} validation "
        f"sequences of {args.steps} frames {args.size}×{args.size}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("before training:", evaluate(model, val, 64))

    start, step, epoch = time.perf_counter(), 0, 0
    budget = 60 * args.minutes
    while time.perf_counter() - start < budget:
        epoch += 1
        order = rng.permutation(args.train)
        losses = []
        for i in range(0, args.train - args.batch + 1, args.batch):
            f = train[order[i : i + args.batch]]
            loss, grad = model.loss_and_grad(f[:, :-1], f[:, 1:])
            opt.step(flat, grad, args.lr)
            model.set_flat(flat)
            losses.append(loss)
            step += 1
            if time.perf_counter() - start >= budget:
                break
        m = evaluate(model, val, 64)
        print(
            f"epoch {epoch} ({step} steps, {time.perf_counter() - start:.0f} s): train BCE "
            f"{np.mean(losses):.4f}, validation MSE {m['mse']:.5f} (copy last frame "
            f"{m['copy_mse']:.5f}); from step 3: {m['mse_from_step3']:.5f} "
            f"(copy {m['copy_mse_from_step3']:.5f})"
        )
    m = evaluate(model, val, 64)
    print(
        f"final after {step} steps, {time.perf_counter() - start:.0f} s: validation MSE "
        f"{m['mse']:.5f} vs copy-last-frame {m['copy_mse']:.5f} "
        f"(ratio {m['mse'] / m['copy_mse']:.3f}); from step 3 {m['mse_from_step3']:.5f} vs "
        f"{m['copy_mse_from_step3']:.5f} (ratio "
        f"{m['mse_from_step3'] / m['copy_mse_from_step3']:.3f}); load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    plot(model, val, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
