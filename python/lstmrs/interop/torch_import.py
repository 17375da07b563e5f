"""Import of live ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` modules.

The lstmrs layers share torch's parameter names, shapes and gate orders, so the weights load
unchanged; the importer carries over the configuration (``batch_first``, ``bidirectional``,
``num_layers``, ``bias``, ``dropout``, training mode). ``nn.RNN`` becomes an
:class:`~lstmrs.RNN` whose cell (:data:`TORCH_RNN_TANH` / :data:`TORCH_RNN_RELU`) is written in
the cell language, so it trains and exports like any plugin cell. An LSTM's ``proj_size`` carries
over (``weight_hr_l{k}`` loads under its own name).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cells import Cell, relu, tanh
from ..errors import InvalidArgumentError
from ..rnn import GRU, LSTM, RNN
from .optional import require

__all__ = ["TORCH_RNN_RELU", "TORCH_RNN_TANH", "from_torch"]


def _rnn_tanh(c: Cell):
    """torch.nn.RNN(nonlinearity="tanh"): h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    return {"h": tanh(x + hh)}


def _rnn_relu(c: Cell):
    """torch.nn.RNN(nonlinearity="relu"): h' = relu(W_ih x + b_ih + W_hh h + b_hh)."""
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    return {"h": relu(x + hh)}


TORCH_RNN_TANH = Cell.define("torch_rnn_tanh", _rnn_tanh, states=("h",))
TORCH_RNN_RELU = Cell.define("torch_rnn_relu", _rnn_relu, states=("h",))

_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": TORCH_RNN_TANH, "RNN_RELU": TORCH_RNN_RELU}


def from_torch(module: Any, *, dtype: Any = None, expect: type | None = None):
    """An lstmrs layer with ``module``'s configuration and weights.

    ``module``: a ``torch.nn.LSTM``, ``GRU`` or ``RNN``. ``dtype``: ``"float32"`` or
    ``"float64"``; None keeps the module's (half-precision weights become float32).
    ``expect``: :class:`~lstmrs.LSTM` or :class:`~lstmrs.GRU` require that kind of module;
    :class:`~lstmrs.RNN` (or None) takes any of the three and returns an ``RNN`` for
    ``nn.RNN``, else the matching ``LSTM`` / ``GRU`` (an ``RNN`` when ``expect`` is ``RNN``).
    """
    torch = require("torch", "importing from PyTorch")
    nn = torch.nn
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise InvalidArgumentError(
            f"module: expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}"
        )
    mode = module.mode
    want = {LSTM: "LSTM", GRU: "GRU"}.get(expect)
    if want is not None and mode != want:
        raise InvalidArgumentError(
            f"module: {expect.__name__}.from_torch expects a torch.nn.{want}, got "
            f"{type(module).__name__} (mode {mode!r}); use lstmrs.RNN.from_torch for any cell"
        )
    proj = int(getattr(module, "proj_size", 0) or 0)
    weight = module.weight_ih_l0
    if dtype is None:
        dtype = "float64" if weight.dtype == torch.float64 else "float32"
    sd = {
        k: v.detach().to("cpu", torch.float64).numpy().astype(dtype)
        for k, v in module.state_dict().items()
    }
    layers = int(module.num_layers)
    kwargs = {
        "input_size": int(module.input_size),
        "hidden_size": int(module.hidden_size),
        "num_layers": layers,
        "bias": bool(module.bias),
        "batch_first": bool(module.batch_first),
        # torch keeps dropout on a one-layer module (and warns); it has no effect there.
        "dropout": float(module.dropout) if layers > 1 else 0.0,
        "bidirectional": bool(module.bidirectional),
        "dtype": dtype,
        "seed": 0,
    }
    if proj:
        kwargs["proj_size"] = proj
    cell = _MODES[mode]
    if expect is RNN or not isinstance(cell, str):
        layer: Any = RNN(cell=cell, **kwargs)
    else:
        layer = (LSTM if cell == "lstm" else GRU)(**kwargs)
    layer.load_state_dict({k: np.ascontiguousarray(v) for k, v in sd.items()})
    layer.training = bool(module.training)
    return layer
