"""ConvLSTM (Shi et al., 2015) as Keras' ``ConvLSTM2D`` and Flax's ``ConvLSTMCell`` compute it,
computed by the Rust core.

For an input ``x`` of shape ``[B, T, C, H, W]`` each layer runs, step by step::

    z   = conv(x_t, W_ih, padding) + conv(h_{t-1}, W_hh, "same") + b    # [B, 4K, Ho, Wo]
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;         h_t = o * tanh(c_t)

with ``K = hidden_channels``, gate blocks in the order i, f, g, o, and no peepholes (Keras' form;
Shi et al. add Hadamard peepholes ``W_c * c`` to i, f, o). Layers stack: layer ``l + 1`` reads
layer ``l``'s ``h`` sequence. Parameters, per layer ``l``, in PyTorch's ``Conv2d`` layout:
``weight_ih_l{l}`` ``[4K, C_l, kh, kw]``, ``weight_hh_l{l}`` ``[4K, K, kh, kw]``, ``bias_l{l}``
``[4K]``. A reference written with ``torch.nn.Conv2d(C + K, 4K, k, padding=k // 2)`` over the
concatenated ``[x, h]`` has the weight ``cat([weight_ih_l0, weight_hh_l0], dim=1)``.

The convolutions run as im2col + GEMM in the core, one thread task per batch row; gradients
come from :meth:`ConvLSTM.forward_train` + :meth:`ConvLSTM.backward` as for :class:`lstmrs.LSTM`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _lstmrs
from .errors import InvalidArgumentError, ShapeError
from .rnn import (
    _DTYPE_NAMES,
    FlatParameters,
    _check_finite,
    _dtype_arg,
    _float_array,
    _seed_arg,
    _shape_str,
)
from .validation import check_bool, check_int, describe

__all__ = ["ConvLSTM", "ConvLSTMGradients", "ConvLSTMTape"]


def _pair(name: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints as ``(height, width)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidArgumentError(
                f"{name}: expected an integer or a pair (height, width), got {describe(value)}"
            )
        return check_int(name, value[0]), check_int(name, value[1])
    v = check_int(name, value)
    return v, v


def _padding_arg(value: Any, kernel: tuple[int, int]) -> tuple[int, int]:
    """``"same"`` (``k // 2``), ``"valid"`` (0), an int or a pair of ints."""
    if isinstance(value, str):
        if value == "same":
            return kernel[0] // 2, kernel[1] // 2
        if value == "valid":
            return 0, 0
        raise InvalidArgumentError(
            f"padding: expected 'same', 'valid', an integer or a pair, got {value!r}"
        )
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidArgumentError(
                f"padding: expected 'same', 'valid', an integer or a pair, got {describe(value)}"
            )
        return check_int("padding", value[0], minimum=0), check_int("padding", value[1], minimum=0)
    v = check_int("padding", value, minimum=0)
    return v, v


@dataclass
class ConvLSTMGradients:
    """Gradients from :meth:`ConvLSTM.backward`.

    Attributes:
        params: gradient of every parameter by name, with its shape (views into ``flat``).
        input: gradient of ``x``, ``[B, T, C, H, W]``.
        state: ``(dh0, dc0)``, each ``[num_layers, B, K, Ho, Wo]``.
        flat: all parameter gradients in one 1-D array, :meth:`ConvLSTM.parameters_flat` order.
    """

    params: dict[str, np.ndarray]
    input: np.ndarray
    state: tuple[np.ndarray, np.ndarray]
    flat: np.ndarray


class ConvLSTMTape:
    """What :meth:`ConvLSTM.backward` needs from one :meth:`ConvLSTM.forward_train` call.

    A tape belongs to the layer that recorded it and to its parameters at the time: changing them
    makes the tape unusable. Opaque; reusable."""

    __slots__ = ("_core", "_return_sequences")

    def __init__(self, core: _lstmrs.ConvLstmTape, return_sequences: bool) -> None:
        self._core = core
        self._return_sequences = return_sequences

    @property
    def batch(self) -> int:
        return self._core.batch

    @property
    def seq_len(self) -> int:
        return self._core.seq_len

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the input frames."""
        return self._core.frame_size

    def __repr__(self) -> str:
        return f"ConvLSTMTape(batch={self.batch}, seq_len={self.seq_len})"


class ConvLSTM(FlatParameters):
    """A stacked ConvLSTM over ``[B, T, C, H, W]`` inputs.

    Args:
        in_channels: ``C``, channels of the input frames.
        hidden_channels: ``K``, channels of every layer's state.
        kernel_size: odd size (or ``(kh, kw)``) of both convolutions.
        num_layers: stacked layers.
        padding: of the input-to-state convolution: ``"same"`` (``k // 2``, the default),
            ``"valid"`` (0), an integer or a pair, at most ``k // 2``. The state frame is
            ``Ho = H + 2 ph - kh + 1`` by ``Wo = W + 2 pw - kw + 1``; the state-to-state
            convolution always keeps it. Stacked layers need ``"same"``.
        bias: one bias per gate channel.
        return_sequences: ``True``: ``out`` is the top layer's ``h`` at every step,
            ``[B, T, K, Ho, Wo]``; ``False``: at the last step only, ``[B, K, Ho, Wo]`` (Keras'
            argument of the same name).
        dtype: ``"float32"`` or ``"float64"``.
        seed: of the initial weights (torch's ``Conv2d`` initialisation over the concatenated
            ``[x, h]``, ``±1/sqrt((C_l + K) kh kw)``) and Keras' ``unit_forget_bias``: biases 0,
            the forget gate's 1.
        check_finite: refuse NaN and infinity in inputs (``NonFiniteError``).

    Calling the layer returns ``out, (h_n, c_n)`` with ``h_n``, ``c_n`` of shape
    ``[num_layers, B, K, Ho, Wo]``; ``state=(h0, c0)`` of that shape sets the initial state.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        num_layers: int = 1,
        padding: str | int | tuple[int, int] = "same",
        bias: bool = True,
        return_sequences: bool = True,
        dtype: Any = "float32",
        seed: int | None = None,
        *,
        check_finite: bool = True,
    ) -> None:
        self._setup(
            in_channels,
            hidden_channels,
            kernel_size,
            num_layers,
            padding,
            bias,
            dtype,
            seed,
        )
        self.return_sequences = return_sequences
        self.check_finite = check_finite

    def _setup(
        self,
        in_channels: Any,
        hidden_channels: Any,
        kernel_size: Any,
        num_layers: Any,
        padding: Any,
        bias: Any,
        dtype: Any,
        seed: Any,
    ) -> None:
        self._in_channels = check_int("in_channels", in_channels)
        self._hidden_channels = check_int("hidden_channels", hidden_channels)
        self._kernel_size = _pair("kernel_size", kernel_size)
        self._num_layers = check_int("num_layers", num_layers)
        self._padding = _padding_arg(padding, self._kernel_size)
        self._bias = check_bool("bias", bias)
        self._dtype = _dtype_arg(dtype)
        self._seed = _seed_arg(seed)
        # The core checks the combination (odd kernels, padding at most k // 2, "same" when
        # stacked) and raises InvalidArgumentError naming the argument.
        self._core = _lstmrs.ConvLstmCore(
            self._in_channels,
            self._hidden_channels,
            self._kernel_size,
            self._padding,
            self._num_layers,
            self._bias,
            _DTYPE_NAMES[self._dtype],
            self._seed,
        )
        self._layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in self._core.param_specs():
            self._layout[name] = (offset, tuple(shape))
            offset += int(np.prod(shape))

    # -- configuration -------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def hidden_channels(self) -> int:
        return self._hidden_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self._kernel_size

    @property
    def padding(self) -> tuple[int, int]:
        """The input convolution's zero padding ``(ph, pw)``."""
        return self._padding

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def bias(self) -> bool:
        return self._bias

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def num_parameters(self) -> int:
        return self._core.num_parameters

    @property
    def return_sequences(self) -> bool:
        return self._return_sequences

    @return_sequences.setter
    def return_sequences(self, value: Any) -> None:
        self._return_sequences = check_bool("return_sequences", value)

    @property
    def check_finite(self) -> bool:
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: Any) -> None:
        self._check_finite = check_bool("check_finite", value)

    def state_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Ho, Wo)``, the state's frame size for input frames of ``height × width``."""
        return self._core.state_size(check_int("height", height), check_int("width", width))

    def __repr__(self) -> str:
        extra = [f"kernel_size={self._kernel_size}"]
        if self._num_layers != 1:
            extra.append(f"num_layers={self._num_layers}")
        if self._padding != (self._kernel_size[0] // 2, self._kernel_size[1] // 2):
            extra.append(f"padding={self._padding}")
        if not self._bias:
            extra.append("bias=False")
        if not self._return_sequences:
            extra.append("return_sequences=False")
        extra.append(f"dtype={_DTYPE_NAMES[self._dtype]}")
        args = ", ".join([str(self._in_channels), str(self._hidden_channels), *extra])
        return f"ConvLSTM({args})"

    # -- parameters ----------------------------------------------------------------------------

    def parameters(self) -> list[tuple[str, np.ndarray]]:
        """``(name, copy of the tensor)`` for every parameter, in the flat buffer's order."""
        return list(self.state_dict().items())

    # -- forward and backward ------------------------------------------------------------------

    def _state_shape(self, batch: int, frame: tuple[int, int]) -> tuple[int, ...]:
        return (self._num_layers, batch, self._hidden_channels, *frame)

    def _array(self, name: str, value: Any, want: tuple[int, ...], what: str) -> np.ndarray:
        arr = _float_array(name, value)
        if arr.shape != want:
            raise ShapeError(
                f"{name}: expected shape {_shape_str(want)} = {what}, got {_shape_str(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=self._dtype)
        if self._check_finite:
            _check_finite(name, arr)
        return arr

    def _pair_arg(self, arg: str, value: Any, names: tuple[str, str]) -> tuple[Any, Any]:
        if value is None:
            return None, None
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InvalidArgumentError(
                f"{arg}: expected a tuple ({names[0]}, {names[1]}), got {describe(value)}"
            )
        return value[0], value[1]

    def _run(self, x: Any, state: Any, keep_tape: bool):
        arr = _float_array("x", x)
        if arr.ndim != 5 or arr.shape[2] != self._in_channels or 0 in arr.shape:
            raise ShapeError(
                f"x: expected shape [B, T, C, H, W] with C = in_channels = {self._in_channels} "
                f"and every size >= 1, got {_shape_str(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=self._dtype)
        if self._check_finite:
            _check_finite("x", arr)
        batch, _, _, height, width = arr.shape
        frame = self.state_size(height, width)
        want = self._state_shape(batch, frame)
        what = "[num_layers, B, hidden_channels, Ho, Wo]"
        h0, c0 = self._pair_arg("state", state, ("h0", "c0"))
        if h0 is not None:
            h0 = self._array("h0", h0, want, what)
        if c0 is not None:
            c0 = self._array("c0", c0, want, what)
        out, h_n, c_n, tape = self._core.forward(arr, h0, c0, keep_tape)
        if not self._return_sequences:
            out = out[:, -1]
        wrapped = None if tape is None else ConvLSTMTape(tape, self._return_sequences)
        return out, (h_n, c_n), wrapped

    def forward(self, x: Any, state: Any = None):
        """``out, (h_n, c_n)``; see the class docstring for shapes."""
        out, new_state, _ = self._run(x, state, keep_tape=False)
        return out, new_state

    def __call__(self, x: Any, state: Any = None):
        return self.forward(x, state)

    def forward_train(self, x: Any, state: Any = None):
        """Like :meth:`forward`, and also returns the tape :meth:`backward` needs:
        ``(out, (h_n, c_n), tape)``."""
        return self._run(x, state, keep_tape=True)

    def backward(
        self, tape: ConvLSTMTape, d_out: Any = None, d_state: Any = None
    ) -> ConvLSTMGradients:
        """Gradients of a scalar loss with respect to parameters, input and initial state.

        ``d_out`` is the loss's gradient with respect to the ``out`` of the
        :meth:`forward_train` call that made ``tape`` (same shape), ``d_state`` with respect to
        its ``(h_n, c_n)`` (either may be None). Absent gradients count as zero; at least one
        must be given."""
        if not isinstance(tape, ConvLSTMTape):
            raise InvalidArgumentError(
                f"tape: expected the ConvLSTMTape returned by forward_train(), got {describe(tape)}"
            )
        batch, seq_len = tape.batch, tape.seq_len
        frame = self.state_size(*tape.frame_size)
        state_shape = self._state_shape(batch, frame)
        what = "[num_layers, B, hidden_channels, Ho, Wo]"
        g_h, g_c = self._pair_arg("d_state", d_state, ("dh_n", "dc_n"))
        if g_h is not None:
            g_h = self._array("dh_n", g_h, state_shape, what)
        if g_c is not None:
            g_c = self._array("dc_n", g_c, state_shape, what)
        g_out = None
        if d_out is not None:
            seq_shape = (batch, seq_len, self._hidden_channels, *frame)
            if tape._return_sequences:
                g_out = self._array("d_out", d_out, seq_shape, "the output's [B, T, K, Ho, Wo]")
            else:
                # out was h_n of the top layer: its gradient joins dh_n there.
                last = self._array(
                    "d_out", d_out, (batch, self._hidden_channels, *frame), "[B, K, Ho, Wo]"
                )
                g_h = np.zeros(state_shape, self._dtype) if g_h is None else g_h.copy()
                g_h[-1] += last
        if g_out is None and g_h is None and g_c is None:
            raise InvalidArgumentError(
                "d_out, d_state: expected at least one gradient, got neither"
            )
        flat, d_x, d_h0, d_c0 = self._core.backward(tape._core, g_out, g_h, g_c)
        params = {
            name: flat[offset : offset + int(np.prod(shape))].reshape(shape)
            for name, (offset, shape) in self._layout.items()
        }
        return ConvLSTMGradients(params=params, input=d_x, state=(d_h0, d_c0), flat=flat)

    # -- pickling (copy.deepcopy, multiprocessing) ---------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "config": (
                self._in_channels,
                self._hidden_channels,
                self._kernel_size,
                self._num_layers,
                self._padding,
                self._bias,
                _DTYPE_NAMES[self._dtype],
                self._seed,
            ),
            "return_sequences": self._return_sequences,
            "check_finite": self._check_finite,
            "flat": self.parameters_flat(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(*state["config"])
        self.return_sequences = state["return_sequences"]
        self.check_finite = state["check_finite"]
        self._core.set_flat(np.ascontiguousarray(state["flat"], dtype=self._dtype))
