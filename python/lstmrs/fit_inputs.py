"""What ``fit``, ``evaluate`` and ``predict`` do to their inputs before any batch: inputs (a
padded array, or a list of sequences of different lengths) become one C-contiguous array of the
model's input type with int64 lengths, targets the layout the core's training step expects, each
checked with a typed error naming the argument (``x``, ``y``, ``lengths``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DTypeError, InvalidArgumentError, NonFiniteError, ShapeError

if TYPE_CHECKING:
    from .models import Model

__all__ = ["FitData", "check_numeric", "prepare", "prepare_lengths", "prepare_x", "prepare_y"]


@dataclass
class FitData:
    """Inputs padded to one length, targets and valid lengths (None: every sequence is full)."""

    x: np.ndarray  # [N, T, F] float or [N, T] int64
    y: np.ndarray | None
    lengths: np.ndarray | None  # int64 [N]

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.x.shape[1])

    def subset(self, sl: slice) -> FitData:
        return FitData(
            self.x[sl],
            None if self.y is None else self.y[sl],
            None if self.lengths is None else self.lengths[sl],
        )


def _is_ragged(x: Any) -> bool:
    if not isinstance(x, (list, tuple)) or not x:
        return False
    first = np.shape(x[0])
    return any(np.shape(s) != first for s in x) or len(first) == 0


def check_numeric(name: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "biuf":
        raise DTypeError(f"{name}: expected real numbers, got dtype {a.dtype}")


def prepare_x(model: Model, x: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` as a C-contiguous array of the model's input type, and int64 lengths."""
    tokens = model.tokens
    if isinstance(x, (list, tuple)) and x and _is_ragged(x):
        seqs = [np.asarray(s) for s in x]
        lens = np.array([s.shape[0] if s.ndim else 0 for s in seqs], dtype=np.int64)
        if lengths is not None:
            raise InvalidArgumentError(
                "lengths: not with a list of sequences (their lengths are the lengths)"
            )
        if lens.min() < 1:
            raise InvalidArgumentError("x: every sequence needs at least one step")
        t = int(lens.max())
        for i, s in enumerate(seqs):
            check_numeric(f"x[{i}]", s)
            want = 1 if tokens else 2
            if s.ndim == 1 and not tokens and model._features == 1:
                seqs[i] = s = s[:, None]
            if s.ndim != want or (not tokens and s.shape[1] != model._features):
                shape = "[T]" if tokens else f"[T, {model._features}]"
                raise ShapeError(f"x[{i}]: expected shape {shape}, got {s.shape}")
        if tokens:
            out = np.zeros((len(seqs), t), dtype=np.int64)
        else:
            out = np.zeros((len(seqs), t, model._features), dtype=model.dtype)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return _finish_x(model, out), lens
    a = np.asarray(x)
    check_numeric("x", a)
    if not tokens and a.ndim == 2 and model._features == 1:
        a = a[..., None]
    want = 2 if tokens else 3
    if a.ndim != want or (not tokens and a.shape[2] != model._features):
        shape = "[N, T] token ids" if tokens else f"[N, T, {model._features}]"
        raise ShapeError(f"x: expected shape {shape}, got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(f"x: expected at least one sequence of at least one step, got {a.shape}")
    return _finish_x(model, a), prepare_lengths(lengths, a.shape[0], a.shape[1])


def _finish_x(model: Model, a: np.ndarray) -> np.ndarray:
    if model.tokens:
        if a.dtype.kind == "f":
            raise DTypeError(f"x: expected integer token ids, got dtype {a.dtype}")
        vocab = model._kwargs["vocab_size"]
        if a.size and (a.min() < 0 or a.max() >= vocab):
            raise InvalidArgumentError(
                f"x: expected token ids in 0..{vocab}, got values in {a.min()}..{a.max()}"
            )
        return np.ascontiguousarray(a, dtype=np.int64)
    out = np.ascontiguousarray(a, dtype=model.dtype)
    if not np.isfinite(out).all():
        raise NonFiniteError("x: holds NaN or infinity")
    return out


def prepare_lengths(lengths: Any, n: int, t: int) -> np.ndarray | None:
    if lengths is None:
        return None
    lens = np.asarray(lengths)
    if lens.dtype.kind not in "iu" or lens.shape != (n,):
        raise InvalidArgumentError(
            f"lengths: expected {n} integers (one per sequence), got {lens.dtype} {lens.shape}"
        )
    if lens.min() < 1 or lens.max() > t:
        raise InvalidArgumentError(f"lengths: expected every length in 1..={t}")
    return lens.astype(np.int64)


def prepare_y(model: Model, y: Any, n: int, t: int) -> np.ndarray:
    """Targets in the layout ``train_step`` expects: int64 ``[N]`` / ``[N, T]`` for
    cross-entropy, float ``[N, O]`` / ``[N, T, O]`` otherwise."""
    if y is None:
        raise InvalidArgumentError("y: targets are required")
    per_step, o = model.pooling == "per_step", model.output_size
    ce = model.loss.name == "cross_entropy"
    pad = model.loss.ignore_index if ce else 0
    if isinstance(y, (list, tuple)) and y and _is_ragged(y):
        if not per_step:
            raise ShapeError("y: a list of sequences of targets needs pooling='per_step'")
        seqs = [np.asarray(s) for s in y]
        shape = (len(seqs), t) if ce else (len(seqs), t, o)
        out = np.full(shape, pad, dtype=np.int64 if ce else np.float64)
        for i, s in enumerate(seqs):
            check_numeric(f"y[{i}]", s)
            if len(s) > t:
                raise ShapeError(f"y[{i}]: {len(s)} steps, more than the inputs' {t}")
            out[i, : len(s)] = s.reshape((len(s),) if ce else (len(s), o))
        a = out
    else:
        a = np.asarray(y)
        check_numeric("y", a)
    if a.shape[:1] != (n,):
        raise ShapeError(f"y: expected {n} targets (one per sequence), got shape {a.shape}")
    if ce:
        if a.dtype.kind == "f" and not np.all(a == np.round(a)):
            raise DTypeError("y: expected integer class ids for the cross_entropy loss")
        want = (n, t) if per_step else (n,)
        if a.shape != want and a.shape == want + (1,):
            a = a.reshape(want)
        if a.shape != want:
            raise ShapeError(f"y: expected class ids of shape {list(want)}, got {a.shape}")
        a = a.astype(np.int64)
        bad = (a != model.loss.ignore_index) & ((a < 0) | (a >= o))
        if bad.any():
            raise InvalidArgumentError(
                f"y: expected class ids in 0..{o} (or ignore_index {model.loss.ignore_index}), "
                f"got {a[bad][0]}"
            )
        return np.ascontiguousarray(a)
    want = (n, t, o) if per_step else (n, o)
    if a.shape != want and o == 1 and a.shape == want[:-1]:
        a = a.reshape(want)
    if a.shape != want:
        raise ShapeError(f"y: expected shape {list(want)}, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=model.dtype)
    if not np.isfinite(a).all():
        raise NonFiniteError("y: holds NaN or infinity")
    return a


def prepare(model: Model, x: Any, y: Any, lengths: Any, *, need_y: bool = True) -> FitData:
    xa, lens = prepare_x(model, x, lengths)
    ya = prepare_y(model, y, xa.shape[0], xa.shape[1]) if need_y else None
    if lens is not None and np.all(lens == xa.shape[1]):
        lens = None  # Full-length sequences need no masking.
    return FitData(xa, ya, lens)
