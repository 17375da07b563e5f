"""One training run of a task, as ``lstmrs train`` and ``lstmrs tune`` run it: the task looked
up in the plugin registry, its configuration resolved (defaults, file, options), the data
prepared, the model trained (or resumed) with the runner's callbacks, evaluated, and the run
directory written (config, state, metrics, model, summary, plots).

:mod:`lstmrs.cli` parses the command line and calls :func:`train_run`; the names here stay
importable from :mod:`lstmrs.cli` too.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import sys
import time
from typing import Any

from .. import config as C
from .. import plots, plugins
from ..callbacks import Callback, EarlyStopping, JSONLLogger
from ..models import Model
from ..rundir import RunDir
from .base import as_task, plateau_callback

__all__ = ["EXIT_INTERRUPTED", "get_tasks", "lookup_task", "resolve_config", "train_run"]

#: The exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------
# Task lookup


def get_tasks() -> dict[str, Any]:
    """``{name: Task}``: every task registered through the plugin hook ``lstmrs_register_tasks``
    (the built-in plugin registers :data:`lstmrs.tasks.BUILTIN_TASKS`); plugin tasks with only
    the registry's minimal protocol come wrapped in :class:`lstmrs.tasks.PluginTask`."""
    return {name: as_task(t) for name, t in plugins.get_tasks().items()}


def lookup_task(name: str):
    if not isinstance(name, str):
        raise C.ConfigError(f"config: task = {name!r} is not allowed: expected a task name (text)")
    tasks = get_tasks()
    key = name.lower()
    if key not in tasks:
        raise C.ConfigError(
            f"config: task = {name!r} is not allowed: expected one of "
            f"{', '.join(repr(t) for t in sorted(tasks))} (plugins add more: `lstmrs plugins`)"
        )
    return tasks[key]


# --------------------------------------------------------------------------------------------
# Configuration


def _check_model_kind(task, layer: dict, source: str) -> None:
    """A ``model.kind`` for a task that has no such key is a :class:`ConfigError` naming
    ``model.kind`` and the tasks that accept the value, not a bare "unknown key"."""
    model = layer.get("model")
    if (
        not isinstance(model, dict)
        or "kind" not in model
        or "kind" in task.default_config.get("model", {})
    ):
        return
    kind = model["kind"]
    owners = sorted(
        name
        for name, t in get_tasks().items()
        if isinstance(rule := t.rules.get("model.kind"), C.Choice)
        and isinstance(kind, str)
        and kind.lower() in rule.options
    )
    hint = (
        f"; model.kind = {kind!r} is a model of task {', '.join(map(repr, owners))}"
        if owners
        else ""
    )
    raise C.ConfigError(
        f"config: model.kind = {kind!r} ({source}) is not allowed: task {task.name!r} has one "
        f"kind of model and no model.kind{hint}"
    )


def resolve_config(
    task,
    *,
    file_cfg: dict | None = None,
    file_source: str = "config file",
    file_dir: str | None = None,
    cell: str | None = None,
    optimizer: str | None = None,
    sets: list[str] = (),
) -> dict[str, Any]:
    """The task's defaults, then the file, then ``--cell``/``--optimizer``, then ``--set``."""
    cfg = copy.deepcopy(task.default_config)
    if file_cfg:
        layer = dict(file_cfg)
        layer.pop("task", None)  # Already used to pick the task.
        # The search space of `lstmrs tune`: a trial's values arrive as a layer of their own.
        layer.pop("tune", None)
        _check_model_kind(task, layer, file_source)
        cfg = C.apply_layer(cfg, layer, task.rules, source=file_source, base_dir=file_dir)
    if cell is not None:
        cfg = C.apply_layer(cfg, {"model": {"cell": cell}}, task.rules, source="--cell")
    if optimizer is not None:
        cfg = C.apply_layer(
            cfg, {"train": {"optimizer": optimizer}}, task.rules, source="--optimizer"
        )
    for text in sets:
        key, value = C.parse_override(text)
        if key == "task":
            raise C.ConfigError("--set task=...: choose the task with --task NAME")
        _check_model_kind(task, C.nest({key: value}), f"--set {text}")
        cfg = C.apply_layer(cfg, C.nest({key: value}), task.rules, source=f"--set {text}")
    cfg["task"] = task.name
    task.check(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# Callbacks of a training run


class _TimeLimit(Callback):
    """Stops training after ``seconds`` of wall time in this process."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.hit = False
        self._start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_batch_end(self, batch, logs=None):
        if self.seconds and time.perf_counter() - self._start >= self.seconds:
            self.hit = True
            self.model.stop_training = True


class _TargetReached(Callback):
    """Stops once ``val_loss`` is at or below ``target`` (the task counts as solved)."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.hit = False

    def on_epoch_end(self, epoch, logs=None):
        v = (logs or {}).get("val_loss")
        if self.target and v is not None and v <= self.target:
            self.hit = True
            self.model.stop_training = True


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.5f}" if abs(v) < 1 else f"{v:.4f}"


_EPOCH_SKIP = {"lr", "seconds", "size", "batch_loss", "grad_norm"}


class _EpochPrinter(Callback):
    """A line per epoch (at most one every ``min_gap`` seconds when epochs are quick; the first
    and the last are always shown), and a progress line every ``every`` seconds inside long
    epochs."""

    def __init__(self, say, every: float = 20.0, min_gap: float = 1.0) -> None:
        super().__init__()
        self.say, self.every, self.min_gap = say, every, min_gap
        self._last = time.perf_counter()
        self._printed = -math.inf
        self._pending: str | None = None
        self._epoch = 0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last = time.perf_counter()
        self._batches = 0

    def on_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            steps = self.params.get("steps", "?")
            loss = (logs or {}).get("loss")
            text = f"  epoch {self._epoch + 1} batch {batch + 1}/{steps}"
            if loss is not None:
                text += f"  loss {_fmt(float(loss))}"
            self.say(text)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        epochs = self.params.get("epochs", "?")
        parts = [f"epoch {epoch + 1:>3}/{epochs}"]
        for k, v in logs.items():
            if k in _EPOCH_SKIP or not isinstance(v, (int, float)):
                continue
            parts.append(f"{k} {_fmt(float(v))}")
        parts.append(f"{logs.get('seconds', 0.0):.1f}s")
        steps = self.params.get("steps")
        if isinstance(steps, int) and 0 < self._batches < steps and self.model.stop_training:
            parts.append(f"(stopped after batch {self._batches}/{steps})")
        line = "  ".join(parts)
        now = time.perf_counter()
        first = epoch == self.params.get("initial_epoch", 0)
        if first or now - self._printed >= self.min_gap or self.model.stop_training:
            self.say(line)
            self._printed, self._pending = now, None
        else:
            self._pending = line

    def on_train_end(self, logs=None):
        if self._pending is not None:
            self.say(self._pending)
            self._pending = None


# --------------------------------------------------------------------------------------------
# A training run


def _show(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def train_run(task, cfg: dict, run: RunDir, **kwargs: Any) -> int:
    """Prepares the data, trains (or continues) and evaluates; writes the run directory.
    Keyword arguments: ``resume``, ``say``, ``make_plots`` (default True) and
    ``extra_callbacks`` (run after the runner's own: ``lstmrs tune`` reports to its trial).
    A run that raises is marked ``status = "failed"`` (with the error) in its state, unless a
    callback already gave it another status (``lstmrs tune`` marks a pruned trial "pruned")."""
    try:
        return _train_run(task, cfg, run, **kwargs)
    except Exception as e:
        try:
            if run.read_state().get("status") in (None, "preparing", "training"):
                run.update_state(status="failed", error=f"{type(e).__name__}: {e}")
        except (OSError, ValueError):  # the run directory itself is the problem: keep `e`
            pass
        raise


def _train_run(
    task,
    cfg: dict,
    run: RunDir,
    *,
    resume: bool,
    say,
    make_plots: bool = True,
    extra_callbacks=(),
) -> int:
    verb = "continuing" if resume else "training"
    say(f"lstmrs: {verb} task {task.name!r} in {run.path}")
    previous = run.read_state() if resume else {}
    run.write_config(cfg)
    run.update_state(task=task.name, status="preparing")
    data = task.prepare(cfg, state=previous.get("task_state") or None)
    for line in data.info + task.resolve(cfg, data):
        say(line)
    run.update_state(task_state=data.state)

    ck = run.latest_checkpoint() if resume else None
    if ck is not None:
        model = Model.resume(ck)
        training = model._checkpoint["training"]
        # A run stopped by Ctrl-C or a time limit goes on; one that stopped early stays done.
        if previous.get("status") != "early_stopped":
            training["stopped"] = False
        say(
            f"resuming from {_show(ck)} (epoch {training['epoch']}, step {training['global_step']})"
        )
    else:
        if resume and glob.glob(os.path.join(run.checkpoints, "member_*")):
            # An ensemble keeps a checkpoint directory per member (lstmrs.ensemble).
            say("resuming the ensemble: finished members are kept, the others go on from theirs")
        elif resume and (own := task.own_checkpoint(run.checkpoints)) is not None:
            say(f"resuming from {_show(own)} (the task's own checkpoint format)")
        elif resume:
            say("no checkpoint in this run yet: starting its training from the beginning")
        model = task.build_model(cfg, data)
        task.compile(model, cfg)
    say(f"model: {model!r}")

    t = cfg["train"]
    limit = _TimeLimit(t["time_limit"])
    target = _TargetReached(t["target_val_loss"])
    callbacks: list[Callback] = [JSONLLogger(run.metrics_path), _EpochPrinter(say)]
    callbacks.append(limit)
    early = None
    if data.val is None:
        if t["patience"] or t["target_val_loss"]:
            say("no validation data: train.patience and train.target_val_loss do not apply")
    else:
        callbacks.append(target)
        if t["patience"] > 0:
            early = EarlyStopping("val_loss", patience=t["patience"], restore_best_weights=True)
            callbacks.append(early)
        if t["lr_plateau"] > 0:
            callbacks.append(plateau_callback(t))
    callbacks += extra_callbacks
    run.update_state(status="training")
    say(
        "Ctrl-C stops after the current batch and saves a checkpoint; `lstmrs train --resume "
        f"--run-dir {run.path}` continues"
    )
    start = time.perf_counter()
    try:
        # Ctrl-C: fit finishes the running batch, saves a checkpoint of that point and raises
        # KeyboardInterrupt; a second Ctrl-C stops at once (fit saves what is consistent).
        task.train(
            model,
            data,
            cfg,
            callbacks=callbacks,
            checkpoint_dir=run.checkpoints,
            checkpoint_every=t["checkpoint_every"],
            resume=ck is not None,
            seed=cfg["seed"],
            verbose=0,
        )
    except KeyboardInterrupt:
        seconds = time.perf_counter() - start
        elapsed = previous.get("train_seconds", 0.0) + seconds
        saved = model._interrupt_checkpoint
        if saved is None:
            run.update_state(status="aborted", train_seconds=elapsed)
            print(
                "aborted: no checkpoint of this point; the newest checkpoint (if any) is from "
                "before the interrupt",
                file=sys.stderr,
            )
        else:
            run.update_state(status="interrupted", train_seconds=elapsed)
            print(
                f"interrupted after {seconds:.1f}s; checkpoint {_show(saved)}\n"
                f"continue with: lstmrs train --resume --run-dir {run.path}",
                flush=True,
            )
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - start
    elapsed = previous.get("train_seconds", 0.0) + seconds
    if early is not None and early.stopped_epoch is not None:
        status = "early_stopped"
        say(
            f"early stopping: val_loss has not improved for {t['patience']} epochs; "
            f"best epoch {early.best_epoch + 1}"
        )
    elif limit.hit:
        status = "time_limit"
        say(f"time limit of {t['time_limit']:g}s reached")
    elif target.hit:
        status = "target_reached"
        say(f"val_loss reached the target {t['target_val_loss']:g}")
    else:
        status = "completed"
    model.save(run.model_path)

    summary = task.evaluate(model, data, cfg)
    run.update_state(task_state=data.state)  # evaluation may fit state too (a threshold)
    records = run.read_metrics()
    public = _public(summary)
    public.update(
        task=task.name,
        status=status,
        epochs=len(records),
        train_seconds=round(elapsed, 2),
        params=model.num_params,
    )
    run.write_summary(public)
    print(f"[{task.name}] {task.format_summary(summary)}", flush=True)
    if make_plots:
        written = _plots(task, model, data, summary, cfg, run, records)
        if written:
            say("plots: " + ", ".join(_show(p) for p in written))
    run.update_state(status=status, train_seconds=elapsed)
    say(f"run directory: {run.path}  (summary.json, metrics.jsonl, model/, plots/)")
    return 0


def _plots(task, model, data, summary, cfg, run: RunDir, records) -> list[str]:
    if not plots.available():
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    out = []
    p = plots.loss_curves(
        records, os.path.join(run.plots, "loss.png"), f"{task.name}: loss per epoch"
    )
    if p:
        out.append(p)
    out += task.plot(model, data, summary, cfg, run.plots, records)
    return out
