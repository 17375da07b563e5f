"""lstmrs: LSTM and GRU layers with PyTorch's semantics, computed by a Rust core.

>>> import numpy as np
>>> import lstmrs
>>> lstm = lstmrs.LSTM(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> out, (h_n, c_n) = lstm(np.zeros((4, 10, 8), dtype=np.float32))
>>> out.shape, h_n.shape
((4, 10, 16), (2, 4, 16))
"""

import importlib as _importlib

# Importing any lstmrs module (`import lstmrs.errors`, a plugin's `import lstmrs.cells`) runs this
# file first, so it loads only what must happen on `import lstmrs` and is cheap; every other
# public name is imported on first use by `__getattr__` below (PEP 562, as scipy does).
# Eager, and why:
# - forksafe: registers the `os.register_at_fork` hook that waits for pending imports (these lazy
#   imports included) before a fork; it must be in place before the first one;
# - _lstmrs: the extension's init configures the allocator and registers the Rust thread pool's
#   `pthread_atfork` handler; it also gives `__version__`;
# - memory: warns at `import lstmrs` about a malformed LSTMRS_MEMORY_LIMIT (start-up, as its
#   docs say) rather than at some later first call;
# - errors: loaded by memory anyway; the exceptions are plain attributes.
from . import forksafe as _forksafe  # noqa: F401 - registers the fork hook
from ._lstmrs import __version__
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
from .memory import get_memory_limit, set_memory_limit

# `typing.TYPE_CHECKING` without importing typing, which cost 10-20 ms of the ~30 ms of
# `import lstmrs.errors` here; mypy and pyright read a local `TYPE_CHECKING = False` the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # What `__getattr__` imports on first use, for type checkers and readers; the same pairs as
    # `_LAZY` (tests/test_lazy_import.py compares them).
    from . import callbacks, cells, datasets, metrics, optim
    from .callbacks import History
    from .checkpoint import load
    from .convlstm import ConvLSTM, ConvLSTMGradients
    from .gpu import gpu_available
    from .models import Loss, Model
    from .quantization import QuantizedRNN, quantize_dynamic
    from .rnn import GRU, LSTM, RNN, RnnGradients, get_num_threads, set_num_threads
    from .seq2seq import Seq2Seq
    from .streaming import Stepper
    from .tuning import tune

#: ``{public name: the submodule that defines it}``, imported on first access. Submodules
#: themselves (``lstmrs.cells``, ``lstmrs.models``, ...) load on first access too.
_LAZY = {
    "ConvLSTM": "convlstm",
    "ConvLSTMGradients": "convlstm",
    "GRU": "rnn",
    "History": "callbacks",
    "LSTM": "rnn",
    "Loss": "models",
    "Model": "models",
    "QuantizedRNN": "quantization",
    "RNN": "rnn",
    "RnnGradients": "rnn",
    "Seq2Seq": "seq2seq",
    "Stepper": "streaming",
    "get_num_threads": "rnn",
    "gpu_available": "gpu",
    "load": "checkpoint",
    "quantize_dynamic": "quantization",
    "set_num_threads": "rnn",
    # `lstmrs tune` from Python; Optuna, which it needs, is imported only when a search runs.
    "tune": "tuning",
}

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


if not TYPE_CHECKING:
    # Hidden from type checkers: they see the names of the block above, so a misspelt
    # `lstmrs.LTSM` is still their error rather than an `object`.
    def __getattr__(name: str) -> object:
        """``lstmrs.LSTM``, ``from lstmrs import Model``, ``lstmrs.cells``: imports the
        submodule on first access and keeps the name here, so later reads are plain lookups."""
        if name in _LAZY:
            value = getattr(_importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        elif name.startswith("_"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        else:
            # Any public submodule, as when this file imported them all.
            try:
                value = _importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise  # the submodule exists; an optional dependency of it is missing
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
