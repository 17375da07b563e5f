"""Import of live ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` modules.

The lstmrs layers share torch's parameter names, shapes and gate orders, so the weights load
unchanged; the importer carries over the configuration (``batch_first``, ``bidirectional``,
``num_layers``, ``bias``, ``dropout``, training mode). ``nn.RNN`` becomes an
:class:`~lstmrs.RNN` whose cell (:data:`TORCH_RNN_TANH` / :data:`TORCH_RNN_RELU`) is written in
the cell language, so it trains and exports like any plugin cell. An LSTM's ``proj_size`` carries
over (``weight_hr_l{k}`` loads under its own name). The reading is
:func:`lstmrs.formats.torch_read.read_torch`; this module builds the layer.
"""

from __future__ import annotations

from typing import Any

from ..formats.torch_read import TORCH_RNN_RELU, TORCH_RNN_TANH, read_torch
from ..rnn import layer_from_recipe

__all__ = ["TORCH_RNN_RELU", "TORCH_RNN_TANH", "from_torch"]


def from_torch(module: Any, *, dtype: Any = None, expect: type | None = None):
    """An lstmrs layer with ``module``'s configuration and weights.

    ``module``: a ``torch.nn.LSTM``, ``GRU`` or ``RNN``. ``dtype``: ``"float32"`` or
    ``"float64"``; None keeps the module's (half-precision weights become float32).
    ``expect``: :class:`~lstmrs.LSTM` or :class:`~lstmrs.GRU` require that kind of module;
    :class:`~lstmrs.RNN` (or None) takes any of the three and returns an ``RNN`` for
    ``nn.RNN``, else the matching ``LSTM`` / ``GRU`` (an ``RNN`` when ``expect`` is ``RNN``).
    """
    if expect is not None:
        return expect.from_torch(module, dtype=dtype)
    return layer_from_recipe(read_torch(module, dtype=dtype))
