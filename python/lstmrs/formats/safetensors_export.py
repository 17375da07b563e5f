"""Weights to ``.safetensors`` under PyTorch's names, for loading into torch modules."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ..errors import InvalidArgumentError

__all__ = ["save_model", "save_state_dict"]


def save_state_dict(state: Mapping[str, Any], path: Any, metadata: Mapping[str, str]) -> None:
    """Writes ``state`` (name -> array) with ``metadata``; ``"format": "pt"`` marks the names
    as PyTorch's for the tools that look for it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"path: the folder {folder!r} does not exist")
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    save_file(tensors, path, metadata={"format": "pt", **metadata})


def save_model(model: Any, path: Any, *, rnn_only: bool = False) -> None:
    """A :class:`lstmrs.Model`'s weights: all of them (``rnn.*``, ``head.{k}.*``,
    ``embedding.weight``, ``attention.*``) or, with ``rnn_only``, the recurrent layers under
    ``torch.nn.LSTM``/``GRU``'s own names (``weight_ih_l0``, ...)."""
    state = model.state_dict()
    if rnn_only:
        state = {k[len("rnn.") :]: v for k, v in state.items() if k.startswith("rnn.")}
    save_state_dict(state, path, {"lstmrs.config": json.dumps(model.get_config())})
