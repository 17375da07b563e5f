"""Step-by-step inference for live data: feed one time step, get the model's output at once.

>>> stepper = model.stepper(batch=1)            # doctest: +SKIP
>>> for x_t in live_feed:                       # doctest: +SKIP
...     y_t = stepper.step(x_t)                 # [O] for one stream, [B, O] for B streams

The recurrent state stays inside the Rust ``StepperCore`` between calls; a step allocates nothing
there but its result. Works for unidirectional models with ``pooling="per_step"`` (output at each
step) or ``"last"`` (the output the model would give if the sequence ended at this step). Each
step reads the model's current weights in place, so a stepper follows further training or
``load_state_dict``.

Latency: ``step`` hands ``x_t`` straight to Rust, which only checks the array's type, dtype,
layout and shape. An input of another type (a list, a scalar), dtype or layout comes back
unstepped and is converted here first, so it costs a copy more but gives the same result. Every
call returns a new array (PyTorch users expect a fresh tensor; a small array costs well under a
microsecond), never a view of state that the next step would overwrite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._lstmrs import StepperCore
from .errors import DTypeError, InvalidArgumentError, ShapeError
from .validation import check_int

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
        self.model = model
        self.batch = check_int("batch", batch, 1)
        self.core = StepperCore(model.core, self.batch)
        # The bound method, looked up once: `step` is on the microsecond path.
        self._core_step = self.core.step
        self._features = model._features
        self._lstm = model.has_cell_state

    @property
    def steps(self) -> int:
        """Steps fed since construction or the last :meth:`reset`."""
        return self.core.steps

    def _input(self, x_t: Any) -> np.ndarray:
        """``x_t`` as a C-contiguous array of the model's dtype (int64 for token ids), its shape
        unchanged: the core checks shapes."""
        a = np.asarray(x_t)
        if a.dtype.kind not in "biuf":
            raise DTypeError(f"x_t: expected real numbers, got dtype {a.dtype}")
        if self.model.tokens:
            if a.dtype.kind == "f":
                raise DTypeError(f"x_t: expected integer token ids, got dtype {a.dtype}")
            return np.asarray(a, dtype=np.int64, order="C")
        return np.asarray(a, dtype=self.model.dtype, order="C")

    def step(self, x_t: Any) -> np.ndarray:
        """Feeds one step and returns a new array ``[B, O]`` (``[O]`` for a one-stream stepper
        given ``x_t`` without the batch axis: ``[F]`` features or one token id).

        ``x_t`` is ``[B, F]`` features or ``[B]`` token ids. A C-contiguous ndarray of the
        model's dtype (int64 for ids) is the fast path; anything else is converted first.
        Raises ``ShapeError`` for a wrong shape and ``DTypeError`` for non-numeric input."""
        out = self._core_step(x_t)
        if out is None:
            out = self._core_step(self._input(x_t))
        return out

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

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(h, c)``: ``h`` ``[num_layers, B, S]`` (``S`` is ``proj_size`` when the LSTM
        projects, else ``H``), ``c`` ``[num_layers, B, H]`` (None for a GRU); copies."""
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
