"""The copy (memory) task for lstmrs, registered as the task ``copy_memory``.

A sequence shows ``length`` random symbols, then ``delay`` blank steps, then a delimiter; during
the last ``length`` steps the model must reproduce the symbols in order. Solving it means
holding ``length`` symbols across ``delay + length + 1`` steps; a model without memory can at
best predict the symbol frequencies in the recall phase.

Two variants (``config["variant"]``):

* ``"tokens"`` (Arjovsky, Shah & Bengio, 2016, "Unitary Evolution RNNs"): token ids,
  ``0`` = blank, ``1..num_symbols`` = symbols, ``num_symbols + 1`` = delimiter.
  ``X`` int64 ``[n, S]``, ``y`` int64 ``[n, S]`` with ``S = 2 * length + delay + 1``: blank
  (0) targets before the recall phase, or ``ignore_index`` there with ``mask_prefix=True``.
  The memoryless baseline cross-entropy over the whole sequence is
  ``length * log(num_symbols) / S``.
* ``"binary"`` (Graves, Wayne & Danihelka, 2014, "Neural Turing Machines"): random vectors of
  ``bits`` bits. ``X`` float32 ``[n, S, bits + 1]`` (the last channel flags the delimiter),
  ``y`` float32 ``[n, S, bits]``: zeros, then the vectors again in the recall phase; trained
  with a per-bit sigmoid cross-entropy (``bce_with_logits``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import numpy as np
from lstmrs.errors import InvalidArgumentError
from lstmrs.plugins import hookimpl

__version__ = "0.1.0"
__all__ = ["TASK", "CopyMemoryTask"]


class CopyMemoryTask:
    """The copy task as an lstmrs task: ``make_data(config, seed) -> (X, y)``."""

    name = "copy_memory"
    description = (
        "Copy task: remember `length` symbols across `delay` blanks and a delimiter, then "
        "reproduce them (Arjovsky et al. 2016 tokens, or Graves et al. 2014 bit vectors)"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "n": 1024,
        "length": 10,
        "delay": 20,
        "variant": "tokens",
        "num_symbols": 8,
        "bits": 8,
        "mask_prefix": False,
        "ignore_index": -100,
    }

    def config(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """``default_config`` updated with ``config``, validated."""
        cfg = dict(self.default_config)
        unknown = sorted(set(config or {}) - set(cfg))
        if unknown:
            raise InvalidArgumentError(
                f"copy_memory: unknown config key(s) {unknown}; expected {sorted(cfg)}"
            )
        cfg.update(config or {})
        for key, lo in (("n", 1), ("length", 1), ("delay", 0), ("num_symbols", 1), ("bits", 1)):
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise InvalidArgumentError(
                    f"copy_memory: {key} must be an integer >= {lo}, got {v!r}"
                )
            cfg[key] = int(v)
        if cfg["variant"] not in ("tokens", "binary"):
            raise InvalidArgumentError(
                f"copy_memory: variant must be 'tokens' or 'binary', got {cfg['variant']!r}"
            )
        v = cfg["ignore_index"]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise InvalidArgumentError(f"copy_memory: ignore_index must be an integer, got {v!r}")
        if 0 <= v <= cfg["num_symbols"] + 1:
            raise InvalidArgumentError(
                f"copy_memory: ignore_index {v} is a real class id (0..{cfg['num_symbols'] + 1})"
            )
        cfg["mask_prefix"] = bool(cfg["mask_prefix"])
        return cfg

    def make_data(
        self, config: dict[str, Any] | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` for ``config`` (defaults for missing keys), reproducible from ``seed``."""
        cfg = self.config(config)
        n, length, delay = cfg["n"], cfg["length"], cfg["delay"]
        total = 2 * length + delay + 1
        rng = np.random.default_rng(seed)
        if cfg["variant"] == "tokens":
            k = cfg["num_symbols"]
            symbols = rng.integers(1, k + 1, size=(n, length))
            x = np.zeros((n, total), dtype=np.int64)
            x[:, :length] = symbols
            x[:, length + delay] = k + 1
            y = np.full((n, total), cfg["ignore_index"] if cfg["mask_prefix"] else 0, np.int64)
            y[:, total - length :] = symbols
            return x, y
        bits = cfg["bits"]
        vectors = rng.integers(0, 2, size=(n, length, bits)).astype(np.float32)
        x = np.zeros((n, total, bits + 1), dtype=np.float32)
        x[:, :length, :bits] = vectors
        x[:, length + delay, bits] = 1.0
        y = np.zeros((n, total, bits), dtype=np.float32)
        y[:, total - length :] = vectors
        return x, y

    def model_kwargs(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """:class:`lstmrs.Model` arguments that fit the data (add ``hidden_size`` etc.)."""
        cfg = self.config(config)
        if cfg["variant"] == "tokens":
            vocab = cfg["num_symbols"] + 2
            return {
                "vocab_size": vocab,
                "embedding_dim": vocab,
                "output_size": vocab,
                "pooling": "per_step",
                "loss": {"name": "cross_entropy", "ignore_index": cfg["ignore_index"]},
            }
        return {
            "input_size": cfg["bits"] + 1,
            "output_size": cfg["bits"],
            "pooling": "per_step",
            "loss": "bce_with_logits",
        }

    def baseline_loss(self, config: dict[str, Any] | None = None) -> float:
        """The loss of the memoryless strategy of Arjovsky et al.: certain blanks, then uniform
        guesses in the recall phase. Tokens: cross-entropy per scored step
        (``length * log(num_symbols) / S``, or ``log(num_symbols)`` with ``mask_prefix``);
        binary: sigmoid cross-entropy per bit (``length * log(2) / S``)."""
        cfg = self.config(config)
        total = 2 * cfg["length"] + cfg["delay"] + 1
        if cfg["variant"] == "binary":
            return cfg["length"] * math.log(2.0) / total
        if cfg["mask_prefix"]:
            return math.log(cfg["num_symbols"])
        return cfg["length"] * math.log(cfg["num_symbols"]) / total

    def __repr__(self) -> str:
        return "CopyMemoryTask()"


TASK = CopyMemoryTask()


@hookimpl
def lstmrs_register_tasks(register):
    register(TASK)
