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
* ``ln_lstm``: layer-normalised LSTM (Ba, Kiros & Hinton, 2016) in the per-gate form of
  TensorFlow's ``LayerNormBasicLSTMCell``: each gate pre-activation ``xg[k] + hg[k]`` is
  normalised over the hidden units with its own gain and bias (``ln_gain_*`` start at 1,
  ``ln_bias_*`` at 0), and so is the new cell before its ``tanh``.
* ``ln_gru``: layer-normalised GRU (Ba, Kiros & Hinton, 2016, who normalise the input and the
  recurrent contributions separately): ``r = sigmoid(LN_r(xr + hr))``,
  ``z = sigmoid(LN_z(xz + hz))``, ``n = tanh(LN_xn(xn) + r * LN_hn(hn))``,
  ``h' = (1 - z) * n + z * h`` (PyTorch's gate order and update rule). The candidate's two terms
  are normalised apart so that the reset gate still scales the whole recurrent term, as in
  ``torch.nn.GRU``.
* ``slstm``: the sLSTM cell of xLSTM (Beck et al., 2024): exponential input gate
  ``I = exp(i~)``, sigmoid forget gate ``F`` (``log F = -softplus(-f~)``), and the paper's
  normaliser and max-stabiliser. The cell keeps ``c`` normalised (the paper's ``c / n``, a
  convex combination of candidates, so ``|c| <= 1``) and one internal state ``l``, the log of the
  unstabilised normaliser (the paper's ``m + log n``). Per step: the stabiliser
  ``m = max(log F + l, i~)``, the stabilised gates ``f' = exp(log F + l - m)`` and
  ``i' = exp(i~ - m)`` (one of them is 1), ``n = f' + i'``, ``c' = (f' c + i' tanh(z~)) / n``,
  ``l' = m + log n``, ``h' = sigmoid(o~) c'``: the paper's ``h`` exactly (its ``c`` and ``n``
  rescaled by ``1/n`` every step, which ``c / n`` does not see), and nothing overflows however
  large ``i~`` gets. One head (a full ``W_hh``, not the paper's block-diagonal heads). ``l``
  starts at 0 in every call (normaliser 1: ``c0`` is weighted against the first input, where the
  paper's ``n0 = 0`` would drop it).
* ``decay_rnn``: a leaky tanh RNN with a learned per-unit decay,
  ``h' = a h + (1 - a) tanh(xg0 + hg0)`` with ``a = exp(-softplus(d))`` in ``(0, 1)`` for a
  trained per-unit ``d`` (starting at -2, ``a ~= 0.88``, a time constant of about 8 steps).
"""

from __future__ import annotations

from lstmrs.cells import Cell, exp, layer_norm, log, maximum, relu, sigmoid, softplus, tanh
from lstmrs.plugins import hookimpl

__version__ = "0.1.0"
__all__ = [
    "CELLS",
    "CIFG_LSTM",
    "DECAY_RNN",
    "ELMAN",
    "INDRNN",
    "LN_GRU",
    "LN_LSTM",
    "MGU",
    "PEEPHOLE_LSTM",
    "SLSTM",
]


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


def _ln(c: Cell, x, name: str):
    gain = c.unit_param(f"ln_gain_{name}", init="constant", value=1.0)
    bias = c.unit_param(f"ln_bias_{name}", init="constant", value=0.0)
    return layer_norm(x, gain, bias, eps=1e-5)


def ln_lstm(c: Cell):
    """Layer-normalised LSTM (Ba et al., 2016), each gate and the cell normalised separately."""
    xs, hs = c.x_gates(4), c.h_gates(4)
    i, f, g, o = (_ln(c, x + h, name) for x, h, name in zip(xs, hs, "ifgo"))
    c_new = sigmoid(f) * c.state("c") + sigmoid(i) * tanh(g)
    return {"h": sigmoid(o) * tanh(_ln(c, c_new, "c")), "c": c_new}


def ln_gru(c: Cell):
    """Layer-normalised GRU (Ba et al., 2016): r and z gates normalised, the candidate's input
    and recurrent terms normalised apart (the reset gate scales the recurrent one)."""
    xr, xz, xn = c.x_gates(3)
    hr, hz, hn = c.h_gates(3)
    r = sigmoid(_ln(c, xr + hr, "r"))
    z = sigmoid(_ln(c, xz + hz, "z"))
    n = tanh(_ln(c, xn, "xn") + r * _ln(c, hn, "hn"))
    return {"h": (1 - z) * n + z * c.state("h")}


def slstm(c: Cell):
    """sLSTM (Beck et al., 2024): exponential input gate, stabilised by the max trick; c is
    kept normalised (c / n) and l = log of the unstabilised normaliser."""
    xi, xf, xz, xo = c.x_gates(4)
    hi, hf, hz, ho = c.h_gates(4)
    cell, l_prev = c.state("c"), c.state("l")
    i_tilde = xi + hi
    log_f = -softplus(-(xf + hf)) + l_prev  # log(F * N), F = sigmoid(f~), N = exp(l)
    m = maximum(log_f, i_tilde)  # the stabiliser
    f_gate, i_gate = exp(log_f - m), exp(i_tilde - m)  # max(f', i') = 1
    n = f_gate + i_gate  # in [1, 2]
    c_new = (f_gate * cell + i_gate * tanh(xz + hz)) / n
    return {"h": sigmoid(xo + ho) * c_new, "c": c_new, "l": m + log(n)}


def decay_rnn(c: Cell):
    """Leaky tanh RNN whose per-unit decay a = exp(-softplus(d)) is learned."""
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    a = exp(-softplus(c.unit_param("decay", init="constant", value=-2.0)))
    h = c.state("h")
    return {"h": a * h + (1 - a) * tanh(x + hh)}


PEEPHOLE_LSTM = Cell.define("peephole_lstm", peephole_lstm, states=("h", "c"))
CIFG_LSTM = Cell.define("cifg_lstm", cifg_lstm, states=("h", "c"))
MGU = Cell.define("mgu", mgu, states=("h",))
INDRNN = Cell.define("indrnn", indrnn, states=("h",))
ELMAN = Cell.define("elman", elman, states=("h",))
LN_LSTM = Cell.define("ln_lstm", ln_lstm, states=("h", "c"))
LN_GRU = Cell.define("ln_gru", ln_gru, states=("h",))
SLSTM = Cell.define("slstm", slstm, states=("h", "c", "l"))
DECAY_RNN = Cell.define("decay_rnn", decay_rnn, states=("h",))
CELLS = (PEEPHOLE_LSTM, CIFG_LSTM, MGU, INDRNN, ELMAN, LN_LSTM, LN_GRU, SLSTM, DECAY_RNN)


@hookimpl
def lstmrs_register_cells(register):
    for spec in CELLS:
        register(spec)
