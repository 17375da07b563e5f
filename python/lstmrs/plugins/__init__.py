"""lstmrs plugins: cells, tasks, optimizers and CLI commands from installed packages.

A plugin is a package with an entry point in the group ``lstmrs`` that points at a module
implementing hooks from :mod:`lstmrs.plugins.hookspecs`::

    # pyproject.toml
    [project.entry-points.lstmrs]
    my_cells = "my_cells"

    # my_cells/__init__.py
    from lstmrs.cells import Cell, tanh
    from lstmrs.plugins import hookimpl

    @hookimpl
    def lstmrs_register_cells(register):
        register(Cell.define("elman", lambda c: {"h": tanh(c.x_gates(1)[0] + c.h_gates(1)[0])}))

Plugins load lazily, the first time a registry or hook is needed (never at ``import lstmrs``);
``LSTMRS_PLUGINS``, ``LSTMRS_BLOCK_PLUGINS`` and ``LSTMRS_TRACE_PLUGINS`` control loading (see
:mod:`lstmrs.plugins.manager`). ``plugins/README.md`` in the repository is the author's guide.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidArgumentError
from .manager import (
    BUILTIN,
    CATEGORIES,
    ENTRY_POINT_GROUP,
    Command,
    LstmrsPluginManager,
    PluginError,
    PluginWarning,
    create_manager,
    get_manager,
    hookimpl,
    reset_manager,
)

__all__ = [
    "BUILTIN",
    "CATEGORIES",
    "ENTRY_POINT_GROUP",
    "Command",
    "LstmrsPluginManager",
    "PluginError",
    "PluginWarning",
    "create_manager",
    "get_cells",
    "get_commands",
    "get_manager",
    "get_optimizers",
    "get_tasks",
    "hookimpl",
    "list_clashes",
    "list_plugins",
    "lookup",
    "notify_epoch_end",
    "notify_train_end",
    "notify_train_start",
    "plugins_command",
    "reset_manager",
]


def get_cells() -> dict[str, Any]:
    """``{name: lstmrs.cells.CellSpec}`` for every registered cell (built-ins included)."""
    return get_manager().registry("cells")


def get_tasks() -> dict[str, Any]:
    """``{name: task}`` for every registered task."""
    return get_manager().registry("tasks")


def get_optimizers() -> dict[str, type]:
    """``{name: lstmrs.optim.Optimizer subclass}`` for every registered optimizer."""
    return get_manager().registry("optimizers")


def get_commands() -> dict[str, Command]:
    """``{name: Command}`` for every registered ``lstmrs`` subcommand."""
    return get_manager().registry("commands")


def lookup(category: str, name: str) -> Any:
    """The object registered as ``name`` in ``category`` (``"cells"``, ``"tasks"``,
    ``"optimizers"``, ``"commands"``); :class:`~lstmrs.errors.InvalidArgumentError` listing the
    registered names when there is none."""
    reg = get_manager().registry(category)
    key = name.lower() if isinstance(name, str) else name
    if key not in reg:
        what = category[:-1]
        raise InvalidArgumentError(
            f"{what}: expected one of {sorted(reg)}, got {name!r} (plugins add more: "
            "`lstmrs plugins` lists what is installed)"
        )
    return reg[key]


# --------------------------------------------------------------------------------------------
# Lifecycle hooks: Model.fit calls these.


def notify_train_start(model: Any, config: dict) -> None:
    get_manager().hook.lstmrs_train_start(model=model, config=config)


def notify_epoch_end(model: Any, epoch: int, logs: dict) -> None:
    get_manager().hook.lstmrs_epoch_end(model=model, epoch=epoch, logs=logs)


def notify_train_end(model: Any, history: Any) -> None:
    get_manager().hook.lstmrs_train_end(model=model, history=history)


# --------------------------------------------------------------------------------------------
# Introspection


def list_plugins(include_builtin: bool = True) -> list[dict[str, Any]]:
    """One dict per registered plugin, in registration order: ``name``, ``version``,
    ``package`` (the distribution, None for a plugin registered at run time), ``builtin``,
    ``hooks`` (the hooks it implements), per category the names it registered, and ``broken``:
    None, or why an installed plugin was disabled (it failed to import or register; such a
    plugin comes after the working ones and registers nothing)."""
    pm = get_manager()
    regs = pm.registries()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        builtin = name == BUILTIN
        if builtin and not include_builtin:
            continue
        package, version = pm.distributions.get(name, (None, None))
        if builtin:
            package, version = "lstmrs", _lstmrs_version()
        elif version is None:
            version = getattr(plugin, "__version__", None)
        info: dict[str, Any] = {
            "name": name,
            "version": version,
            "package": package,
            "builtin": builtin,
            "hooks": sorted(c.name for c in pm.get_hookcallers(plugin) or ()),
        }
        for cat in CATEGORIES:
            info[cat] = sorted(k for k, owner in regs[cat].owners.items() if owner == name)
        info["broken"] = None
        out.append(info)
    for name, why in sorted(pm.broken.items()):
        row = {"name": name, "version": why["version"], "package": why["package"]}
        row.update({"builtin": False, "hooks": [], **{cat: [] for cat in CATEGORIES}})
        row["broken"] = why["reason"]
        out.append(row)
    return out


def list_clashes() -> list[dict[str, str]]:
    """Every name two plugins registered in one category: ``category``, ``name``, ``kept``
    (the plugin the name resolves to) and ``refused`` (the one whose object was dropped)."""
    pm = get_manager()
    pm.registries()
    keys = ("category", "name", "kept", "refused")
    return [dict(zip(keys, c)) for c in pm.clashes]


def _lstmrs_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("lstmrs")
    except importlib.metadata.PackageNotFoundError:
        return None


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "VERSION", "PACKAGE", "PROVIDES")
    lines = []
    for r in rows:
        if r["broken"]:
            lines.append(
                (r["name"], r["version"] or "-", r["package"] or "-", "BROKEN: " + r["broken"])
            )
            continue
        parts = [f"{cat}: {', '.join(r[cat])}" for cat in CATEGORIES if r[cat]]
        observers = [h for h in r["hooks"] if not h.startswith("lstmrs_register_")]
        if observers:
            parts.append(f"hooks: {', '.join(observers)}")
        lines.append((r["name"], r["version"] or "-", r["package"] or "-", "; ".join(parts) or "-"))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(3)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*x).rstrip() for x in [header, *lines])


def plugins_command(argv: list[str] | None = None) -> int:
    """``lstmrs plugins [--all] [--json]``: prints the installed plugins and what each one
    registers. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lstmrs plugins",
        description="List installed lstmrs plugins and the cells, tasks, optimizers and "
        "commands each registers.",
    )
    parser.add_argument("--all", action="store_true", help="include lstmrs' built-ins")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = list_plugins(include_builtin=args.all)
        clashes = list_clashes()
    except PluginError as e:
        print(f"lstmrs plugins: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No lstmrs plugins installed (`lstmrs plugins --all` shows the built-ins).")
    else:
        print(_format_table(rows))
    for c in clashes:
        print(
            f"clash: {c['category'][:-1]} {c['name']!r} is registered by {c['kept']!r} and "
            f"{c['refused']!r}; it resolves to {c['kept']!r}'s"
        )
    if any(r["broken"] for r in rows):
        print(
            "Broken plugins are disabled; uninstall them or list them in LSTMRS_BLOCK_PLUGINS "
            "(comma-separated)."
        )
    return 0
