"""The training loop: batching, variable lengths, truncated BPTT, validation, callbacks,
checkpoints and exact resumption.

Every optimizer step is one ``ModelCore.train_step`` call into Rust (forward, loss, BPTT,
clipping, update) with the GIL released; this module only slices batches and keeps score. With a
plugin optimizer a step is ``ModelCore.loss_and_grad_into`` (the same forward, loss, BPTT and
clipping, into a gradient buffer reused by every step) followed by the plugin's ``step`` on a
zero-copy view of the weights.

Ctrl-C: while ``fit`` runs in the main thread, SIGINT is deferred to the end of the running
batch (a second one stops at once). A ``KeyboardInterrupt`` (from Ctrl-C or raised by a
callback) then writes a checkpoint of the last consistent state, when ``checkpoint_dir`` is set,
says where on stderr, and propagates; ``resume=True`` continues from it exactly as if the run had
never stopped.

Determinism: the loop owns a ``numpy.random.Generator`` seeded by ``fit(seed=...)``. At the start
of each epoch it draws the epoch's permutation and one dropout seed per step, so a run is a pure
function of the seed, the data and the thread count; a checkpoint stores the generator's state at
the start of the epoch plus the position inside it, and a resumed run redraws the same epoch and
skips the batches already done.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .callbacks import Callback, CallbackList, History, _FileLogger
from .checkpoint_format import latest_checkpoint, restore_training, write_training_checkpoint
from .errors import InvalidArgumentError, NonFiniteError, ShapeError
from .fit_inputs import FitData, check_numeric, prepare, prepare_x, prepare_y
from .metrics import ARRAY_METRICS, Metric, get_metric
from .optim import ReduceLROnPlateau, is_fused
from .progress import ProgressBar
from .validation import check_int

if TYPE_CHECKING:
    from .models import Model

__all__ = ["evaluate", "evaluate_stream", "fit", "fit_stream", "predict"]

_SEED_MAX = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------
# Batches


@dataclass
class _Batch:
    x: np.ndarray
    y: np.ndarray | None
    lengths: np.ndarray | None
    mask: np.ndarray | None  # rows of a per-step head that count
    reset: bool  # start from zero states (else carry the previous step's final states)
    size: int  # sequences this step completes (for the rate display)


def _take(model: Model, data: FitData, idx: Any, t0: int = 0, t1: int | None = None) -> _Batch:
    per_step = model.pooling == "per_step"
    lens = None if data.lengths is None else data.lengths[idx]
    if t1 is None:
        # Trimming to the longest sequence of the batch changes nothing but the work done.
        t1 = data.seq_len if lens is None else int(lens.max())
    x = np.ascontiguousarray(data.x[idx, t0:t1])
    y = None
    if data.y is not None:
        y = np.ascontiguousarray(data.y[idx, t0:t1] if per_step else data.y[idx])
    mask = None
    if lens is not None and np.all(lens >= t1):
        lens = None
    if lens is not None:
        lens = np.ascontiguousarray(lens)
        if per_step:
            mask = np.arange(t1 - t0)[None, :] < lens[:, None]
    return _Batch(x, y, lens, mask, True, int(x.shape[0]))


class _SequencePlan:
    """One epoch over sequences: shuffled batches, each optionally cut into TBPTT chunks."""

    def __init__(self, model, data, batch_size, rng, shuffle, tbptt):
        self.model, self.data, self.tbptt = model, data, tbptt
        n = data.n
        order = rng.permutation(n) if shuffle else np.arange(n)
        self.batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        self.chunks = 1 if tbptt is None else -(-data.seq_len // tbptt)
        self.n_steps = len(self.batches) * self.chunks
        self.seeds = rng.integers(0, _SEED_MAX, size=self.n_steps, dtype=np.int64)
        self.carries = tbptt is not None

    def step(self, i: int) -> _Batch:
        idx = self.batches[i // self.chunks]
        if self.tbptt is None:
            return _take(self.model, self.data, idx)
        c = i % self.chunks
        t0 = c * self.tbptt
        b = _take(self.model, self.data, idx, t0, min(t0 + self.tbptt, self.data.seq_len))
        b.reset = c == 0
        b.size = b.size if c == self.chunks - 1 else 0
        return b


class _StreamPlan:
    """One epoch over ``B`` parallel sub-streams, in consecutive chunks with carried states."""

    def __init__(self, model, xs, ys, seq_len, rng):
        self.model, self.xs, self.ys, self.seq_len = model, xs, ys, seq_len
        self.length = xs.shape[1]
        self.n_steps = -(-self.length // seq_len)
        self.seeds = rng.integers(0, _SEED_MAX, size=self.n_steps, dtype=np.int64)
        self.carries = True

    def step(self, i: int) -> _Batch:
        t0 = i * self.seq_len
        t1 = min(t0 + self.seq_len, self.length)
        x = np.ascontiguousarray(self.xs[:, t0:t1])
        y = np.ascontiguousarray(self.ys[:, t0:t1])
        return _Batch(x, y, None, None, i == 0, int(x.shape[0]))


# --------------------------------------------------------------------------------------------
# Scores


def _loss_weight(model: Model, y: np.ndarray, mask: np.ndarray | None) -> float:
    """The normaliser of a batch's mean loss (counted targets, or their class-weight sum)."""
    loss = model.loss
    if loss.name == "cross_entropy":
        keep = y != loss.ignore_index
        if mask is not None:
            keep &= mask
        if loss.class_weights is None:
            return float(keep.sum())
        return float(loss.class_weights[y[keep]].sum())
    rows = y.shape[0] * (y.shape[1] if y.ndim == 3 else 1) if mask is None else int(mask.sum())
    return float(rows * model.output_size)


class _Scores:
    """Running loss (weighted like one big batch) and metric accumulators."""

    def __init__(self, model: Model, metrics: list, prefix: str = ""):
        self.model, self.prefix = model, prefix
        self.metrics: list[Metric] = [
            get_metric(
                m,
                loss=model.loss.name,
                outputs=model.output_size,
                ignore_index=model.loss.ignore_index,
            )
            for m in metrics
        ]
        self.names = [m if isinstance(m, str) else getattr(m, "name", "metric") for m in metrics]
        self.loss_sum = 0.0
        self.weight = 0.0

    def update(self, loss: float, weight: float, y, out, mask) -> None:
        self.loss_sum += loss * weight
        self.weight += weight
        for m in self.metrics:
            m.update(y, out, mask)

    def logs(self, arrays: bool = False) -> dict[str, Any]:
        p = self.prefix
        logs: dict[str, Any] = {
            f"{p}loss": self.loss_sum / self.weight if self.weight else math.nan
        }
        for name, m in zip(self.names, self.metrics):
            if name in ARRAY_METRICS and not arrays:
                continue
            logs[f"{p}{name}"] = m.result()
        return logs

    def state_dict(self) -> dict:
        return {
            "loss_sum": self.loss_sum,
            "weight": self.weight,
            "metrics": [m.state_dict() for m in self.metrics],
        }

    def load_state_dict(self, s: dict) -> None:
        self.loss_sum, self.weight = float(s["loss_sum"]), float(s["weight"])
        for m, ms in zip(self.metrics, s["metrics"]):
            m.load_state_dict(ms)


# --------------------------------------------------------------------------------------------
# Inference


def _predict_batch(model: Model, b: _Batch, h0=None, c0=None):
    return model.core.predict(b.x, lengths=b.lengths, h0=h0, c0=c0)


def _transform(model: Model, out: np.ndarray, output: str) -> np.ndarray:
    if output == "raw":
        return out
    name = model.loss.name
    if name not in ("cross_entropy", "bce_with_logits"):
        raise InvalidArgumentError(
            f"output: {output!r} needs a classification loss, the model uses {name!r}"
        )
    if output == "probabilities":
        if name == "bce_with_logits":
            return (1.0 / (1.0 + np.exp(-out))).astype(out.dtype)
        z = out - out.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    if name == "bce_with_logits":
        return (out > 0).astype(np.int64)
    return out.argmax(axis=-1).astype(np.int64)


def predict(
    model: Model,
    x: Any,
    *,
    lengths: Any = None,
    batch_size: int = 256,
    output: str = "raw",
) -> np.ndarray:
    """Model outputs for ``x``: ``[N, O]``, or ``[N, T, O]`` with ``pooling="per_step"``.

    ``output``: ``"raw"`` (the head's values / logits), ``"probabilities"`` (softmax for
    cross-entropy, sigmoid for bce_with_logits) or ``"labels"`` (class ids). Per-step outputs
    past a sequence's length are left at 0.
    """
    if output not in ("raw", "probabilities", "labels"):
        raise InvalidArgumentError(
            f"output: expected 'raw', 'probabilities' or 'labels', got {output!r}"
        )
    batch_size = _batch_size(batch_size)
    data = prepare(model, x, None, lengths, need_y=False)
    per_step = model.pooling == "per_step"
    parts = []
    for s in range(0, data.n, batch_size):
        b = _take(model, data, slice(s, s + batch_size))
        out = _predict_batch(model, b)[0]
        if per_step:
            full = np.zeros((out.shape[0], data.seq_len, out.shape[2]), dtype=out.dtype)
            full[:, : out.shape[1]] = out
            if b.mask is not None:
                full[:, : out.shape[1]][~b.mask] = 0
            out = full
        parts.append(out)
    out = _transform(model, np.concatenate(parts, axis=0), output)
    if per_step and output != "raw" and data.lengths is not None:
        valid = np.arange(data.seq_len)[None, :] < data.lengths[:, None]
        out[~valid] = 0
    return out


def _loss_batch(model: Model, scores: _Scores, b: _Batch, h0=None, c0=None):
    """Scores a batch with the core's loss (inference mode, one Rust call); returns the final
    states."""
    value, out, h_n, c_n = model.core.loss(
        b.x, b.y, model._loss_spec, lengths=b.lengths, h0=h0, c0=c0
    )
    scores.update(value, _loss_weight(model, b.y, b.mask), b.y, out, b.mask)
    return h_n, c_n


def _evaluate_data(
    model: Model,
    data: FitData,
    batch_size: int,
    metrics: list,
    prefix: str = "",
    arrays: bool = False,
) -> dict[str, Any]:
    scores = _Scores(model, metrics, prefix)
    for s in range(0, data.n, batch_size):
        _loss_batch(model, scores, _take(model, data, slice(s, s + batch_size)))
    return scores.logs(arrays=arrays)


def evaluate(
    model: Model,
    x: Any,
    y: Any,
    *,
    lengths: Any = None,
    batch_size: int = 256,
    metrics: Any = None,
) -> dict[str, Any]:
    """``{"loss": ..., metric: ...}`` on ``x``, ``y`` (inference mode: no dropout).

    ``metrics`` defaults to those given to ``compile``; array metrics (``confusion_matrix``,
    ``f1_per_class``) are allowed here.
    """
    metrics = list(
        model.metrics if metrics is None else ([metrics] if isinstance(metrics, str) else metrics)
    )
    data = prepare(model, x, y, lengths)
    return _evaluate_data(model, data, _batch_size(batch_size), metrics, arrays=True)


def _batch_size(v: Any) -> int:
    return check_int("batch_size", v, 1)


# --------------------------------------------------------------------------------------------
# Streams


def _split_stream(model: Model, stream: Any, targets: Any, batch: int):
    """``[B, L, ...]`` inputs and targets from one long stream (next-token targets by default)."""
    if model.pooling != "per_step":
        raise InvalidArgumentError("fit_stream: needs a model with pooling='per_step'")
    if model.bidirectional:
        raise InvalidArgumentError("fit_stream: a bidirectional model cannot carry state forward")
    s = np.asarray(stream)
    check_numeric("stream", s)
    if targets is None:
        if not model.tokens:
            raise InvalidArgumentError("targets: required for a stream of features")
        if s.ndim != 1:
            raise ShapeError(f"stream: expected a 1-D array of token ids, got shape {s.shape}")
        x, y = s[:-1], s[1:]
    else:
        x, y = s, np.asarray(targets)
        if y.shape[:1] != x.shape[:1]:
            raise ShapeError(f"targets: expected {x.shape[0]} steps like the stream, got {y.shape}")
    length = x.shape[0] // batch
    if length < 1:
        raise InvalidArgumentError(
            f"stream: {x.shape[0]} steps cannot feed {batch} parallel sub-streams"
        )
    x = x[: batch * length].reshape((batch, length) + x.shape[1:])
    y = y[: batch * length].reshape((batch, length) + y.shape[1:])
    xa, _ = prepare_x(model, x, None)
    ya = prepare_y(model, y, batch, length)
    return xa, ya


def _stream_scores(model: Model, xs, ys, seq_len: int, metrics: list, prefix="", arrays=False):
    scores = _Scores(model, metrics, prefix)
    h = c = None
    for t0 in range(0, xs.shape[1], seq_len):
        b = _Batch(
            np.ascontiguousarray(xs[:, t0 : t0 + seq_len]),
            np.ascontiguousarray(ys[:, t0 : t0 + seq_len]),
            None,
            None,
            False,
            0,
        )
        h, c = _loss_batch(model, scores, b, h, c)
    return scores.logs(arrays=arrays)


def evaluate_stream(
    model: Model,
    stream: Any,
    *,
    targets: Any = None,
    batch_size: int = 1,
    seq_len: int = 256,
    metrics: Any = None,
) -> dict[str, Any]:
    """Loss and metrics over a long stream read as ``batch_size`` parallel sub-streams, with the
    recurrent state carried across chunks of ``seq_len`` (next-token targets by default)."""
    metrics = list(
        model.metrics if metrics is None else ([metrics] if isinstance(metrics, str) else metrics)
    )
    xs, ys = _split_stream(model, stream, targets, _batch_size(batch_size))
    return _stream_scores(model, xs, ys, _batch_size(seq_len), metrics, arrays=True)


# --------------------------------------------------------------------------------------------
# The loop


class _Step:
    """One optimizer step on a batch: ``(loss, grad_norm, out, h_n, c_n)``.

    The core's optimizers: one fused Rust call. A plugin optimizer: the core's loss, gradient
    and clipping into the model's reused gradient buffer (GIL released), then the plugin's
    in-place update of the weights' zero-copy view; nothing the size of the model is copied.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.fused = is_fused(model._opt_core)
        if not self.fused:
            self.params, self.grad = model._plugin_step_buffers()

    def __call__(self, b: _Batch, lr: float, seed: int, h0, c0):
        m = self.model
        if self.fused:
            return m.core.train_step(
                b.x,
                b.y,
                m._loss_spec,
                m._opt_core,
                lr,
                seed,
                lengths=b.lengths,
                h0=h0,
                c0=c0,
                clip_norm=m.clip_norm,
                clip_value=m.clip_value,
            )
        res = m.core.loss_and_grad_into(
            b.x,
            b.y,
            m._loss_spec,
            self.grad,
            seed,
            lengths=b.lengths,
            h0=h0,
            c0=c0,
            clip_norm=m.clip_norm,
            clip_value=m.clip_value,
        )
        m._opt_core.step(self.params, self.grad, lr)
        return res


class _DeferInterrupt:
    """Holds Ctrl-C (SIGINT) back until the training loop reaches a consistent point.

    Installed only in the main thread and only over Python's default handler (a program with
    its own handler keeps it). The first Ctrl-C is noted and raised as ``KeyboardInterrupt`` at
    the next :meth:`check` (the end of the running batch); a second one raises at once.
    """

    def __init__(self, saving: bool) -> None:
        self.saving = saving
        self.pending = False
        self._prev: Any = None
        self._installed = False

    def __enter__(self):
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            try:
                self._prev = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except ValueError:  # not the main interpreter
                pass
        return self

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        then = "saving a checkpoint and stopping" if self.saving else "stopping"
        print(
            f"\nInterrupted: finishing this batch, then {then} (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)
            self._installed = False


def _current_lr(model: Model, epoch: int, step: int) -> float:
    s = model.schedule
    if s is None:
        return float(model.lr)
    if isinstance(s, ReduceLROnPlateau):
        return float(s.lr)
    return float(s.lr_at(epoch if s.interval == "epoch" else step, model.lr))


def _check_monitor(model: Model, has_val: bool) -> None:
    s = model.schedule
    if isinstance(s, ReduceLROnPlateau) and s.monitor.startswith("val_") and not has_val:
        raise InvalidArgumentError(
            f"schedule: ReduceLROnPlateau monitors {s.monitor!r} but there is no validation data"
        )


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _train(
    model: Model,
    *,
    kind: str,
    make_plan,
    epochs: int,
    validate,
    callbacks,
    verbose: int,
    seed: int | None,
    checkpoint_dir,
    checkpoint_every,
    keep_checkpoints: int,
    resume: bool,
    fingerprint: dict,
) -> History:
    epochs = check_int("epochs", epochs, 0)
    if verbose not in (0, 1, 2):
        raise InvalidArgumentError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
    every_epoch = checkpoint_every in ("epoch", None)
    if not every_epoch and (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, (int, np.integer))
        or checkpoint_every < 1
    ):
        raise InvalidArgumentError(
            f"checkpoint_every: expected 'epoch' or a number of batches >= 1, got {checkpoint_every!r}"
        )
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    user_callbacks = list(callbacks or ())
    if not model.compiled:
        model.compile()

    # Where to start: a checkpoint on disk, one loaded by Model.resume, or nothing.
    state = None
    carry = None
    ck = model._checkpoint
    if resume or (ck is not None and ck.get("resume")):
        if checkpoint_dir is not None:
            found = latest_checkpoint(checkpoint_dir)
            if found is not None and (ck is None or ck.get("path") != found):
                ck = restore_training(model, found)
        if ck is not None and ck.get("training"):
            state = ck["training"]
            if ck.get("carry"):
                carry = (ck["carry"]["h"], ck["carry"].get("c"))
        if state is not None and (state.get("kind") != kind or state.get("data") != fingerprint):
            raise InvalidArgumentError(
                f"resume: the checkpoint was written by {state.get('kind')} on data "
                f"{state.get('data')}, this call is {kind} on {fingerprint}"
            )
    model._checkpoint = None

    rng = np.random.default_rng(seed)
    history = History()
    model.history = history
    model.stop_training = False
    start_epoch, start_batch, global_step = 0, 0, 0
    if state is not None:
        start_epoch = int(state["epoch"])
        start_batch = int(state["batch"])
        global_step = int(state["global_step"])
        history.load_state_dict(state["history"])
        rng.bit_generator.state = state["epoch_rng"]
        if state.get("stopped"):
            epochs = start_epoch  # The interrupted run had already stopped early.

    bar = ProgressBar(verbose) if verbose else None
    all_callbacks = [history] + ([bar] if bar else []) + user_callbacks
    probe = make_plan(np.random.default_rng(0))
    params = {
        "epochs": epochs,
        "steps": probe.n_steps,
        "verbose": verbose,
        "initial_epoch": start_epoch,
        "metrics": list(model.metrics),
    }
    cbs = CallbackList(all_callbacks, model, params)
    user_list = CallbackList(user_callbacks, model, params)
    if state is not None:
        user_list.load_state_dict(state.get("callbacks", []))
    if isinstance(model.schedule, ReduceLROnPlateau):
        model.schedule.start(model.lr)
    _check_monitor(model, validate is not None)

    saved: dict[str, Any] = {"key": None, "path": None}

    def checkpoint(epoch, batch, epoch_rng, scores, carry_now, stopped=False):
        training = {
            "kind": kind,
            "data": fingerprint,
            "epoch": epoch,
            "batch": batch,
            "global_step": global_step,
            "epoch_rng": epoch_rng,
            "scores": None if scores is None else scores.state_dict(),
            "history": history.state_dict(),
            "callbacks": user_list.state_dict(),
            "stopped": stopped,
        }
        name = f"step-{global_step:09d}" + ("-end" if batch == 0 else "")
        saved["path"] = write_training_checkpoint(
            model, checkpoint_dir, name, training, carry_now, keep_checkpoints
        )
        saved["key"] = (epoch, batch, global_step)

    # The last consistent training position, as `checkpoint` arguments: set after each
    # completed step and epoch end, None while a step or the end of an epoch is half done. A
    # KeyboardInterrupt saves it (nothing when None: the weights may be half updated).
    safe: tuple | None = None
    step = _Step(model)
    model._interrupt_checkpoint = None

    # start-up time: the registry (pluggy, importlib.metadata) costs ~50 ms: loaded on first use
    from . import plugins

    guard = _DeferInterrupt(saving=checkpoint_dir is not None)
    try:
        with guard:
            cbs.on_train_begin()
            plugins.notify_train_start(model, {"epochs": epochs, "start_epoch": start_epoch})
            for epoch in range(start_epoch, epochs):
                resumed = state is not None and epoch == start_epoch and start_batch > 0
                epoch_rng = _rng_state(rng)
                plan = make_plan(rng)
                scores = _Scores(model, model.metrics)
                first = 0
                if resumed:
                    scores.load_state_dict(state["scores"])
                    first = start_batch
                else:
                    carry = None
                safe = (epoch, first, epoch_rng, scores if resumed else None, carry)
                t_start = time.perf_counter()
                cbs.on_epoch_begin(epoch, {"resumed": resumed, "first_batch": first})
                # The rate the epoch logs: its last step's (one done already when resumed).
                lr = _current_lr(model, epoch, global_step - 1 if resumed else global_step)
                for i in range(first, plan.n_steps):
                    b = plan.step(i)
                    lr = _current_lr(model, epoch, global_step)
                    h0 = c0 = None
                    if plan.carries and not b.reset and carry is not None:
                        h0, c0 = carry
                    cbs.on_batch_begin(i)
                    safe = None
                    loss, grad_norm, out, h_n, c_n = step(b, lr, int(plan.seeds[i]), h0, c0)
                    global_step += 1
                    if not math.isfinite(loss):
                        raise NonFiniteError(
                            f"loss: became {loss} at epoch {epoch}, batch {i} (step "
                            f"{global_step}); lower the learning rate or clip gradients "
                            "(compile(clip_norm=...))"
                        )
                    carry = (h_n, c_n) if plan.carries else None
                    scores.update(loss, _loss_weight(model, b.y, b.mask), b.y, out, b.mask)
                    safe = (epoch, i + 1, epoch_rng, scores, carry)
                    logs = scores.logs()
                    logs.update(batch_loss=loss, lr=lr, grad_norm=grad_norm, size=b.size)
                    cbs.on_batch_end(i, logs)
                    if (
                        checkpoint_dir is not None
                        and not every_epoch
                        and global_step % checkpoint_every == 0
                    ):
                        checkpoint(*safe)
                    guard.check()
                    if model.stop_training:
                        break
                logs = scores.logs()
                if validate is not None:
                    logs.update(validate())
                logs["lr"] = lr
                logs["seconds"] = time.perf_counter() - t_start
                safe = None  # the schedule and the callbacks' epoch state change from here
                if isinstance(model.schedule, ReduceLROnPlateau):
                    mon = model.schedule.monitor
                    model.schedule.step(logs[mon] if mon in logs else logs["loss"])
                cbs.on_epoch_end(epoch, logs)
                plugins.notify_epoch_end(model, epoch, logs)
                safe = (epoch + 1, 0, _rng_state(rng), None, None, model.stop_training)
                if checkpoint_dir is not None and (
                    every_epoch or epoch == epochs - 1 or model.stop_training
                ):
                    checkpoint(*safe)
                guard.check()
                if model.stop_training:
                    break
            cbs.on_train_end()
            plugins.notify_train_end(model, history)
            guard.check()
    except BaseException as e:
        for c in all_callbacks:
            if isinstance(c, (ProgressBar, _FileLogger)):
                c.on_train_end()
        if isinstance(e, KeyboardInterrupt) and checkpoint_dir is not None:
            _save_on_interrupt(model, safe, saved, checkpoint, global_step)
        raise
    return history


def _save_on_interrupt(model: Model, safe, saved: dict, checkpoint, step: int) -> None:
    """Writes the checkpoint of a KeyboardInterrupt (unless the last one already holds that
    state) and says where it is on stderr."""
    if safe is None:
        print(
            f"lstmrs: interrupted in the middle of step {step}; no checkpoint saved (the newest "
            f"is {saved['path'] or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        return
    if saved["key"] != (safe[0], safe[1], step):
        checkpoint(*safe)
    model._interrupt_checkpoint = saved["path"]
    print(
        f"lstmrs: interrupted after step {step}; checkpoint saved to {saved['path']} "
        "(fit(..., resume=True) continues from it)",
        file=sys.stderr,
        flush=True,
    )


def _validation(model, data: FitData | None, batch_size: int):
    if data is None:
        return None
    return lambda: _evaluate_data(model, data, batch_size, model.metrics, prefix="val_")


def _fingerprint(data: FitData, **extra) -> dict:
    return {"n": data.n, "seq_len": data.seq_len, **extra}


def fit(
    model: Model,
    x: Any,
    y: Any = None,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: Any = None,
    validation_split: float = 0.0,
    lengths: Any = None,
    shuffle: bool = True,
    callbacks: Any = (),
    seed: int | None = None,
    verbose: int = 1,
    tbptt: int | None = None,
    checkpoint_dir: Any = None,
    checkpoint_every: Any = "epoch",
    keep_checkpoints: int = 2,
    resume: bool = False,
) -> History:
    """Trains ``model`` on sequences ``x`` with targets ``y``; returns the :class:`History`.

    - ``x``: float ``[N, T, F]`` (or ``[N, T]`` when F = 1), int token ids ``[N, T]``, or a list
      of ``N`` sequences of different lengths (padded internally; no sorting needed). With a
      padded array, ``lengths`` gives each sequence's valid steps.
    - ``y``: ``[N, O]`` (``[N]`` when O = 1) or class ids ``[N]``; per-step heads take
      ``[N, T, O]`` / ``[N, T]`` or a list of per-sequence targets.
    - ``validation_data=(x_val, y_val[, lengths_val])`` or ``validation_split``: the last
      fraction of the data (time order, as Keras), not shuffled.
    - ``seed`` makes the run reproducible (shuffling and dropout); ``verbose`` 0, 1 (progress
      bar) or 2 (a line per epoch).
    - ``tbptt=k``: truncated backpropagation through time in chunks of ``k`` steps, carrying the
      final states of each chunk into the next without gradient (per-step heads).
    - ``checkpoint_dir`` + ``checkpoint_every`` (``"epoch"`` or a number of batches) write
      crash-safe checkpoints; ``resume=True`` continues from the newest one exactly where it
      stopped (same data and arguments).
    - Ctrl-C stops after the running batch; with ``checkpoint_dir`` a checkpoint of that point
      is written first (its path goes to stderr), then ``KeyboardInterrupt`` propagates.
    """
    batch_size = _batch_size(batch_size)
    data = prepare(model, x, y, lengths)
    if tbptt is not None:
        tbptt = _batch_size(tbptt)
        if model.pooling != "per_step":
            raise InvalidArgumentError("tbptt: needs pooling='per_step' (a target at every step)")
        if model.bidirectional:
            raise InvalidArgumentError("tbptt: a bidirectional model cannot carry state forward")
        if data.lengths is not None:
            raise InvalidArgumentError("tbptt: needs sequences of equal length (no lengths)")
    val = None
    if validation_data is not None:
        if validation_split:
            raise InvalidArgumentError("validation_data and validation_split: give one, not both")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise InvalidArgumentError(
                "validation_data: expected (x_val, y_val) or (x_val, y_val, lengths_val)"
            )
        vx, vy, *vl = validation_data
        val = prepare(model, vx, vy, vl[0] if vl else None)
    elif validation_split:
        if not 0.0 < float(validation_split) < 1.0:
            raise InvalidArgumentError(
                f"validation_split: expected a fraction in (0, 1), got {validation_split!r}"
            )
        cut = int(data.n * (1.0 - float(validation_split)))
        if cut < 1 or cut >= data.n:
            raise InvalidArgumentError(
                f"validation_split: {validation_split} of {data.n} sequences leaves an empty part"
            )
        data, val = data.subset(slice(0, cut)), data.subset(slice(cut, None))

    def make_plan(rng):
        return _SequencePlan(model, data, batch_size, rng, bool(shuffle), tbptt)

    return _train(
        model,
        kind="fit",
        make_plan=make_plan,
        epochs=epochs,
        validate=_validation(model, val, max(batch_size, 256)),
        callbacks=callbacks,
        verbose=verbose,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        fingerprint=_fingerprint(data, batch_size=batch_size, tbptt=tbptt, shuffle=bool(shuffle)),
    )


def fit_stream(
    model: Model,
    stream: Any,
    seq_len: int,
    *,
    targets: Any = None,
    batch_size: int = 32,
    epochs: int = 1,
    validation_stream: Any = None,
    validation_targets: Any = None,
    callbacks: Any = (),
    seed: int | None = None,
    verbose: int = 1,
    checkpoint_dir: Any = None,
    checkpoint_every: Any = "epoch",
    keep_checkpoints: int = 2,
    resume: bool = False,
) -> History:
    """Truncated BPTT over one long stream (char-rnn style).

    The stream (token ids ``[L]``, or features ``[L, F]`` with ``targets``) is cut into
    ``batch_size`` contiguous sub-streams trained side by side in chunks of ``seq_len`` steps;
    each chunk starts from the previous chunk's final states (no gradient across the border).
    Without ``targets`` the target of each token is the next token. The model needs
    ``pooling="per_step"``. Validation (``validation_stream``) runs the same way without dropout
    and reports ``val_loss`` and the compiled metrics (``perplexity``, ``bpc``, ...).
    """
    seq_len = _batch_size(seq_len)
    batch_size = _batch_size(batch_size)
    xs, ys = _split_stream(model, stream, targets, batch_size)
    validate = None
    if validation_stream is not None:
        vx, vy = _split_stream(model, validation_stream, validation_targets, batch_size)

        def validate():
            return _stream_scores(model, vx, vy, seq_len, model.metrics, prefix="val_")

    def make_plan(rng):
        return _StreamPlan(model, xs, ys, seq_len, rng)

    if isinstance(epochs, int) and epochs > 0 and xs.shape[1] < 2:
        warnings.warn("fit_stream: each sub-stream has a single step", RuntimeWarning, stacklevel=2)
    return _train(
        model,
        kind="fit_stream",
        make_plan=make_plan,
        epochs=epochs,
        validate=validate,
        callbacks=callbacks,
        verbose=verbose,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        fingerprint={"n": int(xs.shape[0]), "seq_len": int(xs.shape[1]), "chunk": seq_len},
    )
