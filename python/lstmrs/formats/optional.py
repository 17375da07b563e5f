"""Optional dependencies of the interop modules, imported on first use with an error that names
the pip package (onnx, onnxruntime, torch, keras are extras, never requirements of lstmrs)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError

__all__ = ["require"]

# import name -> (pip package, extra of lstmrs that installs it)
_PACKAGES = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "torch": ("torch", "torch"),
    "keras": ("keras", "keras"),
}


def require(name: str, what: str) -> ModuleType:
    """Imports ``name`` or raises :class:`MissingDependencyError` saying that ``what`` needs it
    and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pip, extra = _PACKAGES.get(name, (name, None))
        hint = f"pip install {pip}" + (f" (or pip install 'lstmrs[{extra}]')" if extra else "")
        raise MissingDependencyError(f"{what} needs the {pip!r} package: {hint} ({e})") from None
