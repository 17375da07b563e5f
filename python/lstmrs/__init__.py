"""lstmrs: LSTM and GRU layers with PyTorch's semantics, computed by a Rust core.

>>> import numpy as np
>>> import lstmrs
>>> lstm = lstmrs.LSTM(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> out, (h_n, c_n) = lstm(np.zeros((4, 10, 8), dtype=np.float32))
>>> out.shape, h_n.shape
((4, 10, 16), (2, 4, 16))
"""

from . import callbacks, cells, datasets, metrics, optim
from . import forksafe as _forksafe  # noqa: F401 - registers the fork hooks
from ._lstmrs import __version__
from .callbacks import History
from .checkpoint import load
from .convlstm import ConvLSTM, ConvLSTMGradients
from .errors import (
    CheckpointError,
    ConfigError,
    DataFileError,
    DTypeError,
    ExportError,
    ExportMismatchError,
    GpuUnavailableError,
    InferenceOnlyError,
    InvalidArgumentError,
    LstmrsError,
    MemoryLimitError,
    MissingDependencyError,
    NonFiniteError,
    PluginError,
    PluginWarning,
    RunDirError,
    ShapeError,
    TuneError,
    UnsupportedModelError,
    UnsupportedOperationError,
)
from .gpu import gpu_available
from .memory import get_memory_limit, set_memory_limit
from .models import Loss, Model
from .quantization import QuantizedRNN, quantize_dynamic
from .rnn import GRU, LSTM, RNN, RnnGradients, get_num_threads, set_num_threads
from .seq2seq import Seq2Seq
from .streaming import Stepper

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "CheckpointError",
    "ConfigError",
    "ConvLSTM",
    "ConvLSTMGradients",
    "DTypeError",
    "DataFileError",
    "ExportError",
    "ExportMismatchError",
    "GpuUnavailableError",
    "History",
    "InferenceOnlyError",
    "InvalidArgumentError",
    "Loss",
    "LstmrsError",
    "MemoryLimitError",
    "MissingDependencyError",
    "Model",
    "NonFiniteError",
    "PluginError",
    "PluginWarning",
    "QuantizedRNN",
    "RnnGradients",
    "RunDirError",
    "Seq2Seq",
    "ShapeError",
    "Stepper",
    "TuneError",
    "UnsupportedModelError",
    "UnsupportedOperationError",
    "__version__",
    "callbacks",
    "cells",
    "datasets",
    "get_memory_limit",
    "get_num_threads",
    "gpu_available",
    "load",
    "metrics",
    "optim",
    "quantize_dynamic",
    "set_memory_limit",
    "set_num_threads",
    "tune",
]


def tune(config=None, **kwargs):
    """Hyperparameter search over a config's ``[tune]`` space with Optuna: ``lstmrs tune`` from
    Python. See :func:`lstmrs.tuning.tune` for the arguments; returns a
    :class:`lstmrs.tuning.TuneResult`."""
    # start-up time: tuning and the task pipeline it runs add ~170 ms to `import lstmrs`; it needs
    # Optuna, an optional dependency, besides.
    from .tuning import tune as run

    return run(config, **kwargs)
