"""Checkpoints of models and training state: :func:`load` gives a :class:`~lstmrs.Model` back.

The file format (a directory of ``model.safetensors``, ``optimizer.safetensors``,
``carry.safetensors`` and ``config.json``, written atomically and checked against SHA-256 sums on
reading) lives in :mod:`lstmrs.checkpoint_format`, below the model in the package's layers;
its names are re-exported here, so ``lstmrs.checkpoint.save``, ``read_checkpoint``,
``latest_checkpoint`` and the rest keep working.
"""

from __future__ import annotations

import os

from .checkpoint_format import (
    CARRY_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    LATEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    CheckpointError,
    _require_optimizer,  # noqa: F401 - the old module's private names, still imported
    _sha256,  # noqa: F401
    atomic_write,
    latest_checkpoint,
    read_checkpoint,
    save,
    write_training_checkpoint,
)
from .models import Model

__all__ = [
    "CARRY_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "LATEST_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "CheckpointError",
    "atomic_write",
    "latest_checkpoint",
    "load",
    "read_checkpoint",
    "save",
    "write_training_checkpoint",
]


def load(path: str | os.PathLike, *, compile: bool = True) -> Model:
    """A model from a checkpoint directory (or a training directory's latest checkpoint); see
    :meth:`lstmrs.Model.load`."""
    return Model.load(path, compile=compile)
