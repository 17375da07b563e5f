"""``lstmrs.Model``: a whole sequence model (input, LSTM/GRU stack, pooling, dense head, loss)
with a Keras/scikit-learn style ``compile`` / ``fit`` / ``evaluate`` / ``predict``.

The weights live in one flat buffer in the Rust core (``ModelCore``); a training batch is one
Rust call (forward, loss, backpropagation through time, clipping, optimizer update) with the GIL
released. A plugin optimizer (``compile("lion")``) splits the step in two: one Rust call for the
loss and the clipped gradient (into a buffer reused across steps), then the plugin's update in
place on a zero-copy NumPy view of the weights. Parameter names follow PyTorch (``rnn.weight_ih_l0``, ``head.0.weight``, ...), so
``state_dict()`` maps onto an ``nn.LSTM`` + ``nn.Linear`` model by name.

>>> import lstmrs
>>> x, y = lstmrs.datasets.adding_problem(256, 20, seed=0)
>>> model = lstmrs.Model(input_size=2, hidden_size=32, output_size=1, loss="mse", seed=0)
>>> model.compile("adam", lr=1e-2)
>>> history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, seed=0)
>>> model.predict(x[:4]).shape
(4, 1)
"""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from . import checkpoint_format, training
from . import explain as _explain
from . import optim as _optim
from ._lstmrs import LossSpec, ModelCore
from .checkpoint_format import CheckpointError
from .errors import (
    DTypeError,
    GpuUnavailableError,
    InvalidArgumentError,
    LstmrsError,
    ShapeError,
)
from .formats.onnx_export import model_to_onnx
from .formats.safetensors_export import save_model
from .metrics import get_metric
from .rnn import resolve_cell
from .streaming import Stepper
from .validation import check_int

__all__ = ["Loss", "Model"]

_LOSS_ALIASES = {
    "cross_entropy": "cross_entropy",
    "ce": "cross_entropy",
    "crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "mse": "mse",
    "mean_squared_error": "mse",
    "mae": "mae",
    "l1": "mae",
    "mean_absolute_error": "mae",
    "huber": "huber",
    "bce_with_logits": "bce_with_logits",
    "bce": "bce_with_logits",
    "binary_crossentropy": "bce_with_logits",
}
_POOLINGS = ("last", "mean", "attention", "per_step")


class Loss:
    """A loss and its options, as PyTorch names them.

    ``name``: ``"cross_entropy"`` (softmax over the outputs; integer class targets),
    ``"mse"``, ``"mae"``, ``"huber"`` (``delta``), ``"bce_with_logits"`` (sigmoid + binary
    cross-entropy on each output). ``ignore_index`` and ``class_weights`` apply to
    cross-entropy.
    """

    def __init__(
        self,
        name: str = "mse",
        *,
        ignore_index: int = -100,
        class_weights: Any = None,
        delta: float = 1.0,
    ) -> None:
        key = str(name).lower()
        if key not in _LOSS_ALIASES:
            raise InvalidArgumentError(
                f"loss: expected 'cross_entropy', 'mse', 'mae', 'huber' or 'bce_with_logits', "
                f"got {name!r}"
            )
        self.name = _LOSS_ALIASES[key]
        self.ignore_index = int(ignore_index)
        if class_weights is not None:
            if self.name != "cross_entropy":
                raise InvalidArgumentError("class_weights: only the cross_entropy loss takes them")
            w = np.asarray(class_weights, dtype=np.float64)
            if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise InvalidArgumentError(
                    "class_weights: expected a 1-D sequence of finite weights >= 0"
                )
            class_weights = w
        self.class_weights = class_weights
        self.delta = float(delta)
        if not (self.delta > 0 and math.isfinite(self.delta)):
            raise InvalidArgumentError(f"delta: expected a finite number > 0, got {delta!r}")

    @classmethod
    def coerce(cls, loss: Any) -> Loss:
        if isinstance(loss, Loss):
            return loss
        if isinstance(loss, str):
            return cls(loss)
        if isinstance(loss, dict):
            return cls(**loss)
        raise InvalidArgumentError(f"loss: expected a name, a dict or an lstmrs.Loss, got {loss!r}")

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
            "delta": self.delta,
        }

    def spec(self):
        """The binding's ``LossSpec``."""
        return LossSpec(
            self.name,
            ignore_index=self.ignore_index,
            class_weights=None if self.class_weights is None else self.class_weights.tolist(),
            delta=self.delta,
        )

    def __repr__(self) -> str:
        extra = []
        if self.name == "cross_entropy":
            if self.ignore_index != -100:
                extra.append(f"ignore_index={self.ignore_index}")
            if self.class_weights is not None:
                extra.append(f"class_weights={self.class_weights.tolist()}")
        if self.name == "huber":
            extra.append(f"delta={self.delta}")
        return f"Loss({self.name!r}{''.join(', ' + e for e in extra)})"


def _positive_int(name: str, v: Any, lo: int = 1) -> int:
    return check_int(name, v, lo)


def _proj_size_arg(v: Any, cell: Any, hidden_size: int) -> int:
    """``proj_size``: 0, or ``1..hidden_size-1`` on the built-in LSTM (as torch.nn.LSTM)."""
    p = _positive_int("proj_size", v, 0)
    if p and (cell.description is not None or cell.name != "lstm"):
        raise InvalidArgumentError(
            f"proj_size: expected 0 for the {cell.name!r} cell (projections exist for the "
            f"built-in LSTM only, as in torch.nn.LSTM), got {p}"
        )
    if p >= hidden_size and p:
        raise InvalidArgumentError(
            f"proj_size: expected an integer in 0..{hidden_size - 1} (smaller than "
            f"hidden_size={hidden_size}), got {p}"
        )
    return p


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v.lower() not in options:
        raise InvalidArgumentError(
            f"{name}: expected one of {', '.join(map(repr, options))}, got {v!r}"
        )
    return v.lower()


class Model:
    """A recurrent sequence model: input -> LSTM/GRU stack -> pooling -> dense head.

    Input: dense features (``input_size=F``; ``x`` float ``[B, T, F]``) or tokens
    (``vocab_size=V, embedding_dim=E``; ``x`` int ``[B, T]``).
    ``pooling``: ``"last"`` (final hidden state of the top layer; both directions when
    bidirectional), ``"mean"`` (over valid steps), ``"attention"`` (additive attention with
    ``attention_units``, default ``hidden_size``) or ``"per_step"`` (the head at every step:
    sequence labelling, language models). ``head_hidden``: sizes of hidden dense layers with
    ``activation`` between them. ``dropout`` applies between recurrent layers while training.
    ``proj_size``: the LSTM projects its hidden state to that many features, as
    ``torch.nn.LSTM(..., proj_size=P)`` (the pooling and head then read ``P`` per direction;
    CPU only, not exported to ONNX).
    ``seed`` fixes the initial weights (PyTorch's initialisation scheme). ``device``: where the
    recurrent layers run, ``"cpu"`` (default), ``"gpu"`` (the wgpu/Vulkan backend, float32
    LSTM/GRU; raises :class:`~lstmrs.errors.GpuUnavailableError` with the reason when it cannot
    run) or ``"auto"`` (the GPU when usable, else the CPU with a warning); the embedding, head,
    loss and optimizer stay on the host. See :meth:`to`.
    """

    def __init__(
        self,
        *,
        input_size: int | None = None,
        vocab_size: int | None = None,
        embedding_dim: int | None = None,
        cell: Any = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        pooling: str = "last",
        attention_units: int | None = None,
        head_hidden: Any = (),
        activation: str = "tanh",
        output_size: int = 1,
        loss: Any = "mse",
        dtype: str = "float32",
        seed: int | None = None,
        device: str = "cpu",
        proj_size: int = 0,
    ) -> None:
        if (input_size is None) == (vocab_size is None):
            raise InvalidArgumentError(
                "input_size / vocab_size: give exactly one (input_size for float features, "
                "vocab_size + embedding_dim for token ids)"
            )
        if vocab_size is not None:
            vocab_size = _positive_int("vocab_size", vocab_size)
            if embedding_dim is None:
                raise InvalidArgumentError("embedding_dim: required with vocab_size")
            embedding_dim = _positive_int("embedding_dim", embedding_dim)
            features = embedding_dim
            input_cfg = {"kind": "embedding", "vocab": vocab_size, "dim": embedding_dim}
        else:
            if embedding_dim is not None:
                raise InvalidArgumentError("embedding_dim: only with vocab_size (token inputs)")
            input_size = _positive_int("input_size", input_size)
            features = input_size
            input_cfg = {"kind": "dense", "features": input_size}
        # "lstm"/"gru", a registered cell name, a CellSpec or a description: custom cells are
        # kept as their description, so the config (and checkpoints) restore without the plugin.
        resolved = resolve_cell(cell)
        self._cell_name = resolved.name
        # States past h and c (an sLSTM's log-normaliser) start at zero in every call.
        self._has_cell_state = resolved.num_states >= 2
        cell = resolved.name if resolved.description is None else resolved.description
        hidden_size = _positive_int("hidden_size", hidden_size)
        proj_size = _proj_size_arg(proj_size, resolved, hidden_size)
        num_layers = _positive_int("num_layers", num_layers)
        pooling = _choice("pooling", pooling, _POOLINGS)
        activation = _choice("activation", activation, ("tanh", "relu"))
        output_size = _positive_int("output_size", output_size)
        try:
            dropout = float(dropout)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"dropout: expected a number, got {dropout!r}") from None
        if not 0.0 <= dropout < 1.0:
            raise InvalidArgumentError(f"dropout: expected a probability in [0, 1), got {dropout}")
        if pooling == "attention":
            attention_units = _positive_int(
                "attention_units", hidden_size if attention_units is None else attention_units
            )
        elif attention_units is not None:
            raise InvalidArgumentError("attention_units: only with pooling='attention'")
        if isinstance(head_hidden, (int, np.integer)):
            head_hidden = (head_hidden,)
        if not isinstance(head_hidden, (list, tuple, np.ndarray)):
            raise InvalidArgumentError(
                f"head_hidden: expected a size or a list of sizes, got {head_hidden!r}"
            )
        head_hidden = [_positive_int("head_hidden", h) for h in head_hidden]
        if dtype in ("f32", "f4", np.float32):
            dtype = "float32"
        elif dtype in ("f64", "f8", np.float64):
            dtype = "float64"
        if dtype not in ("float32", "float64"):
            raise DTypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        loss = Loss.coerce(loss)
        if loss.class_weights is not None and loss.class_weights.shape != (output_size,):
            raise ShapeError(
                f"class_weights: expected {output_size} weights (one per output class), "
                f"got {loss.class_weights.shape[0]}"
            )
        if seed is None:
            seed = secrets.randbits(63)
        seed = _positive_int("seed", seed, 0)

        self._kwargs: dict[str, Any] = {
            "input_size": input_size,
            "vocab_size": vocab_size,
            "embedding_dim": embedding_dim,
            "cell": cell,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "bidirectional": bool(bidirectional),
            "bias": bool(bias),
            "dropout": dropout,
            "pooling": pooling,
            "attention_units": attention_units,
            "head_hidden": list(head_hidden),
            "activation": activation,
            "output_size": output_size,
            "dtype": dtype,
            "seed": seed,
        }
        if proj_size:
            # Only when set, so configs (and checkpoints) without projections stay as they were.
            self._kwargs["proj_size"] = proj_size
        core_cfg: dict[str, Any] = {
            "input": input_cfg,
            "cell": cell,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "bidirectional": bool(bidirectional),
            "bias": bool(bias),
            "dropout": dropout,
            "pooling": pooling,
            "head_hidden": list(head_hidden),
            "activation": activation,
            "outputs": output_size,
            "proj_size": proj_size,
        }
        if pooling == "attention":
            core_cfg["attention_units"] = attention_units
        self.core = ModelCore(json.dumps(core_cfg), dtype, seed)
        self.to(device)
        self.loss = loss
        self._loss_spec = loss.spec()
        self._features = features
        self._param_specs = [(n, tuple(s)) for n, s in self.core.param_specs()]
        self.stop_training = False
        self.history = None
        self._opt: _optim.Optimizer | None = None
        self._opt_core = None
        self.lr = 0.0
        self.clip_norm: float | None = None
        self.clip_value: float | None = None
        self.schedule: _optim.Schedule | None = None
        self.metrics: list[str] = []
        self._checkpoint: dict | None = None
        # The plugin-optimizer step's buffers, made on first use: a view of the weights (not a
        # copy) and the gradient, reused by every step.
        self._params_view: np.ndarray | None = None
        self._grad: np.ndarray | None = None
        #: Set by ``fit`` when a KeyboardInterrupt stopped it: the checkpoint it saved, or None.
        self._interrupt_checkpoint: str | None = None

    # ---------------------------------------------------------------------------------------
    # Description

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (seed resolved), JSON-friendly: ``Model(**config)``."""
        return {
            **self._kwargs,
            "head_hidden": list(self._kwargs["head_hidden"]),
            "loss": self.loss.get_config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        return cls(**config)

    @property
    def config(self) -> dict[str, Any]:
        return self.get_config()

    @property
    def device(self) -> str:
        """Where the recurrent layers run: ``"cpu"`` or ``"gpu"``."""
        return self.core.device

    def to(self, device: str) -> Model:
        """Moves the recurrent layers to ``device`` (``"cpu"``, ``"gpu"`` or ``"auto"``, as the
        constructor's argument); returns the model. Weights and optimizer state stay where they
        are (on the host), so training continues unchanged."""
        if device not in ("cpu", "gpu", "auto"):
            raise InvalidArgumentError(f"device: expected 'cpu', 'gpu' or 'auto', got {device!r}")
        if device != "auto":
            self.core.set_device(device)
            return self
        try:
            self.core.set_device("gpu")
        except (GpuUnavailableError, InvalidArgumentError) as e:
            warnings.warn(f"device='auto': running on the CPU ({e})", RuntimeWarning, stacklevel=2)
            self.core.set_device("cpu")
        return self

    @property
    def dtype(self) -> str:
        return self._kwargs["dtype"]

    @property
    def pooling(self) -> str:
        return self._kwargs["pooling"]

    @property
    def output_size(self) -> int:
        return self._kwargs["output_size"]

    @property
    def hidden_size(self) -> int:
        return self._kwargs["hidden_size"]

    @property
    def num_layers(self) -> int:
        return self._kwargs["num_layers"]

    @property
    def proj_size(self) -> int:
        """The LSTM's projection of its hidden state (``torch.nn.LSTM``'s); 0 without one."""
        return self._kwargs.get("proj_size", 0)

    @property
    def bidirectional(self) -> bool:
        return self._kwargs["bidirectional"]

    @property
    def cell(self) -> str:
        return self._cell_name

    @property
    def has_cell_state(self) -> bool:
        """Whether the recurrent state is ``(h, c)`` (LSTM-like cells) rather than ``h``."""
        return self._has_cell_state

    @property
    def tokens(self) -> bool:
        """Whether the model reads token ids (it has an embedding)."""
        return self._kwargs["vocab_size"] is not None

    @property
    def num_params(self) -> int:
        return int(self.core.num_params)

    @property
    def param_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self._param_specs)

    def __repr__(self) -> str:
        k = self._kwargs
        inp = (
            f"vocab_size={k['vocab_size']}, embedding_dim={k['embedding_dim']}"
            if self.tokens
            else f"input_size={k['input_size']}"
        )
        proj = f"proj_size={self.proj_size}, " if self.proj_size else ""
        return (
            f"Model({inp}, cell={self.cell!r}, hidden_size={k['hidden_size']}, {proj}"
            f"num_layers={k['num_layers']}, bidirectional={k['bidirectional']}, "
            f"pooling={k['pooling']!r}, output_size={k['output_size']}, loss={self.loss!r}, "
            f"dtype={k['dtype']!r}, params={self.num_params})"
        )

    def summary(self) -> str:
        """A table of the parameters: name, shape, count."""
        width = max(len(n) for n, _ in self._param_specs)
        lines = [repr(self), ""]
        for name, shape in self._param_specs:
            lines.append(f"{name:<{width}}  {tuple(shape)!s:<16} {math.prod(shape):>10,}")
        lines.append(f"{'total':<{width}}  {'':<16} {self.num_params:>10,}")
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------------
    # Weights

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of the weights by name, in the flat buffer's order."""
        flat = self.core.get_flat()
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        offset = 0
        for name, shape in self._param_specs:
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].reshape(shape).copy()
            offset += n
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Sets weights by name; ``strict`` requires exactly the model's names.

        Values are converted to the model's dtype; shapes must match. Nothing changes when any
        entry is wrong.
        """
        names = {n for n, _ in self._param_specs}
        missing = names - set(state)
        unexpected = set(state) - names
        if strict and (missing or unexpected):
            raise InvalidArgumentError(
                f"state_dict: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        if unexpected:
            raise InvalidArgumentError(f"state_dict: unknown parameter(s) {sorted(unexpected)}")
        flat = self.core.get_flat()
        offset = 0
        for name, shape in self._param_specs:
            n = math.prod(shape)
            if name in state:
                v = np.asarray(state[name])
                if v.dtype.kind not in "fiu":
                    raise DTypeError(f"state_dict[{name!r}]: expected real numbers, got {v.dtype}")
                if tuple(v.shape) != tuple(shape):
                    raise ShapeError(
                        f"state_dict[{name!r}]: expected shape {tuple(shape)}, got {tuple(v.shape)}"
                    )
                flat[offset : offset + n] = v.reshape(-1)
            offset += n
        self.core.set_flat(np.ascontiguousarray(flat))

    def get_weights(self) -> np.ndarray:
        """All weights as one flat array (a copy)."""
        return self.core.get_flat()

    def weights_view(self) -> np.ndarray:
        """All weights as one flat, writable array that *is* the model's buffer (no copy):
        writing it changes the model, training shows in it. Plugin optimizers update it in
        place. Do not write it from another thread while the model runs a call."""
        if self._params_view is None:
            self._params_view = self.core.params_view()
        return self._params_view

    def set_weights(self, flat: np.ndarray) -> None:
        self.core.set_flat(np.ascontiguousarray(flat, dtype=self.dtype))

    # ---------------------------------------------------------------------------------------
    # Training configuration

    def compile(
        self,
        optimizer: str | _optim.Optimizer = "adam",
        lr: float | None = None,
        *,
        metrics: Any = (),
        clip_norm: float | None = None,
        clip_value: float | None = None,
        schedule: _optim.Schedule | None = None,
        **optimizer_kwargs: Any,
    ) -> Model:
        """Chooses the optimizer, learning rate, clipping, schedule and metrics; fresh optimizer
        state.

        ``optimizer``: ``"sgd" | "adam" | "adamw" | "rmsprop" | "adagrad"`` with PyTorch's
        keyword arguments (``momentum=0.9``, ``betas=(0.9, 0.99)``, ``weight_decay=...``), a
        name a plugin registered (``"lion"`` from ``lstmrs-lion``), or an :mod:`lstmrs.optim`
        spec. ``clip_norm`` scales the gradient to at most that global
        2-norm, ``clip_value`` clamps each gradient element. ``schedule``: an
        :mod:`lstmrs.optim` schedule applied to ``lr``.
        """
        spec = _optim.get_optimizer(optimizer, lr=lr, **optimizer_kwargs)
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InvalidArgumentError(f"{name}: expected a finite number > 0, got {v!r}")
        if schedule is not None and not isinstance(schedule, _optim.Schedule):
            raise InvalidArgumentError(
                f"schedule: expected an lstmrs.optim schedule (StepLR, ...), got {schedule!r}"
            )
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = list(metrics)
        for m in metrics:  # Fail now on a metric that does not fit the loss.
            get_metric(
                m,
                loss=self.loss.name,
                outputs=self.output_size,
                ignore_index=self.loss.ignore_index,
            )
        core = spec.build(self.num_params, self.dtype)
        if not _optim.is_fused(core):
            missing = [
                a
                for a in ("step", "state_dict", "load_state_dict")
                if not callable(getattr(core, a, None))
            ]
            if not hasattr(core, "steps"):
                missing.append("steps")
            if missing:
                raise InvalidArgumentError(
                    f"optimizer: {type(spec).__name__}.build() returned {type(core).__name__}, "
                    f"which lacks {', '.join(missing)} (see lstmrs.plugins.hookspecs."
                    "lstmrs_register_optimizers)"
                )
        self._opt = spec
        self._opt_core = core
        self.lr = spec.lr
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.schedule = schedule
        self.metrics = metrics
        return self

    @property
    def compiled(self) -> bool:
        return self._opt_core is not None

    @property
    def optimizer(self) -> _optim.Optimizer | None:
        """The optimizer spec given to :meth:`compile`."""
        return self._opt

    @property
    def optimizer_steps(self) -> int:
        return 0 if self._opt_core is None else int(self._opt_core.steps)

    @property
    def fused_optimizer(self) -> bool:
        """Whether a training step is one Rust call (the core's optimizers) rather than the
        core's gradient plus a plugin optimizer's update in Python."""
        return self._opt_core is not None and _optim.is_fused(self._opt_core)

    def _plugin_step_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The weights' view and the reused gradient buffer of the plugin-optimizer step."""
        if self._grad is None:
            self._grad = np.zeros(self.num_params, dtype=self.dtype)
        return self.weights_view(), self._grad

    def _compile_config(self) -> dict[str, Any]:
        cfg = self._opt.get_config()
        cfg["lr"] = self.lr
        return {
            "optimizer": cfg,
            "clip_norm": self.clip_norm,
            "clip_value": self.clip_value,
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "metrics": [m for m in self.metrics if isinstance(m, str)],
        }

    def _restore_compile(self, cfg: dict[str, Any]) -> None:
        opt = _optim.optimizer_from_config(cfg["optimizer"])
        sched = cfg.get("schedule")
        self.compile(
            opt,
            metrics=cfg.get("metrics", []),
            clip_norm=cfg.get("clip_norm"),
            clip_value=cfg.get("clip_value"),
            schedule=None if sched is None else _optim.schedule_from_state(sched),
        )

    # ---------------------------------------------------------------------------------------
    # Training and inference (see lstmrs.training)

    def fit(self, x: Any, y: Any = None, **kwargs: Any):
        """Trains on ``x``, ``y``; returns a :class:`lstmrs.callbacks.History`.

        See :func:`lstmrs.training.fit` for the arguments (epochs, batch_size, validation,
        lengths, shuffle, callbacks, seed, verbose, tbptt, checkpoint_dir, checkpoint_every,
        resume).
        """
        return training.fit(self, x, y, **kwargs)

    def fit_stream(self, stream: Any, seq_len: int, **kwargs: Any):
        """Truncated BPTT over one long stream; see :func:`lstmrs.training.fit_stream`."""
        return training.fit_stream(self, stream, seq_len, **kwargs)

    def evaluate(self, x: Any, y: Any, **kwargs: Any) -> dict[str, Any]:
        """Loss and metrics on ``x``, ``y``; see :func:`lstmrs.training.evaluate`."""
        return training.evaluate(self, x, y, **kwargs)

    def evaluate_stream(self, stream: Any, **kwargs: Any) -> dict[str, Any]:
        """Loss and metrics over a long stream; see :func:`lstmrs.training.evaluate_stream`."""
        return training.evaluate_stream(self, stream, **kwargs)

    def predict(self, x: Any, **kwargs: Any) -> np.ndarray:
        """Model outputs for ``x``; see :func:`lstmrs.training.predict`."""
        return training.predict(self, x, **kwargs)

    def predict_proba(self, x: Any, **kwargs: Any) -> np.ndarray:
        """Class probabilities (softmax for cross-entropy, sigmoid for bce_with_logits)."""
        return self.predict(x, output="probabilities", **kwargs)

    def stepper(self, batch: int = 1):
        """A :class:`lstmrs.streaming.Stepper` for step-by-step inference."""
        return Stepper(self, batch=batch)

    def explain(self, x: Any, lengths: Any = None, **kwargs: Any):
        """Attributions of one output per sequence to the input steps and features
        (``method="integrated_gradients" | "gradient_x_input" | "occlusion"``, ``target``,
        ``baseline``, ``steps``, ``window``); see :func:`lstmrs.explain.explain`."""
        return _explain.explain(self, x, lengths, **kwargs)

    def trace(self, x: Any, lengths: Any = None):
        """Gate activations and states of every layer and direction over time, as named
        NumPy arrays; see :func:`lstmrs.explain.trace`."""
        return _explain.trace(self, x, lengths)

    # ---------------------------------------------------------------------------------------
    # Export: the writers of lstmrs.formats take the model as an argument.

    def to_onnx(self, path: str | os.PathLike | None = None, **kwargs: Any):
        """The model as an ONNX model (``onnx.ModelProto``), checked with ``onnx.checker`` and
        in ONNX Runtime against :meth:`predict` on random inputs with mixed lengths, written to
        ``path`` when given. Keywords: ``opset`` (default 17), ``output`` (``"raw"`` as
        :meth:`predict`, ``"probabilities"`` or ``"labels"``), ``lengths`` (a ``lengths``
        input, default True), ``verify``, ``tolerance``; see
        :func:`lstmrs.formats.onnx_export.model_to_onnx`."""
        return model_to_onnx(self, path, **kwargs)

    def save_safetensors(self, path: str | os.PathLike, *, rnn_only: bool = False) -> None:
        """Writes the weights under their PyTorch names (``rnn.weight_ih_l0``,
        ``head.0.weight``, ...) to a ``.safetensors`` file; ``rnn_only=True`` writes only the
        recurrent layers, named as ``torch.nn.LSTM``/``GRU`` name them."""
        save_model(self, path, rnn_only=rnn_only)

    # ---------------------------------------------------------------------------------------
    # Persistence

    def save(self, path: str | os.PathLike) -> str:
        """Writes a checkpoint directory (weights, optimizer state, config); see
        :mod:`lstmrs.checkpoint`."""
        return checkpoint_format.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, compile: bool = True) -> Model:
        """A model from a checkpoint directory (or a training directory's latest checkpoint).

        With ``compile`` (the default) a checkpoint that holds optimizer state comes back
        compiled with that state, ready to continue training. Every way a checkpoint can be
        broken (a missing or torn file, a bad field in ``config.json``, sizes that do not match
        the weights) raises :class:`~lstmrs.errors.CheckpointError` naming the file and field;
        :mod:`lstmrs.checkpoint_format` reads and checks the files.
        """
        ck = checkpoint_format
        config, tensors = ck.read_checkpoint(path)
        ck.check_model_config(config, tensors)
        where = f"path: {ck.CONFIG_FILE} in {config['_path']!r}"
        try:
            model = cls.from_config(config["model"])
        except TypeError as e:  # an unknown or missing keyword in the saved configuration
            raise CheckpointError(f"{where}: field 'model': {e}") from e
        except (InvalidArgumentError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{where}: field 'model': {e}") from e
        names = [n for n, _ in model.param_specs]
        saved = [n for n, _ in config.get("param_specs", [])]
        if saved and saved != names:
            raise CheckpointError(
                f"path: saved parameters {saved} do not match the model's {names}"
            )
        try:
            model.load_state_dict(tensors.get(ck.MODEL_FILE, {}))
        except (LstmrsError, ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"path: {ck.MODEL_FILE} in {config['_path']!r}: {e}") from e
        missing = None
        if compile and "compile" in config:
            name = config["compile"]["optimizer"]["name"]
            if _optim.optimizer_class(name) is not None:
                ck.restore_compiled(model, config, tensors)
            else:
                # The weights still serve for inference; only continuing the training needs it.
                missing = name
                warnings.warn(
                    f"{config['_path']}: trained with optimizer {name!r}, which no installed "
                    "plugin provides; the model is loaded without its optimizer state (install "
                    "the plugin to continue training)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        model._checkpoint = ck.checkpoint_record(config, tensors, missing)
        return model

    @classmethod
    def resume(cls, path: str | os.PathLike) -> Model:
        """The model of a training checkpoint (or checkpoint directory), set to continue that
        training where it stopped at the next :meth:`fit` (same data, same arguments)."""
        model = cls.load(path, compile=True)
        if not (model._checkpoint or {}).get("training"):
            raise CheckpointError(f"path: {os.fspath(path)!r} holds no training state to resume")
        checkpoint_format._require_optimizer(model, os.fspath(path))
        model._checkpoint["resume"] = True
        return model
