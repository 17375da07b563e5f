"""Whether the GPU backend can run here, and on what.

Layers take ``device="cpu"`` (default), ``"gpu"`` or ``"auto"``. The GPU backend runs the LSTM and
GRU forward and backward passes in float32 through Vulkan (wgpu); it is compiled in only when the
extension is built with the cargo feature ``gpu``. :func:`gpu_info` says why it cannot run when it
cannot: ``feature not built``, ``no adapter`` or ``limits too small``.

>>> import lstmrs
>>> isinstance(lstmrs.gpu_available(), bool)
True
"""

from __future__ import annotations

from typing import Any

from . import _lstmrs

__all__ = ["gpu_available", "gpu_info"]


def gpu_info() -> dict[str, Any]:
    """The adapter ``device="gpu"`` runs on, or why there is none.

    Keys: ``available`` (bool), ``reason`` (why not, else None), and the adapter's ``name``,
    ``backend`` (``"vulkan"``), ``device_type`` (``"discrete"``, ``"integrated"``, ``"cpu"`` for a
    software driver such as Mesa's lavapipe, ...), ``driver`` and ``driver_info`` (None when
    unavailable). The first call opens the device, which then stays open.
    """
    return dict(_lstmrs.gpu_info())


def gpu_available() -> bool:
    """Whether ``device="gpu"`` can run here (see :func:`gpu_info` for the reason if not)."""
    return bool(gpu_info()["available"])
