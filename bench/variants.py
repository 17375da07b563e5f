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
  han        lstmrs.hierarchical.HierarchicalClassifier (loss and every gradient) vs the same
             network in torch: nn.Embedding, bidirectional nn.LSTMs over packed sequences
             (pack_padded_sequence), the same attention pooling and head, cross-entropy

A training step is forward + backward of ``output.sum()`` (parameter and input gradients).
Usage: python bench/variants.py [--batch 32 --steps 100 --input 64 --hidden 256 --threads 2
--repeats 5 --only ln_lstm,ln_gru,clockwork,han]
"""

from __future__ import annotations

import os

# NumPy's OpenBLAS threads spin-wait for each other: on a loaded machine they made the small
# products of the hierarchical model's attention pooling 10x slower. One thread, as for torch.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
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


def han_case(torch, lstmrs_han, batch: int, seed: int = 0):
    """A random batch of documents (``batch`` documents of 1-20 sentences of 3-30 words), the
    lstmrs model and its torch twin; returns (lstmrs train, torch train, logits of each)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(seed)
    n_sent = rng.integers(1, 21, batch)
    counts = np.zeros((batch, 20), np.int64)
    for d, n in enumerate(n_sent):
        counts[d, :n] = rng.integers(3, 31, n)
    ids = rng.integers(1, 5000, (batch, 20, 30))
    labels = rng.integers(0, 2, batch)
    m = lstmrs_han(5000, 2, embed_size=64, word_hidden=48, sentence_hidden=48, attention_units=96)
    p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in m.dense.items()}
    lstms = []
    for ours in (m.word_lstm, m.sent_lstm):
        t = torch.nn.LSTM(ours.input_size, ours.hidden_size, batch_first=True, bidirectional=True)
        t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        lstms.append(t)
    rows = np.nonzero(counts > 0)
    lens = counts[rows]
    tokens = torch.from_numpy(ids[rows][:, : lens.max()])

    def attend(h, lengths, w, b, v):
        mask = torch.arange(h.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
        score = (torch.tanh(h @ w.T + b) @ v).masked_fill(~mask, float("-inf"))
        return (torch.softmax(score, dim=1)[:, :, None] * h).sum(1)

    def pooled(lstm, x, lengths, w, b, v):
        packed = pack_padded_sequence(
            x, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False
        )
        h, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        return attend(h, lengths, w, b, v)

    def torch_logits():
        emb = p["embedding"][tokens]
        sent = pooled(lstms[0], emb, lens, p["word_attn_w"], p["word_attn_b"], p["word_attn_v"])
        grid = torch.zeros(batch, int(n_sent.max()), sent.shape[1])
        grid[torch.from_numpy(rows[0]), torch.from_numpy(rows[1])] = sent
        doc = pooled(lstms[1], grid, n_sent, p["sent_attn_w"], p["sent_attn_b"], p["sent_attn_v"])
        return doc @ p["head_w"].T + p["head_b"]

    def t_train():
        for q in (*p.values(), *lstms[0].parameters(), *lstms[1].parameters()):
            q.grad = None
        torch.nn.functional.cross_entropy(torch_logits(), torch.from_numpy(labels)).backward()

    def train():
        return m.loss_and_gradient(ids, counts, labels)

    ours = m.forward_train(ids, counts)[0]
    with torch.no_grad():
        theirs = torch_logits().numpy()
    return train, t_train, ours, theirs


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
    ap.add_argument("--only", default="ln_lstm,ln_gru,clockwork,han")
    args = ap.parse_args(argv)

    import lstmrs
    import lstmrs_cells
    import torch
    from lstmrs.clockwork import ClockworkRNN
    from lstmrs.hierarchical import HierarchicalClassifier

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
        elif name == "han":
            train, t_train, ours, theirs = han_case(torch, HierarchicalClassifier, b)
            require_agreement(name, [close(name, ours, theirs, 1e-4)])
            fns = {
                "lstmrs HierarchicalClassifier": train,
                "torch (packed nn.LSTM)": t_train,
            }
        else:
            raise SystemExit(f"--only: unknown variant {name!r}")
        times = time_interleaved(fns, args.warmup, args.repeats)
        results[name] = report(f"{name}: training step (forward + backward)", times)
    print(f"load average after: {loadavg()}")
    return results


if __name__ == "__main__":
    main()
