"""lstmrs' own cells, optimizers, tasks and commands, registered through the plugin hooks like
any plugin's (the plugin name is ``lstmrs.builtin``).

The tasks live in the application layer above the registry (they build and train models), so
they are imported by name (:data:`TASKS_MODULE`) when the task registry is first needed, as
llm and pytest load their default plugins; the registry itself never imports them.

The LSTM and GRU cells are written in the cell language too: the Rust core runs them with its
own fused kernels (``spec.native``), and the expression form documents their exact equations
and gives the NumPy reference that the tests compare those kernels against.
"""

from __future__ import annotations

import importlib

from .. import optim
from ..cells import Cell, CellSpec, sigmoid, tanh
from . import plugins_command
from .manager import hookimpl

#: The module whose ``lstmrs_register_tasks`` registers the built-in tasks.
TASKS_MODULE = "lstmrs.tasks"


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
    for cls in (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad):
        register(cls)


@hookimpl
def lstmrs_register_tasks(register):
    importlib.import_module(TASKS_MODULE).lstmrs_register_tasks(register)


@hookimpl
def lstmrs_register_commands(register):
    register("plugins", plugins_command, help="list installed plugins and what they register")
