"""Hierarchical attention network for documents (Yang et al., 2016): words -> sentence vectors ->
document vector -> classes.

Shapes: ``B`` documents, ``S`` sentences per document at most, ``W`` words per sentence at most,
``E`` embedding size, ``Hw`` / ``Hs`` the word / sentence LSTM sizes (each direction), ``A``
attention units, ``C`` classes, ``N`` the non-empty sentences of a batch.

* word level: the embeddings of every non-empty sentence of the batch go through one
  bidirectional :class:`lstmrs.LSTM` call as one batch ``[N, W, E]`` with their lengths (the
  Rust core's packed semantics), then additive attention pooling
  (``u = tanh(W_a h + b_a)``, ``alpha = softmax_t(v . u)`` over the valid words,
  ``s = sum_t alpha_t h_t``) gives one vector ``[2 Hw]`` per sentence;
* sentence level: the sentence vectors, ``[B, S, 2 Hw]`` with each document's sentence count as
  its length, through a second bidirectional LSTM call and the same pooling, give the document
  vector ``[2 Hs]``; a linear layer gives the class logits; softmax cross-entropy.

The backward pass runs the same way down: the sentence LSTM's input gradient is gathered back
to the ``N`` sentences and fed to the word LSTM's backward, so both LSTMs train end to end. The
recurrences run in the Rust core (two calls forward and two backward per batch); the pooling,
embedding and head are NumPy (float64). All parameters form one flat vector
(:meth:`HierarchicalClassifier.parameters_flat`), so the optimizer (:class:`Adam`, used by
:meth:`HierarchicalClassifier.fit`) is one loop. On a machine shared with other work, set
``OPENBLAS_NUM_THREADS=1``: NumPy's spin-waiting BLAS threads made the pooling's products 10x
slower there (the examples and the benchmark do).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, ShapeError
from .rnn import LSTM
from .validation import check_int

__all__ = ["Adam", "HierarchicalClassifier", "encode_documents"]


def encode_documents(
    docs: Sequence[Sequence[Sequence[str]]],
    vocab: dict[str, int],
    max_sentences: int,
    max_words: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[D, S, W]`` (0 = padding and unknown words) and word counts ``[D, S]`` (0 for
    a padding sentence) of documents given as lists of sentences of tokens. Every document keeps
    at least one sentence of at least one token (an empty one becomes one unknown word)."""
    max_sentences = check_int("max_sentences", max_sentences)
    max_words = check_int("max_words", max_words)
    ids = np.zeros((len(docs), max_sentences, max_words), np.int64)
    counts = np.zeros((len(docs), max_sentences), np.int64)
    for d, doc in enumerate(docs):
        sents = [s for s in doc if len(s)][:max_sentences] or [["<unk>"]]
        for s, sent in enumerate(sents):
            words = list(sent)[:max_words]
            ids[d, s, : len(words)] = [vocab.get(w, 0) for w in words]
            counts[d, s] = len(words)
    return ids, counts


class Adam:
    """Adam (Kingma & Ba, 2015) on a flat parameter vector, with global-norm clipping."""

    def __init__(self, n: int, lr: float = 2e-3, clip_norm: float = 5.0) -> None:
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0
        self.lr, self.clip_norm = lr, clip_norm

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(grad))
        if self.clip_norm and norm > self.clip_norm:
            grad = grad * (self.clip_norm / norm)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad * grad
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _attention_forward(
    h: np.ndarray, mask: np.ndarray, w: np.ndarray, b: np.ndarray, v: np.ndarray
):
    """Additive attention pooling of ``h [R, T, F]`` over the steps where ``mask [R, T]``,
    computed in ``h``'s dtype; the products are 2-D GEMMs over all ``R T`` rows at once."""
    r, t, f = h.shape
    w, b, v = (a.astype(h.dtype) for a in (w, b, v))
    u = np.tanh(h.reshape(r * t, f) @ w.T + b)  # [R T, A]
    score = np.where(mask, (u @ v).reshape(r, t), -np.inf)  # [R, T]
    score = score - score.max(axis=1, keepdims=True)
    e = np.where(mask, np.exp(score), 0.0)
    alpha = (e / e.sum(axis=1, keepdims=True)).astype(h.dtype)  # [R, T]
    return (alpha[:, :, None] * h).sum(axis=1), (h, u, alpha)


def _attention_backward(d_pool: np.ndarray, cache, w: np.ndarray, v: np.ndarray):
    h, u, alpha = cache  # u: [R T, A]
    r, t, f = h.shape
    w, v, d_pool = w.astype(h.dtype), v.astype(h.dtype), d_pool.astype(h.dtype)
    d_alpha = (h * d_pool[:, None, :]).sum(axis=2)  # [R, T]
    d_score = alpha * (d_alpha - (alpha * d_alpha).sum(axis=1, keepdims=True))  # softmax
    d_pre = d_score.reshape(-1, 1) * v * (1.0 - u * u)  # [R T, A]
    d_w = d_pre.T @ h.reshape(r * t, f)
    d_b = d_pre.sum(axis=0)
    d_v = d_score.reshape(-1) @ u
    d_h = (d_pre @ w).reshape(r, t, f) + alpha[:, :, None] * d_pool[:, None, :]
    return d_h, d_w.astype(np.float64), d_b.astype(np.float64), d_v.astype(np.float64)


def _rows_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[index[k]] += values[k]`` for an ``[n, F]`` output (sorted segment sums: much
    faster than ``np.add.at``)."""
    order = np.argsort(index, kind="stable")
    idx = index[order]
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    out = np.zeros((n, values.shape[1]))
    out[idx[starts]] = np.add.reduceat(values[order].astype(np.float64), starts, axis=0)
    return out


@dataclass
class _Tape:
    rows: tuple[np.ndarray, np.ndarray]  # (document, sentence) of each non-empty sentence
    tokens: np.ndarray
    word_tape: Any
    word_cache: Any
    sent_tape: Any
    sent_cache: Any
    doc: np.ndarray
    shape: tuple[int, int]  # (B, S)


class HierarchicalClassifier:
    """Hierarchical attention network (Yang et al., 2016) with bidirectional LSTMs at the word
    and the sentence level. ``fit`` / ``predict_proba`` / ``predict`` take token ids
    ``[D, S, W]`` and word counts ``[D, S]`` as :func:`encode_documents` makes them.

    >>> m = HierarchicalClassifier(vocab_size=50, num_classes=2, embed_size=8, word_hidden=4,
    ...                            sentence_hidden=4, attention_units=5, seed=0)
    >>> ids = np.ones((3, 2, 4), np.int64); counts = np.array([[4, 2], [3, 0], [1, 1]])
    >>> m.predict_proba(ids, counts).shape
    (3, 2)
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_size: int = 100,
        word_hidden: int = 50,
        sentence_hidden: int = 50,
        attention_units: int = 100,
        dtype: Any = "float32",
        seed: int = 0,
    ) -> None:
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        e = check_int("embed_size", embed_size)
        hw, hs = (
            check_int("word_hidden", word_hidden),
            check_int("sentence_hidden", sentence_hidden),
        )
        a = check_int("attention_units", attention_units)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.word_lstm = LSTM(e, hw, bidirectional=True, dtype=self.dtype, seed=seed + 1)
        self.sent_lstm = LSTM(2 * hw, hs, bidirectional=True, dtype=self.dtype, seed=seed + 2)

        def uniform(shape, fan_in):
            return rng.uniform(-1, 1, shape) / np.sqrt(fan_in)

        self.dense = {  # everything but the LSTMs, by name (float64 master copies)
            "embedding": rng.normal(0.0, 0.1, (self.vocab_size, e)),
            "word_attn_w": uniform((a, 2 * hw), 2 * hw),
            "word_attn_b": np.zeros(a),
            "word_attn_v": uniform(a, a),
            "sent_attn_w": uniform((a, 2 * hs), 2 * hs),
            "sent_attn_b": np.zeros(a),
            "sent_attn_v": uniform(a, a),
            "head_w": uniform((self.num_classes, 2 * hs), 2 * hs),
            "head_b": np.zeros(self.num_classes),
        }

    # -- parameters ----------------------------------------------------------------------------

    @property
    def num_parameters(self) -> int:
        dense = sum(v.size for v in self.dense.values())
        return dense + self.word_lstm.num_parameters + self.sent_lstm.num_parameters

    def parameters_flat(self) -> np.ndarray:
        return np.concatenate(
            [v.reshape(-1) for v in self.dense.values()]
            + [self.word_lstm.parameters_flat(), self.sent_lstm.parameters_flat()]
        ).astype(np.float64)

    def set_parameters_flat(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, np.float64)
        if flat.shape != (self.num_parameters,):
            raise ShapeError(
                f"flat: expected shape ({self.num_parameters},) (num_parameters), got {flat.shape}"
            )
        start = 0
        for name, v in self.dense.items():
            self.dense[name] = flat[start : start + v.size].reshape(v.shape).copy()
            start += v.size
        for lstm in (self.word_lstm, self.sent_lstm):
            lstm.set_parameters_flat(flat[start : start + lstm.num_parameters].astype(self.dtype))
            start += lstm.num_parameters

    # -- forward and backward ------------------------------------------------------------------

    def _check(self, ids: Any, counts: Any) -> tuple[np.ndarray, np.ndarray]:
        ids, counts = np.asarray(ids), np.asarray(counts)
        if ids.ndim != 3 or ids.dtype.kind not in "iu":
            raise ShapeError(
                f"ids: expected integer token ids [D, S, W], got {ids.dtype} {list(ids.shape)}"
            )
        if counts.shape != ids.shape[:2]:
            raise ShapeError(
                f"counts: expected shape {list(ids.shape[:2])} (word counts per sentence), "
                f"got {list(counts.shape)}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise InvalidArgumentError(f"ids: expected token ids in 0..{self.vocab_size - 1}")
        nonempty = counts > 0
        if (
            (counts < 0).any()
            or (counts > ids.shape[2]).any()
            or (~nonempty[:, 0]).any()
            or (nonempty[:, 1:] & ~nonempty[:, :-1]).any()
        ):
            raise InvalidArgumentError(
                f"counts: expected word counts in 0..{ids.shape[2]}, every document's non-empty "
                "sentences first and at least one"
            )
        return ids, counts

    def forward_train(self, ids: Any, counts: Any) -> tuple[np.ndarray, _Tape]:
        """Logits ``[D, C]`` and the tape for :meth:`backward`."""
        ids, counts = self._check(ids, counts)
        b, s, _ = ids.shape
        p = self.dense
        rows = np.nonzero(counts > 0)  # the N non-empty sentences, document-major
        lens = counts[rows]
        width = int(lens.max())
        tokens = ids[rows][:, :width]  # [N, W]
        emb = p["embedding"][tokens].astype(self.dtype)  # [N, W, E]
        h_w, _, word_tape = self.word_lstm.forward_train(emb, lengths=lens)
        word_mask = np.arange(width)[None, :] < lens[:, None]
        sent_vec, word_cache = _attention_forward(
            h_w, word_mask, p["word_attn_w"], p["word_attn_b"], p["word_attn_v"]
        )
        n_sents = (counts > 0).sum(axis=1)
        s_max = int(n_sents.max())
        sent_in = np.zeros((b, s_max, sent_vec.shape[1]), self.dtype)
        sent_in[rows] = sent_vec
        h_s, _, sent_tape = self.sent_lstm.forward_train(sent_in, lengths=n_sents)
        sent_mask = np.arange(s_max)[None, :] < n_sents[:, None]
        doc, sent_cache = _attention_forward(
            h_s, sent_mask, p["sent_attn_w"], p["sent_attn_b"], p["sent_attn_v"]
        )
        doc = doc.astype(np.float64)
        logits = doc @ p["head_w"].T + p["head_b"]
        tape = _Tape(rows, tokens, word_tape, word_cache, sent_tape, sent_cache, doc, (b, s))
        return logits, tape

    def backward(self, tape: _Tape, d_logits: np.ndarray) -> np.ndarray:
        """The gradient of every parameter, flat (:meth:`parameters_flat` order), given the
        loss's gradient with respect to the logits."""
        p, g = self.dense, {}
        g["head_w"] = d_logits.T @ tape.doc
        g["head_b"] = d_logits.sum(axis=0)
        d_doc = d_logits @ p["head_w"]
        d_hs, g["sent_attn_w"], g["sent_attn_b"], g["sent_attn_v"] = _attention_backward(
            d_doc, tape.sent_cache, p["sent_attn_w"], p["sent_attn_v"]
        )
        gs = self.sent_lstm.backward(tape.sent_tape, d_out=d_hs.astype(self.dtype))
        d_sent = gs.input[tape.rows]  # [N, 2 Hw]
        d_hw, g["word_attn_w"], g["word_attn_b"], g["word_attn_v"] = _attention_backward(
            d_sent, tape.word_cache, p["word_attn_w"], p["word_attn_v"]
        )
        gw = self.word_lstm.backward(tape.word_tape, d_out=d_hw.astype(self.dtype))
        g["embedding"] = _rows_sum(
            tape.tokens.reshape(-1), gw.input.reshape(-1, gw.input.shape[2]), self.vocab_size
        )
        return np.concatenate(
            [g[name].reshape(-1) for name in p]
            + [gw.flat.astype(np.float64), gs.flat.astype(np.float64)]
        )

    def predict_proba(self, ids: Any, counts: Any, batch_size: int = 64) -> np.ndarray:
        ids, counts = self._check(ids, counts)
        out = []
        for i in range(0, len(ids), batch_size):
            logits, _ = self.forward_train(ids[i : i + batch_size], counts[i : i + batch_size])
            out.append(_softmax(logits))
        return np.concatenate(out)

    def predict(self, ids: Any, counts: Any, batch_size: int = 64) -> np.ndarray:
        return self.predict_proba(ids, counts, batch_size).argmax(axis=1)

    def loss_and_gradient(self, ids: Any, counts: Any, labels: Any) -> tuple[float, np.ndarray]:
        """Mean softmax cross-entropy of a batch and its flat gradient."""
        labels = np.asarray(labels)
        logits, tape = self.forward_train(ids, counts)
        if (
            labels.shape != (logits.shape[0],)
            or labels.min() < 0
            or labels.max() >= self.num_classes
        ):
            raise InvalidArgumentError(
                f"labels: expected {logits.shape[0]} class ids in 0..{self.num_classes - 1}"
            )
        prob = _softmax(logits)
        n = len(labels)
        loss = float(-np.log(prob[np.arange(n), labels] + 1e-300).mean())
        d_logits = prob.copy()
        d_logits[np.arange(n), labels] -= 1.0
        return loss, self.backward(tape, d_logits / n)

    def fit(
        self,
        ids: np.ndarray,
        counts: np.ndarray,
        labels: np.ndarray,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 2e-3,
        validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        time_limit: float = 0.0,
        seed: int = 0,
        log: Any = print,
    ) -> list[dict[str, float]]:
        """Adam on shuffled batches; with ``validation`` the weights of the epoch with the best
        validation accuracy are kept. Returns one record per epoch."""
        rng = np.random.default_rng(seed)
        opt = Adam(self.num_parameters, lr=lr)
        params = self.parameters_flat()
        history, best, best_params, start = [], -1.0, params, time.perf_counter()
        for epoch in range(1, check_int("epochs", epochs) + 1):
            order = rng.permutation(len(ids))
            losses = []
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                loss, grad = self.loss_and_gradient(ids[idx], counts[idx], labels[idx])
                params = opt.step(params, grad)
                self.set_parameters_flat(params)
                losses.append(loss)
                if time_limit and time.perf_counter() - start > time_limit:
                    break
            rec = {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "seconds": time.perf_counter() - start,
            }
            if validation is not None:
                rec["val_accuracy"] = float(np.mean(self.predict(*validation[:2]) == validation[2]))
                if rec["val_accuracy"] > best:
                    best, best_params = rec["val_accuracy"], params.copy()
            history.append(rec)
            if log:
                log(
                    " ".join(
                        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in rec.items()
                    )
                )
            if time_limit and time.perf_counter() - start > time_limit:
                break
        if validation is not None:
            self.set_parameters_flat(best_params)
        return history


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
