"""Keras-style training callbacks.

A callback sees the model (``self.model``) and the run's parameters (``self.params``: epochs,
steps per epoch, initial epoch, verbose, metric names) and overrides any of the hooks
``on_train_begin/end(logs)``, ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)``,
``on_batch_begin(batch, logs)`` and ``on_batch_end(batch, logs)``. Setting
``self.model.stop_training = True`` ends training after the current batch.

Epoch logs hold ``loss``, the compiled metrics, ``val_*`` values when there is validation data,
``lr`` and ``seconds``; batch logs the running epoch means so far plus ``batch_loss``, ``lr``,
``grad_norm`` and ``size``. Epochs count from 0.

Callbacks whose decisions depend on the past (early stopping, plateaus) implement
``state_dict()`` / ``load_state_dict()``, which fit checkpoints save so a resumed run decides as
the uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .errors import DataFileError, InvalidArgumentError
from .optim import ReduceLROnPlateau as _PlateauSchedule
from .optim import Schedule

__all__ = [
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "JSONLLogger",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
]


class Callback:
    """Base class: every hook does nothing."""

    model: Any = None
    params: dict[str, Any]

    def __init__(self) -> None:
        self.params = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def state_dict(self) -> dict | None:
        """JSON-friendly state for checkpoints (None: nothing to save)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class CallbackList:
    """Calls each hook on every callback in order."""

    def __init__(self, callbacks: Iterable[Callback], model: Any, params: dict[str, Any]):
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise InvalidArgumentError(
                    f"callbacks: expected lstmrs.callbacks.Callback instances, got {type(c).__name__}"
                )
            c.set_model(model)
            c.set_params(params)

    def _call(self, hook: str, *args) -> None:
        for c in self.callbacks:
            getattr(c, hook)(*args)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_batch_begin(self, batch, logs=None):
        self._call("on_batch_begin", batch, logs)

    def on_batch_end(self, batch, logs=None):
        self._call("on_batch_end", batch, logs)

    def state_dict(self) -> list:
        return [{"class": type(c).__name__, "state": c.state_dict()} for c in self.callbacks]

    def load_state_dict(self, states: list) -> None:
        """Restores states by position; callbacks whose class differs are left as they are."""
        for c, s in zip(self.callbacks, states):
            if s.get("class") == type(c).__name__ and s.get("state") is not None:
                c.load_state_dict(s["state"])


class History(Callback):
    """Per-epoch logs as a dict of lists (``history["loss"][e]``); ``fit`` returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            # Keys that appear late (a metric added on resume) stay aligned with the epochs.
            self.history.setdefault(k, [math.nan] * (len(self.epoch) - 1)).append(v)
        for k, v in self.history.items():
            if len(v) < len(self.epoch):
                v.append(math.nan)

    def state_dict(self) -> dict:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = [int(e) for e in state["epoch"]]
        self.history = {k: list(v) for k, v in state["history"].items()}

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


_MAX_HINTS = ("acc", "f1", "precision", "recall", "auc")


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise InvalidArgumentError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    return "max" if any(h in name for h in _MAX_HINTS) else "min"


def _monitored(logs: dict | None, monitor: str, who: str) -> float | None:
    v = (logs or {}).get(monitor)
    if v is None:
        warnings.warn(
            f"{who}: metric {monitor!r} is not in the logs ({sorted(logs or {})}); skipped",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return float(v)


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``restore_best_weights`` puts back the weights of the best epoch when it stops (and at the
    end of training). ``baseline``: the value to beat before anything counts as improvement.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if patience < 0 or min_delta < 0:
            raise InvalidArgumentError("patience and min_delta: expected values >= 0")
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), int(patience)
        self.mode = _resolve_mode(mode, monitor)
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = int(start_from_epoch)
        self.reset()

    def reset(self) -> None:
        worst = math.inf if self.mode == "min" else -math.inf
        self.best = worst if self.baseline is None else float(self.baseline)
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_weights: np.ndarray | None = None

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs=None):
        if not self.params.get("initial_epoch"):
            self.reset()

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if value is None or epoch < self.start_from_epoch:
            return
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.core.get_flat()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self._restore()

    def on_train_end(self, logs=None):
        if self.stopped_epoch is None:
            self._restore()

    def _restore(self) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.core.set_flat(self.best_weights)

    def state_dict(self) -> dict:
        # Best weights are not saved: after a resume they are those of the next best epoch.
        return {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])
        self.best_epoch = state.get("best_epoch")


class ModelCheckpoint(Callback):
    """Saves the model (:meth:`lstmrs.Model.save`) at the end of epochs.

    ``path`` may hold ``{epoch}`` (1-based, as Keras) and log keys (``"ckpt-{epoch:03d}-
    {val_loss:.3f}"``). With ``save_best_only`` it saves only when ``monitor`` improves.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.monitor, self.save_best_only = monitor, save_best_only
        self.mode = _resolve_mode(mode, monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if value is None:
                return
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        self.model.save(path)
        self.saved.append(path)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of each epoch.

    ``schedule`` is ``fn(epoch, lr) -> new_lr`` (Keras) or an epoch-based
    :class:`lstmrs.optim.Schedule`, applied to the rate the model had when training began.
    """

    def __init__(self, schedule: Callable[[int, float], float] | Schedule, verbose: int = 0):
        super().__init__()
        if not (isinstance(schedule, Schedule) or callable(schedule)):
            raise InvalidArgumentError(
                "schedule: expected fn(epoch, lr) or an lstmrs.optim.Schedule"
            )
        self.schedule, self.verbose = schedule, verbose
        self.base_lr: float | None = None

    def on_train_begin(self, logs=None):
        if self.base_lr is None:
            self.base_lr = float(self.model.lr)

    def on_epoch_begin(self, epoch, logs=None):
        if (logs or {}).get("resumed"):
            return  # The checkpoint holds the rate this epoch already set.
        if isinstance(self.schedule, Schedule):
            lr = self.schedule.lr_at(epoch, self.base_lr)
        else:
            lr = self.schedule(epoch, float(self.model.lr))
        lr = float(lr)
        if not math.isfinite(lr) or lr < 0:
            raise InvalidArgumentError(f"LearningRateScheduler: schedule gave lr={lr!r}")
        self.model.lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = state.get("base_lr")


class ReduceLROnPlateau(Callback):
    """Divides the learning rate by ``1/factor`` when ``monitor`` stops improving (torch's rule,
    :class:`lstmrs.optim.ReduceLROnPlateau`)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", **kwargs: Any) -> None:
        super().__init__()
        self.monitor = monitor
        self.plateau = _PlateauSchedule(
            monitor=monitor, mode=_resolve_mode(mode, monitor), **kwargs
        )

    def on_train_begin(self, logs=None):
        self.plateau.start(self.model.lr)

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if value is not None:
            self.model.lr = self.plateau.step(value)

    def state_dict(self) -> dict:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state)


def _scalar_logs(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if isinstance(v, (int, float, np.floating, np.integer))}


class _FileLogger(Callback):
    """Shared by the CSV and JSONL loggers: one record per epoch, flushed as it is written."""

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        super().__init__()
        self.path, self.append = os.fspath(path), append
        self._file = None

    def _keep_rows_before(self, epoch: int) -> None:
        """On resume: drop records of epochs the interrupted run logged past its checkpoint."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        initial = int(self.params.get("initial_epoch") or 0)
        exists = os.path.exists(self.path)
        if exists and (self.append or initial > 0):
            self._keep_rows_before(initial if initial > 0 else 1 << 62)
            mode = "a"
        else:
            mode = "w"
        self._file = open(self.path, mode, newline="", encoding="utf-8")  # noqa: SIM115

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()


class CSVLogger(_FileLogger):
    """Writes one CSV row per epoch: ``epoch`` then the logs' keys in sorted order."""

    def __init__(self, path, separator: str = ",", append: bool = False) -> None:
        super().__init__(path, append)
        self.separator = separator
        self.keys: list[str] | None = None

    def _keep_rows_before(self, epoch):
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=self.separator))
        if not rows:
            return
        self.keys = rows[0][1:]
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epoch]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter=self.separator).writerows(kept)

    def on_epoch_end(self, epoch, logs=None):
        logs = _scalar_logs(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
            self._write(self.separator.join(["epoch", *self.keys]) + "\n")
        row = [str(epoch)] + [repr(float(logs[k])) if k in logs else "" for k in self.keys]
        self._write(self.separator.join(row) + "\n")


def _epoch_of(record: dict[str, Any]) -> int:
    e = record.get("epoch", 0)
    return e if isinstance(e, int) and not isinstance(e, bool) else 0


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log. A torn last line (the process died mid-write) is dropped
    with a warning; a bad line before it, or a record that is not an object, raises
    :class:`~lstmrs.errors.DataFileError` naming the file and line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read ({e.strerror or e})") from e
    lines = [(n, ln) for n, ln in enumerate(raw.split(b"\n"), 1) if ln.strip()]
    records = []
    for k, (n, line) in enumerate(lines):
        cause: Exception | None = None
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            cause, record = e, None
        if not isinstance(record, dict):
            if k == len(lines) - 1 and not raw.endswith(b"\n"):
                warnings.warn(
                    f"{path}: line {n} is torn (an interrupted write); dropping it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            why = cause or f"expected a JSON object, got {type(record).__name__}"
            raise DataFileError(f"{path}: line {n} is not a JSON record ({why})") from cause
        records.append(record)
    return records


class JSONLLogger(_FileLogger):
    """Writes one JSON object per epoch and line: ``{"epoch": e, "loss": ..., ...}``."""

    def _keep_rows_before(self, epoch):
        kept = [r for r in read_jsonl(self.path) if _epoch_of(r) < epoch]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch, **{k: float(v) for k, v in _scalar_logs(logs or {}).items()}}
        self._write(json.dumps(record) + "\n")


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``."""

    _HOOKS = (
        "on_train_begin",
        "on_train_end",
        "on_epoch_begin",
        "on_epoch_end",
        "on_batch_begin",
        "on_batch_end",
    )

    def __init__(self, **hooks: Callable) -> None:
        super().__init__()
        unknown = set(hooks) - set(self._HOOKS)
        if unknown:
            raise InvalidArgumentError(f"LambdaCallback: unknown hook(s) {sorted(unknown)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
