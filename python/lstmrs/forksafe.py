"""Fork safety of the Python side (the Rust side: ``lstmrs_core::forklock`` and the thread pool's
``pthread_atfork`` handler).

``fork()`` copies only the calling thread. A lock another thread held at that moment stays held
in the child, where its holder does not exist. Two kinds of such locks live on the Python side:

- the locks of lstmrs' own caches (the plugin registry): their modules re-create them in the
  child with ``os.register_at_fork(after_in_child=...)``;
- Python's per-module import locks: several lstmrs calls import a module on first use (start-up
  time: the plugin registry, entry points, pluggy), and a thread in the middle of such an import
  at the fork leaves the child blocked the next time it imports that module. The hook below runs
  in the forking thread just before the fork and waits for every module still being imported
  by another thread to finish.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["finish_pending_imports"]


def finish_pending_imports() -> None:
    """Waits until no module is half imported by another thread (importing it again blocks until
    that thread has finished; a module the forking thread itself is importing returns at once)."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S110 - the importing thread reports its own error
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=finish_pending_imports)
