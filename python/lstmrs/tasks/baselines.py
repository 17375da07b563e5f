"""The baselines a classification run is judged against, fitted on the training split only.

- :class:`LogisticRegression`: multinomial logistic regression in NumPy, on TF-IDF bag-of-words
  features (texts) or on per-feature summary statistics (numeric sequences).
- :func:`dtw_1nn`: the 1-nearest-neighbour classifier under dynamic time warping, the classic
  baseline of the UCR/UEA archives, with the Sakoe-Chiba window chosen by leave-one-out on the
  training split as the archive does; computed in the Rust core (multithreaded).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any

import numpy as np

from .._lstmrs import dtw_classify, dtw_leave_one_out

__all__ = ["DTW_WINDOWS", "LogisticRegression", "dtw_1nn", "summary_features", "tfidf"]


class Sparse:
    """Rows of (feature index, value) pairs: enough of a CSR matrix for ``X @ W`` and
    ``X.T @ G``. SciPy's sparse matrices do the products when SciPy is installed (about 20x
    faster); NumPy's ``bincount`` otherwise."""

    def __init__(self, rows: list[dict[int, float]], n_features: int) -> None:
        self.n, self.d = len(rows), n_features
        self.row = np.repeat(np.arange(self.n), [len(r) for r in rows])
        self.col = np.fromiter((k for r in rows for k in r), dtype=np.int64, count=self.row.size)
        self.val = np.fromiter((v for r in rows for v in r.values()), float, count=self.row.size)
        self._csr = None
        try:
            from scipy import sparse
        except ImportError:
            return
        self._csr = sparse.csr_matrix((self.val, (self.row, self.col)), shape=(self.n, self.d))
        self._csr_t = self._csr.T.tocsr()

    def dot(self, w: np.ndarray) -> np.ndarray:
        if self._csr is not None:
            return np.asarray(self._csr @ w)
        prod = self.val[:, None] * w[self.col]
        out = np.empty((self.n, w.shape[1]))
        for k in range(w.shape[1]):
            out[:, k] = np.bincount(self.row, weights=prod[:, k], minlength=self.n)
        return out

    def tdot(self, g: np.ndarray) -> np.ndarray:
        if self._csr is not None:
            return np.asarray(self._csr_t @ g)
        prod = self.val[:, None] * g[self.row]
        out = np.empty((self.d, g.shape[1]))
        for k in range(g.shape[1]):
            out[:, k] = np.bincount(self.col, weights=prod[:, k], minlength=self.d)
        return out


class Dense:
    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, float)
        self.n, self.d = self.x.shape

    def dot(self, w):
        return self.x @ w

    def tdot(self, g):
        return self.x.T @ g


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty ``l2 / 2 * |W|^2`` on the mean
    cross-entropy, fitted by Nesterov-accelerated gradient descent (a convex problem), with the
    step set from the largest eigenvalue of ``X^T X / n`` (power iteration)."""

    def __init__(self, l2: float = 1e-3, iters: int = 200) -> None:
        self.l2, self.iters = l2, iters
        self.w: np.ndarray | None = None
        self.b: np.ndarray | None = None

    @staticmethod
    def curvature(x, iters: int = 30, seed: int = 0) -> float:
        """An estimate (from above, by 10%) of the largest eigenvalue of ``X^T X / n``."""
        v = np.random.default_rng(seed).standard_normal((x.d, 1))
        lam = 0.0
        for _ in range(iters):
            u = x.tdot(x.dot(v)) / x.n
            lam = float(np.linalg.norm(u))
            if lam == 0.0:
                return 0.0
            v = u / lam
        return 1.1 * lam

    def fit(self, x, y: np.ndarray, classes: int, curvature: float | None = None, warm=None):
        n, d = x.n, x.d
        onehot = np.zeros((n, classes))
        onehot[np.arange(n), y] = 1.0
        lam = self.curvature(x) if curvature is None else curvature
        # The softmax cross-entropy's Hessian is at most 0.5 * X^T X / n (+ l2 on W); the bias
        # column adds at most 0.5.
        step = 1.0 / (0.5 * max(lam, 1.0) + self.l2)
        if warm is not None:
            w, b = warm.w.copy(), warm.b.copy()
        else:
            w, b = np.zeros((d, classes)), np.zeros(classes)
        vw, vb = w.copy(), b.copy()
        t = 1.0
        for _ in range(self.iters):
            z = x.dot(vw) + vb
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) / n
            w_new = vw - step * (x.tdot(g) + self.l2 * vw)
            b_new = vb - step * g.sum(axis=0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            mom = (t - 1) / t_new
            vw = w_new + mom * (w_new - w)
            vb = b_new + mom * (b_new - b)
            w, b, t = w_new, b_new, t_new
        self.w, self.b = w, b
        return self

    def predict(self, x) -> np.ndarray:
        return (x.dot(self.w) + self.b).argmax(axis=1)


def tfidf(docs: list[list[str]], vocab: dict[str, int], idf: np.ndarray) -> Sparse:
    rows = []
    for toks in docs:
        counts = Counter(t for t in toks if t in vocab)
        r = {vocab[t]: (1.0 + math.log(c)) * idf[vocab[t]] for t, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in r.values())) or 1.0
        rows.append({k: v / norm for k, v in r.items()})
    return Sparse(rows, len(vocab))


def summary_features(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Per-feature mean, std, min, max, first and last valid value: ``[N, 6F]``."""
    n, t = x.shape[:2]
    x = x.reshape(n, t, -1).astype(float)
    lens = np.full(n, t) if lengths is None else np.asarray(lengths)
    valid = (np.arange(t)[None, :] < lens[:, None])[:, :, None]
    cnt = valid.sum(axis=1)
    mean = np.where(valid, x, 0).sum(axis=1) / cnt
    std = np.sqrt(np.where(valid, (x - mean[:, None]) ** 2, 0).sum(axis=1) / cnt)
    mn = np.where(valid, x, np.inf).min(axis=1)
    mx = np.where(valid, x, -np.inf).max(axis=1)
    last = x[np.arange(n), lens - 1]
    return np.concatenate([mean, std, mn, mx, x[:, 0], last], axis=1)


def choose_l2(xtr, ytr, xval, yval, k, grid=(1e-2, 1e-3, 1e-4, 1e-5)) -> tuple[float, Any]:
    """The L2 strength of ``grid`` with the best validation accuracy (the first, strongest, on
    ties), each fit warm-started from the previous one."""
    lam = LogisticRegression.curvature(xtr)
    best, prev = None, None
    for l2 in grid:
        m = LogisticRegression(l2).fit(xtr, ytr, k, curvature=lam, warm=prev)
        prev = m
        acc = float(np.mean(m.predict(xval) == yval)) if yval is not None else 0.0
        if best is None or acc > best[0]:
            best = (acc, l2, m)
        if yval is None:
            break
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# 1-NN DTW

#: Sakoe-Chiba windows searched, as fractions of the series length: 0-20% in steps of 1%, where
#: the UCR archive's learned windows lie for nearly all of its data sets, then 25%, 30% and the
#: unconstrained 100%.
DTW_WINDOWS: tuple[float, ...] = tuple(i / 100 for i in range(21)) + (0.25, 0.3, 1.0)


def _set(x: np.ndarray, lengths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    lens = np.full(x.shape[0], x.shape[1]) if lengths is None else lengths
    return np.ascontiguousarray(x), np.asarray(lens, dtype=np.int64)


def _fingerprint(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a) if a is not None else np.zeros(0)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# Results by input fingerprint: a tuning study evaluates many models on one split, and the
# baseline (seconds to minutes for long series) depends on the split alone.
_DTW_CACHE: dict[str, tuple[np.ndarray, float, float]] = {}


def dtw_1nn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    lengths_train: np.ndarray | None = None,
    lengths_test: np.ndarray | None = None,
    windows: tuple[float, ...] = DTW_WINDOWS,
) -> tuple[np.ndarray, float, float]:
    """1-NN DTW predictions for ``x_test``: ``(labels, window, loo_accuracy)``.

    Inputs are ``[N, T]`` or ``[N, T, F]`` (multivariate DTW on the feature vectors), padded,
    with valid lengths. The window is the fraction of ``windows`` with the best leave-one-out
    accuracy on the training split (the narrowest on ties).
    """
    xtr, ltr = _set(x_train, lengths_train)
    xte, lte = _set(x_test, lengths_test)
    y = np.ascontiguousarray(y_train, dtype=np.int64)
    key = _fingerprint(xtr, ltr, y, xte, lte, np.asarray(windows))
    if key not in _DTW_CACHE:
        loo = dtw_leave_one_out(xtr, ltr, y, list(windows))
        best = int(np.argmax(loo))  # the first (narrowest) of the best
        pred = np.asarray(dtw_classify(xtr, ltr, y, xte, lte, float(windows[best])))
        _DTW_CACHE[key] = (pred, float(windows[best]), float(loo[best]))
    pred, window, loo_best = _DTW_CACHE[key]
    return pred.copy(), window, loo_best
