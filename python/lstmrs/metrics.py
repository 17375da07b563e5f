"""Metrics in NumPy: plain functions, and accumulators the training loop feeds batch by batch.

Functions (scikit-learn's conventions: confusion matrix rows are true classes, columns predicted;
macro averages run over the classes present in ``y_true`` or ``y_pred``; 0 where undefined):

- classification: :func:`accuracy`, :func:`confusion_matrix`, :func:`precision`, :func:`recall`,
  :func:`f1_score` (``average="macro" | "micro" | "weighted" | None`` for per-class values);
- regression: :func:`mean_squared_error`, :func:`root_mean_squared_error`,
  :func:`mean_absolute_error`, :func:`mean_absolute_percentage_error` (a fraction, not percent);
- language models: :func:`perplexity` and :func:`bits_per_char` from a mean cross-entropy in nats,
  :func:`cross_entropy` to get one from logits.

Names for ``Model.compile(metrics=[...])`` and ``Model.evaluate(metrics=[...])``: ``accuracy``
(``acc``), ``precision``, ``recall``, ``f1`` (macro; ``*_micro`` and ``*_weighted`` variants),
``f1_per_class``, ``confusion_matrix``, ``mse``, ``rmse``, ``mae``, ``mape``, ``cross_entropy``,
``perplexity``, ``bpc`` (``bits_per_char``). Class metrics read model outputs as the loss implies:
argmax of the logits for ``cross_entropy``, ``logit > 0`` for ``bce_with_logits``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, ShapeError

__all__ = [
    "METRIC_NAMES",
    "Metric",
    "accuracy",
    "bits_per_char",
    "confusion_matrix",
    "cross_entropy",
    "f1_score",
    "get_metric",
    "loss_value",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "perplexity",
    "precision",
    "precision_recall_f1",
    "recall",
    "root_mean_squared_error",
]

_AVERAGES = ("macro", "micro", "weighted", None)


# --------------------------------------------------------------------------------------------
# Classification


def _labels(y_true: Any, y_pred: Any, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ShapeError(f"y_pred: expected as many labels as y_true ({t.size}), got {p.size}")
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and a.dtype.kind == "f" and not np.all(a == np.round(a)):
            raise InvalidArgumentError(f"{name}: expected integer class labels")
        if a.size and a.min() < 0:
            raise InvalidArgumentError(f"{name}: expected class labels >= 0, got {a.min()}")
    return t.astype(np.int64), p.astype(np.int64)


def accuracy(y_true: Any, y_pred: Any, *, ignore_index: int | None = None) -> float:
    """Fraction of labels predicted exactly; ``ignore_index`` drops those targets (NaN if none)."""
    t, p = _labels(y_true, y_pred, ignore_index)
    return float(np.mean(t == p)) if t.size else math.nan


def confusion_matrix(
    y_true: Any, y_pred: Any, num_classes: int | None = None, *, ignore_index: int | None = None
) -> np.ndarray:
    """``[C, C]`` counts, ``cm[i, j]`` = samples of true class ``i`` predicted as ``j``."""
    t, p = _labels(y_true, y_pred, ignore_index)
    top = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise InvalidArgumentError(
            f"num_classes: labels go up to {top - 1}, more than num_classes={num_classes} allows"
        )
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def _check_average(average: str | None) -> None:
    if average not in _AVERAGES:
        raise InvalidArgumentError(
            f"average: expected 'macro', 'micro', 'weighted' or None, got {average!r}"
        )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # scikit-learn's zero_division=0: an undefined ratio counts as 0.
    out = np.zeros(np.shape(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(cm: np.ndarray, average: str | None = "macro") -> tuple[Any, Any, Any]:
    """Precision, recall and F1 from a confusion matrix (floats, or ``[C]`` arrays for None)."""
    _check_average(average)
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ShapeError(f"cm: expected a square matrix, got shape {cm.shape}")
    tp = np.diag(cm)
    pred = cm.sum(axis=0)
    true = cm.sum(axis=1)
    if average == "micro":
        # Single-label: micro precision = micro recall = micro F1 = accuracy.
        total = cm.sum()
        v = float(tp.sum() / total) if total else 0.0
        return v, v, v
    p = _div(tp, pred)
    r = _div(tp, true)
    f = _div(2 * tp, pred + true)
    if average is None:
        return p, r, f
    present = (pred + true) > 0
    if not present.any():
        return 0.0, 0.0, 0.0
    if average == "macro":
        return tuple(float(np.mean(v[present])) for v in (p, r, f))  # type: ignore[return-value]
    w = true / true.sum() if true.sum() else np.zeros_like(true)
    return tuple(float(np.sum(v * w)) for v in (p, r, f))  # type: ignore[return-value]


def _prf(y_true, y_pred, average, num_classes, ignore_index):
    _check_average(average)
    return precision_recall_f1(
        confusion_matrix(y_true, y_pred, num_classes, ignore_index=ignore_index), average
    )


def precision(y_true, y_pred, *, average="macro", num_classes=None, ignore_index=None):
    """Precision ``tp / (tp + fp)``; ``average=None`` gives one value per class."""
    return _prf(y_true, y_pred, average, num_classes, ignore_index)[0]


def recall(y_true, y_pred, *, average="macro", num_classes=None, ignore_index=None):
    """Recall ``tp / (tp + fn)``; ``average=None`` gives one value per class."""
    return _prf(y_true, y_pred, average, num_classes, ignore_index)[1]


def f1_score(y_true, y_pred, *, average="macro", num_classes=None, ignore_index=None):
    """F1 ``2 tp / (2 tp + fp + fn)``; ``average=None`` gives one value per class."""
    return _prf(y_true, y_pred, average, num_classes, ignore_index)[2]


# --------------------------------------------------------------------------------------------
# Regression


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.size != p.size:
        raise ShapeError(f"y_pred: expected {t.size} values like y_true, got {p.size}")
    return t.reshape(-1), p.reshape(-1)


def mean_squared_error(y_true: Any, y_pred: Any) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def root_mean_squared_error(y_true: Any, y_pred: Any) -> float:
    return math.sqrt(mean_squared_error(y_true, y_pred))


def mean_absolute_error(y_true: Any, y_pred: Any) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


_MAPE_EPS = float(np.finfo(np.float64).eps)


def mean_absolute_percentage_error(y_true: Any, y_pred: Any) -> float:
    """``mean(|y - p| / max(|y|, eps))`` as a fraction (scikit-learn's definition)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p) / np.maximum(np.abs(t), _MAPE_EPS)))


# --------------------------------------------------------------------------------------------
# Cross-entropy based


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))


def cross_entropy(logits: Any, y_true: Any, *, ignore_index: int = -100) -> float:
    """Mean softmax cross-entropy in nats of ``logits[..., C]`` against class ids ``y_true[...]``."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64)
    if z.shape[:-1] != y.shape:
        raise ShapeError(
            f"y_true: expected shape {z.shape[:-1]} for logits {z.shape}, got {y.shape}"
        )
    z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    keep = y != ignore_index
    if not keep.any():
        return math.nan
    z, y = z[keep], y[keep]
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise InvalidArgumentError(f"y_true: expected class ids in 0..{z.shape[1]}")
    return float(-np.mean(_log_softmax(z)[np.arange(y.size), y]))


def perplexity(mean_cross_entropy: float) -> float:
    """``exp(H)`` for a mean cross-entropy ``H`` in nats."""
    return math.exp(mean_cross_entropy)


def bits_per_char(mean_cross_entropy: float) -> float:
    """``H / ln 2`` for a mean cross-entropy ``H`` in nats per character."""
    return mean_cross_entropy / math.log(2.0)


# --------------------------------------------------------------------------------------------
# Losses, as the Rust core defines them (model/loss.rs), to score predictions without a backward
# pass. Returns (mean, weight): the batch's share when means of batches are combined.


def loss_value(
    name: str,
    output: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    ignore_index: int = -100,
    class_weights: np.ndarray | None = None,
    delta: float = 1.0,
) -> tuple[float, float]:
    """Mean loss of ``output`` (rows ``[..., O]``) and its normaliser (count or weight sum).

    ``mask`` (shape ``output.shape[:-1]``) selects the rows that count, like the core's per-step
    length mask. The mean is 0 when nothing counts, as in the core.
    """
    out = np.asarray(output, dtype=np.float64)
    o = out.shape[-1]
    rows = out.reshape(-1, o)
    m = np.ones(rows.shape[0], dtype=bool) if mask is None else np.asarray(mask).reshape(-1)
    if name == "cross_entropy":
        t = np.asarray(y).reshape(-1).astype(np.int64)
        keep = m & (t != ignore_index)
        if not keep.any():
            return 0.0, 0.0
        t = t[keep]
        w = np.ones(t.size) if class_weights is None else np.asarray(class_weights, np.float64)[t]
        nll = -_log_softmax(rows[keep])[np.arange(t.size), t]
        norm = float(w.sum())
        return (float(np.sum(w * nll) / norm) if norm else 0.0), norm
    t = np.asarray(y, dtype=np.float64).reshape(-1, o)[m]
    p = rows[m]
    if p.size == 0:
        return 0.0, 0.0
    d = p - t
    if name == "mse":
        v = d * d
    elif name == "mae":
        v = np.abs(d)
    elif name == "huber":
        a = np.abs(d)
        v = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    elif name == "bce_with_logits":
        v = np.maximum(p, 0.0) - p * t + np.log1p(np.exp(-np.abs(p)))
    else:
        raise InvalidArgumentError(f"loss: unknown loss {name!r}")
    return float(np.mean(v)), float(v.size)


# --------------------------------------------------------------------------------------------
# Accumulators for the training loop


class Metric:
    """Accumulates one metric over batches of model outputs.

    ``update(y, output, mask)`` takes the targets and the raw model outputs of a batch (``mask``:
    rows that count, or None); ``result()`` gives the value over everything seen since ``reset()``.
    ``state_dict()`` is JSON-friendly so checkpoints can resume mid-epoch exactly.
    """

    name: str = "metric"

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, y: np.ndarray, output: np.ndarray, mask: np.ndarray | None) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class _ClassMetric(Metric):
    """Confusion-matrix based metrics; labels from the outputs as the loss implies."""

    def __init__(self, name, kind, average, loss, outputs, ignore_index):
        self.name, self.kind, self.average = name, kind, average
        self.loss, self.ignore_index = loss, ignore_index
        # bce: one binary decision per output (multi-label counts each element).
        self.classes = outputs if loss == "cross_entropy" else 2
        self.reset()

    def reset(self) -> None:
        self.cm = np.zeros((self.classes, self.classes), dtype=np.int64)

    def labels(self, y, output, mask):
        out = np.asarray(output)
        if self.loss == "cross_entropy":
            pred = out.argmax(axis=-1).reshape(-1)
            true = np.asarray(y).reshape(-1).astype(np.int64)
            keep = true != self.ignore_index
            if mask is not None:
                keep &= np.asarray(mask).reshape(-1)
        else:
            o = out.shape[-1]
            pred = (out.reshape(-1, o) > 0).astype(np.int64)
            true = (np.asarray(y).reshape(-1, o) >= 0.5).astype(np.int64)
            rows = np.ones(pred.shape[0], dtype=bool) if mask is None else np.asarray(mask)
            keep = np.repeat(rows.reshape(-1, 1), o, axis=1).reshape(-1)
            pred, true = pred.reshape(-1), true.reshape(-1)
        return true[keep], pred[keep]

    def update(self, y, output, mask) -> None:
        t, p = self.labels(y, output, mask)
        self.cm += np.bincount(t * self.classes + p, minlength=self.classes**2).reshape(
            self.classes, self.classes
        )

    def result(self):
        if self.kind == "confusion_matrix":
            return self.cm.copy()
        if self.kind == "accuracy":
            total = self.cm.sum()
            return float(np.trace(self.cm) / total) if total else math.nan
        p, r, f = precision_recall_f1(self.cm, self.average)
        return {"precision": p, "recall": r, "f1": f}[self.kind]

    def state_dict(self) -> dict:
        return {"cm": self.cm.tolist()}

    def load_state_dict(self, state: dict) -> None:
        cm = np.asarray(state["cm"], dtype=np.int64)
        if cm.shape != self.cm.shape:
            raise ShapeError(
                f"{self.name}: saved confusion matrix {cm.shape}, need {self.cm.shape}"
            )
        self.cm = cm


class _RegressionMetric(Metric):
    def __init__(self, name, kind):
        self.name, self.kind = name, kind
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, y, output, mask) -> None:
        out = np.asarray(output, dtype=np.float64)
        o = out.shape[-1]
        p = out.reshape(-1, o)
        t = np.asarray(y, dtype=np.float64).reshape(-1, o)
        if mask is not None:
            m = np.asarray(mask).reshape(-1)
            p, t = p[m], t[m]
        d = p - t
        if self.kind in ("mse", "rmse"):
            v = d * d
        elif self.kind == "mae":
            v = np.abs(d)
        else:
            v = np.abs(d) / np.maximum(np.abs(t), _MAPE_EPS)
        self.total += float(v.sum())
        self.count += int(v.size)

    def result(self) -> float:
        if not self.count:
            return math.nan
        mean = self.total / self.count
        return math.sqrt(mean) if self.kind == "rmse" else mean

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


class _EntropyMetric(Metric):
    """Unweighted mean cross-entropy in nats over the counted targets, and what follows from it."""

    def __init__(self, name, kind, ignore_index):
        self.name, self.kind, self.ignore_index = name, kind, ignore_index
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, y, output, mask) -> None:
        z = np.asarray(output, dtype=np.float64)
        rows = z.reshape(-1, z.shape[-1])
        t = np.asarray(y).reshape(-1).astype(np.int64)
        keep = t != self.ignore_index
        if mask is not None:
            keep &= np.asarray(mask).reshape(-1)
        if not keep.any():
            return
        nll = -_log_softmax(rows[keep])[np.arange(int(keep.sum())), t[keep]]
        self.total += float(nll.sum())
        self.count += int(nll.size)

    def result(self) -> float:
        if not self.count:
            return math.nan
        h = self.total / self.count
        return {"cross_entropy": h, "perplexity": perplexity(h), "bpc": bits_per_char(h)}[self.kind]

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


# name -> (family, kind, average)
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "accuracy": ("class", "accuracy", None),
    "acc": ("class", "accuracy", None),
    "confusion_matrix": ("class", "confusion_matrix", None),
    "f1_per_class": ("class", "f1", None),
    "precision_per_class": ("class", "precision", None),
    "recall_per_class": ("class", "recall", None),
    "mse": ("regression", "mse", None),
    "rmse": ("regression", "rmse", None),
    "mae": ("regression", "mae", None),
    "mape": ("regression", "mape", None),
    "cross_entropy": ("entropy", "cross_entropy", None),
    "perplexity": ("entropy", "perplexity", None),
    "ppl": ("entropy", "perplexity", None),
    "bpc": ("entropy", "bpc", None),
    "bits_per_char": ("entropy", "bpc", None),
}
for _kind in ("precision", "recall", "f1"):
    _REGISTRY[_kind] = ("class", _kind, "macro")
    for _avg in ("macro", "micro", "weighted"):
        _REGISTRY[f"{_kind}_{_avg}"] = ("class", _kind, _avg)

METRIC_NAMES = tuple(sorted(_REGISTRY))
# Metrics whose result is an array: allowed in evaluate(), not logged per epoch.
ARRAY_METRICS = frozenset(
    ("confusion_matrix", "f1_per_class", "precision_per_class", "recall_per_class")
)


def get_metric(name: str, *, loss: str, outputs: int, ignore_index: int = -100) -> Metric:
    """A fresh accumulator for metric ``name`` on a model trained with ``loss``."""
    if isinstance(name, Metric):
        # Training and validation each need their own accumulator.
        m = copy.deepcopy(name)
        m.reset()
        return m
    key = str(name).lower()
    if key not in _REGISTRY:
        raise InvalidArgumentError(
            f"metrics: unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}"
        )
    family, kind, average = _REGISTRY[key]
    if family == "class":
        if loss not in ("cross_entropy", "bce_with_logits"):
            raise InvalidArgumentError(
                f"metrics: {name!r} needs a classification loss (cross_entropy or "
                f"bce_with_logits), the model uses {loss!r}"
            )
        return _ClassMetric(key, kind, average, loss, outputs, ignore_index)
    if family == "entropy":
        if loss != "cross_entropy":
            raise InvalidArgumentError(
                f"metrics: {name!r} needs the cross_entropy loss, the model uses {loss!r}"
            )
        return _EntropyMetric(key, kind, ignore_index)
    if loss == "cross_entropy":
        raise InvalidArgumentError(
            f"metrics: {name!r} compares values; a cross_entropy model predicts class ids"
        )
    return _RegressionMetric(key, kind)
