"""lstmrs: LSTM and GRU layers with PyTorch's semantics, computed by a Rust core.

>>> import numpy as np
>>> import lstmrs
>>> lstm = lstmrs.LSTM(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> out, (h_n, c_n) = lstm(np.zeros((4, 10, 8), dtype=np.float32))
>>> out.shape, h_n.shape
((4, 10, 16), (2, 4, 16))
"""

from ._lstmrs import __version__
from .errors import (
    DTypeError,
    InvalidArgumentError,
    LstmrsError,
    NonFiniteError,
    ShapeError,
)
from .rnn import GRU, LSTM, RnnGradients, get_num_threads, set_num_threads

__all__ = [
    "GRU",
    "LSTM",
    "DTypeError",
    "InvalidArgumentError",
    "LstmrsError",
    "NonFiniteError",
    "RnnGradients",
    "ShapeError",
    "__version__",
    "get_num_threads",
    "set_num_threads",
]
