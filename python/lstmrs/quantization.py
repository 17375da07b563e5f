"""Reduced-precision inference for the built-in LSTM and GRU: bf16 weights, or int8 weights
with dynamic quantization of the activations, like ``torch.ao.quantization.quantize_dynamic``.

>>> import numpy as np
>>> import lstmrs
>>> lstm = lstmrs.LSTM(8, 32, num_layers=2, seed=0)
>>> q = lstmrs.quantize_dynamic(lstm, dtype="qint8")
>>> x = np.random.default_rng(0).standard_normal((4, 10, 8)).astype(np.float32)
>>> out, (h_n, c_n) = q(x)
>>> ref, _ = lstm.eval()(x)
>>> bool(np.abs(out - ref).max() < 0.05)
True

* ``dtype="qint8"``: each weight row is quantized symmetrically to int8 with its own scale
  (torch's ``per_channel`` weights); each activation row (an input step, or a hidden state at a
  step) is quantized to uint8 with its own scale and zero point when its product runs; the
  products are summed exactly in int32 (``vpdpbusd`` on AVX512_VNNI CPUs).
* ``dtype="bfloat16"``: weights and the products' activations rounded to bfloat16, products
  summed in float32 (``vdpbf16ps`` on AVX512_BF16 CPUs, bf16 widened to f32 on other AVX-512
  CPUs).

Biases, gates, the cell state and the outputs stay float32. The result is inference-only:
``forward_train``/``backward`` raise :class:`~lstmrs.errors.InferenceOnlyError`. The kernel
is picked at run time from the CPU's features (``kernel``); ``lstmrs.quantization.kernels(dtype)``
lists the ones this CPU runs, and ``kernel="portable"`` forces the plain one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _lstmrs
from .errors import InferenceOnlyError, InvalidArgumentError, ShapeError
from .rnn import GRU, LSTM, RNN, _check_finite, _float_array, _RNNBase, _shape_str
from .validation import describe

__all__ = ["QuantizedRNN", "kernels", "quantize_dynamic"]

#: Accepted spellings of each reduced-precision dtype (torch's dtype objects print as these).
_DTYPES = {
    "qint8": "qint8",
    "int8": "qint8",
    "torch.qint8": "qint8",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
}


def _dtype_arg(dtype: Any) -> str:
    name = str(dtype) if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise InvalidArgumentError(
            f"dtype: expected 'qint8' or 'bfloat16' (or torch.qint8 / torch.bfloat16), "
            f"got {dtype!r}"
        )
    return _DTYPES[name]


def kernels(dtype: Any = "qint8") -> list[str]:
    """The product kernels this CPU runs for ``dtype``, the one picked by default first."""
    return list(_lstmrs.lowp_kernels(_dtype_arg(dtype)))


def quantize_dynamic(layer: Any, dtype: Any = "qint8", *, kernel: str = "auto") -> QuantizedRNN:
    """An inference-only copy of ``layer`` (an :class:`~lstmrs.LSTM` or :class:`~lstmrs.GRU`,
    or an :class:`~lstmrs.RNN` of the built-in ``"lstm"``/``"gru"`` cell, without
    ``proj_size``) with ``dtype`` ``"qint8"`` or ``"bfloat16"`` weights; ``kernel`` is
    ``"auto"`` or one of :func:`kernels`. Later changes to ``layer`` do not reach the copy."""
    if not isinstance(layer, (LSTM, GRU, RNN)):
        raise InvalidArgumentError(
            f"layer: expected an lstmrs.LSTM, GRU or RNN layer, got {describe(layer)}"
        )
    if layer._cell not in ("lstm", "gru"):
        raise InvalidArgumentError(
            f"layer: expected the built-in 'lstm' or 'gru' cell (reduced precision has no "
            f"kernels for custom cells), got the {getattr(layer, 'cell', layer._cell)!r} cell"
        )
    if layer.proj_size:
        raise InvalidArgumentError(
            f"layer: expected proj_size=0 (reduced precision has no projected LSTM), "
            f"got proj_size={layer.proj_size}"
        )
    if not isinstance(kernel, str):
        raise InvalidArgumentError(f"kernel: expected 'auto' or a kernel name, got {kernel!r}")
    return QuantizedRNN(layer, _dtype_arg(dtype), kernel)


class QuantizedRNN:
    """A built-in LSTM/GRU with bf16 or int8 weights, made by :func:`quantize_dynamic`.

    Called like the float layer: ``q(x, state=None, lengths=None)`` returns ``out, (h_n, c_n)``
    for an LSTM and ``out, h_n`` for a GRU, same shapes, ``batch_first`` and ``lengths``
    semantics (always in evaluation mode: no dropout). Outputs are float32.
    """

    def __init__(self, layer: _RNNBase, dtype: str, kernel: str = "auto") -> None:
        self._layer = layer
        self._dtype = dtype
        flat = np.ascontiguousarray(layer.parameters_flat(), dtype=np.float32)
        self._core = _lstmrs.LowpCore(
            layer._cell,
            layer.input_size,
            layer.hidden_size,
            layer.num_layers,
            layer.bias,
            layer.bidirectional,
            flat,
            dtype,
            kernel,
        )
        self._requested_kernel = kernel
        # A frozen copy of the float layer's configuration and input checks.
        self._layer = type(layer).__new__(type(layer))
        self._layer.__setstate__(layer.__getstate__())
        self._layer.eval()

    @property
    def dtype(self) -> str:
        """``"qint8"`` or ``"bfloat16"``."""
        return self._dtype

    @property
    def kernel(self) -> str:
        """The product kernel runtime dispatch chose (or the one asked for)."""
        return self._core.kernel

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weights, their scales and the float32 biases."""
        return self._core.weight_bytes

    @property
    def cell(self) -> str:
        return self._layer._cell

    @property
    def batch_first(self) -> bool:
        return self._layer.batch_first

    @property
    def input_size(self) -> int:
        return self._layer.input_size

    @property
    def hidden_size(self) -> int:
        return self._layer.hidden_size

    @property
    def num_layers(self) -> int:
        return self._layer.num_layers

    @property
    def bidirectional(self) -> bool:
        return self._layer.bidirectional

    def __repr__(self) -> str:
        return f"QuantizedRNN({self._layer!r}, dtype={self._dtype!r}, kernel={self.kernel!r})"

    def forward(self, x: Any, state: Any = None, lengths: Any = None):
        """Runs the network; see the class docstring."""
        layer = self._layer
        arr = _float_array("x", x)
        if arr.ndim not in (2, 3) or arr.shape[-1] != layer.input_size:
            raise ShapeError(
                f"x: expected shape {layer._x_shape()} or an unbatched [T, {layer.input_size}], "
                f"got {_shape_str(arr.shape)}"
            )
        unbatched = arr.ndim == 2
        if unbatched:
            batch, seq_len = 1, arr.shape[0]
            arr = arr.reshape(1, seq_len, layer.input_size)
        else:
            batch, seq_len = arr.shape[:2] if layer.batch_first else arr.shape[1::-1]
        if batch == 0 or seq_len == 0:
            raise ShapeError(
                f"x: expected at least one sequence of at least one step, "
                f"got shape {_shape_str(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if layer.check_finite:
            _check_finite("x", arr)
        # The float layer's own checks of state and lengths (shapes, finiteness, range).
        h0, c0 = layer._states(state, batch, unbatched, ("h0", "c0"), "state")
        h0 = None if h0 is None else np.ascontiguousarray(h0, dtype=np.float32)
        c0 = None if c0 is None else np.ascontiguousarray(c0, dtype=np.float32)
        lens = layer._lengths(lengths, batch, seq_len, unbatched)
        batch_first = True if unbatched else layer.batch_first
        out, h_n, c_n = self._core.forward(arr, h0, c0, lens, batch_first)
        if unbatched:
            out, h_n = out[0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        return out, ((h_n, c_n) if layer._has_cell_state else h_n)

    def __call__(self, x: Any, state: Any = None, lengths: Any = None):
        return self.forward(x, state, lengths)

    def _inference_only(self, what: str) -> InferenceOnlyError:
        return InferenceOnlyError(
            f"{what}: a {self._dtype} layer from quantize_dynamic is inference-only; train the "
            "float32 layer and quantize it again"
        )

    def forward_train(self, *args: Any, **kwargs: Any):
        raise self._inference_only("forward_train")

    def backward(self, *args: Any, **kwargs: Any):
        raise self._inference_only("backward")

    def train(self, mode: bool = True):
        """``train(False)`` is a no-op (always evaluating); ``train(True)`` raises."""
        if mode:
            raise self._inference_only("train")
        return self

    def eval(self):
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {
            "layer": self._layer.__getstate__(),
            "layer_type": type(self._layer),
            "dtype": self._dtype,
            "kernel": self._requested_kernel,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        layer = state["layer_type"].__new__(state["layer_type"])
        layer.__setstate__(state["layer"])
        self.__init__(layer, state["dtype"], state["kernel"])
