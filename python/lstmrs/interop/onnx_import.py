"""Import of the ``LSTM`` and ``GRU`` nodes of an ONNX model as lstmrs layers.

The reading (weights, gate orders, what is refused) is :mod:`lstmrs.formats.onnx_read`; this
module builds the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..formats.onnx_read import pick_onnx_node, read_onnx
from ..rnn import layer_from_recipe

__all__ = ["OnnxRecurrent", "layer_from_onnx", "read_onnx_rnns"]


@dataclass
class OnnxRecurrent:
    """One imported node: its name (``#k`` when it has none), ``op_type`` and the layer."""

    node: str
    op_type: str
    layer: Any


def read_onnx_rnns(source: Any, *, dtype: Any = "float32") -> list[OnnxRecurrent]:
    """Every ``LSTM`` / ``GRU`` node of ``source`` (a path, bytes or ``onnx.ModelProto``) as
    an lstmrs layer, in graph order."""
    return [
        OnnxRecurrent(label, recipe.source, layer_from_recipe(recipe))
        for label, recipe in read_onnx(source, dtype=dtype)
    ]


def layer_from_onnx(source: Any, node: Any = None, *, dtype: Any = "float32", expect=None):
    """The layer of one node: the only ``LSTM``/``GRU`` node (of ``expect``'s kind for
    :class:`~lstmrs.LSTM` / :class:`~lstmrs.GRU`), or ``node``: its name or its index in the
    list :func:`read_onnx_rnns` returns. ``expect`` None builds an ``LSTM`` or ``GRU``."""
    if expect is not None:
        return expect.from_onnx(source, node, dtype=dtype)
    return layer_from_recipe(pick_onnx_node(read_onnx(source, dtype=dtype), node))
