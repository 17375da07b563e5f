"""Learning-rate schedules: closed forms of ``torch.optim.lr_scheduler``.

``lr_at(k, base_lr)`` is the rate after ``k`` calls of torch's ``scheduler.step()``:
:class:`StepLR`, :class:`ExponentialLR`, :class:`CosineWarmup` (``LinearLR`` warm-up then
``CosineAnnealingLR``), and the stateful :class:`ReduceLROnPlateau`. ``interval="epoch"``
schedules count epochs, ``"step"`` ones count optimizer steps (batches). They are descriptions:
the fit loop applies them; :mod:`lstmrs.optim` exports them beside the optimizers.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Any

from .errors import InvalidArgumentError
from .validation import check_int, check_number

__all__ = [
    "CosineWarmup",
    "ExponentialLR",
    "ReduceLROnPlateau",
    "Schedule",
    "StepLR",
    "schedule_from_state",
]


class Schedule(abc.ABC):
    """A learning-rate schedule; ``interval`` says whether ``k`` counts epochs or steps."""

    kind = ""
    interval = "epoch"

    @abc.abstractmethod
    def lr_at(self, k: int, base_lr: float) -> float:
        """The rate after ``k`` calls of torch's ``scheduler.step()`` from ``base_lr``."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments and ``kind``, for checkpoints."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.get_config()}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _set_interval(self, interval: str) -> None:
        if interval not in ("epoch", "step"):
            raise InvalidArgumentError(f"interval: expected 'epoch' or 'step', got {interval!r}")
        self.interval = interval

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class StepLR(Schedule):
    """``StepLR``: ``base_lr * gamma ** (k // step_size)``."""

    kind = "step_lr"

    def __init__(self, step_size: int, gamma: float = 0.1, interval: str = "epoch") -> None:
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = check_number("gamma", gamma)
        self._set_interval(interval)

    def lr_at(self, k: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (k // self.step_size)

    def get_config(self):
        return {"step_size": self.step_size, "gamma": self.gamma, "interval": self.interval}


class ExponentialLR(Schedule):
    """``ExponentialLR``: ``base_lr * gamma ** k``."""

    kind = "exponential_lr"

    def __init__(self, gamma: float, interval: str = "epoch") -> None:
        self.gamma = check_number("gamma", gamma)
        self._set_interval(interval)

    def lr_at(self, k: int, base_lr: float) -> float:
        return base_lr * self.gamma ** float(k)

    def get_config(self):
        return {"gamma": self.gamma, "interval": self.interval}


class CosineWarmup(Schedule):
    """Linear warm-up, then cosine annealing to ``min_lr``; holds ``min_lr`` after the end.

    torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W),
    CosineAnnealingLR(T_max=N - W, eta_min=min_lr)], milestones=[W])`` in closed form, with
    ``N = total_steps`` (warm-up included). ``warmup_steps=0`` is plain ``CosineAnnealingLR``.
    """

    kind = "cosine_warmup"

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        warmup_start_factor: float = 1.0 / 3.0,
        interval: str = "step",
    ) -> None:
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        if self.total_steps <= self.warmup_steps:
            raise InvalidArgumentError(
                f"total_steps: expected more than warmup_steps ({self.warmup_steps}), "
                f"got {total_steps}"
            )
        self.min_lr = check_number("min_lr", min_lr)
        self.warmup_start_factor = check_number(
            "warmup_start_factor", warmup_start_factor, 0.0, 1.0
        )
        self._set_interval(interval)

    def lr_at(self, k: int, base_lr: float) -> float:
        w = self.warmup_steps
        if k < w:
            s = self.warmup_start_factor
            return base_lr * (s + (1.0 - s) * k / w)
        if k > self.total_steps:
            return self.min_lr
        t, t_max = k - w, self.total_steps - w
        return self.min_lr + (base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t / t_max)) / 2.0

    def get_config(self):
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
            "warmup_start_factor": self.warmup_start_factor,
            "interval": self.interval,
        }


class ReduceLROnPlateau(Schedule):
    """``ReduceLROnPlateau``: multiply the rate by ``factor`` once ``monitor`` has not improved
    by ``threshold`` for more than ``patience`` epochs; then wait ``cooldown`` epochs.

    Stateful: :meth:`step` takes the epoch's metric and returns the rate to use next.
    """

    kind = "reduce_lr_on_plateau"
    interval = "epoch"

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        if mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise InvalidArgumentError(
                f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}"
            )
        self.monitor, self.mode, self.threshold_mode = monitor, mode, threshold_mode
        self.factor = check_number("factor", factor, 0.0, 1.0, hi_open=True)
        self.patience = check_int("patience", patience, 0)
        self.threshold = check_number("threshold", threshold)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.min_lr = check_number("min_lr", min_lr)
        self.eps = check_number("eps", eps)
        self.lr: float | None = None
        self.reset_counters()

    def reset_counters(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def start(self, base_lr: float) -> None:
        """Begins at ``base_lr`` unless already running (a resumed schedule keeps its rate)."""
        if self.lr is None:
            self.lr = float(base_lr)

    def lr_at(self, k: int, base_lr: float) -> float:
        return base_lr if self.lr is None else self.lr

    def _is_better(self, a: float) -> bool:
        best, thr = self.best, self.threshold
        if self.mode == "min":
            return a < (best * (1.0 - thr) if self.threshold_mode == "rel" else best - thr)
        return a > (best * (thr + 1.0) if self.threshold_mode == "rel" else best + thr)

    def step(self, metric: float) -> float:
        """Records one epoch's metric (NaN counts as no improvement); returns the new rate."""
        if self.lr is None:
            raise InvalidArgumentError("ReduceLROnPlateau.step: call start(base_lr) first")
        metric = float(metric)
        self.last_epoch += 1
        if self._is_better(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr

    def get_config(self):
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "factor": self.factor,
            "patience": self.patience,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
            "eps": self.eps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "lr": self.lr,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.lr = None if state.get("lr") is None else float(state["lr"])
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])


_SCHEDULES = {c.kind: c for c in (StepLR, ExponentialLR, CosineWarmup, ReduceLROnPlateau)}


def schedule_from_state(state: dict) -> Schedule:
    """Rebuilds a schedule from :meth:`Schedule.state_dict` (checkpoints)."""
    state = dict(state)
    kind = state.pop("kind", None)
    if kind not in _SCHEDULES:
        raise InvalidArgumentError(f"schedule: unknown kind {kind!r}")
    cls = _SCHEDULES[kind]
    params = inspect.signature(cls.__init__).parameters
    sched = cls(**{k: v for k, v in state.items() if k in params and k != "self"})
    sched.load_state_dict(state)
    return sched
