"""Step-by-step inference for live data: feed one time step, get the model's output at once.

>>> stepper = model.stepper(batch=1)            # doctest: +SKIP
>>> for x_t in live_feed:                       # doctest: +SKIP
...     y_t = stepper.step(x_t)                 # [O] for one stream, [B, O] for B streams

The recurrent state stays inside the Rust ``StepperCore`` between calls; a step allocates nothing
there. Works for unidirectional models with ``pooling="per_step"`` (output at each step) or
``"last"`` (the output the model would give if the sequence ended at this step). Each step reads
the model's current weights, so a stepper follows further training or ``load_state_dict``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DTypeError, InvalidArgumentError, ShapeError

if TYPE_CHECKING:
    from .models import Model

__all__ = ["Stepper"]


class Stepper:
    """Streaming inference over ``batch`` independent streams."""

    def __init__(self, model: Model, batch: int = 1) -> None:
        if model.bidirectional:
            raise InvalidArgumentError("stepper: a bidirectional model needs the whole sequence")
        if model.pooling not in ("per_step", "last"):
            raise InvalidArgumentError(
                f"stepper: needs pooling='per_step' or 'last', the model uses {model.pooling!r}"
            )
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InvalidArgumentError(f"batch: expected an integer >= 1, got {batch!r}")
        from ._lstmrs import StepperCore

        self.model = model
        self.batch = int(batch)
        self.core = StepperCore(model.core, self.batch)
        self._features = model._features
        self._lstm = model.has_cell_state
        self.steps = 0

    def _input(self, x_t: Any) -> tuple[np.ndarray, bool]:
        """``x_t`` as ``[B, F]`` floats or ``[B]`` token ids; whether a batch axis was added."""
        a = np.asarray(x_t)
        if a.dtype.kind not in "biuf":
            raise DTypeError(f"x_t: expected real numbers, got dtype {a.dtype}")
        if self.model.tokens:
            if a.dtype.kind == "f":
                raise DTypeError(f"x_t: expected integer token ids, got dtype {a.dtype}")
            single = a.ndim == 0
            a = a.reshape(1) if single else a
            if a.shape != (self.batch,):
                raise ShapeError(f"x_t: expected {self.batch} token ids, got shape {a.shape}")
            return np.ascontiguousarray(a, dtype=np.int64), single
        single = a.ndim == 1 and self.batch == 1
        if single:
            a = a[None, :]
        if a.shape != (self.batch, self._features):
            raise ShapeError(f"x_t: expected shape [{self.batch}, {self._features}], got {a.shape}")
        return np.ascontiguousarray(a, dtype=self.model.dtype), single

    def step(self, x_t: Any) -> np.ndarray:
        """Feeds one step; returns ``[B, O]`` (``[O]`` when ``x_t`` had no batch axis)."""
        x, single = self._input(x_t)
        out = self.core.step(x)
        self.steps += 1
        return out[0] if single else out

    def step_many(self, x: Any) -> np.ndarray:
        """Feeds ``T`` steps ``[B, T, F]`` (or ``[B, T]`` tokens; no batch axis for one stream)
        and returns the output after each: ``[B, T, O]``."""
        a = np.asarray(x)
        tokens = self.model.tokens
        single = a.ndim == (1 if tokens else 2)
        if single:
            a = a[None]
        if a.ndim != (2 if tokens else 3):
            want = "[B, T] token ids" if tokens else f"[B, T, {self._features}]"
            raise ShapeError(f"x: expected shape {want}, got {a.shape}")
        outs = [self.step(a[:, t]) for t in range(a.shape[1])]
        out = np.stack(outs, axis=1) if outs else np.zeros((a.shape[0], 0, self.model.output_size))
        return out[0] if single else out

    def reset(self) -> None:
        """Back to zero states, as at the start of a sequence."""
        self.core.reset()
        self.steps = 0

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(h, c)``, each ``[num_layers, B, H]`` (``c`` is None for a GRU); copies."""
        h, c = self.core.get_state()
        return h, c

    @state.setter
    def state(self, value: Any) -> None:
        if isinstance(value, tuple):
            if len(value) != 2:
                raise InvalidArgumentError("state: expected (h, c) or h")
            h, c = value
        else:
            h, c = value, None
        if self._lstm and c is None:
            raise InvalidArgumentError("state: an LSTM needs (h, c)")
        if not self._lstm and c is not None:
            raise InvalidArgumentError("state: a GRU has no cell state; give h only")
        h = np.ascontiguousarray(h, dtype=self.model.dtype)
        c = None if c is None else np.ascontiguousarray(c, dtype=self.model.dtype)
        self.core.set_state(h, c)

    def __repr__(self) -> str:
        return f"Stepper(batch={self.batch}, steps={self.steps}, model={self.model!r})"
