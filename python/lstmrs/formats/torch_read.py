"""Reading live ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` modules into layer recipes.

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
from .optional import require
from .recipe import LayerRecipe

__all__ = ["TORCH_RNN_RELU", "TORCH_RNN_TANH", "read_torch"]


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


def read_torch(module: Any, *, dtype: Any = None) -> LayerRecipe:
    """The recipe of a layer with ``module``'s configuration and weights.

    ``module``: a ``torch.nn.LSTM``, ``GRU`` or ``RNN``. ``dtype``: ``"float32"`` or
    ``"float64"``; None keeps the module's (half-precision weights become float32).
    """
    torch = require("torch", "importing from PyTorch")
    nn = torch.nn
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise InvalidArgumentError(
            f"module: expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}"
        )
    proj = int(getattr(module, "proj_size", 0) or 0)
    weight = module.weight_ih_l0
    if dtype is None:
        dtype = "float64" if weight.dtype == torch.float64 else "float32"
    sd = {
        k: np.ascontiguousarray(v.detach().to("cpu", torch.float64).numpy().astype(dtype))
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
    return LayerRecipe(module.mode, _MODES[module.mode], kwargs, sd, bool(module.training))
