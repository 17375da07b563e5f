"""The memory ceiling: sizes are checked against it before the Rust core allocates.

An allocation that fails inside Rust aborts the process, which no caller can catch. So every size
that reaches an allocation (a layer's parameters, the buffers of a forward or backward pass, a
stream's states) is checked first, and a call that would need more than the ceiling raises
:class:`~lstmrs.errors.MemoryLimitError` naming the argument, the bytes and the limit.

The ceiling defaults to the machine's physical memory (lowered to ``ulimit -v`` when that is
set). ``LSTMRS_MEMORY_LIMIT`` sets it at start-up (bytes, or ``512M``, ``8G``, ``1T``: powers of
1024); :func:`set_memory_limit` at run time.
"""

from __future__ import annotations

import os
import re
import warnings

from . import _lstmrs
from .errors import InvalidArgumentError

__all__ = ["ENV_VAR", "get_memory_limit", "parse_size", "set_memory_limit"]

ENV_VAR = "LSTMRS_MEMORY_LIMIT"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int | None:
    """Bytes of ``"1024"``, ``"512M"``, ``"8GiB"`` (powers of 1024); None when not a size.
    The same rule as the Rust core's ``memory::parse_size``."""
    m = _SIZE_RE.match(text)
    if m is None:
        return None
    n = int(m.group(1)) << _SHIFT[m.group(2).upper()]
    return n if 0 < n < 1 << 64 else None


def set_memory_limit(nbytes: int | str | None) -> None:
    """Sets the ceiling: a number of bytes, a size such as ``"8G"``, or None for the default
    (the machine's memory)."""
    if isinstance(nbytes, str):
        parsed = parse_size(nbytes)
        if parsed is None:
            raise InvalidArgumentError(
                f"memory_limit: expected bytes or a size such as '512M' or '8G', got {nbytes!r}"
            )
        nbytes = parsed
    if nbytes is not None and (
        isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 < nbytes < 1 << 64
    ):
        raise InvalidArgumentError(
            f"memory_limit: expected a number of bytes >= 1 or None, got {nbytes!r}"
        )
    _lstmrs.set_memory_limit(nbytes)


def get_memory_limit() -> int:
    """The ceiling in bytes."""
    return int(_lstmrs.get_memory_limit())


def _check_env() -> None:
    value = os.environ.get(ENV_VAR)
    if value is not None and parse_size(value) is None:
        warnings.warn(
            f"{ENV_VAR}={value!r} is not a size (bytes, or e.g. '512M', '8G'); "
            "using the machine's memory as the limit",
            RuntimeWarning,
            stacklevel=3,
        )


_check_env()
