"""lstmrs' own cells, optimizers and commands, registered through the plugin hooks like any
plugin's (the plugin name is ``lstmrs.builtin``).

The LSTM and GRU cells are written in the cell language too: the Rust core runs them with its
own fused kernels (``spec.native``), and the expression form documents their exact equations
and gives the NumPy reference that the tests compare those kernels against.
"""

from __future__ import annotations

from ..cells import Cell, CellSpec, sigmoid, tanh
from .manager import hookimpl


def _lstm(c: Cell):
    """Long short-term memory, torch.nn.LSTM's equations (gates i, f, g, o)."""
    xi, xf, xg, xo = c.x_gates(4)
    hi, hf, hg, ho = c.h_gates(4)
    cell = c.state("c")
    i, f, o = sigmoid(xi + hi), sigmoid(xf + hf), sigmoid(xo + ho)
    c_new = f * cell + i * tanh(xg + hg)
    return {"h": o * tanh(c_new), "c": c_new}


def _gru(c: Cell):
    """Gated recurrent unit, torch.nn.GRU's equations (gates r, z, n; reset after W_hn h)."""
    xr, xz, xn = c.x_gates(3)
    hr, hz, hn = c.h_gates(3)
    h = c.state("h")
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = tanh(xn + r * hn)
    return {"h": (1 - z) * n + z * h}


def _native(spec: CellSpec, kernel: str) -> CellSpec:
    spec.native = kernel
    return spec


LSTM_CELL = _native(Cell.define("lstm", _lstm, states=("h", "c")), "lstm")
GRU_CELL = _native(Cell.define("gru", _gru, states=("h",)), "gru")


@hookimpl
def lstmrs_register_cells(register):
    register(LSTM_CELL)
    register(GRU_CELL)


@hookimpl
def lstmrs_register_optimizers(register):
    from .. import optim

    for cls in (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad):
        register(cls)


@hookimpl
def lstmrs_register_tasks(register):
    from .. import tasks

    tasks.lstmrs_register_tasks(register)


@hookimpl
def lstmrs_register_commands(register):
    from . import plugins_command

    register("plugins", plugins_command, help="list installed plugins and what they register")
