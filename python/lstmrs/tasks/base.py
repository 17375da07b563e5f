"""What every task is made of: :class:`Task` (the built-in tasks' base class), the
``[model]``/``[train]`` keys they share, data checks, and :class:`PluginTask`, which runs a
plugin's task that only makes data. :mod:`lstmrs.tasks` lists the tasks themselves."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plugins
from ..callbacks import ReduceLROnPlateau
from ..errors import DTypeError, InvalidArgumentError, NonFiniteError, ShapeError
from ..models import Model
from ..optim import ExponentialLR, optimizer_class

__all__ = [
    "COMMON_DEFAULTS",
    "COMMON_RULES",
    "PluginTask",
    "Prepared",
    "Task",
    "as_task",
    "check_task_data",
    "compile_model",
    "model_kwargs",
    "plateau_callback",
    "registry_names",
    "split_fractions",
]


def registry_names(category: str) -> tuple[str, ...]:
    """Names in a plugin registry (``"cells"``, ``"optimizers"``), sorted."""
    getter = {"cells": plugins.get_cells, "optimizers": plugins.get_optimizers}[category]
    return tuple(sorted(getter()))


def _cells() -> tuple[str, ...]:
    return registry_names("cells")


def _optimizers() -> tuple[str, ...]:
    return registry_names("optimizers")


# Keys every built-in task has; a task's own defaults are merged over these.
COMMON_DEFAULTS: dict[str, Any] = {
    "task": "",
    "seed": 0,
    "data": {},
    "model": {
        "cell": "lstm",
        "hidden_size": 64,
        "num_layers": 1,
        "dropout": 0.0,
        "bidirectional": False,
    },
    "train": {
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_decay": 1.0,
        "lr_plateau": 0.0,
        "weight_decay": 0.0,
        "epochs": 20,
        "batch_size": 32,
        "clip_norm": 1.0,
        "patience": 0,
        "time_limit": 0.0,
        "target_val_loss": 0.0,
        "checkpoint_every": "epoch",
    },
    "eval": {},
}

COMMON_RULES: dict[str, C.Rule] = {
    "task": C.Str(),
    "seed": C.Int(lo=0),
    "model.cell": C.Choice(dynamic=_cells),
    "model.hidden_size": C.Int(lo=1),
    "model.num_layers": C.Int(lo=1),
    "model.dropout": C.Float(lo=0.0, hi=1.0, hi_open=True),
    "train.optimizer": C.Choice(dynamic=_optimizers),
    "train.lr": C.Float(lo=0.0, lo_open=True),
    # The learning rate is multiplied by this after every epoch (ExponentialLR); 1 = constant.
    "train.lr_decay": C.Float(lo=0.0, hi=1.0, lo_open=True),
    # The learning rate is multiplied by this when val_loss has not improved for a third of
    # train.patience epochs (ReduceLROnPlateau); 0 = off.
    "train.lr_plateau": C.Float(lo=0.0, hi=1.0, hi_open=True),
    "train.weight_decay": C.Float(lo=0.0),
    "train.epochs": C.Int(lo=0),
    "train.batch_size": C.Int(lo=1),
    # 0 turns clipping off.
    "train.clip_norm": C.Float(lo=0.0),
    # Early stopping on val_loss after this many epochs without improvement; 0 = off.
    "train.patience": C.Int(lo=0),
    # Seconds of training after which the run stops (and evaluates); 0 = no limit.
    "train.time_limit": C.Float(lo=0.0),
    # Stop once val_loss is at or below this (the task is solved); 0 = off.
    "train.target_val_loss": C.Float(lo=0.0),
    "train.checkpoint_every": C.OneOf(C.Choice("epoch"), C.Int(lo=1)),
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class Prepared:
    """A task's data: splits as the task needs them, the fitted state (vocabulary, scaler,
    threshold; JSON-friendly, saved in the run directory so ``eval``/``predict`` reuse it) and
    lines describing the data for the console."""

    train: Any = None
    val: Any = None
    test: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def model_kwargs(config: dict) -> dict[str, Any]:
    """The :class:`lstmrs.Model` arguments of the ``model`` section shared by every task."""
    m = config["model"]
    return {
        "cell": m["cell"],
        "hidden_size": m["hidden_size"],
        "num_layers": m["num_layers"],
        "dropout": m["dropout"],
        "bidirectional": m["bidirectional"],
        "seed": config["seed"],
    }


def plateau_callback(train: dict) -> ReduceLROnPlateau:
    """``train.lr_plateau``: the rate times that factor after a third of ``train.patience``
    epochs (at least 3) without a better val_loss."""
    return ReduceLROnPlateau(
        "val_loss", factor=train["lr_plateau"], patience=max(3, train["patience"] // 3)
    )


def compile_model(model, config: dict, metrics: Any = ()) -> None:
    """Compiles ``model`` with the ``train`` section: the optimizer (looked up in the plugin
    registry, so plugin optimizers work), learning rate and its decay per epoch, weight decay
    and gradient clipping."""
    t = config["train"]
    name = t["optimizer"]
    cls = optimizer_class(name)
    hyper: dict[str, Any] = {}
    if t["weight_decay"]:
        hyper["weight_decay"] = t["weight_decay"]
    if cls is not None:
        if hyper and "weight_decay" not in cls.defaults:
            raise C.ConfigError(
                f"config: train.weight_decay = {t['weight_decay']} is not allowed: optimizer "
                f"{name!r} has no weight decay (expected 0)"
            )
        optimizer: Any = cls(lr=t["lr"], **hyper)
    else:
        optimizer = name
    kwargs: dict[str, Any] = {"metrics": list(metrics)}
    if t["clip_norm"] > 0:
        kwargs["clip_norm"] = t["clip_norm"]
    if t["lr_decay"] < 1.0:
        kwargs["schedule"] = ExponentialLR(t["lr_decay"])
    if cls is None:
        model.compile(optimizer, lr=t["lr"], **hyper, **kwargs)
    else:
        model.compile(optimizer, **kwargs)


class Task:
    """Base class of the built-in tasks.

    Subclasses set ``name``, ``description``, ``task_defaults`` (merged over
    :data:`COMMON_DEFAULTS` into ``default_config``) and ``task_rules``, and implement
    :meth:`prepare`, :meth:`build_model`, :meth:`train` and :meth:`evaluate`; :meth:`plot`,
    :meth:`predict_file` and :meth:`generate` are optional.
    """

    name: str = ""
    description: str = ""
    task_defaults: ClassVar[dict[str, Any]] = {}
    task_rules: ClassVar[dict[str, C.Rule]] = {}
    #: Compile metrics (logged every epoch).
    metrics: tuple[str, ...] = ()

    def __init__(self) -> None:
        defaults = _merge(COMMON_DEFAULTS, self.task_defaults)
        defaults["task"] = self.name
        #: The complete defaults, nested (the plugin registry reads this attribute).
        self.default_config: dict[str, Any] = defaults
        self.rules: dict[str, C.Rule] = {**COMMON_RULES, **self.task_rules}

    def __repr__(self) -> str:
        return f"<lstmrs task {self.name!r}>"

    # Configuration ----------------------------------------------------------------------------

    def config(self, overrides: dict | None = None, *, source: str = "overrides") -> dict:
        """``default_config`` updated with the nested ``overrides``, validated."""
        cfg = copy.deepcopy(self.default_config)
        if overrides:
            cfg = C.apply_layer(cfg, overrides, self.rules, source=source)
        self.check(cfg)
        return cfg

    def check(self, config: dict) -> None:
        """Checks that need several keys at once (or a required value); raises ConfigError."""

    def resolve(self, config: dict, data: Prepared) -> list[str]:
        """Replaces the ``"auto"`` values of ``config`` (in place) by choices made for ``data``;
        returns lines saying what was chosen. Called by the runner after :meth:`prepare`."""
        return []

    # The pipeline ----------------------------------------------------------------------------

    def make_data(self, config: dict | None = None, seed: int = 0):
        """``(X, y)`` of the training split, as the plugin registry's task protocol asks.

        ``config``: a nested configuration, or just the ``data`` section.
        """
        overrides = dict(config or {})
        if overrides and not set(overrides) & set(self.default_config):
            overrides = {"data": overrides}
        overrides["seed"] = int(seed)
        data = self.prepare(self.config(overrides))
        return data.train[0], data.train[1]

    def prepare(self, config: dict, state: dict | None = None, whole: bool = False) -> Prepared:
        """The data for ``config``. ``state``: fitted state from an earlier run to reuse
        instead of fitting it again. ``whole``: all of ``data.path`` is the test split (``lstmrs
        eval --data``; needs ``state``)."""
        raise NotImplementedError

    def build_model(self, config: dict, data: Prepared):
        raise NotImplementedError

    def compile(self, model, config: dict) -> None:
        compile_model(model, config, self.metrics)

    def own_checkpoint(self, checkpoint_dir: str) -> str | None:
        """A checkpoint in ``checkpoint_dir`` that this task's :meth:`train` resumes from by
        itself (a model that is not a ``Model`` keeps its own format), or None."""
        return None

    def train(self, model, data: Prepared, config: dict, **fit_kwargs):
        """Trains ``model``; ``fit_kwargs`` carry the runner's callbacks, checkpoint directory,
        resume flag, seed and verbosity. Returns the History."""
        x, y, *rest = data.train
        val = data.val
        return model.fit(
            x,
            y,
            lengths=rest[0] if rest else None,
            validation_data=val,
            epochs=config["train"]["epochs"],
            batch_size=config["train"]["batch_size"],
            **fit_kwargs,
        )

    def evaluate(self, model, data: Prepared, config: dict) -> dict[str, Any]:
        raise NotImplementedError

    def format_summary(self, summary: dict[str, Any]) -> str:
        return "\n".join(f"{k}: {_fmt(v)}" for k, v in summary.items() if _printable(v))

    def plot(
        self, model, data: Prepared, summary: dict, config: dict, out_dir: str, records: list
    ) -> list[str]:
        """Writes the task's own plots into ``out_dir``; returns their paths. ``records``: the
        per-epoch logs of ``metrics.jsonl``."""
        return []

    def predict_file(self, model, config: dict, state: dict, input_path: str, output_path: str):
        raise InvalidArgumentError(f"predict: task {self.name!r} has no file prediction")


def _printable(v: Any) -> bool:
    return isinstance(v, (int, float, str)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and math.isfinite(v) and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.4e}"
        return f"{v:.4f}"
    return str(v)


def split_fractions(n: int, val: float, test: float, what: str) -> tuple[int, int]:
    """Sizes ``(n_val, n_test)`` of fractions of ``n`` items, each at least 1."""
    n_val = max(1, round(n * val)) if val > 0 else 0
    n_test = max(1, round(n * test)) if test > 0 else 0
    if n - n_val - n_test < 1:
        raise C.ConfigError(
            f"config: {what}: {n} items leave nothing to train on after validation "
            f"({n_val}) and test ({n_test}) splits"
        )
    return n_val, n_test


# --------------------------------------------------------------------------------------------
# Plugin tasks that only make data


def _loss_name(loss: Any) -> str:
    if isinstance(loss, dict):
        return str(loss.get("name", ""))
    return loss if isinstance(loss, str) else str(getattr(loss, "name", ""))


def check_task_data(result: Any, where: str, kwargs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """Checks what a task's ``make_data`` returned before anything trains on it, against the
    :class:`lstmrs.Model` arguments ``kwargs`` the run will use; returns ``(X, y)`` as arrays.

    ``where`` names the task and its plugin in the errors: :class:`~lstmrs.errors.DTypeError`
    (not an ``(X, y)`` pair, not numeric, token ids that are not integers),
    :class:`~lstmrs.errors.ShapeError` (ranks, no sequences, ``len(X) != len(y)``),
    :class:`~lstmrs.errors.NonFiniteError` (NaN or infinity) and
    :class:`~lstmrs.errors.InvalidArgumentError` (token ids or class labels out of range)."""
    what = f"{where}: make_data(config, seed)"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = type(result).__name__ if not isinstance(result, (tuple, list)) else len(result)
        raise DTypeError(f"{what} must return a pair (X, y) of arrays, got {got}")
    arrays = []
    for label, value in zip(("X", "y"), result):
        if value is None:
            raise DTypeError(f"{what} returned None for {label}; expected a NumPy array")
        try:
            a = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged lists
            raise DTypeError(f"{what}: {label} is not an array ({type(e).__name__}: {e})") from e
        if a.dtype.kind not in "biuf":
            raise DTypeError(
                f"{what}: {label} has dtype {a.dtype} ({type(value).__name__}); expected numbers "
                "(float features or labels, integer token ids or class labels)"
            )
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NonFiniteError(f"{what}: {label} holds NaN or infinity")
        arrays.append(a)
    x, y = arrays
    if x.ndim not in (2, 3) or x.shape[0] == 0:
        raise ShapeError(
            f"{what}: X has shape {x.shape}; expected (N, T) token ids or univariate values, "
            "or (N, T, features), with N > 0 sequences"
        )
    if y.ndim == 0 or len(y) != len(x):
        raise ShapeError(
            f"{what}: X has {len(x)} sequences and y has "
            f"{'a scalar' if y.ndim == 0 else f'{len(y)} targets'} (shapes {x.shape} and "
            f"{y.shape}); expected one target row per sequence"
        )
    vocab = kwargs.get("vocab_size")
    if vocab is not None:
        if x.dtype.kind not in "iu" or x.ndim != 2:
            raise DTypeError(
                f"{what}: model_kwargs() gives vocab_size={vocab}, so X must hold integer token "
                f"ids of shape (N, T); got {x.dtype} of shape {x.shape}"
            )
        if x.min() < 0 or x.max() >= vocab:
            raise InvalidArgumentError(
                f"{what}: X holds token ids from {x.min()} to {x.max()}; expected 0 <= id < "
                f"vocab_size={vocab}"
            )
    elif x.dtype.kind in "iu":
        raise DTypeError(
            f"{what}: X holds integers ({x.dtype}) but model_kwargs() gives no vocab_size: "
            "return float features, or token ids with vocab_size (and embedding_dim)"
        )
    loss = kwargs.get("loss", "mse")
    name = _loss_name(loss)
    if name == "cross_entropy":
        if y.dtype.kind not in "iu":
            raise DTypeError(
                f"{what}: the cross_entropy loss needs integer class labels in y, got {y.dtype}"
            )
        classes = int(kwargs.get("output_size", 1))
        ignore = loss.get("ignore_index") if isinstance(loss, dict) else None
        labels = y if ignore is None else y[y != ignore]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise InvalidArgumentError(
                f"{what}: y holds class labels from {labels.min()} to {labels.max()}; expected "
                f"0 <= label < output_size={classes}"
                + ("" if ignore is None else f" (or ignore_index={ignore})")
            )
    elif name == "bce_with_logits" and y.size and (y.min() < 0 or y.max() > 1):
        raise InvalidArgumentError(
            f"{what}: the bce_with_logits loss needs targets in [0, 1], got {y.min()} to {y.max()}"
        )
    return x, y


def _plugin_of(task: str) -> str | None:
    """The plugin that registered ``task``, for error messages."""
    return plugins.get_manager().owner("tasks", task)


class PluginTask(Task):
    """Runs a registered task object that follows the registry's minimal protocol (``name``,
    ``description``, ``default_config`` (its data options), ``make_data(config, seed)``,
    optional ``model_kwargs(config)`` and ``baseline_loss(config)``): the data is split
    80/10/10 in order, the model comes from ``model_kwargs`` and the summary is the test loss
    (and accuracy for classification)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.description = inner.description
        self.task_defaults = {
            "data": copy.deepcopy(inner.default_config),
            "eval": {"val_fraction": 0.1, "test_fraction": 0.1},
        }
        self.task_rules = {
            "eval.val_fraction": C.Float(lo=0.0, hi=0.5),
            "eval.test_fraction": C.Float(lo=0.0, hi=0.5, lo_open=True),
        }
        super().__init__()

    def _kwargs(self, config: dict) -> dict[str, Any]:
        fn = getattr(self.inner, "model_kwargs", None)
        return dict(fn(config["data"])) if fn is not None else {}

    def prepare(self, config, state=None, whole=False):
        where = f"task {self.name!r} of plugin {_plugin_of(self.name) or '(not registered)'!r}"
        kwargs = {**model_kwargs(config), **self._kwargs(config)}
        x, y = check_task_data(self.inner.make_data(config["data"], config["seed"]), where, kwargs)
        n = x.shape[0]
        n_val, n_test = split_fractions(
            n, config["eval"]["val_fraction"], config["eval"]["test_fraction"], "data"
        )
        cut1, cut2 = n - n_val - n_test, n - n_test
        return Prepared(
            train=(x[:cut1], y[:cut1]),
            val=(x[cut1:cut2], y[cut1:cut2]) if n_val else None,
            test=(x[cut2:], y[cut2:]),
            info=[f"data: {n} sequences of shape {x.shape[1:]} from plugin task {self.name!r}"],
        )

    def build_model(self, config, data):
        kw = model_kwargs(config)
        kw.update(self._kwargs(config))
        if "input_size" not in kw and "vocab_size" not in kw:
            x = data.train[0]
            if x.dtype.kind in "iu":
                raise InvalidArgumentError(
                    f"task {self.name!r}: token inputs need model_kwargs() with vocab_size"
                )
            kw["input_size"] = 1 if x.ndim == 2 else int(x.shape[2])
        if "output_size" not in kw:
            y = data.train[1]
            kw["output_size"] = 1 if y.ndim == 1 else int(y.shape[-1])
        return Model(**kw)

    def compile(self, model, config):
        metrics = ["accuracy"] if model.loss.name == "cross_entropy" else []
        compile_model(model, config, metrics)

    def evaluate(self, model, data, config):
        x, y = data.test
        res = model.evaluate(x, y, batch_size=256)
        out = {k: float(v) for k, v in res.items() if np.ndim(v) == 0}
        out = {f"test_{k}": v for k, v in out.items()}
        base = getattr(self.inner, "baseline_loss", None)
        if base is not None:
            out["baseline_loss"] = float(base(config["data"]))
        return out


def as_task(obj: Any) -> Task:
    """A registered task as a :class:`Task` (plugin tasks with the minimal protocol wrapped)."""
    return obj if isinstance(obj, Task) else PluginTask(obj)
