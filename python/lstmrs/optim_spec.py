"""The optimizer interface: :class:`Optimizer`, the spec every optimizer derives from, the
built-in ones (:mod:`lstmrs.optim`) and plugins' alike. It sits below the plugin registry, which
checks what plugins register against it."""

from __future__ import annotations

from typing import Any, ClassVar

from ._lstmrs import OptimizerCore
from .errors import InvalidArgumentError
from .validation import check_number

__all__ = ["Optimizer"]


class Optimizer:
    """An optimizer's kind, learning rate and hyper-parameters (torch's names and defaults)."""

    name = ""
    defaults: ClassVar[dict[str, Any]] = {}
    default_lr = 1e-3

    def __init__(self, lr: float | None = None, **hyper: Any) -> None:
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise InvalidArgumentError(
                f"{type(self).__name__}: unknown argument(s) {sorted(unknown)}; expected "
                f"{sorted(self.defaults)}"
            )
        self.lr = check_number("lr", self.default_lr if lr is None else lr)
        self.hyper = {**self.defaults, **hyper}
        self._check()

    def _check(self) -> None:
        for k in ("weight_decay", "eps", "momentum", "dampening", "lr_decay"):
            if k in self.hyper:
                self.hyper[k] = check_number(k, self.hyper[k])
        for k in ("nesterov", "amsgrad", "centered", "maximize"):
            if k in self.hyper:
                self.hyper[k] = bool(self.hyper[k])

    def core_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``OptimizerCore``."""
        kw = dict(self.hyper)
        # Only SGD's binding documents `maximize`; pass it where it matters.
        if not kw.get("maximize", False):
            kw.pop("maximize", None)
        return kw

    def build(self, num_params: int, dtype: str):
        """The Rust optimizer for a flat buffer of ``num_params`` values."""
        return OptimizerCore(self.name, num_params, dtype, **self.core_kwargs())

    def get_config(self) -> dict[str, Any]:
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyper.items()}
        return {"name": self.name, "lr": self.lr, "hyper": hyper}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items() if v != self.defaults[k])
        return f"{type(self).__name__}(lr={self.lr!r}{', ' + args if args else ''})"
