"""Checking an exported ONNX model on the spot: ``onnx.checker``, then ONNX Runtime on random
inputs with mixed lengths against lstmrs' own outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ExportError, ExportMismatchError
from .optional import require

__all__ = ["check_model", "compare", "mixed_lengths", "run_onnxruntime"]


def check_model(model: Any) -> None:
    """``onnx.checker`` with full shape inference; a failure is an :class:`ExportError`."""
    onnx = require("onnx", "ONNX export")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails onnx.checker: {e}") from None


def run_onnxruntime(model: Any, feeds: Mapping[str, np.ndarray], threads: int = 1) -> list:
    """Outputs of ``model`` (a ModelProto) run in ONNX Runtime's CPU provider."""
    ort = require("onnxruntime", "running an exported model")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        return sess.run(None, dict(feeds))
    except Exception as e:  # noqa: BLE001 - any ORT failure means the export is not usable
        raise ExportError(f"ONNX Runtime {ort.__version__} cannot run the export: {e}") from None


def mixed_lengths(batch: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` lengths in 1..seq_len including both ends (full and one-step sequences)."""
    lens = rng.integers(1, seq_len + 1, size=batch)
    lens[0] = seq_len
    if batch > 1:
        lens[1] = 1
    return lens.astype(np.int64)


def compare(name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
    """Largest ``|got - want|``; raises :class:`ExportMismatchError` when any element is off by
    more than ``tolerance * (1 + |want|)``."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        raise ExportMismatchError(
            f"{name}: ONNX Runtime gives shape {got.shape}, lstmrs {want.shape}"
        )
    if got.dtype.kind in "iub":
        bad = got != want
        if bad.any():
            i = tuple(int(k) for k in np.argwhere(bad)[0])
            raise ExportMismatchError(
                f"{name}: ONNX Runtime gives {got[i]} at {i}, lstmrs {want[i]}"
            )
        return 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    limit = tolerance * (1.0 + np.abs(want.astype(np.float64)))
    if not np.all(diff <= limit):  # also catches NaN
        i = tuple(int(k) for k in np.argwhere(~(diff <= limit))[0])
        raise ExportMismatchError(
            f"{name}: ONNX Runtime and lstmrs differ by {diff[i]:.3g} at index {i} "
            f"({got[i]!r} vs {want[i]!r}; tolerance {tolerance:g} * (1 + |lstmrs|)); "
            f"largest difference {np.nanmax(diff):.3g}"
        )
    return float(diff.max()) if diff.size else 0.0
