"""Optimizer specifications and learning-rate schedules for :meth:`lstmrs.Model.compile`.

Optimizers carry PyTorch's names and defaults (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``,
``Adagrad``); the update itself runs in the Rust core (``OptimizerCore``), one fused pass over
the model's flat parameter buffer. Plugins register more (``lstmrs_register_optimizers``); their
update runs in Python on a zero-copy view of the same buffer (see
:mod:`lstmrs.plugins.hookspecs`).

The schedules (defined in :mod:`lstmrs.schedules`, exported here as torch exports them beside its
optimizers) are closed forms of ``torch.optim.lr_scheduler`` (``lr_at(k, base_lr)`` is the rate
after ``k`` calls of torch's ``scheduler.step()``): :class:`StepLR`, :class:`ExponentialLR`,
:class:`CosineWarmup` (``LinearLR`` warm-up then ``CosineAnnealingLR``), and the stateful
:class:`ReduceLROnPlateau`. ``interval="epoch"`` schedules count epochs, ``"step"`` ones count
optimizer steps (batches).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._lstmrs import OptimizerCore
from .errors import InvalidArgumentError
from .optim_spec import Optimizer
from .schedules import (
    CosineWarmup,
    ExponentialLR,
    ReduceLROnPlateau,
    Schedule,
    StepLR,
    schedule_from_state,
)
from .validation import check_number

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineWarmup",
    "ExponentialLR",
    "Optimizer",
    "RMSprop",
    "ReduceLROnPlateau",
    "Schedule",
    "StepLR",
    "get_optimizer",
    "is_fused",
    "optimizer_class",
    "schedule_from_state",
]


# --------------------------------------------------------------------------------------------
# Optimizers


class SGD(Optimizer):
    """``torch.optim.SGD``: momentum, dampening, Nesterov, L2 weight decay."""

    name = "sgd"
    defaults: ClassVar[dict[str, Any]] = {
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
    }

    def _check(self) -> None:
        super()._check()
        h = self.hyper
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise InvalidArgumentError("nesterov: needs momentum > 0 and dampening = 0")


class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient)."""

    name = "adam"
    defaults: ClassVar[dict[str, Any]] = {
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
    }

    def _check(self) -> None:
        super()._check()
        b = self.hyper["betas"]
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise InvalidArgumentError(f"betas: expected a pair (beta1, beta2), got {b!r}")
        self.hyper["betas"] = tuple(
            check_number(f"betas[{i}]", v, 0.0, 1.0, hi_open=True) for i, v in enumerate(b)
        )


class AdamW(Adam):
    """``torch.optim.AdamW`` (decoupled weight decay, default 0.01)."""

    name = "adamw"
    defaults: ClassVar[dict[str, Any]] = {**Adam.defaults, "weight_decay": 1e-2}


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``: ``alpha`` smoothing, optional momentum and centering."""

    name = "rmsprop"
    default_lr = 1e-2
    defaults: ClassVar[dict[str, Any]] = {
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
        "maximize": False,
    }

    def _check(self) -> None:
        super()._check()
        self.hyper["alpha"] = check_number("alpha", self.hyper["alpha"], 0.0, 1.0)


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``."""

    name = "adagrad"
    default_lr = 1e-2
    defaults: ClassVar[dict[str, Any]] = {
        "lr_decay": 0.0,
        "weight_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
        "maximize": False,
    }

    def _check(self) -> None:
        super()._check()
        self.hyper["initial_accumulator_value"] = check_number(
            "initial_accumulator_value", self.hyper["initial_accumulator_value"]
        )


_OPTIMIZERS = {c.name: c for c in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def optimizer_class(name: str) -> type[Optimizer] | None:
    """The optimizer class registered as ``name`` (case-insensitive), or None: the one lookup of
    optimizer names. The built-ins are found without touching the registry, so plugins load
    only when a name needs them."""
    if not isinstance(name, str):
        return None
    key = name.lower()
    return _OPTIMIZERS.get(key) or _registered().get(key)


def _registered() -> dict[str, type]:
    # start-up time: the registry (pluggy, importlib.metadata) costs ~50 ms: loaded on first use
    from . import plugins

    return plugins.get_optimizers()


def get_optimizer(
    optimizer: str | Optimizer = "adam", lr: float | None = None, **hyper
) -> Optimizer:
    """An :class:`Optimizer` from a name (``"adam"``, ... or one a plugin registered, like
    ``"lion"``) or a spec (``lr``/``hyper`` override)."""
    if isinstance(optimizer, Optimizer):
        if lr is None and not hyper:
            return optimizer
        cls = type(optimizer)
        return cls(lr=optimizer.lr if lr is None else lr, **{**optimizer.hyper, **hyper})
    cls = optimizer_class(optimizer)
    if cls is None:
        raise InvalidArgumentError(
            f"optimizer: expected one of {sorted(_registered())} or an "
            f"lstmrs.optim.Optimizer, got {optimizer!r} (plugins add more: `lstmrs plugins` "
            "lists what is installed)"
        )
    return cls(lr=lr, **hyper)


def optimizer_from_config(cfg: dict) -> Optimizer:
    """The optimizer of :meth:`Optimizer.get_config` (checkpoints); JSON lists come back as the
    tuples the specs take (``betas``)."""
    hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("hyper", {}).items()}
    return get_optimizer(cfg["name"], lr=cfg["lr"], **hyper)


def is_fused(core: Any) -> bool:
    """Whether an optimizer built by :meth:`Optimizer.build` is the Rust core's own
    (``OptimizerCore``: the whole training step is one core call) rather than a plugin's that
    updates the weights itself."""
    return isinstance(core, OptimizerCore)
