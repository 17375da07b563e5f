"""Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber, 2014), run as one native sweep per module.

The hidden layer is split into ``g`` modules of ``k`` units with periods ``T_0 < T_1 < ...``.
At step ``t`` (counted from 0) module ``i`` updates only when ``t mod T_i == 0``; otherwise it
keeps its state. Its update reads the input and the states of itself and of the *slower* modules
(``j >= i``): the recurrent matrix is block-upper-triangular, slow modules feed fast ones only::

    h_i(t) = tanh(W_I[i] x_t + sum_{j >= i} W_H[i, j] h_j(t - 1) + b_i)   if t mod T_i == 0
    h_i(t) = h_i(t - 1)                                                    otherwise

Why no step-by-step loop and no masked matrix: a module never reads a faster one, so the
slowest module is a plain tanh RNN over the steps ``0, T, 2T, ...``, and each faster module is a
tanh RNN over its own steps whose input is ``x_t`` beside the slower modules' states at
``t - 1``, already known when it runs. The network is therefore ``g`` tanh-RNN layers, each one
Rust sweep (:class:`lstmrs.RNN` with a tanh cell) over ``ceil(T / T_i)`` steps, computed
slowest first; backpropagation runs them fastest first, adding each module's input gradient
into the slower modules' output gradients. The block-triangular structure is in the shapes of
the parameters (module ``i``'s input matrix has columns for ``x`` and for the slower modules
only), so no mask has to survive training, and a module costs ``ceil(T / T_i)`` steps, as in
the paper. A cell in the cell language could not do this: it has no step counter and no
per-unit constants (its unit parameters are trained), and the recurrent product it sees is the
dense ``W_hh h``.

Parameters, per module ``i`` (``module{i}.`` + torch's names): ``weight_ih_l0``
``[k, I + k * (g - 1 - i)]`` (columns: ``x``, then modules ``i+1 .. g-1``), ``weight_hh_l0``
``[k, k]`` (``W_H[i, i]``), ``bias_ih_l0`` and ``bias_hh_l0`` ``[k]`` (``b_i`` is their sum, as
in ``torch.nn.RNN``). :meth:`ClockworkRNN.dense` gives the paper's ``W_I``, ``W_H`` and ``b``.

Shapes: ``x`` ``[B, T, I]`` (batch first), the output ``[B, T, g * k]`` holds every module's
state at every step (fast modules first), the state ``[B, g * k]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cells import Cell, CellSpec, tanh
from .errors import InvalidArgumentError, ShapeError
from .rnn import RNN, RnnTape
from .validation import check_int

__all__ = ["TANH_CELL", "ClockworkGradients", "ClockworkRNN", "ClockworkTape"]


def _tanh_rnn(c: Cell):
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    return {"h": tanh(x + hh)}


#: The module cell: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``, torch.nn.RNN's tanh cell.
TANH_CELL: CellSpec = Cell.define("clockwork_tanh", _tanh_rnn, states=("h",))


@dataclass
class ClockworkTape:
    """What :meth:`ClockworkRNN.backward` needs from one :meth:`ClockworkRNN.forward_train`."""

    tapes: list[RnnTape]  # one per module
    batch: int
    seq_len: int


@dataclass
class ClockworkGradients:
    """Gradients from :meth:`ClockworkRNN.backward`: ``params`` by name (``state_dict``
    order), ``input`` ``[B, T, I]``, ``state`` (of the initial state) ``[B, g * k]``, and
    ``flat`` in :meth:`ClockworkRNN.parameters_flat` order."""

    params: dict[str, np.ndarray]
    input: np.ndarray
    state: np.ndarray
    flat: np.ndarray


def _periods_arg(periods: Any) -> tuple[int, ...]:
    if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or not periods:
        raise InvalidArgumentError(
            f"periods: expected a non-empty sequence of increasing integers >= 1, got {periods!r}"
        )
    out = tuple(check_int(f"periods[{i}]", p) for i, p in enumerate(periods))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise InvalidArgumentError(
            f"periods: expected strictly increasing periods (fast modules first), got {list(out)}"
        )
    return out


class ClockworkRNN:
    """A clockwork RNN layer: ``len(periods)`` modules of ``module_size`` tanh units.

    ``periods`` must increase strictly (module 0 is the fastest); the paper's exponential
    clock is ``periods=[2**i for i in range(g)]``. Each module is an :class:`lstmrs.RNN`
    (``self.modules[i]``), initialised as torch initialises ``nn.RNN``
    (``U(-1/sqrt(k), 1/sqrt(k))``), seeded ``seed + i``.

    >>> import numpy as np
    >>> cw = ClockworkRNN(1, 4, periods=[1, 2, 4], seed=0)
    >>> out, h_n = cw(np.ones((2, 10, 1), dtype=np.float32))
    >>> out.shape, h_n.shape, cw.num_parameters
    ((2, 10, 12), (2, 12), 108)
    """

    def __init__(
        self,
        input_size: int,
        module_size: int,
        periods: Sequence[int] = (1, 2, 4, 8),
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        self.input_size = check_int("input_size", input_size)
        self.module_size = check_int("module_size", module_size)
        self.periods = _periods_arg(periods)
        g, k = len(self.periods), self.module_size
        base = 0 if seed is None else check_int("seed", seed, minimum=0)
        self.modules = [
            RNN(
                self.input_size + k * (g - 1 - i),
                k,
                cell=TANH_CELL,
                dtype=dtype,
                seed=None if seed is None else base + i,
            )
            for i in range(g)
        ]
        self.dtype = self.modules[0].dtype

    @property
    def num_modules(self) -> int:
        return len(self.periods)

    @property
    def hidden_size(self) -> int:
        return self.num_modules * self.module_size

    @property
    def num_parameters(self) -> int:
        return sum(m.num_parameters for m in self.modules)

    def __repr__(self) -> str:
        return (
            f"ClockworkRNN({self.input_size}, {self.module_size}, periods={list(self.periods)}, "
            f"dtype={self.dtype.name})"
        )

    # -- parameters ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            f"module{i}.{name}": v
            for i, m in enumerate(self.modules)
            for name, v in m.state_dict().items()
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads every module's parameters (exactly the keys of :meth:`state_dict`)."""
        expected = list(self.state_dict())
        if not isinstance(state_dict, Mapping) or sorted(state_dict) != sorted(expected):
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise InvalidArgumentError(
                f"state_dict: expected exactly the keys {expected}, got {got}"
            )
        for i, m in enumerate(self.modules):
            prefix = f"module{i}."
            m.load_state_dict(
                {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            )

    def parameters_flat(self) -> np.ndarray:
        return np.concatenate([m.parameters_flat() for m in self.modules])

    def set_parameters_flat(self, flat: Any) -> None:
        arr = np.asarray(flat)
        if arr.shape != (self.num_parameters,):
            raise ShapeError(
                f"flat: expected shape ({self.num_parameters},) (num_parameters), got {arr.shape}"
            )
        start = 0
        for m in self.modules:
            m.set_parameters_flat(arr[start : start + m.num_parameters])
            start += m.num_parameters

    def dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The paper's ``(W_I [g k, I], W_H [g k, g k], b [g k])``; ``W_H`` is
        block-upper-triangular by construction."""
        g, k, n_in = self.num_modules, self.module_size, self.input_size
        w_i = np.zeros((g * k, n_in), self.dtype)
        w_h = np.zeros((g * k, g * k), self.dtype)
        b = np.zeros(g * k, self.dtype)
        for i, m in enumerate(self.modules):
            sd, rows = m.state_dict(), slice(i * k, (i + 1) * k)
            w_i[rows] = sd["weight_ih_l0"][:, :n_in]
            w_h[rows, i * k : (i + 1) * k] = sd["weight_hh_l0"]
            w_h[rows, (i + 1) * k :] = sd["weight_ih_l0"][:, n_in:]
            b[rows] = sd["bias_ih_l0"] + sd["bias_hh_l0"]
        return w_i, w_h, b

    # -- the schedule --------------------------------------------------------------------------

    def _steps(self, i: int, seq_len: int) -> np.ndarray:
        """The steps ``t`` at which module ``i`` updates."""
        return np.arange(0, seq_len, self.periods[i])

    def _reads(self, j: int, times: np.ndarray) -> np.ndarray:
        """Index into module ``j``'s outputs of its state at ``times - 1`` (-1: the initial
        state, for ``t = 0``)."""
        return np.where(times > 0, (times - 1) // self.periods[j], -1)

    def _check_x(self, x: Any, state: Any) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(x)
        if arr.ndim != 3 or arr.shape[2] != self.input_size or arr.shape[1] < 1:
            raise ShapeError(
                f"x: expected shape [B, T, {self.input_size}] (batch first, T >= 1), "
                f"got {list(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        b = arr.shape[0]
        if state is None:
            h0 = np.zeros((b, self.hidden_size), self.dtype)
        else:
            h0 = np.asarray(state, dtype=self.dtype)
            if h0.shape != (b, self.hidden_size):
                raise ShapeError(
                    f"state: expected shape [{b}, {self.hidden_size}] (batch, "
                    f"num_modules * module_size), got {list(h0.shape)}"
                )
        return arr, h0

    # -- forward -------------------------------------------------------------------------------

    def _run(self, x: Any, state: Any, keep_tape: bool):
        x, h0 = self._check_x(x, state)
        b, seq_len = x.shape[:2]
        g, k = self.num_modules, self.module_size
        outs: list[np.ndarray] = [np.empty(0)] * g  # module i's states after each of its steps
        tapes: list[RnnTape] = [None] * g  # type: ignore[list-item]
        for i in reversed(range(g)):  # slowest first: its readers run after it
            times = self._steps(i, seq_len)
            parts = [x[:, times]]
            for j in range(i + 1, g):
                # Module j's state at t - 1, with the initial state prepended as index -1.
                padded = np.concatenate([h0[:, None, j * k : (j + 1) * k], outs[j]], axis=1)
                parts.append(padded[:, self._reads(j, times) + 1])
            inp = np.concatenate(parts, axis=2)
            init = h0[None, :, i * k : (i + 1) * k]
            if keep_tape:
                outs[i], _, tapes[i] = self.modules[i].forward_train(inp, init)
            else:
                outs[i], _ = self.modules[i](inp, init)
        t = np.arange(seq_len)
        out = np.concatenate(
            [outs[i][:, t // self.periods[i]] for i in range(g)], axis=2
        )  # [B, T, g k]: each module holds its last update
        tape = ClockworkTape(tapes, b, seq_len) if keep_tape else None
        return out, np.ascontiguousarray(out[:, -1]), tape

    def forward(self, x: Any, state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``(out [B, T, g k], h_n [B, g k])`` from ``x [B, T, I]`` and an optional initial
        state ``[B, g k]`` (zeros by default)."""
        out, h_n, _ = self._run(x, state, keep_tape=False)
        return out, h_n

    def __call__(self, x: Any, state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return self.forward(x, state)

    def forward_train(self, x: Any, state: Any = None):
        """Like :meth:`forward`, plus the tape for :meth:`backward`: ``(out, h_n, tape)``."""
        return self._run(x, state, keep_tape=True)

    # -- backward ------------------------------------------------------------------------------

    def backward(self, tape: ClockworkTape, d_out: Any) -> ClockworkGradients:
        """Gradients of a scalar loss given ``d_out``, its gradient with respect to the output
        ``[B, T, g k]`` of the :meth:`forward_train` call that made ``tape`` (the final state
        is the output's last step, so its gradient belongs in ``d_out[:, -1]``)."""
        if not isinstance(tape, ClockworkTape):
            raise InvalidArgumentError(
                f"tape: expected the ClockworkTape from forward_train(), got {type(tape).__name__}"
            )
        b, seq_len = tape.batch, tape.seq_len
        g, k, n_in = self.num_modules, self.module_size, self.input_size
        d_out = np.asarray(d_out, dtype=self.dtype)
        if d_out.shape != (b, seq_len, g * k):
            raise ShapeError(
                f"d_out: expected shape [{b}, {seq_len}, {g * k}] (the output's), "
                f"got {list(d_out.shape)}"
            )
        t = np.arange(seq_len)
        # d_mod[i]: gradient w.r.t. module i's outputs; slot 0 is its initial state.
        d_mod = []
        for i in range(g):
            d = np.zeros((b, len(self._steps(i, seq_len)) + 1, k), self.dtype)
            np.add.at(d, (slice(None), t // self.periods[i] + 1), d_out[:, :, i * k : (i + 1) * k])
            d_mod.append(d)
        d_x = np.zeros((b, seq_len, n_in), self.dtype)
        d_h0 = np.zeros((b, g * k), self.dtype)
        grads: list[Any] = [None] * g
        for i in range(g):  # fastest first: its readers (none faster) are done
            times = self._steps(i, seq_len)
            gr = self.modules[i].backward(
                tape.tapes[i], d_out=np.ascontiguousarray(d_mod[i][:, 1:])
            )
            grads[i] = gr
            d_x[:, times] += gr.input[:, :, :n_in]
            for j in range(i + 1, g):
                col = n_in + (j - i - 1) * k
                idx = self._reads(j, times) + 1
                np.add.at(d_mod[j], (slice(None), idx), gr.input[:, :, col : col + k])
            d_h0[:, i * k : (i + 1) * k] = gr.state[0] + d_mod[i][:, 0]
        params = {
            f"module{i}.{name}": v for i, gr in enumerate(grads) for name, v in gr.params.items()
        }
        flat = np.concatenate([gr.flat for gr in grads])
        return ClockworkGradients(params=params, input=d_x, state=d_h0, flat=flat)
