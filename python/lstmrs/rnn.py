"""LSTM and GRU layers with PyTorch's semantics, computed by the Rust core.

The layers mirror ``torch.nn.LSTM`` / ``torch.nn.GRU``: same constructor arguments, parameter
names, shapes and ``state_dict`` order, same output and state shapes, same packed-sequence
semantics for ``lengths``. Differences from torch:

* ``batch_first`` defaults to ``True``.
* Arrays are NumPy arrays; ``float32`` and ``float64`` are supported. Float inputs of the other
  float dtype are converted (a copy); integer, bool, complex and object inputs raise
  :class:`~lstmrs.errors.DTypeError`. Non-contiguous inputs are copied to a contiguous buffer.
* Inputs are checked for NaN/infinity (:class:`~lstmrs.errors.NonFiniteError`) unless the layer
  was built with ``check_finite=False``.
* Gradients come from :meth:`forward_train` + :meth:`backward` (no autograd): the forward pass
  records a tape and the backward pass uses it without recomputing the forward pass.
* Initial weights are uniform in ``[-1/sqrt(hidden_size), 1/sqrt(hidden_size)]`` as in torch, but
  drawn from lstmrs' own generator seeded by ``seed`` (so they differ from torch's values).
* ``device="gpu"`` runs the forward and backward passes on the GPU (Vulkan, float32, LSTM and GRU
  cells) when the extension was built with it; arrays in and out stay NumPy arrays. ``"auto"``
  uses the GPU when it can and otherwise the CPU, with a warning. See :mod:`lstmrs.gpu`.

Like torch, a new layer is in training mode (``training=True``); dropout only acts in training
mode, with ``num_layers > 1`` and ``dropout > 0``, on the outputs of every layer but the last.
Each training-mode call draws a fresh dropout seed from the layer's own generator (seeded from
``seed``), so a run is reproducible from the layer's seed.
"""

from __future__ import annotations

import json
import numbers
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _lstmrs
from . import gpu as _gpu
from .errors import (
    DTypeError,
    GpuUnavailableError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
)
from .formats.onnx_export import layer_to_onnx
from .formats.onnx_read import pick_onnx_node, read_onnx
from .formats.recipe import LayerRecipe
from .formats.safetensors_export import save_state_dict
from .formats.torch_read import read_torch
from .validation import check_bool, check_int, describe

__all__ = [
    "GRU",
    "LSTM",
    "IncompatibleKeys",
    "RnnGradients",
    "RnnTape",
    "get_num_threads",
    "layer_from_recipe",
    "set_num_threads",
]

_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}

# Far beyond any recurrent network that fits in memory; refusing it early turns a sure
# out-of-memory abort in the allocator into an error message.
_MAX_PARAMETERS = 1 << 36


def _dropout_arg(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"dropout: expected a probability in [0, 1), got {describe(value)}"
        )
    p = float(value)
    if not 0.0 <= p < 1.0:  # also refuses NaN
        raise InvalidArgumentError(f"dropout: expected a probability in [0, 1), got {p}")
    return p


def _dtype_arg(dtype: Any) -> np.dtype:
    """'float32' / 'float64' / np.float32 / np.float64 / np.dtype(...) -> np.dtype."""
    # np.dtype(None) is float64; a missing dtype is more likely a mistake than a request for it.
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError:  # NumPy's "data type not understood"
            dt = None
        if dt in _DTYPE_NAMES:
            return dt
    raise DTypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")


def _seed_arg(seed: Any) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    v = check_int("seed", seed, minimum=0)
    if v >= 1 << 64:
        raise InvalidArgumentError(f"seed: expected an integer in [0, 2**64), got {v}")
    return v


def _float_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an ndarray of a real floating dtype (not yet converted to the layer's)."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        # Any conversion failure (ragged lists, tensors that need grad, a failing __array__) is
        # this argument's error.
        except Exception as e:  # noqa: BLE001
            raise DTypeError(
                f"{name}: expected an array-like of real numbers, got {describe(value)} "
                f"which NumPy cannot convert ({e})"
            ) from None
    if arr.dtype.kind != "f":
        raise DTypeError(
            f"{name}: expected a real floating-point array (float32 or float64), "
            f"got dtype {arr.dtype}"
        )
    return arr


def _device_arg(value: Any, dtype: np.dtype, cell: str) -> str:
    """Resolves ``device`` to ``"cpu"`` or ``"gpu"``. ``"gpu"`` raises when the layer or the
    machine cannot use it; ``"auto"`` falls back to the CPU with a warning."""
    if value not in ("cpu", "gpu", "auto"):
        raise InvalidArgumentError(f"device: expected 'cpu', 'gpu' or 'auto', got {value!r}")
    if value == "cpu":
        return "cpu"
    # What the GPU kernels implement: float32, the LSTM (projected or not) and the GRU.
    unsupported = None
    if dtype != np.float32:
        unsupported = f"the GPU backend computes in float32, the layer's dtype is {dtype}"
    elif cell not in ("lstm", "gru"):
        unsupported = "the GPU backend implements the LSTM and GRU cells, not custom cells"
    if unsupported is not None:
        if value == "gpu":
            raise InvalidArgumentError(f"device: 'gpu' is not possible: {unsupported}")
        reason = unsupported
    else:
        info = _gpu.gpu_info()
        if info["available"]:
            return "gpu"
        if value == "gpu":
            raise GpuUnavailableError(f"device='gpu': {info['reason']}")
        reason = info["reason"]
    warnings.warn(f"device='auto': running on the CPU ({reason})", RuntimeWarning, stacklevel=4)
    return "cpu"


def _check_finite(name: str, arr: np.ndarray) -> None:
    # isfinite().all() is as fast as a float sum and, unlike a sum, cannot overflow.
    if np.isfinite(arr).all():
        return
    bad = ~np.isfinite(arr)
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    raise NonFiniteError(
        f"{name}: expected finite values, got {arr[index]} at index {index} "
        f"({int(bad.sum())} non-finite values); build the layer with check_finite=False "
        "to skip this check"
    )


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(int(d) for d in shape))


class IncompatibleKeys(NamedTuple):
    """What :meth:`LSTM.load_state_dict` ignored when ``strict=False`` (torch's return value)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclass
class RnnGradients:
    """Gradients from :meth:`LSTM.backward` / :meth:`GRU.backward`.

    Attributes:
        params: gradient of every parameter, with PyTorch's names and shapes, in ``state_dict``
            order (the arrays are views into ``flat``).
        input: gradient of the input ``x``, with its shape.
        state: gradient of the initial state: ``dh0`` for a GRU, ``(dh0, dc0)`` for an LSTM.
        flat: all parameter gradients in one 1-D array, in the order of
            :meth:`LSTM.parameters_flat`.
    """

    params: dict[str, np.ndarray]
    input: np.ndarray
    state: np.ndarray | tuple[np.ndarray, np.ndarray]
    flat: np.ndarray


class RnnTape:
    """What :meth:`backward` needs from one :meth:`forward_train` call. Opaque.

    A tape belongs to the layer that recorded it and to the parameters it had then: changing the
    parameters (``load_state_dict``, ``set_parameters_flat``) makes older tapes unusable.
    :meth:`backward` uses the tape up, as PyTorch's ``backward()`` frees its graph (its gate
    gradients overwrite the tape's activations, which saves memory): pass ``retain_tape=True``
    to every backward call on it but the last to use it more than once.
    """

    __slots__ = ("_core", "_unbatched")

    def __init__(self, core: _lstmrs.Tape, unbatched: bool) -> None:
        self._core = core
        self._unbatched = unbatched

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._core.dtype)

    @property
    def seq_len(self) -> int:
        return self._core.seq_len

    @property
    def batch(self) -> int:
        """Sequences in the batch (1 for an unbatched input)."""
        return self._core.batch

    @property
    def batch_first(self) -> bool:
        return self._core.batch_first

    @property
    def unbatched(self) -> bool:
        return self._unbatched

    @property
    def consumed(self) -> bool:
        """Whether a :meth:`backward` call without ``retain_tape`` has used the tape up."""
        return self._core.consumed

    def __repr__(self) -> str:
        return (
            f"RnnTape(dtype={self._core.dtype}, seq_len={self.seq_len}, batch={self.batch}, "
            f"batch_first={self.batch_first}, unbatched={self.unbatched})"
        )


class FlatParameters:
    """Named parameters over one flat buffer held by a Rust core: ``state_dict``,
    ``load_state_dict`` and the flat views, shared by the recurrent layers and ConvLSTM. The
    class sets ``_core`` (``get_param``/``get_flat``/``set_flat``), ``_layout`` (name ->
    ``(offset, shape)``), ``_dtype``, ``_check_finite`` and ``num_parameters``."""

    _core: Any
    _layout: dict[str, tuple[int, tuple[int, ...]]]
    _dtype: np.dtype
    _check_finite: bool
    num_parameters: Any

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters with PyTorch's names, shapes and order."""
        return {name: self._core.get_param(name) for name in self._layout}

    def load_state_dict(self, state_dict: Mapping, strict: bool = True) -> IncompatibleKeys:
        """Loads parameters from a mapping of name -> array (NumPy arrays, torch tensors, lists).

        ``{k: v.numpy() for k, v in torch_lstm.state_dict().items()}`` loads unchanged. With
        ``strict=True`` the names must match exactly (missing and unexpected keys are listed in
        the error); with ``strict=False`` the known names are loaded and the rest reported in
        the returned :class:`IncompatibleKeys`. Shapes are always checked. Either everything
        is loaded or, on an error, nothing.
        """
        if not isinstance(state_dict, Mapping):
            raise InvalidArgumentError(
                f"state_dict: expected a mapping of parameter names to arrays, "
                f"got {describe(state_dict)}"
            )
        strict = check_bool("strict", strict)
        missing = [k for k in self._layout if k not in state_dict]
        unexpected = [str(k) for k in state_dict if k not in self._layout]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise InvalidArgumentError(
                f"state_dict: expected exactly the keys {list(self._layout)}, got "
                + " and ".join(parts)
            )
        flat = self._core.get_flat()
        for name, (offset, shape) in self._layout.items():
            if name not in state_dict:
                continue
            label = f"state_dict[{name!r}]"
            arr = _float_array(label, state_dict[name])
            if arr.shape != shape:
                raise ShapeError(
                    f"{label}: expected shape {_shape_str(shape)}, got {_shape_str(arr.shape)}"
                )
            if self._check_finite:
                _check_finite(label, arr)
            flat[offset : offset + arr.size] = arr.reshape(-1)
        self._core.set_flat(flat)
        return IncompatibleKeys(missing, unexpected)

    def parameters_flat(self) -> np.ndarray:
        """A copy of all parameters in one 1-D array, ``state_dict`` order, row-major each."""
        return self._core.get_flat()

    def set_parameters_flat(self, flat: Any) -> None:
        """Overwrites all parameters from a 1-D array laid out as :meth:`parameters_flat`."""
        arr = _float_array("flat", flat)
        if arr.shape != (self.num_parameters,):
            raise ShapeError(
                f"flat: expected shape ({self.num_parameters},) (num_parameters), "
                f"got {_shape_str(arr.shape)}"
            )
        if self._check_finite:
            _check_finite("flat", arr)
        self._core.set_flat(np.ascontiguousarray(arr, dtype=self._dtype))


class _RNNBase(FlatParameters):
    _cell = ""
    _has_cell_state = False

    def _cell_sizes(self) -> tuple[int, int, int]:
        """Gate blocks of ``W_ih`` and ``W_hh`` and unit parameters per layer-direction."""
        g = 4 if self._has_cell_state else 3
        return g, g, 0

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = "float32",
        seed: int | None = None,
        *,
        check_finite: bool = True,
        device: str = "cpu",
        proj_size: int = 0,
    ) -> None:
        self._setup(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            dtype,
            seed,
            check_finite,
            proj_size,
        )
        if self._dropout > 0 and self._num_layers == 1:
            # torch warns the same way: dropout acts between layers, so one layer gets none.
            warnings.warn(
                f"dropout={self._dropout} has no effect with num_layers=1: dropout is applied "
                "to the outputs of every layer but the last",
                UserWarning,
                stacklevel=3,
            )
        self.device = device

    def _setup(
        self,
        input_size: Any,
        hidden_size: Any,
        num_layers: Any,
        bias: Any,
        batch_first: Any,
        dropout: Any,
        bidirectional: Any,
        dtype: Any,
        seed: Any,
        check_finite: Any,
        proj_size: Any = 0,
    ) -> None:
        self._input_size = check_int("input_size", input_size)
        self._hidden_size = check_int("hidden_size", hidden_size)
        self._proj_size = self._proj_size_arg(proj_size)
        self._num_layers = check_int("num_layers", num_layers)
        self._bias = check_bool("bias", bias)
        self.batch_first = batch_first
        self.dropout = dropout
        self._bidirectional = check_bool("bidirectional", bidirectional)
        self._dtype = _dtype_arg(dtype)
        self._seed = _seed_arg(seed)
        self.check_finite = check_finite
        self.training = True
        self._device = "cpu"

        d, h, s = self.num_directions, self._hidden_size, self.state_size
        gx, gh, units = self._cell_sizes()
        b = 1 if self._bias else 0
        per_dir0 = h * (gx * (self._input_size + b) + gh * (s + b) + units + self._proj_size)
        per_dir = h * (gx * (d * s + b) + gh * (s + b) + units + self._proj_size)
        total = d * (per_dir0 + (self._num_layers - 1) * per_dir)
        if total > _MAX_PARAMETERS:
            raise InvalidArgumentError(
                f"hidden_size: a network of these sizes would have {total} parameters, more than "
                f"the {_MAX_PARAMETERS} lstmrs supports (input_size={self._input_size}, "
                f"hidden_size={h}, num_layers={self._num_layers})"
            )

        self._core = _lstmrs.RnnCore(
            self._cell,
            self._input_size,
            self._hidden_size,
            self._num_layers,
            self._bias,
            self._bidirectional,
            _DTYPE_NAMES[self._dtype],
            self._seed,
            proj_size=self._proj_size,
        )
        # name -> (offset, shape) in the flat buffer, state_dict order.
        self._layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in self._core.param_specs():
            self._layout[name] = (offset, tuple(shape))
            offset += int(np.prod(shape))
        # Dropout seeds: a stream of its own, so a run is reproducible from `seed`.
        self._rng = np.random.default_rng(self._seed)

    def _proj_size_arg(self, value: Any) -> int:
        """``proj_size`` as torch checks it: 0, or ``1..hidden_size-1`` on an LSTM."""
        p = check_int("proj_size", value, minimum=0)
        if p == 0:
            return 0
        if self._cell != "lstm":
            cell = getattr(self, "_resolved", None)
            name = cell.name if cell is not None else self._cell
            raise InvalidArgumentError(
                f"proj_size: expected 0 for the {name!r} cell (projections exist for the LSTM "
                f"only, as in torch.nn.LSTM), got {p}"
            )
        if p >= self._hidden_size:
            raise InvalidArgumentError(
                f"proj_size: expected an integer in 0..{self._hidden_size - 1} (smaller than "
                f"hidden_size={self._hidden_size}), got {p}"
            )
        return p

    # -- configuration -------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def proj_size(self) -> int:
        """Features of the projected hidden state (``h``, the output); 0 without projections."""
        return self._proj_size

    @property
    def state_size(self) -> int:
        """Features of ``h`` and of each direction's output: ``proj_size`` or ``hidden_size``."""
        return self._proj_size or self._hidden_size

    @property
    def bias(self) -> bool:
        return self._bias

    @property
    def bidirectional(self) -> bool:
        return self._bidirectional

    @property
    def num_directions(self) -> int:
        return 2 if self._bidirectional else 1

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def seed(self) -> int:
        """The seed of the initial weights and of the dropout stream (drawn when None was given)."""
        return self._seed

    @property
    def batch_first(self) -> bool:
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: Any) -> None:
        self._batch_first = check_bool("batch_first", value)

    @property
    def dropout(self) -> float:
        return self._dropout

    @dropout.setter
    def dropout(self, value: Any) -> None:
        self._dropout = _dropout_arg(value)

    @property
    def check_finite(self) -> bool:
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: Any) -> None:
        self._check_finite = check_bool("check_finite", value)

    @property
    def device(self) -> str:
        """Where forward and backward run: ``"cpu"`` or ``"gpu"``. Assigning ``"cpu"``,
        ``"gpu"`` or ``"auto"`` moves the layer (the weights stay host arrays; each call
        uploads them). A tape records where it was made, so a backward pass runs on the device
        of its forward pass."""
        return self._device

    @device.setter
    def device(self, value: Any) -> None:
        self._device = _device_arg(value, self._dtype, self._cell)

    @property
    def num_parameters(self) -> int:
        return self._core.num_parameters

    def train(self, mode: bool = True):
        """Sets training mode (dropout on, when configured); returns the layer."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self):
        """Sets evaluation mode (no dropout); returns the layer."""
        return self.train(False)

    def __repr__(self) -> str:
        extra = []
        if self._num_layers != 1:
            extra.append(f"num_layers={self._num_layers}")
        if not self._bias:
            extra.append("bias=False")
        if not self._batch_first:
            extra.append("batch_first=False")
        if self._dropout:
            extra.append(f"dropout={self._dropout}")
        if self._bidirectional:
            extra.append("bidirectional=True")
        if self._proj_size:
            extra.append(f"proj_size={self._proj_size}")
        extra.append(f"dtype={_DTYPE_NAMES[self._dtype]}")
        if self._device != "cpu":
            extra.append(f"device={self._device!r}")
        args = ", ".join([str(self._input_size), str(self._hidden_size), *extra])
        return f"{type(self).__name__}({args})"

    # -- parameters ----------------------------------------------------------------------------

    # -- interop: ONNX, PyTorch, safetensors ---------------------------------------------------
    # The readers and writers of lstmrs.formats sit below the layers: they take a layer as an
    # argument or hand back a recipe that layer_from_recipe builds. onnx, onnxruntime and torch
    # are optional and imported by them when first needed.

    def to_onnx(self, path: Any = None, **kwargs: Any):
        """The layer as an ONNX model (``onnx.ModelProto``), checked with ``onnx.checker`` and
        in ONNX Runtime against this layer, written to ``path`` when given. Keywords:
        ``opset`` (default 17), ``lengths`` (a ``lengths`` input, default True),
        ``initial_state`` (``h0``/``c0`` inputs), ``verify``, ``tolerance``; see
        :func:`lstmrs.formats.onnx_export.layer_to_onnx`."""
        return layer_to_onnx(self, path, **kwargs)

    def save_safetensors(self, path: Any) -> None:
        """Writes the parameters under PyTorch's names to a ``.safetensors`` file:
        ``torch.nn.LSTM(...).load_state_dict(safetensors.torch.load_file(path))`` loads it."""
        save_state_dict(self.state_dict(), path, {"lstmrs.layer": repr(self)})

    @classmethod
    def from_torch(cls, module: Any, *, dtype: Any = None):
        """A layer with a live ``torch.nn.LSTM`` / ``GRU`` (``RNN`` for :class:`RNN`)'s
        configuration and weights (``batch_first``, ``bidirectional``, stacked, training
        mode); ``dtype`` None keeps the module's. See
        :func:`lstmrs.formats.torch_read.read_torch`."""
        recipe = read_torch(module, dtype=dtype)
        want = _SOURCE_OF.get(cls)
        if want is not None and recipe.source != want:
            raise InvalidArgumentError(
                f"module: {cls.__name__}.from_torch expects a torch.nn.{want}, got "
                f"{type(module).__name__} (mode {recipe.source!r}); use lstmrs.RNN.from_torch "
                "for any cell"
            )
        return layer_from_recipe(recipe, cls)

    @classmethod
    def from_onnx(cls, source: Any, node: Any = None, *, dtype: Any = "float32"):
        """A layer from an ``LSTM``/``GRU`` node of an ONNX file or ``ModelProto``: the only
        such node, or ``node`` (its name or its index among them). See
        :func:`lstmrs.formats.onnx_read.read_onnx`."""
        recipe = pick_onnx_node(read_onnx(source, dtype=dtype), node, _SOURCE_OF.get(cls))
        return layer_from_recipe(recipe, cls)

    # -- pickling (copy.deepcopy, multiprocessing) ---------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "config": (
                self._input_size,
                self._hidden_size,
                self._num_layers,
                self._bias,
                self._batch_first,
                self._dropout,
                self._bidirectional,
                _DTYPE_NAMES[self._dtype],
                self._seed,
                self._check_finite,
                self._proj_size,
            ),
            "training": self.training,
            "device": self._device,
            "flat": self.parameters_flat(),
            "rng": self._rng.bit_generator.state,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(*state["config"])
        self.training = state["training"]
        self._core.set_flat(np.ascontiguousarray(state["flat"], dtype=self._dtype))
        self._rng.bit_generator.state = state["rng"]
        # A GPU layer restored where no GPU is usable raises GpuUnavailableError, as "gpu" does.
        self.device = state.get("device", "cpu")

    # -- forward -------------------------------------------------------------------------------

    def _x_shape(self) -> str:
        lead = "B, T" if self._batch_first else "T, B"
        return f"[{lead}, {self._input_size}] (batch_first={self._batch_first})"

    def _state_shape(self, batch: int, unbatched: bool, size: int) -> tuple[int, ...]:
        ld = self._num_layers * self.num_directions
        return (ld, size) if unbatched else (ld, batch, size)

    def _state_array(
        self, name: str, label: str, value: Any, batch: int, unbatched: bool, cell: bool = False
    ) -> np.ndarray | None:
        """One state (or state gradient) checked and in the core's [L*D, B, F] layout: ``F``
        is ``hidden_size`` for the cell state (``cell``), :attr:`state_size` for ``h``."""
        if value is None:
            return None
        arr = _float_array(name, value)
        size = self._hidden_size if cell else self.state_size
        want = self._state_shape(batch, unbatched, size)
        if arr.shape != want:
            f = "H" if cell or not self._proj_size else "proj_size"
            what = (
                f"[num_layers*num_directions, {f}]"
                if unbatched
                else (f"[num_layers*num_directions, B, {f}]")
            )
            raise ShapeError(
                f"{name} ({label}): expected shape {_shape_str(want)} = {what}, "
                f"got {_shape_str(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=self._dtype)
        if self._check_finite:
            _check_finite(name, arr)
        if unbatched:
            arr = arr.reshape(want[0], 1, want[1])
        return arr

    def _states(
        self, state: Any, batch: int, unbatched: bool, names: tuple[str, str], arg: str
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if state is None:
            return None, None
        if self._has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise InvalidArgumentError(
                    f"{arg}: expected a tuple ({names[0]}, {names[1]}) for an LSTM, "
                    f"got {describe(state)}"
                )
            return (
                self._state_array(names[0], f"{arg}[0]", state[0], batch, unbatched),
                self._state_array(names[1], f"{arg}[1]", state[1], batch, unbatched, cell=True),
            )
        try:
            return self._state_array(names[0], arg, state, batch, unbatched), None
        except ShapeError:
            if isinstance(state, (tuple, list)) and len(state) == 2:
                # An LSTM-style (h0, c0) pair given to a cell with one state.
                cell = getattr(self, "cell", None) or type(self).__name__
                raise ShapeError(
                    f"{arg}: the cell {cell!r} has one state (h), so pass {names[0]} alone, "
                    f"not a pair ({names[0]}, {names[1]}); got a {type(state).__name__} of "
                    f"two: {describe(state[0])} and {describe(state[1])}"
                ) from None
            raise

    def _lengths(self, lengths: Any, batch: int, seq_len: int, unbatched: bool):
        if lengths is None:
            return None
        try:
            arr = np.asarray(lengths)
        except Exception as e:  # noqa: BLE001 - any conversion failure is this argument's error
            raise InvalidArgumentError(
                f"lengths: expected a 1-D sequence of integers, got {describe(lengths)} "
                f"which NumPy cannot convert ({e})"
            ) from None
        if unbatched and arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or arr.shape[0] != batch:
            raise InvalidArgumentError(
                f"lengths: expected {batch} integers (one per sequence of x), "
                f"got shape {_shape_str(arr.shape)}"
            )
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentError(f"lengths: expected integers, got dtype {arr.dtype}")
        bad = (arr < 1) | (arr > seq_len)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgumentError(
                f"lengths: expected every length in 1..{seq_len} (the sequence length of x), "
                f"got {arr[i]} at index {i}"
            )
        return np.ascontiguousarray(arr, dtype=np.int64)

    def _run(self, x: Any, state: Any, lengths: Any, keep_tape: bool):
        arr = _float_array("x", x)
        unbatched = arr.ndim == 2
        if arr.ndim not in (2, 3):
            raise ShapeError(
                f"x: expected shape {self._x_shape()} or an unbatched [T, {self._input_size}], "
                f"got {_shape_str(arr.shape)}"
            )
        if unbatched:
            if arr.shape[1] != self._input_size:
                raise ShapeError(
                    f"x: expected shape [T, {self._input_size}] (unbatched), "
                    f"got {_shape_str(arr.shape)}"
                )
            seq_len, batch = arr.shape[0], 1
        else:
            if arr.shape[2] != self._input_size:
                raise ShapeError(
                    f"x: expected shape {self._x_shape()}, got {_shape_str(arr.shape)}"
                )
            batch, seq_len = arr.shape[:2] if self._batch_first else arr.shape[1::-1]
        if batch == 0 or seq_len == 0:
            raise ShapeError(
                f"x: expected at least one sequence of at least one step, "
                f"got shape {_shape_str(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=self._dtype)
        if self._check_finite:
            _check_finite("x", arr)
        h0, c0 = self._states(state, batch, unbatched, ("h0", "c0"), "state")
        lens = self._lengths(lengths, batch, seq_len, unbatched)

        # An unbatched [T, I] input is a batch of one; [1, T, I] is its batch-first view.
        batch_first = True if unbatched else self._batch_first
        if unbatched:
            arr = arr.reshape(1, seq_len, self._input_size)
        training = bool(self.training)
        seed = 0
        if training and self._dropout > 0 and self._num_layers > 1:
            seed = int(self._rng.integers(0, 1 << 64, dtype=np.uint64))
        out, h_n, c_n, tape = self._core.forward(
            arr, h0, c0, lens, batch_first, training, self._dropout, seed, keep_tape, self._device
        )
        if unbatched:
            out, h_n = out[0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        new_state = (h_n, c_n) if self._has_cell_state else h_n
        return out, new_state, (None if tape is None else RnnTape(tape, unbatched))

    def forward(self, x: Any, state: Any = None, lengths: Any = None):
        """Runs the layer; see the class docstring for shapes."""
        out, new_state, _ = self._run(x, state, lengths, keep_tape=False)
        return out, new_state

    def __call__(self, x: Any, state: Any = None, lengths: Any = None):
        return self.forward(x, state, lengths)

    def forward_train(self, x: Any, state: Any = None, lengths: Any = None):
        """Like :meth:`forward`, and also returns the tape :meth:`backward` needs:
        ``(out, state, tape)``. Dropout follows the layer's ``training`` flag as in forward."""
        return self._run(x, state, lengths, keep_tape=True)

    # -- backward ------------------------------------------------------------------------------

    def backward(
        self,
        tape: RnnTape,
        d_out: Any = None,
        d_state: Any = None,
        *,
        retain_tape: bool = False,
    ) -> RnnGradients:
        """Gradients of a scalar loss with respect to parameters, input and initial state.

        ``d_out`` is the gradient of the loss with respect to the output of the
        :meth:`forward_train` call that made ``tape`` (same shape), ``d_state`` with respect to
        its final state (GRU: ``dh_n``; LSTM: ``(dh_n, dc_n)``, either may be None). Absent
        gradients count as zero, but at least one must be given. The forward pass is not
        recomputed.

        Like PyTorch's ``backward(retain_graph=False)``, the call uses ``tape`` up: the gate
        gradients are computed over its activations in place and its buffers are freed as the
        pass goes, so a training step's peak memory is the tape plus little more. A second call
        on the same tape raises :class:`~lstmrs.errors.InvalidArgumentError`;
        ``retain_tape=True`` keeps the tape for another call (the gradients are the same, bit
        for bit).
        """
        if not isinstance(tape, RnnTape):
            raise InvalidArgumentError(
                f"tape: expected the RnnTape returned by forward_train(), got {describe(tape)}"
            )
        batch, seq_len, unbatched = tape.batch, tape.seq_len, tape.unbatched
        out_features = self.num_directions * self.state_size
        if unbatched:
            out_shape: tuple[int, ...] = (seq_len, out_features)
        elif tape.batch_first:
            out_shape = (batch, seq_len, out_features)
        else:
            out_shape = (seq_len, batch, out_features)

        g_out = None
        if d_out is not None:
            g_out = _float_array("d_out", d_out)
            if g_out.shape != out_shape:
                raise ShapeError(
                    f"d_out: expected shape {_shape_str(out_shape)} (the output's), "
                    f"got {_shape_str(g_out.shape)}"
                )
            g_out = np.ascontiguousarray(g_out, dtype=self._dtype)
            if self._check_finite:
                _check_finite("d_out", g_out)
            if unbatched:
                g_out = g_out.reshape(1, *out_shape)
        g_h, g_c = self._states(d_state, batch, unbatched, ("dh_n", "dc_n"), "d_state")
        if g_out is None and g_h is None and g_c is None:
            raise InvalidArgumentError(
                "d_out, d_state: expected at least one gradient, got neither"
            )

        flat, d_x, d_h0, d_c0 = self._core.backward(
            tape._core, g_out, g_h, g_c, retain_tape=bool(retain_tape)
        )
        params = {
            name: flat[offset : offset + int(np.prod(shape))].reshape(shape)
            for name, (offset, shape) in self._layout.items()
        }
        if unbatched:
            d_x, d_h0 = d_x[0], d_h0[:, 0]
            d_c0 = None if d_c0 is None else d_c0[:, 0]
        grad_state = (d_h0, d_c0) if self._has_cell_state else d_h0
        return RnnGradients(params=params, input=d_x, state=grad_state, flat=flat)


class LSTM(_RNNBase):
    """A (stacked, optionally bidirectional) LSTM with ``torch.nn.LSTM``'s semantics.

    Args:
        input_size: features of each input step (``I``).
        hidden_size: features of the hidden state (``H``).
        num_layers: stacked layers (``L``).
        bias: whether the layers have ``bias_ih``/``bias_hh``.
        batch_first: inputs and outputs are ``[B, T, F]`` (default, unlike torch) instead of
            ``[T, B, F]``.
        dropout: probability of dropping each output element of every layer but the last, in
            training mode.
        bidirectional: adds a reverse direction (``D = 2``); outputs concatenate both.
        dtype: ``"float32"`` (default) or ``"float64"`` (or the NumPy types).
        seed: seed of the initial weights and of the dropout stream; ``None`` draws one (see
            the ``seed`` attribute).
        check_finite: raise :class:`~lstmrs.errors.NonFiniteError` on NaN/inf inputs.
        device: ``"cpu"`` (default), ``"gpu"`` (raises
            :class:`~lstmrs.errors.GpuUnavailableError` with the reason when no GPU is usable)
            or ``"auto"`` (the GPU when usable, else the CPU with a warning). GPU: float32 only.
        proj_size: torch's projection (keyword only): with ``0 < P < H`` each layer-direction
            projects its hidden state, ``h = W_hr (o * tanh(c))`` with ``weight_hr_l{k}`` of
            shape ``[P, H]``, so ``h``, the output and what ``W_hh`` (``[4H, P]``) and the next
            layer read have ``P`` features while ``c`` keeps ``H``. CPU only.

    ``layer(x, state=None, lengths=None)`` returns ``out, (h_n, c_n)`` (``S`` below is
    ``proj_size`` when set, else ``H``):

    * ``x``: ``[B, T, I]`` (``batch_first``) or ``[T, B, I]``, or an unbatched ``[T, I]``.
    * ``state``: ``(h0, c0)``, ``h0`` ``[L*D, B, S]`` and ``c0`` ``[L*D, B, H]`` (``[L*D, S]``
      and ``[L*D, H]`` unbatched); zeros if None.
    * ``lengths``: ``B`` integers in ``1..T``: sequence ``b`` only has its first
      ``lengths[b]`` steps (torch's packed sequences): its outputs past that are zero and its
      final state is the one at its last step; the reverse direction starts there.
    * ``out``: ``[B, T, D*S]`` / ``[T, B, D*S]`` / ``[T, D*S]``; ``h_n``, ``c_n``: like ``h0``,
      ``c0``.

    Training without autograd: :meth:`forward_train` keeps a tape, :meth:`backward` turns output
    gradients into parameter, input and state gradients. A manual SGD step on
    ``loss = sum((out - target)**2)``:

    >>> import numpy as np
    >>> import lstmrs
    >>> lstm = lstmrs.LSTM(3, 4, seed=0, dtype="float64")
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 3))
    >>> target = np.full((2, 5, 4), 0.5)
    >>> out, (h_n, c_n), tape = lstm.forward_train(x)
    >>> loss = float(((out - target) ** 2).sum())
    >>> grads = lstm.backward(tape, d_out=2 * (out - target))
    >>> lstm.load_state_dict({k: v - 0.05 * grads.params[k] for k, v in lstm.state_dict().items()})
    IncompatibleKeys(missing_keys=[], unexpected_keys=[])
    >>> out2, _ = lstm(x)
    >>> bool(((out2 - target) ** 2).sum() < loss)
    True

    ``lstm.set_parameters_flat(lstm.parameters_flat() - 0.05 * grads.flat)`` is the same step
    on the flat buffer.
    """

    _cell = "lstm"
    _has_cell_state = True


class GRU(_RNNBase):
    """A (stacked, optionally bidirectional) GRU with ``torch.nn.GRU``'s semantics.

    Same arguments and methods as :class:`LSTM`; the state is a single array:
    ``layer(x, state=None, lengths=None)`` takes ``state=h0`` and returns ``out, h_n``, with
    ``h0``/``h_n`` of shape ``[L*D, B, H]`` (``[L*D, H]`` unbatched), and :meth:`backward` takes ``d_state=dh_n`` and returns
    ``state=dh0``. Gates r, z, n as in torch:
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    >>> import numpy as np
    >>> import lstmrs
    >>> gru = lstmrs.GRU(3, 4, num_layers=2, seed=0)
    >>> out, h_n = gru(np.zeros((2, 5, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((2, 5, 4), (2, 2, 4))
    """

    _cell = "gru"
    _has_cell_state = False


class ResolvedCell(NamedTuple):
    """A cell argument resolved for the core: ``core`` is ``"lstm"``/``"gru"`` or the JSON
    description; ``description`` the parsed description (None for the built-in kernels)."""

    name: str
    core: str
    description: dict[str, Any] | None
    num_states: int


def resolve_cell(cell: Any) -> ResolvedCell:
    """Resolves a cell given as ``"lstm"``/``"gru"``, the name of a registered cell
    (:func:`lstmrs.plugins.get_cells`), a :class:`~lstmrs.cells.CellSpec`, or a description (a
    dict or its JSON text). Cells with a native kernel (``spec.native``) use it; the others are
    compiled by the Rust core (validated here, once per distinct description)."""
    if isinstance(cell, str) and cell.lower() in ("lstm", "gru"):
        name = cell.lower()
        return ResolvedCell(name, name, None, 2 if name == "lstm" else 1)
    if isinstance(cell, str) and cell.lstrip().startswith("{"):
        text = cell
    elif isinstance(cell, Mapping):
        text = json.dumps(dict(cell))
    else:
        spec = cell
        if isinstance(cell, str):
            # start-up time: the registry (pluggy, importlib.metadata) costs ~50 ms: loaded on first use
            from . import plugins

            spec = plugins.lookup("cells", cell)
        native = getattr(spec, "native", None)
        if native in ("lstm", "gru"):
            return ResolvedCell(native, native, None, 2 if native == "lstm" else 1)
        if not hasattr(spec, "to_json"):
            raise InvalidArgumentError(
                "cell: expected 'lstm', 'gru', a registered cell name, a CellSpec or a cell "
                f"description, got {describe(cell)}"
            )
        text = spec.to_json()
    name = _lstmrs.compile_cell(text)
    description = json.loads(text)
    return ResolvedCell(name, text, description, len(description["states"]))


class RNN(_RNNBase):
    """A (stacked, optionally bidirectional) recurrent layer running any cell: ``"lstm"``,
    ``"gru"``, a cell registered by a plugin (:func:`lstmrs.plugins.get_cells`), a
    :class:`~lstmrs.cells.CellSpec` or a cell description. Plugin cells are compiled by the
    Rust core and run through the same sweep as the built-in ones (layers, directions,
    ``lengths``, dropout, training with :meth:`forward_train`/:meth:`backward`).

    Same arguments and methods as :class:`LSTM` plus ``cell``. The state is ``(h, c)`` for a
    cell with two states (state 1 is exposed as ``c``) and ``h`` alone for a one-state cell.
    Parameters: ``weight_ih_l{k}``, ``weight_hh_l{k}`` (absent without recurrent gates),
    ``bias_ih_l{k}``, ``bias_hh_l{k}``, then each unit parameter ``{name}_l{k}`` of shape ``[H]``.

    >>> import numpy as np
    >>> import lstmrs
    >>> rnn = lstmrs.RNN(3, 4, cell="gru", seed=0)
    >>> out, h_n = rnn(np.zeros((2, 5, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((2, 5, 4), (1, 2, 4))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        cell: Any = "lstm",
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = "float32",
        seed: int | None = None,
        *,
        check_finite: bool = True,
        device: str = "cpu",
        proj_size: int = 0,
    ) -> None:
        self._set_cell(resolve_cell(cell))
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            dtype,
            seed,
            check_finite=check_finite,
            device=device,
            proj_size=proj_size,
        )

    def _set_cell(self, r: ResolvedCell) -> None:
        # States past h and c (an sLSTM's log-normaliser) are internal to each call: they start
        # at zero and are not returned (a truncated-BPTT chunk restarts them).
        self._resolved = r
        self._cell = r.core
        self._has_cell_state = r.num_states >= 2

    def _cell_sizes(self) -> tuple[int, int, int]:
        d = self._resolved.description
        if d is None:
            return super()._cell_sizes()
        return int(d["x_gates"]), int(d["h_gates"]), len(d.get("unit_params", ()))

    @property
    def cell(self) -> str:
        """The cell's name."""
        return self._resolved.name

    @property
    def cell_description(self) -> dict[str, Any] | None:
        """The compiled cell's description (None for the native LSTM and GRU kernels)."""
        return self._resolved.description

    def __repr__(self) -> str:
        base = super().__repr__()
        return base[:-1] + f", cell={self.cell!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "cell": self._resolved.core}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._set_cell(resolve_cell(state["cell"]))
        super().__setstate__(state)


#: The foreign kind each built-in layer class imports from (``RNN`` takes any).
_SOURCE_OF: dict[type, str] = {LSTM: "LSTM", GRU: "GRU"}


def layer_from_recipe(recipe: LayerRecipe, expect: type | None = None) -> _RNNBase:
    """The layer a reader's recipe describes, with its weights and mode: an :class:`RNN` when
    ``expect`` is :class:`RNN` or the cell is not LSTM/GRU, else the matching :class:`LSTM` /
    :class:`GRU`."""
    cell = recipe.cell
    layer: _RNNBase
    if expect is RNN or not isinstance(cell, str):
        layer = RNN(cell=cell, **recipe.kwargs)
    else:
        layer = (LSTM if cell == "lstm" else GRU)(**recipe.kwargs)
    layer.load_state_dict(recipe.state_dict)
    layer.training = recipe.training
    return layer


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads of every later forward/backward call.

    The default is the ``LSTMRS_NUM_THREADS`` environment variable when set, else all cores.
    Results are bitwise reproducible for a fixed thread count.
    """
    n = check_int("n", n)
    if n >= 1 << 32:
        raise InvalidArgumentError(f"n: expected a thread count below 2**32, got {n}")
    _lstmrs.set_num_threads(n)


def get_num_threads() -> int:
    """The number of worker threads forward/backward calls run on."""
    return _lstmrs.get_num_threads()
