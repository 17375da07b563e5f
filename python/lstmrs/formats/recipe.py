"""What a reader hands to the layers: the constructor arguments and weights of one layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LayerRecipe"]


@dataclass
class LayerRecipe:
    """One recurrent layer read from a foreign format.

    ``source``: the foreign kind, ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"`` (what
    ``LSTM.from_*`` checks it is given); ``cell``: ``"lstm"``, ``"gru"`` or a
    :class:`~lstmrs.cells.Cell`; ``kwargs``: the layer's constructor keywords besides the cell;
    ``state_dict``: its weights under PyTorch's names; ``training``: the mode to leave it in.
    """

    source: str
    cell: Any
    kwargs: dict[str, Any]
    state_dict: dict[str, Any] = field(default_factory=dict)
    training: bool = False
