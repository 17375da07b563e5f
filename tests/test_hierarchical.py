"""Hierarchical attention network: the batched two-level forward against a plain per-document,
per-sentence reference, finite-difference gradients of every parameter in float64, padding
invariance and the typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs import LSTM
from lstmrs.errors import InvalidArgumentError, ShapeError
from lstmrs.hierarchical import HierarchicalClassifier, encode_documents

VOCAB = {w: i for i, w in enumerate(["<unk>", "a", "b", "c", "d", "e", "f"])}
DOCS = [
    [["a", "b", "c"], ["d", "e"], ["f"]],
    [["b", "b"]],
    [["c", "a", "f", "e"], ["a", "zzz"]],  # zzz: unknown
]


def small(dtype="float64", seed=0):
    return HierarchicalClassifier(
        len(VOCAB), 3, embed_size=3, word_hidden=2, sentence_hidden=2, attention_units=3,
        dtype=dtype, seed=seed,
    )  # fmt: skip


def attend(h, w, b, v):
    """Additive attention over the rows of h [T, F], written out."""
    score = np.array([v @ np.tanh(w @ ht + b) for ht in h])
    alpha = np.exp(score - score.max())
    alpha /= alpha.sum()
    return (alpha[:, None] * h).sum(axis=0)


def reference_logits(m: HierarchicalClassifier, docs) -> np.ndarray:
    """One document, one sentence at a time, with unpadded LSTM calls."""
    p = m.dense
    out = []
    for doc in docs:
        sents = []
        for sent in doc:
            ids = [VOCAB.get(w, 0) for w in sent]
            h, _ = m.word_lstm(p["embedding"][ids][None])
            sents.append(attend(h[0], p["word_attn_w"], p["word_attn_b"], p["word_attn_v"]))
        h, _ = m.sent_lstm(np.array(sents)[None])
        d = attend(h[0], p["sent_attn_w"], p["sent_attn_b"], p["sent_attn_v"])
        out.append(p["head_w"] @ d + p["head_b"])
    return np.array(out)


def test_encode_documents():
    ids, counts = encode_documents(DOCS, VOCAB, max_sentences=2, max_words=3)
    assert ids.shape == (3, 2, 3)
    np.testing.assert_array_equal(counts, [[3, 2], [2, 0], [3, 2]])
    np.testing.assert_array_equal(ids[2], [[3, 1, 6], [1, 0, 0]])  # cut to 3 words; zzz -> 0
    ids, counts = encode_documents([[]], VOCAB, 2, 3)  # an empty document: one unknown word
    np.testing.assert_array_equal(counts, [[1, 0]])


def test_forward_matches_the_per_sentence_reference():
    m = small()
    ids, counts = encode_documents(DOCS, VOCAB, max_sentences=4, max_words=5)
    logits, _ = m.forward_train(ids, counts)
    np.testing.assert_allclose(logits, reference_logits(m, DOCS), rtol=1e-10, atol=1e-12)
    # More padding (sentences and words) changes nothing.
    ids2, counts2 = encode_documents(DOCS, VOCAB, max_sentences=7, max_words=9)
    np.testing.assert_allclose(m.forward_train(ids2, counts2)[0], logits, rtol=1e-12, atol=1e-13)


def test_gradients_match_finite_differences():
    m = small(seed=4)
    ids, counts = encode_documents(DOCS, VOCAB, max_sentences=3, max_words=4)
    labels = np.array([0, 2, 1])
    flat0 = m.parameters_flat()
    flat0 += np.random.default_rng(0).normal(scale=0.3, size=flat0.size)  # off the zero biases
    m.set_parameters_flat(flat0)
    _, grad = m.loss_and_gradient(ids, counts, labels)
    assert grad.shape == flat0.shape
    eps, fd = 1e-6, np.zeros_like(flat0)
    for n in range(flat0.size):
        vals = []
        for sign in (1.0, -1.0):
            f = flat0.copy()
            f[n] += sign * eps
            m.set_parameters_flat(f)
            vals.append(m.loss_and_gradient(ids, counts, labels)[0])
        fd[n] = (vals[0] - vals[1]) / (2 * eps)
    m.set_parameters_flat(flat0)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)
    # Both LSTMs and the embedding of the words present get gradient: training reaches down.
    n_dense = sum(v.size for v in m.dense.values())
    n_word = m.word_lstm.num_parameters
    assert np.abs(grad[n_dense : n_dense + n_word]).max() > 0
    assert np.abs(grad[n_dense + n_word :]).max() > 0


def test_training_reduces_the_loss():
    # Class = whether the document mentions "a": learnable from one word.
    rng = np.random.default_rng(1)
    words = list(VOCAB)[2:]
    docs, labels = [], []
    for _ in range(40):
        doc = [list(rng.choice(words, size=rng.integers(2, 5))) for _ in range(rng.integers(1, 4))]
        if rng.random() < 0.5:
            doc[rng.integers(len(doc))][0] = "a"
        docs.append(doc)
        labels.append(int(any("a" in s for s in doc)))
    ids, counts = encode_documents(docs, VOCAB, 4, 5)
    m = HierarchicalClassifier(len(VOCAB), 2, 8, 6, 6, 8, seed=0)
    y = np.array(labels)
    hist = m.fit(ids, counts, y, epochs=15, batch_size=8, lr=0.01, log=None)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert np.mean(m.predict(ids, counts) == y) >= 0.9


def test_bad_input():
    m = small()
    ids, counts = encode_documents(DOCS, VOCAB, 3, 4)
    with pytest.raises(ShapeError, match="counts: expected shape"):
        m.forward_train(ids, counts[:, :2])
    bad = counts.copy()
    bad[1] = [0, 2, 0]
    with pytest.raises(InvalidArgumentError, match="non-empty sentences first"):
        m.forward_train(ids, bad)
    with pytest.raises(InvalidArgumentError, match="token ids in 0..6"):
        m.forward_train(ids + 7, counts)
    with pytest.raises(InvalidArgumentError, match="labels"):
        m.loss_and_gradient(ids, counts, np.array([0, 1, 3]))
    assert isinstance(m.word_lstm, LSTM) and m.word_lstm.bidirectional
