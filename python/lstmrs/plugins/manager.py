"""The plugin manager: pluggy, loaded on first use, with one registry per category.

Nothing here runs at ``import lstmrs``: :func:`get_manager` builds the manager the first time
something needs it (a registry, a lifecycle hook, ``lstmrs plugins``). Environment:

* ``LSTMRS_PLUGINS``: comma-separated plugin names to load (entry-point or package names);
  unset = every installed plugin, empty = none (only the built-ins).
* ``LSTMRS_BLOCK_PLUGINS``: comma-separated plugin names never to load.
* ``LSTMRS_TRACE_PLUGINS=1``: print every hook call and its result to stderr (pluggy tracing).

Isolation: an installed plugin that fails to import, implements a misspelt hook, or raises or
registers something invalid inside a registration hook is reported once (a
:class:`PluginWarning` naming its package and ``LSTMRS_BLOCK_PLUGINS``), disabled, and listed in
:attr:`LstmrsPluginManager.broken`; the built-ins and every other plugin keep working. A name
registered twice in one category keeps its first owner (the built-ins first, then plugins in
entry-point-name order) and every clash is reported naming both plugins and their packages, so a
clash never changes what another name resolves to. A plugin registered at run time by Python
code (``pm.register``, :func:`lstmrs.testing.register_temporarily`) is not isolated: its errors
raise :class:`PluginError` in the code that registered it.

The built-in cells, optimizers, tasks and commands are registered through the same hooks by
:mod:`lstmrs.plugins.builtin`, so a plugin's names live in one namespace with them. The manager
imports that module by name when it is created, and the built-in plugin imports the tasks by
name when their registry is first needed: the registry imports nothing above it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from ..cells import CellSpec
from ..errors import InvalidArgumentError, PluginError, PluginWarning
from ..optim_spec import Optimizer
from . import hookspecs

__all__ = [
    "BUILTIN",
    "CATEGORIES",
    "ENTRY_POINT_GROUP",
    "Command",
    "LstmrsPluginManager",
    "PluginError",
    "PluginWarning",
    "get_manager",
    "hookimpl",
    "reset_manager",
]

PROJECT = "lstmrs"
ENTRY_POINT_GROUP = "lstmrs"
HOOK_PREFIX = "lstmrs_"
BUILTIN = "lstmrs.builtin"
#: The module of the built-in plugin, imported by name when a manager is created, so the
#: registry imports none of the modules that register through it (as llm and pytest load their
#: default plugins).
BUILTIN_MODULE = "lstmrs.plugins.builtin"
CATEGORIES = ("cells", "tasks", "optimizers", "commands")
_HOOKS = {c: f"lstmrs_register_{c}" for c in CATEGORIES}
_SINGULAR = {"cells": "cell", "tasks": "task", "optimizers": "optimizer", "commands": "command"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_COMMAND_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

hookimpl = pluggy.HookimplMarker(PROJECT)


class _Broken(Exception):
    """Internal: an isolated plugin failed inside a registration hook."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(reason)
        self.plugin, self.reason = plugin, reason


@dataclass(frozen=True)
class Command:
    """A ``lstmrs`` subcommand: ``func(argv) -> exit status``."""

    name: str
    func: Callable[[list], int]
    help: str = ""
    plugin: str = ""


@dataclass
class _Registry:
    objects: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)


def _split_env(var: str) -> list[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _norm(name: str) -> str:
    # PEP 503 normalisation, so "lstmrs-cells", "lstmrs_cells" and "LSTMRS.Cells" all match.
    return re.sub(r"[-_.]+", "-", name).lower()


class LstmrsPluginManager(pluggy.PluginManager):
    """pluggy's manager with lstmrs' hook specs, typed errors and cached registries."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._registries: dict[str, _Registry] | None = None
        #: plugin name -> (distribution name, version) for plugins loaded from entry points.
        self.distributions: dict[str, tuple[str, str]] = {}
        #: plugin name -> {"package", "version", "reason"} for installed plugins disabled
        #: because they failed to import or register.
        self.broken: dict[str, dict[str, Any]] = {}
        #: (category, name, kept owner, refused owner) for every name registered twice.
        self.clashes: list[tuple[str, str, str, str]] = []
        self._reported: set[str] = set()

    # Registration -------------------------------------------------------------------------------

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        # Like pytest: an unmarked `lstmrs_*` function is an implementation too, so a
        # misspelt name reaches check_pending() instead of being ignored.
        if (
            opts is None
            and name.startswith(HOOK_PREFIX)
            and inspect.isroutine(getattr(plugin, name, None))
        ):
            return {}
        return opts

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        label = name or getattr(plugin, "__name__", None) or repr(plugin)
        with self._lock:
            try:
                result = super().register(plugin, name)
            except pluggy.PluginValidationError as e:
                raise PluginError(f"plugin {label!r}: {e}") from e
            except ValueError as e:  # pluggy: name or object already registered
                raise PluginError(f"plugin {label!r}: {e}") from e
            self._registries = None
        return result

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        with self._lock:
            result = super().unregister(plugin, name)
            self._registries = None
        return result

    def _misspelt_hooks(self) -> list[tuple[str, str]]:
        """(plugin name, message) for every ``lstmrs_*`` implementation that matches no hook."""
        known = sorted(n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX))
        found = []
        for name in list(vars(self.hook)):
            if name.startswith("_"):
                continue
            caller = getattr(self.hook, name)
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                message = (
                    f"plugin {impl.plugin_name!r} implements {name!r}, which is not an "
                    f"lstmrs hook.{hint} Hooks: {', '.join(known)}"
                )
                found.append((impl.plugin_name, message))
        return found

    def check_pending(self) -> None:
        """Raises :class:`PluginError` for an ``lstmrs_*`` implementation that matches no hook
        (usually a misspelling), naming the plugin and the closest hook."""
        for _, message in self._misspelt_hooks():
            raise PluginError(message)

    def _report(self, message: str) -> None:
        # Once per manager: registries are re-collected after every (un)registration.
        if message not in self._reported:
            self._reported.add(message)
            # Not attributed to a line of lstmrs (which would print that line under it): the
            # message names the plugin and its package.
            warnings.warn_explicit(
                message, PluginWarning, filename="lstmrs", lineno=0, module="lstmrs.plugins"
            )

    def _package(self, plugin: str) -> str:
        if plugin == BUILTIN:
            return "lstmrs"
        info = self.distributions.get(plugin) or self.broken.get(plugin)
        if info is None:
            return "registered at run time"
        package, version = (info["package"], info["version"]) if isinstance(info, dict) else info
        return f"{package} {version}"

    def _disable(self, plugin: str, package: str, version: str, reason: str) -> None:
        """Unregisters an installed plugin that failed, records why and warns once."""
        with self._lock:
            if self.has_plugin(plugin):
                super().unregister(name=plugin)
            self.distributions.pop(plugin, None)
            self.broken[plugin] = {"package": package, "version": version, "reason": reason}
            self._registries = None
        self._report(
            f"lstmrs plugin {plugin!r} (package {package} {version}) is disabled: {reason}. "
            f"Everything else still works; uninstall it (pip uninstall {package}) or set "
            f"LSTMRS_BLOCK_PLUGINS={plugin} to silence this"
        )

    def load_entrypoints(
        self, only: list[str] | None = None, blocked: list[str] | None = None
    ) -> list[str]:
        """Loads installed plugins (entry-point group ``lstmrs``); ``only``: the names to load
        (None = all). Returns the names loaded."""
        wanted = None if only is None else {_norm(n) for n in only}
        for n in blocked or ():
            if _norm(n) == _norm(BUILTIN):
                warnings.warn(
                    f"LSTMRS_BLOCK_PLUGINS: the built-ins ({BUILTIN}) cannot be blocked",
                    stacklevel=3,
                )
            else:
                self.set_blocked(n)
        blocked_norm = {_norm(n) for n in blocked or ()}
        found: dict[str, tuple[str, Any]] = {}  # entry-point name -> (package, distribution)
        claimed: dict[str, list[tuple[str, str]]] = {}  # entry-point name -> [(package, version)]
        eps = []
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            package = dist.metadata["Name"] or "?"
            if _norm(package) in seen:
                continue  # the same distribution twice on sys.path: the first one wins
            seen.add(_norm(package))
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                claimed.setdefault(ep.name, []).append((package, dist.version))
                if ep.name not in found:
                    found[ep.name] = (package, dist)
                    eps.append(ep)
        loaded: list[str] = []
        # Sorted, so registration order (and the registries' order) does not depend on sys.path.
        for ep in sorted(eps, key=lambda e: e.name):
            package, dist = found[ep.name]
            names = {_norm(ep.name), _norm(package)}
            if names & blocked_norm or self.is_blocked(ep.name):
                continue
            if wanted is not None and not names & wanted:
                continue
            owners = claimed[ep.name]
            if len(owners) > 1:
                # Which one Python would import depends on sys.path: load neither.
                both = " and ".join(f"{p} {v}" for p, v in sorted(owners))
                self._disable(
                    ep.name,
                    package,
                    dist.version,
                    f"the plugin name {ep.name!r} is claimed by two installed packages: {both}; "
                    "uninstall one",
                )
                continue
            try:
                plugin = ep.load()
            except Exception as e:  # noqa: BLE001  (any import failure disables only this plugin)
                self._disable(
                    ep.name,
                    package,
                    dist.version,
                    f"failed to import {ep.value!r}: {type(e).__name__}: {e}",
                )
                continue
            try:
                self.register(plugin, name=ep.name)
            except PluginError as e:
                self._disable(ep.name, package, dist.version, str(e))
                continue
            misspelt = [m for who, m in self._misspelt_hooks() if who == ep.name]
            if misspelt:
                self._disable(ep.name, package, dist.version, misspelt[0])
                continue
            self.distributions[ep.name] = (package, dist.version)
            loaded.append(ep.name)
        if wanted is not None:
            have = {_norm(n) for n in found} | {_norm(p) for p, _ in found.values()}
            for n in only or ():
                if _norm(n) not in have:
                    warnings.warn(
                        f"LSTMRS_PLUGINS names {n!r}, which is not an installed lstmrs plugin "
                        f"(installed: {sorted(found) or 'none'})",
                        stacklevel=3,
                    )
        return loaded

    # Registries ---------------------------------------------------------------------------------

    def registries(self, *categories: str) -> dict[str, _Registry]:
        """The registries of ``categories`` (default: all), each collected from its hook on
        first use and cached until a plugin is registered or unregistered. An installed plugin
        that fails in a registration hook is disabled (:meth:`_disable`) and the registries are
        collected again without it."""
        with self._lock:
            while True:
                if self._registries is None:
                    self.check_pending()
                    self._registries = {}
                    self.clashes = []
                try:
                    for c in categories or CATEGORIES:
                        if c not in self._registries:
                            self._registries[c] = self._collect(c)
                except _Broken as b:
                    package, version = self.distributions[b.plugin]
                    self._disable(b.plugin, package, version, b.reason)
                    continue
                return dict(self._registries)

    def _collect(self, category: str) -> _Registry:
        hook_name = _HOOKS[category]
        caller = getattr(self.hook, hook_name)
        reg = _Registry()
        impls = caller.get_hookimpls()
        # One call per plugin, through pluggy (so tracing sees it), to know who registers what.
        plugins = list(dict.fromkeys(i.plugin for i in impls))
        # Registration order (built-ins first), not pluggy's LIFO call order.
        order = {id(p): k for k, (_, p) in enumerate(self.list_name_plugin())}
        plugins.sort(key=lambda p: order.get(id(p), len(order)))
        for plugin in plugins:
            pname = self.get_name(plugin) or repr(plugin)
            sub = self.subset_hook_caller(hook_name, [p for p in plugins if p is not plugin])
            # What this plugin registers goes into a scratch registry first, so a plugin that
            # fails half-way leaves nothing behind.
            own = _Registry()
            register, close = self._registrar(category, pname, own)
            self.trace(f"{hook_name}: plugin {pname!r}")
            try:
                sub(register=register)
            except Exception as e:
                reason = (
                    str(e)
                    if isinstance(e, PluginError)
                    else f"plugin {pname!r} failed in {hook_name}: {type(e).__name__}: {e}"
                )
                if pname in self.distributions:
                    raise _Broken(pname, reason) from e
                if isinstance(e, PluginError):
                    raise
                raise PluginError(reason) from e
            finally:
                close()
            what = _SINGULAR[category]
            for name, obj in own.objects.items():
                if name in reg.objects:
                    kept = reg.owners[name]
                    self.clashes.append((category, name, kept, pname))
                    self._report(
                        f"{what} {name!r} is registered by both {kept!r} (package "
                        f"{self._package(kept)}) and {pname!r} (package {self._package(pname)});"
                        f" {name!r} stays {kept!r}'s. Uninstall one of them or block one with "
                        f"LSTMRS_BLOCK_PLUGINS={pname if pname != BUILTIN else kept}"
                    )
                    continue
                reg.objects[name] = obj
                reg.owners[name] = pname
        return reg

    def _registrar(self, category: str, plugin: str, reg: _Registry):
        what = _SINGULAR[category]
        open_ = [True]

        def add(name: Any, obj: Any) -> None:
            pattern = _COMMAND_RE if category == "commands" else _NAME_RE
            if not isinstance(name, str) or not pattern.match(name):
                raise PluginError(
                    f"plugin {plugin!r} registered a {what} named {name!r}: names are lowercase "
                    "identifiers (letters, digits, '_', starting with a letter)"
                )
            if name in reg.objects:
                raise PluginError(f"plugin {plugin!r} registered the {what} {name!r} twice")
            reg.objects[name] = obj
            reg.owners[name] = plugin

        if category == "cells":

            def register(spec: Any) -> None:
                if not isinstance(spec, CellSpec):
                    raise PluginError(
                        f"plugin {plugin!r} registered a cell that is not an "
                        f"lstmrs.cells.CellSpec: {spec!r} (build one with Cell.define)"
                    )
                add(spec.name, spec)

        elif category == "optimizers":

            def register(cls: Any) -> None:
                if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
                    raise PluginError(
                        f"plugin {plugin!r} registered an optimizer that is not a subclass of "
                        f"lstmrs.optim.Optimizer: {cls!r}"
                    )
                add(cls.name, cls)

        elif category == "tasks":

            def register(task: Any) -> None:
                problems = [
                    a
                    for a, ok in (
                        ("name", isinstance(getattr(task, "name", None), str)),
                        ("description", isinstance(getattr(task, "description", None), str)),
                        ("default_config", isinstance(getattr(task, "default_config", None), dict)),
                        ("make_data", callable(getattr(task, "make_data", None))),
                    )
                    if not ok
                ]
                if problems:
                    raise PluginError(
                        f"plugin {plugin!r} registered a task {task!r} without a valid "
                        f"{', '.join(problems)} (a task has name: str, description: str, "
                        "default_config: dict, make_data(config, seed) -> (X, y))"
                    )
                add(task.name, task)

        else:

            def register(name: Any, func: Any, help: str = "") -> None:
                if not callable(func):
                    raise PluginError(
                        f"plugin {plugin!r} registered command {name!r} with a non-callable "
                        f"{func!r}; expected func(argv) -> int"
                    )
                add(name, Command(name, func, str(help or ""), plugin))

        def guarded(*args: Any, **kwargs: Any) -> None:
            if not open_[0]:
                raise PluginError(
                    f"plugin {plugin!r}: register() called after {_HOOKS[category]} returned; "
                    "register everything inside the hook"
                )
            register(*args, **kwargs)

        def close() -> None:
            open_[0] = False

        # What a trace shows for the argument.
        guarded.__name__ = guarded.__qualname__ = f"register<{category} of {plugin}>"
        return guarded, close

    def registry(self, category: str) -> dict[str, Any]:
        if category not in CATEGORIES:
            raise InvalidArgumentError(
                f"category: expected one of {list(CATEGORIES)}, got {category!r}"
            )
        return dict(self.registries(category)[category].objects)

    def owner(self, category: str, name: str) -> str | None:
        """The plugin that registered ``name`` in ``category``."""
        return self.registries(category)[category].owners.get(name)


# --------------------------------------------------------------------------------------------
# The process-wide manager

_manager: LstmrsPluginManager | None = None
_manager_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held these at the fork; it does not exist in the child.
    global _manager_lock
    _manager_lock = threading.Lock()
    if _manager is not None:
        _manager._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _trace_enabled() -> bool:
    return os.environ.get("LSTMRS_TRACE_PLUGINS", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def create_manager(load_entrypoints: bool = True) -> LstmrsPluginManager:
    """A new manager with the built-ins and (``load_entrypoints``) the installed plugins that
    ``LSTMRS_PLUGINS`` / ``LSTMRS_BLOCK_PLUGINS`` allow. :func:`get_manager` keeps one."""
    pm = LstmrsPluginManager()
    if _trace_enabled():
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    pm.register(importlib.import_module(BUILTIN_MODULE), name=BUILTIN)
    if load_entrypoints:
        only = _split_env("LSTMRS_PLUGINS")
        pm.load_entrypoints(only=only, blocked=_split_env("LSTMRS_BLOCK_PLUGINS") or [])
    pm.check_pending()
    return pm


def get_manager() -> LstmrsPluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on the first call."""
    global _manager
    pm = _manager
    if pm is None:
        with _manager_lock:
            if _manager is None:
                _manager = create_manager()
            pm = _manager
    return pm


def reset_manager(manager: LstmrsPluginManager | None = None) -> LstmrsPluginManager | None:
    """Replaces the process-wide manager (None: the next :func:`get_manager` builds a fresh
    one from the environment); returns the previous one. For tests and notebooks."""
    global _manager
    with _manager_lock:
        old, _manager = _manager, manager
    return old
