"""Checks of scalar arguments shared by every module, so that one kind of argument is refused
the same way everywhere: ``True`` is not an integer, ``3.0`` is not an integer, and the error is
an :class:`~lstmrs.errors.InvalidArgumentError` naming the argument, what was expected and what
was given (``hidden_size: expected an integer >= 1, got 3.0 (float)``)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["check_bool", "check_int", "check_number", "describe"]


def describe(value: Any) -> str:
    """``value`` for an error message: its repr (shortened) and its type, or an array's shape
    and dtype."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is an integer (Python or NumPy) ``>= minimum``. Bools
    and floats are refused, whole ones (``3.0``) too, as torch refuses them for sizes."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(
            f"{name}: expected an integer >= {minimum}, got {describe(value)}"
        )
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            f"{name}: expected an integer >= {minimum}, got {describe(value)}"
        ) from None
    if v < minimum:
        raise InvalidArgumentError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def check_number(
    name: str, value: Any, lo: float = 0.0, hi: float | None = None, hi_open: bool = False
) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``; no upper
    bound when ``hi`` is None)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name}: expected a number, got {value!r}") from None
    bad = not math.isfinite(f) or f < lo or (hi is not None and (f >= hi if hi_open else f > hi))
    if bad:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}{')' if hi_open else ']'}"
        raise InvalidArgumentError(f"{name}: expected a finite number {rng}, got {value!r}")
    return f


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False`` (NumPy's too); 0, 1 and strings are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidArgumentError(f"{name}: expected True or False, got {describe(value)}")
