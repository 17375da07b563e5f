"""Training races: the same model, data and recipe trained by lstmrs and by PyTorch, one after the
other in one process, each with the same thread count and the same training-time budget.

Only training steps run on the clock; validation happens at fixed marks of training time with the
clock paused, so both curves (validation loss against seconds of training) are comparable.

    python bench/train_race.py adding --seq-len 200 --budget 300
    python bench/train_race.py charlm --budget 300 --hidden 256
    python bench/train_race.py g2p --budget 300

Tasks:
- ``adding``: the adding problem (Hochreiter & Schmidhuber 1997), an LSTM (or ``--cell rnn``: a
  plain tanh RNN, lstmrs's ``elman`` plugin cell against ``torch.nn.RNN``) and a linear layer on
  the last step, Adam, gradient clipping by global norm; stops when the validation MSE falls
  under ``--target`` or at the budget.
- ``charlm``: a character language model on tiny Shakespeare (last 10% held out): embedding,
  a stacked LSTM, a linear layer per step, truncated BPTT over ``--batch`` contiguous
  sub-streams in chunks of ``--seq-len`` with the state carried between chunks, Adam, clipping.
- ``g2p``: grapheme to phoneme on CMUdict (stress dropped, 2,000 held-out words): the
  ``lstmrs.Seq2Seq`` encoder-decoder (bidirectional LSTM encoder of ``--hidden``/2 per direction,
  tanh bridge, LSTM decoder of ``--hidden`` with input feeding and Luong attention) against the
  same network written in PyTorch; token cross-entropy, Adam, clipping, batches from one
  permutation per epoch.

Both libraries start from the same initial weights (PyTorch's, drawn from ``--seed``, loaded
into lstmrs) and see the same batches in the same order (``adding``: one permutation per epoch
from ``--seed``; ``charlm``: chunks in order), so the curves differ by speed and by rounding, not
by the luck of the draw. What still differs: dropout masks (``charlm --dropout``), which each
library draws from its own generator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")


class Clock:
    """Training time only: paused while validating."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def pause(self) -> float:
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self._start = None
        return self.total

    def elapsed(self) -> float:
        extra = 0.0 if self._start is None else time.perf_counter() - self._start
        return self.total + extra


class Marks:
    """Decides when to validate: every ``every`` seconds of training time."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.next = every

    def due(self, t: float) -> bool:
        if t >= self.next:
            while self.next <= t:
                self.next += self.every
            return True
        return False


# ------------------------------------------------------------------------------------------------
# Adding problem


def adding_data(args):
    from lstmrs.datasets import adding_problem

    train = adding_problem(args.n_train, args.seq_len, seed=1)
    val = adding_problem(1000, args.seq_len, seed=2)
    return train, val


def adding_torch_net(args):
    """The torch model, its weights drawn from ``--seed``: both libraries start from them."""
    import torch

    torch.manual_seed(args.seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn = torch.nn.RNN if args.cell == "rnn" else torch.nn.LSTM
            self.rnn = rnn(2, args.hidden, batch_first=True)
            self.head = torch.nn.Linear(args.hidden, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    return Net()


def torch_start(net) -> dict[str, np.ndarray]:
    """The torch model's weights under lstmrs.Model's names (its head is ``head.0``)."""
    return {
        k.replace("head.", "head.0.").replace("emb.", "embedding."): v.detach().numpy().copy()
        for k, v in net.state_dict().items()
    }


def epoch_orders(n: int, seed: int):
    """The batch order of every epoch, shared by both libraries."""
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(n)


def race_adding_lstmrs(args, train, val):
    import lstmrs
    from lstmrs.callbacks import Callback

    lstmrs.set_num_threads(args.threads)
    cell = "elman" if args.cell == "rnn" else "lstm"
    model = lstmrs.Model(
        input_size=2, output_size=1, loss="mse", cell=cell, hidden_size=args.hidden, seed=0
    )
    model.load_state_dict(torch_start(adding_torch_net(args)))
    model.compile("adam", lr=args.lr, clip_norm=args.clip)
    clock, marks, curve = Clock(), Marks(args.eval_every), []
    xv, yv = val

    def validate(step):
        mse = float(np.mean((model.predict(xv, batch_size=500) - yv) ** 2))
        curve.append({"seconds": clock.total, "step": step, "val_mse": mse})
        return mse

    class Race(Callback):
        steps = 0

        def on_batch_end(self, batch, logs=None):
            self.steps += 1
            t = clock.elapsed()
            if marks.due(t) or t >= args.budget:
                clock.pause()
                mse = validate(self.steps)
                if mse < args.target or clock.total >= args.budget:
                    self.model.stop_training = True
                clock.start()

    race = Race()
    clock.start()
    for order in epoch_orders(len(train[0]), args.seed):
        # One fit call per epoch on the shared order (the optimizer state carries over). The
        # permuted copy is on the clock, as torch's per-batch gathers `x[idx]` are on its own:
        # both libraries pay for arranging the same data once per epoch.
        model.fit(
            train[0][order],
            train[1][order],
            epochs=1,
            batch_size=args.batch,
            shuffle=False,
            callbacks=[race],
            verbose=0,
        )
        if model.stop_training:
            break
    clock.pause()
    return curve


def race_adding_torch(args, train, val):
    import torch

    torch.set_num_threads(args.threads)
    net = adding_torch_net(args)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    x, y = (torch.from_numpy(a) for a in train)
    xv, yv = (torch.from_numpy(a) for a in val)
    orders = epoch_orders(len(x), args.seed)
    clock, marks, curve = Clock(), Marks(args.eval_every), []
    steps, done = 0, False
    clock.start()
    while not done:
        order = torch.from_numpy(next(orders))
        for i in range(0, len(x), args.batch):
            idx = order[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
            opt.step()
            steps += 1
            t = clock.elapsed()
            if marks.due(t) or t >= args.budget:
                clock.pause()
                with torch.no_grad():
                    mse = float(torch.mean((net(xv) - yv) ** 2))
                curve.append({"seconds": clock.total, "step": steps, "val_mse": mse})
                if mse < args.target or clock.total >= args.budget:
                    done = True
                    break
                clock.start()
    clock.pause()
    return curve


# ------------------------------------------------------------------------------------------------
# Character language model


def charlm_data(args):
    path = os.path.join(DATA, "tinyshakespeare", "input.txt")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    return ids[:cut], ids[cut:], len(chars)


def _streams(ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` contiguous sub-streams of inputs and next-character targets."""
    x, y = ids[:-1], ids[1:]
    n = len(x) // batch
    return x[: batch * n].reshape(batch, n), y[: batch * n].reshape(batch, n)


def charlm_torch_net(args, vocab):
    """The torch model, its weights drawn from ``--seed``: both libraries start from them."""
    import torch

    torch.manual_seed(args.seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, args.embedding)
            self.rnn = torch.nn.LSTM(
                args.embedding,
                args.hidden,
                num_layers=args.layers,
                dropout=args.dropout,
                batch_first=True,
            )
            self.head = torch.nn.Linear(args.hidden, vocab)

        def forward(self, x, state):
            out, state = self.rnn(self.emb(x), state)
            return self.head(out), state

    return Net()


def race_charlm_lstmrs(args, train, val, vocab):
    import lstmrs
    from lstmrs.callbacks import Callback

    lstmrs.set_num_threads(args.threads)
    model = lstmrs.Model(
        vocab_size=vocab,
        embedding_dim=args.embedding,
        output_size=vocab,
        pooling="per_step",
        loss="cross_entropy",
        hidden_size=args.hidden,
        num_layers=args.layers,
        dropout=args.dropout,
        seed=args.seed,
    )
    model.load_state_dict(torch_start(charlm_torch_net(args, vocab)))
    model.compile("adam", lr=args.lr, clip_norm=args.clip)
    clock, marks, curve = Clock(), Marks(args.eval_every), []

    def validate(step):
        res = model.evaluate_stream(val, batch_size=8, seq_len=256)
        loss = float(res["loss"])
        curve.append({"seconds": clock.total, "step": step, "val_loss": loss})
        return loss

    class Race(Callback):
        steps = 0

        def on_batch_end(self, batch, logs=None):
            self.steps += 1
            t = clock.elapsed()
            if marks.due(t) or t >= args.budget:
                clock.pause()
                validate(self.steps)
                if clock.total >= args.budget:
                    self.model.stop_training = True
                clock.start()

    clock.start()
    model.fit_stream(
        train, args.seq_len, batch_size=args.batch, epochs=1000, callbacks=[Race()], verbose=0
    )
    clock.pause()
    return curve


def race_charlm_torch(args, train, val, vocab):
    import torch

    torch.set_num_threads(args.threads)
    net = charlm_torch_net(args, vocab)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    xs, ys = (torch.from_numpy(a) for a in _streams(train, args.batch))
    vx, vy = (torch.from_numpy(a) for a in _streams(val, 8))
    ce = torch.nn.functional.cross_entropy

    def validate(step):
        net.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for s in range(0, vx.shape[1], 256):
                logits, state = net(vx[:, s : s + 256], state)
                target = vy[:, s : s + 256]
                total += float(ce(logits.reshape(-1, vocab), target.reshape(-1), reduction="sum"))
                count += target.numel()
        net.train()
        curve.append({"seconds": clock.total, "step": step, "val_loss": total / count})

    clock, marks, curve = Clock(), Marks(args.eval_every), []
    steps, done = 0, False
    clock.start()
    while not done:
        state = None
        for s in range(0, xs.shape[1], args.seq_len):
            opt.zero_grad(set_to_none=True)
            logits, state = net(xs[:, s : s + args.seq_len], state)
            state = tuple(v.detach() for v in state)
            loss = ce(logits.reshape(-1, vocab), ys[:, s : s + args.seq_len].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
            opt.step()
            steps += 1
            t = clock.elapsed()
            if marks.due(t) or t >= args.budget:
                clock.pause()
                validate(steps)
                if clock.total >= args.budget:
                    done = True
                    break
                clock.start()
    clock.pause()
    return curve


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# Grapheme to phoneme (seq2seq)


def g2p_data(args):
    """CMUdict pairs (stress dropped), split by word with ``--seed``: training pairs and a
    validation set of 2,000 pairs, as token-id lists (0 pad, 1 bos, 2 eos, 3 unk)."""
    from lstmrs.tasks.seq2seq import SPECIALS, read_dictionary

    table = read_dictionary(os.path.join(DATA, "g2p", "cmudict.dict"), keep_stress=False)
    words = sorted(table)
    order = np.random.default_rng(args.seed).permutation(len(words))
    val_words = [words[i] for i in order[:2000]]
    train_words = [words[i] for i in order[2000:]]
    letters = SPECIALS + sorted({c for w in train_words for c in w})
    phones = SPECIALS + sorted({p for w in train_words for pr in table[w] for p in pr})
    li = {c: i for i, c in enumerate(letters)}
    pi = {p: i for i, p in enumerate(phones)}

    def pairs(ws):
        src, tgt = [], []
        for w in ws:
            for pr in table[w]:
                src.append([li.get(c, 3) for c in w])
                tgt.append([pi.get(p, 3) for p in pr])
        return src, tgt

    return pairs(train_words), pairs(val_words), (len(letters), len(phones))


def _g2p_batches(n: int, seed: int, batch: int):
    """Index batches of every epoch, shared by both libraries (a permutation per epoch)."""
    for order in epoch_orders(n, seed):
        for i in range(0, n, batch):
            yield order[i : i + batch]


def g2p_torch_net(args, vocab):
    """The same encoder-decoder in PyTorch (bidirectional LSTM encoder, tanh bridge, LSTM decoder
    with input feeding and Luong "general" attention), its weights drawn from ``--seed``."""
    import torch

    nn = torch.nn
    torch.manual_seed(args.seed)
    e, h = args.embedding, args.hidden
    he = h // 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embedding = nn.Embedding(vocab[0], e)
            self.tgt_embedding = nn.Embedding(vocab[1], e)
            self.encoder = nn.LSTM(e, he, batch_first=True, bidirectional=True)
            self.bridge_h = nn.Linear(2 * he, h)
            self.bridge_c = nn.Linear(2 * he, h)
            self.decoder = nn.LSTMCell(e + h, h)
            self.attention = nn.Linear(2 * he, h, bias=False)
            self.combine = nn.Linear(2 * he + h, h)
            self.out = nn.Linear(h, vocab[1])

        def forward(self, src, src_len, tgt_in):
            packed = nn.utils.rnn.pack_padded_sequence(
                self.src_embedding(src), src_len, batch_first=True, enforce_sorted=False
            )
            out, (h_n, c_n) = self.encoder(packed)
            enc, _ = nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=src.shape[1]
            )
            hh = torch.tanh(self.bridge_h(torch.cat([h_n[-2], h_n[-1]], 1)))
            cc = torch.tanh(self.bridge_c(torch.cat([c_n[-2], c_n[-1]], 1)))
            keys = self.attention(enc)
            mask = torch.arange(src.shape[1])[None, :] < src_len[:, None]
            att = torch.zeros_like(hh)
            emb = self.tgt_embedding(tgt_in)
            logits = []
            for t in range(tgt_in.shape[1]):
                hh, cc = self.decoder(torch.cat([emb[:, t], att], 1), (hh, cc))
                score = torch.einsum("bh,bsh->bs", hh, keys).masked_fill(~mask, float("-inf"))
                ctx = torch.einsum("bs,bsd->bd", torch.softmax(score, 1), enc)
                att = torch.tanh(self.combine(torch.cat([ctx, hh], 1)))
                logits.append(self.out(att))
            return torch.stack(logits, 1)

    return Net()


def _g2p_pad(seqs, idx, bos=None, eos=None):
    rows = [list(seqs[i]) for i in idx]
    rows = [
        ([bos] if bos is not None else []) + r + ([eos] if eos is not None else []) for r in rows
    ]
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def race_g2p_lstmrs(args, train, val, vocab):
    import lstmrs

    lstmrs.set_num_threads(args.threads)
    net = g2p_torch_net(args, vocab)
    model = lstmrs.Seq2Seq(
        vocab[0], vocab[1], embed_size=args.embedding, hidden_size=args.hidden, seed=args.seed
    )
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    for name, view in model.state_dict().items():
        key = {
            "src_embedding": "src_embedding.weight",
            "tgt_embedding": "tgt_embedding.weight",
        }.get(name, name)
        view[...] = state[key]
    model.compile("adam", lr=args.lr, clip_norm=args.clip)
    clock, marks, curve = Clock(), Marks(args.eval_every), []
    clock.start()
    for steps, idx in enumerate(_g2p_batches(len(train[0]), args.seed, args.batch), 1):
        s, s_len = _g2p_pad(train[0], idx)
        t, t_len = _g2p_pad(train[1], idx, eos=2)
        _, _, _, grads = model._batch_loss(s, s_len, t, t_len, grad=True)
        # As Seq2Seq.fit: a ufunc sum, not np.dot (OpenBLAS's threads spin after each call).
        norm = float(np.sqrt(np.square(grads, dtype=np.float64).sum()))
        if norm > args.clip:
            grads *= args.clip / (norm + 1e-6)
        model._opt_core.step(model.params, grads, args.lr)
        t_now = clock.elapsed()
        if marks.due(t_now) or t_now >= args.budget:
            clock.pause()
            loss = model.evaluate(*val)["loss"]
            curve.append({"seconds": clock.total, "step": steps, "val_loss": loss})
            if clock.total >= args.budget:
                break
            clock.start()
    clock.pause()
    return curve


def race_g2p_torch(args, train, val, vocab):
    import torch

    torch.set_num_threads(args.threads)
    net = g2p_torch_net(args, vocab)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    f = torch.nn.functional

    def batch_loss(idx, srcs, tgts):
        s, s_len = _g2p_pad(srcs, idx)
        t_in, _ = _g2p_pad(tgts, idx, bos=1)
        t_out, t_len = _g2p_pad(tgts, idx, eos=2)
        logits = net(torch.from_numpy(s), torch.from_numpy(s_len), torch.from_numpy(t_in))
        mask = torch.arange(t_out.shape[1])[None, :] < torch.from_numpy(t_len)[:, None]
        return f.cross_entropy(logits[mask], torch.from_numpy(t_out)[mask]), int(mask.sum())

    def validate():
        total = n = 0
        with torch.no_grad():
            for i in range(0, len(val[0]), 256):
                loss, k = batch_loss(np.arange(i, min(i + 256, len(val[0]))), *val)
                total += float(loss) * k
                n += k
        return total / n

    clock, marks, curve = Clock(), Marks(args.eval_every), []
    clock.start()
    for steps, idx in enumerate(_g2p_batches(len(train[0]), args.seed, args.batch), 1):
        opt.zero_grad(set_to_none=True)
        loss, _ = batch_loss(idx, *train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        t_now = clock.elapsed()
        if marks.due(t_now) or t_now >= args.budget:
            clock.pause()
            curve.append({"seconds": clock.total, "step": steps, "val_loss": validate()})
            if clock.total >= args.budget:
                break
            clock.start()
    clock.pause()
    return curve


def machine() -> dict:
    import lstmrs

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "lstmrs": getattr(lstmrs, "__version__", "?"),
        "loadavg_before": os.getloadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is the reference this script races
        pass
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def summarize(task: str, curves: dict, args) -> list[str]:
    key = "val_mse" if task == "adding" else "val_loss"
    lines = []
    for name, curve in curves.items():
        if not curve:
            lines.append(f"{name:>7}: no validation point")
            continue
        last = curve[-1]
        best = min(p[key] for p in curve)
        extra = ""
        if task == "adding":
            hit = next((p for p in curve if p[key] < args.target), None)
            extra = (
                f"; MSE < {args.target} after {hit['seconds']:.1f} s ({hit['step']} steps)"
                if hit
                else f"; MSE < {args.target} not reached"
            )
        elif task == "charlm":
            extra = f" (best {best / math.log(2):.3f} bits per character)"
        lines.append(
            f"{name:>7}: {last['step']} steps in {last['seconds']:.1f} s of training, "
            f"final {key} {last[key]:.4f}, best {best:.4f}{extra}"
        )
    return lines


def plot(task: str, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "val_mse" if task == "adding" else "val_loss"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot([p["seconds"] for p in curve], [p[key] for p in curve], marker=".", label=name)
    ax.set_xlabel("seconds of training")
    unit = {"adding": "validation MSE", "charlm": "validation loss (nats/char)"}
    ax.set_ylabel(unit.get(task, "validation loss (nats/token)"))
    if task == "adding":
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=["adding", "charlm", "g2p"])
    ap.add_argument("--libs", default="lstmrs,torch", help="comma list, run in this order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per library")
    ap.add_argument("--eval-every", type=float, default=10.0, help="training seconds")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    ap.add_argument(
        "--seed", type=int, default=0, help="initial weights (torch's, shared) and batch order"
    )
    ap.add_argument("--cell", choices=["lstm", "rnn"], default="lstm", help="adding only")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=6400, help="adding: training sequences")
    ap.add_argument("--target", type=float, default=0.01, help="adding: stop below this MSE")
    ap.add_argument("--layers", type=int, default=2, help="charlm")
    ap.add_argument("--embedding", type=int, default=64, help="charlm, g2p")
    ap.add_argument("--dropout", type=float, default=0.0, help="charlm, between layers")
    ap.add_argument("--json", metavar="PATH", help="write the curves and settings as JSON")
    ap.add_argument("--plot", metavar="PATH", help="write the curves as a PNG")
    args = ap.parse_args(argv)
    adding = args.task == "adding"
    defaults = (
        {"lr": 0.01, "batch": 64, "hidden": 32, "seq_len": 200}
        if adding
        else {"lr": 0.003, "batch": 32, "hidden": 256, "seq_len": 100}
    )
    if args.task == "g2p":
        defaults = {"lr": 0.003, "batch": 128, "hidden": 192, "seq_len": 0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    info = machine()
    print(
        f"{args.task} race: {info.get('cpu', '?')}, {args.threads} threads, budget {args.budget:g} s"
    )
    if adding:
        data = adding_data(args)
        runners = {"lstmrs": race_adding_lstmrs, "torch": race_adding_torch}
    elif args.task == "g2p":
        data = g2p_data(args)
        runners = {"lstmrs": race_g2p_lstmrs, "torch": race_g2p_torch}
    else:
        train, val, vocab = charlm_data(args)
        data = (train, val, vocab)
        runners = {"lstmrs": race_charlm_lstmrs, "torch": race_charlm_torch}
    curves = {}
    for name in args.libs.split(","):
        wall = time.perf_counter()
        curves[name] = runners[name](args, *data)
        print(f"{name}: done in {time.perf_counter() - wall:.0f} s of wall time", flush=True)
    info["loadavg_after"] = os.getloadavg()
    for line in summarize(args.task, curves, args):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "machine": info, "curves": curves}, f, indent=1)
    if args.plot:
        plot(args.task, curves, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
