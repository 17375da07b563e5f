"""The exceptions lstmrs raises.

Every error derives from :class:`LstmrsError` and also from the builtin a caller would expect
(``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working. Messages name the
argument, what was expected and what was given, e.g.
``x: expected shape [B, T, 8] (batch_first=True), got (4, 5, 7)``.

The Rust extension raises these same classes (it looks them up in this module), so there is one
exception tree: every lstmrs exception is defined here and exported from ``lstmrs``; the modules
that raise them re-export their own (``lstmrs.config.ConfigError`` is
``lstmrs.errors.ConfigError``).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DTypeError",
    "DataFileError",
    "ExportError",
    "ExportMismatchError",
    "GpuUnavailableError",
    "InferenceOnlyError",
    "InvalidArgumentError",
    "LstmrsError",
    "MemoryLimitError",
    "MissingDependencyError",
    "NonFiniteError",
    "PluginError",
    "PluginWarning",
    "RunDirError",
    "ShapeError",
    "TuneError",
    "UnsupportedModelError",
    "UnsupportedOperationError",
]


class LstmrsError(Exception):
    """Root of all lstmrs errors; raised as itself only for internal failures."""


class ShapeError(LstmrsError, ValueError):
    """An array has the wrong rank or size for its argument."""


class DTypeError(LstmrsError, TypeError):
    """An argument has an unsupported dtype (integer, bool, complex, object, ...)."""


class InvalidArgumentError(LstmrsError, ValueError):
    """An argument is outside its allowed values (a size of 0, a bad length, an unknown name)."""


class NonFiniteError(LstmrsError, ValueError):
    """An input holds NaN or infinity while the layer checks for them (``check_finite=True``)."""


class GpuUnavailableError(LstmrsError, RuntimeError):
    """A GPU was asked for (``device="gpu"``) and cannot be used; the message gives the reason:
    ``feature not built``, ``no adapter``, ``limits too small`` or ``device error``."""


class InferenceOnlyError(LstmrsError, RuntimeError):
    """Training asked of an inference-only layer (a bf16 or int8 one from
    :func:`lstmrs.quantize_dynamic`): train the float32 layer and quantize it again."""


class MemoryLimitError(LstmrsError, MemoryError):
    """A size would need more memory than the ceiling allows (checked before allocating); the
    message names the argument, the bytes asked for and the limit. The ceiling defaults to the
    machine's memory; :func:`lstmrs.set_memory_limit` or ``LSTMRS_MEMORY_LIMIT`` change it."""


class DataFileError(LstmrsError, ValueError):
    """A data file (``.npz``, ``.npy``, CSV, JSON) cannot be read: it is corrupt, truncated or
    not of the format its name says. The message names the file; the original error is the
    ``__cause__``."""


class MissingDependencyError(LstmrsError, ImportError):
    """An optional dependency (onnx, onnxruntime, torch, keras) is needed and not installed; the
    message names the pip package."""


class ExportError(LstmrsError, ValueError):
    """A model or layer cannot be written in the requested format (the message says which part
    of it and why)."""


class ExportMismatchError(LstmrsError, RuntimeError):
    """An exported model, run in its target runtime, does not reproduce lstmrs' outputs to the
    tolerance; the message gives the output, the largest difference and where."""


class UnsupportedModelError(LstmrsError, ValueError):
    """A model given to an importer (torch, Keras, ONNX) uses a feature lstmrs cannot represent
    (the message names the feature and its value)."""


class UnsupportedOperationError(LstmrsError, TypeError):
    """An operation the cell language does not have (``**``, comparisons, ``//``, ...)."""


class ConfigError(InvalidArgumentError):
    """A configuration key is unknown, or its value is not allowed."""


class RunDirError(InvalidArgumentError):
    """A run directory is missing or lacks what a command needs."""


class CheckpointError(LstmrsError, ValueError):
    """A checkpoint is missing, incomplete, corrupted or of another format; the message names the
    file and the field, the original error (safetensors, JSON) is the ``__cause__``."""


class PluginError(LstmrsError, RuntimeError):
    """A plugin cannot be loaded or registers something invalid (a misspelt hook, a name
    another plugin already registered, an object of the wrong kind)."""


class PluginWarning(UserWarning):
    """An installed plugin was disabled (it failed to load or register) or two plugins
    registered one name; the message names the packages and how to block one."""


class TuneError(LstmrsError, RuntimeError):
    """A search cannot go on: Optuna or a database driver is missing, the storage cannot be
    reached, or every trial fails."""
