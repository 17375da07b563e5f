"""The Lion optimizer (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")
for lstmrs.

For parameters ``p``, gradient ``g``, momentum ``m`` (starting at 0), learning rate ``lr``:

    p <- p * (1 - lr * weight_decay)                  (decoupled weight decay, as AdamW)
    p <- p - lr * sign(beta1 * m + (1 - beta1) * g)
    m <- beta2 * m + (1 - beta2) * g

``sign(0) = 0``. Defaults follow the paper and lion-pytorch: ``lr=1e-4``, ``betas=(0.9,
0.99)``, ``weight_decay=0``. Lion's update has unit magnitude per element, so it wants a
learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.

The update runs with NumPy, in place on the model's flat parameter buffer (in ``Model.fit``,
a view of the weights held by the Rust core); the momentum and one scratch buffer are allocated
once by :meth:`Lion.build`, so a step copies nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from lstmrs.errors import DTypeError, InvalidArgumentError, ShapeError
from lstmrs.optim import Optimizer
from lstmrs.plugins import hookimpl

__version__ = "0.1.0"
__all__ = ["Lion", "LionCore"]


class Lion(Optimizer):
    """Lion: sign of an interpolated momentum, decoupled weight decay."""

    name = "lion"
    default_lr = 1e-4
    defaults: ClassVar[dict[str, Any]] = {"betas": (0.9, 0.99), "weight_decay": 0.0}

    def _check(self) -> None:
        super()._check()  # weight_decay: a finite number >= 0
        b = self.hyper["betas"]
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise InvalidArgumentError(f"betas: expected a pair (beta1, beta2), got {b!r}")
        betas = []
        for i, v in enumerate(b):
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
            if not ok or not 0.0 <= float(v) < 1.0:
                raise InvalidArgumentError(f"betas[{i}]: expected a number in [0, 1), got {v!r}")
            betas.append(float(v))
        self.hyper["betas"] = tuple(betas)

    def core_kwargs(self) -> dict[str, Any]:
        return dict(self.hyper)

    def build(self, num_params: int, dtype: str) -> LionCore:
        return LionCore(num_params, dtype, **self.hyper)


class LionCore:
    """The update state for one flat parameter buffer; the interface of
    ``lstmrs._lstmrs.OptimizerCore`` (``step``, ``steps``, ``state_dict``, ...)."""

    name = "lion"

    def __init__(
        self,
        num_params: int,
        dtype: str = "float32",
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if isinstance(num_params, bool) or not isinstance(num_params, (int, np.integer)):
            raise InvalidArgumentError(f"num_params: expected an integer, got {num_params!r}")
        if num_params < 1:
            raise InvalidArgumentError(f"num_params: expected an integer >= 1, got {num_params}")
        if str(dtype) not in ("float32", "float64"):
            raise DTypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.weight_decay = float(weight_decay)
        self.exp_avg = np.zeros(int(num_params), dtype=self.dtype)
        self._scratch = np.empty_like(self.exp_avg)
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def hyper_params(self) -> list[tuple[str, float]]:
        return [("beta1", self.beta1), ("beta2", self.beta2), ("weight_decay", self.weight_decay)]

    def _check_array(self, what: str, a: Any, writable: bool) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise DTypeError(
                f"{what}: expected a numpy.ndarray of {self.dtype}, got {type(a).__name__}"
            )
        if a.dtype != self.dtype:
            raise DTypeError(f"{what}: expected dtype {self.dtype}, got {a.dtype}")
        if a.size != self.exp_avg.size:
            raise ShapeError(f"{what}: expected {self.exp_avg.size} values, got {a.size}")
        if writable and not (a.flags.c_contiguous and a.flags.writeable):
            raise InvalidArgumentError(f"{what}: expected a writable C-contiguous array")
        return a.reshape(-1)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """One Lion update of ``params`` (in place) from ``grads``."""
        p = self._check_array("params", params, writable=True)
        g = self._check_array("grads", grads, writable=False)
        lr = float(lr)
        m, buf = self.exp_avg, self._scratch
        if self.weight_decay:
            p *= 1.0 - lr * self.weight_decay
        # buf = beta1 m + (1 - beta1) g, written as m + (1 - beta1)(g - m) to need one scratch.
        np.subtract(g, m, out=buf)
        buf *= 1.0 - self.beta1
        buf += m
        np.sign(buf, out=buf)
        buf *= lr
        p -= buf
        # m = beta2 m + (1 - beta2) g, the same way.
        np.subtract(g, m, out=buf)
        buf *= 1.0 - self.beta2
        m += buf
        self._steps += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"kind": "lion", "step": int, "buffers": {"exp_avg": float64 array}}``."""
        return {
            "kind": "lion",
            "step": self._steps,
            "buffers": {"exp_avg": self.exp_avg.astype(np.float64)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; checks the kind and the buffer's size first."""
        if not isinstance(state, dict) or state.get("kind") != "lion":
            kind = state.get("kind") if isinstance(state, dict) else state
            raise InvalidArgumentError(f"state.kind: expected 'lion', got {kind!r}")
        bufs = state.get("buffers")
        if not isinstance(bufs, dict) or set(bufs) != {"exp_avg"}:
            raise InvalidArgumentError("state.buffers: expected {'exp_avg': array}")
        m = np.asarray(bufs["exp_avg"], dtype=np.float64)
        if m.shape != self.exp_avg.shape:
            raise ShapeError(
                f"state.buffers['exp_avg']: expected {self.exp_avg.size} values, got {m.size}"
            )
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InvalidArgumentError(f"state.step: expected an integer >= 0, got {step!r}")
        self.exp_avg[...] = m
        self._steps = int(step)

    def __repr__(self) -> str:
        return (
            f"LionCore(num_params={self.exp_avg.size}, dtype={str(self.dtype)!r}, "
            f"betas=({self.beta1}, {self.beta2}), weight_decay={self.weight_decay})"
        )


@hookimpl
def lstmrs_register_optimizers(register):
    register(Lion)
