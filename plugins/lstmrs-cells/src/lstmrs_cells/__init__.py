"""Recurrent cells for lstmrs, written in the cell language and compiled by the Rust core.

Notation: ``xg[k] = W_ih[k] x + b_ih[k]`` and ``hg[k] = W_hh[k] h + b_hh[k]`` are the gate
pre-activations (PyTorch's chunk order of ``weight_ih`` / ``weight_hh``), ``*`` is element-wise.

* ``peephole_lstm``: LSTM with peephole connections (Gers & Schmidhuber, 2000; Gers,
  Schraudolph & Schmidhuber, 2002): the input and forget gates look at the old cell state, the
  output gate at the new one, through per-unit weights ``w_ci``, ``w_cf``, ``w_co``.
* ``cifg_lstm``: coupled input-forget gate LSTM (Greff et al., 2017, "LSTM: A Search Space
  Odyssey"): ``i = 1 - f``, three gates instead of four.
* ``mgu``: minimal gated unit (Zhou et al., 2016) with one forget gate ``f``. The paper's
  candidate is ``tanh(W x + U (f * h) + b)``; the gate inside the matrix product cannot be
  expressed (the products happen before the element-wise program), so this is the form cuDNN
  uses for its GRU: ``n = tanh(xg1 + f * hg1)``, the gate applied after the recurrent product
  (bias ``b_hh`` included). It equals a ``torch.nn.GRUCell`` whose reset gate is ``f`` and whose
  update gate is ``1 - f``.
* ``indrnn``: independently recurrent network (Li et al., 2018): ``h' = relu(xg0 + u * h)``,
  no recurrent matrix, a per-unit recurrent weight ``u``. ``u`` starts at the constant 1.0, the
  identity recurrence of IRNN (Le et al., 2015) and the top of the paper's ``[0, 1]`` range:
  while a unit is active its gradient through time is neither shrunk nor grown by ``u``.
* ``elman``: Elman's tanh RNN, ``h' = tanh(xg0 + hg0)``, the same as
  ``torch.nn.RNN(nonlinearity="tanh")`` (same parameter names and shapes).
"""

from __future__ import annotations

from lstmrs.cells import Cell, relu, sigmoid, tanh
from lstmrs.plugins import hookimpl

__version__ = "0.1.0"
__all__ = ["CELLS", "CIFG_LSTM", "ELMAN", "INDRNN", "MGU", "PEEPHOLE_LSTM"]


def peephole_lstm(c: Cell):
    """LSTM with peephole connections (Gers & Schmidhuber, 2000)."""
    xi, xf, xg, xo = c.x_gates(4)
    hi, hf, hg, ho = c.h_gates(4)
    cell = c.state("c")
    w_ci, w_cf, w_co = c.unit_param("w_ci"), c.unit_param("w_cf"), c.unit_param("w_co")
    i = sigmoid(xi + hi + w_ci * cell)
    f = sigmoid(xf + hf + w_cf * cell)
    c_new = f * cell + i * tanh(xg + hg)
    o = sigmoid(xo + ho + w_co * c_new)
    return {"h": o * tanh(c_new), "c": c_new}


def cifg_lstm(c: Cell):
    """LSTM with coupled input and forget gates, i = 1 - f (Greff et al., 2017)."""
    xf, xg, xo = c.x_gates(3)
    hf, hg, ho = c.h_gates(3)
    cell = c.state("c")
    f = sigmoid(xf + hf)
    c_new = f * cell + (1 - f) * tanh(xg + hg)
    return {"h": sigmoid(xo + ho) * tanh(c_new), "c": c_new}


def mgu(c: Cell):
    """Minimal gated unit (Zhou et al., 2016), forget gate applied after W_hh h as in cuDNN."""
    xf, xn = c.x_gates(2)
    hf, hn = c.h_gates(2)
    h = c.state("h")
    f = sigmoid(xf + hf)
    n = tanh(xn + f * hn)
    return {"h": (1 - f) * h + f * n}


def indrnn(c: Cell):
    """Independently recurrent network (Li et al., 2018): relu(W x + b + u * h)."""
    (x,) = c.x_gates(1)
    u = c.unit_param("u", init="constant", value=1.0)
    return {"h": relu(x + u * c.state("h"))}


def elman(c: Cell):
    """Elman tanh RNN, as torch.nn.RNN(nonlinearity="tanh")."""
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    return {"h": tanh(x + hh)}


PEEPHOLE_LSTM = Cell.define("peephole_lstm", peephole_lstm, states=("h", "c"))
CIFG_LSTM = Cell.define("cifg_lstm", cifg_lstm, states=("h", "c"))
MGU = Cell.define("mgu", mgu, states=("h",))
INDRNN = Cell.define("indrnn", indrnn, states=("h",))
ELMAN = Cell.define("elman", elman, states=("h",))
CELLS = (PEEPHOLE_LSTM, CIFG_LSTM, MGU, INDRNN, ELMAN)


@hookimpl
def lstmrs_register_cells(register):
    for spec in CELLS:
        register(spec)
