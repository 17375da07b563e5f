"""Deployment and interop: ONNX export (custom cells included), import from PyTorch, Keras and
ONNX, and safetensors under PyTorch's names.

* :func:`~lstmrs.formats.onnx_export.model_to_onnx` / ``Model.to_onnx`` and
  :func:`~lstmrs.formats.onnx_export.layer_to_onnx` / ``LSTM.to_onnx``: ONNX's LSTM and GRU
  operators for the built-in cells, a ``Scan`` running the cell's element-wise program for
  cells written in the cell language; checked with ``onnx.checker`` and ONNX Runtime on the spot.
* :func:`~lstmrs.interop.torch_import.from_torch` / ``LSTM.from_torch``: live torch modules.
* :func:`~lstmrs.interop.keras_import.from_keras`: Keras 3 ``LSTM`` / ``GRU`` /
  ``Bidirectional`` layers, models and ``.keras`` files, or their ``get_weights()`` arrays.
* :func:`~lstmrs.interop.onnx_import.read_onnx_rnns` / ``LSTM.from_onnx``: the ``LSTM`` and
  ``GRU`` nodes of an ONNX file.

The readers and writers themselves live in :mod:`lstmrs.formats`, below the layers (which call
them); this package, above the layers, builds layers from what the readers read.
onnx, onnxruntime, torch and keras are optional: each is imported when first needed, with an
error naming the pip package when it is missing.
"""

from ..formats.onnx_export import DEFAULT_OPSET, layer_to_onnx, model_to_onnx
from ..formats.safetensors_export import save_model, save_state_dict
from .keras_import import KerasRecurrent, from_keras, from_keras_weights
from .onnx_import import OnnxRecurrent, read_onnx_rnns
from .torch_import import from_torch

__all__ = [
    "DEFAULT_OPSET",
    "KerasRecurrent",
    "OnnxRecurrent",
    "from_keras",
    "from_keras_weights",
    "from_torch",
    "layer_to_onnx",
    "model_to_onnx",
    "read_onnx_rnns",
    "save_model",
    "save_state_dict",
]
