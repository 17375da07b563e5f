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
    """Waits until no module is being imported by another thread: takes and releases each module
    import lock in use (the importing thread holds its module's lock from before the module
    appears in ``sys.modules`` until it is initialised). A lock the forking thread holds itself
    (a fork from module-level code) is re-entrant and returns at once."""
    bootstrap = getattr(importlib, "_bootstrap", None)
    locks = getattr(bootstrap, "_module_locks", None)
    lock_unlock = getattr(bootstrap, "_lock_unlock_module", None)
    if isinstance(locks, dict) and lock_unlock is not None:
        for name in list(locks):
            lock_unlock(name)
    # Without those internals (another Python implementation): modules already in sys.modules.
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S110 - the importing thread reports its own error
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=finish_pending_imports)
