"""The plugin registry: loading from entry points, environment switches, registries,
duplicate and misspelt hooks, lifecycle hooks, `lstmrs plugins`.

Installed plugins are simulated with distributions written into a temporary directory on
sys.path (a `*.dist-info` with an `entry_points.txt`), which importlib.metadata finds exactly as
it finds pip-installed ones. Every test runs with a fresh manager that ignores the plugins
installed on this machine.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
from lstmrs import optim
from lstmrs.cells import Cell, CellSpec, tanh
from lstmrs.plugins import (
    BUILTIN,
    PluginError,
    PluginWarning,
    get_cells,
    get_commands,
    get_manager,
    get_optimizers,
    get_tasks,
    hookimpl,
    hookspecs,
    list_clashes,
    list_plugins,
    lookup,
    notify_epoch_end,
    notify_train_end,
    notify_train_start,
    plugins_command,
)
from lstmrs.plugins import manager as manager_mod
from lstmrs.testing import isolated_plugins, register_temporarily

ELMAN_SRC = """
from lstmrs.cells import Cell, tanh
from lstmrs.plugins import hookimpl

__version__ = "{version}"

@hookimpl
def lstmrs_register_cells(register):
    register(Cell.define("{cell}", lambda c: {{"h": tanh(c.x_gates(1)[0] + c.h_gates(1)[0])}}))
"""


@contextmanager
def plugin_warnings() -> Iterator[list[str]]:
    """Collects the messages of the PluginWarnings issued inside the block."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(str(w.message) for w in caught if issubclass(w.category, PluginWarning))


@pytest.fixture(autouse=True)
def _isolated():
    """No test here sees the developer's installed plugins or leaves a manager behind."""
    with isolated_plugins() as pm:
        yield pm


@pytest.fixture
def site(tmp_path, monkeypatch):
    """``install(package, source, ...)`` writes a plugin distribution into a directory on
    sys.path; returns the entry-point name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def install(package, source, *, ep_name=None, version="1.0.0"):
        module = f"lstmrsfake_{uuid.uuid4().hex[:10]}"
        ep_name = ep_name or package.replace("-", "_")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{package.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        )
        (info / "entry_points.txt").write_text(f"[lstmrs]\n{ep_name} = {module}\n")
        importlib.invalidate_caches()
        modules.append(module)
        return ep_name

    install.path = tmp_path
    yield install
    for m in modules:
        sys.modules.pop(m, None)


# --------------------------------------------------------------------------------------------
# Built-ins


def test_builtins_are_registered_through_the_hooks():
    cells = get_cells()
    assert set(cells) == {"lstm", "gru"}
    assert cells["lstm"].native == "lstm" and cells["gru"].native == "gru"
    assert cells["lstm"].states == ("h", "c") and cells["lstm"].x_gates == 4
    assert cells["gru"].states == ("h",) and cells["gru"].h_gates == 3
    assert get_optimizers() == {
        "sgd": optim.SGD,
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "rmsprop": optim.RMSprop,
        "adagrad": optim.Adagrad,
    }
    assert get_commands()["plugins"].func is plugins_command
    tasks = get_tasks()  # possibly empty; any built-in task belongs to the built-in plugin
    assert all(get_manager().owner("tasks", n) == BUILTIN for n in tasks)
    assert all(get_manager().owner("cells", n) == BUILTIN for n in cells)


def test_registries_are_copies():
    get_cells().clear()
    assert set(get_cells()) == {"lstm", "gru"}


def test_lookup_lists_the_choices():
    assert lookup("optimizers", "ADAM") is optim.Adam
    with pytest.raises(ValueError, match=r"cell: expected one of \['gru', 'lstm'\], got 'lsmt'"):
        lookup("cells", "lsmt")
    with pytest.raises(ValueError, match="category"):
        lookup("models", "x")


def test_every_hook_is_documented():
    names = [n for n in dir(hookspecs) if n.startswith("lstmrs_")]
    assert set(names) == {
        "lstmrs_register_cells",
        "lstmrs_register_tasks",
        "lstmrs_register_optimizers",
        "lstmrs_register_commands",
        "lstmrs_train_start",
        "lstmrs_epoch_end",
        "lstmrs_train_end",
    }
    for n in names:
        assert len(getattr(hookspecs, n).__doc__.strip()) > 40, n


# --------------------------------------------------------------------------------------------
# Loading from entry points


def test_nothing_loads_at_import(site):
    site("fake-lazy", ELMAN_SRC.format(version="0.1", cell="lazy_cell"))
    code = textwrap.dedent(
        """
        import sys
        import lstmrs, lstmrs.plugins
        from lstmrs.plugins import manager
        before = manager._manager is None and not any(m.startswith("lstmrsfake_") for m in sys.modules)
        cells = lstmrs.plugins.get_cells()
        after = any(m.startswith("lstmrsfake_") for m in sys.modules)
        print(before, after, "lazy_cell" in cells)
        """
    )
    env = dict(os.environ, PYTHONPATH=f"{site.path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("LSTMRS_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


def _installed_here() -> str:
    """Entry points of plugins really installed in this environment (the in-repo ones in CI):
    blocked in tests that count plugins, so they see only the built-ins and their fakes."""
    from importlib.metadata import entry_points

    return ",".join(ep.name for ep in entry_points(group="lstmrs"))


def test_installed_plugin_appears_and_disappears_with_its_distribution(site):
    real = _installed_here()
    name = site("fake-cells", ELMAN_SRC.format(version="0", cell="fake_elman"), version="2.3.4")
    with isolated_plugins(load=None, block=real):
        assert "fake_elman" in get_cells()
        row = next(r for r in list_plugins() if r["name"] == name)
        assert row == {
            "name": "fake_cells",
            "version": "2.3.4",
            "package": "fake-cells",
            "builtin": False,
            "hooks": ["lstmrs_register_cells"],
            "cells": ["fake_elman"],
            "tasks": [],
            "optimizers": [],
            "commands": [],
            "broken": None,
        }
    # "Uninstall": remove the distribution; a fresh manager no longer sees it.
    (site.path / "fake_cells-2.3.4.dist-info" / "entry_points.txt").unlink()
    (site.path / "fake_cells-2.3.4.dist-info" / "METADATA").unlink()
    (site.path / "fake_cells-2.3.4.dist-info").rmdir()
    importlib.invalidate_caches()
    with isolated_plugins(load=None, block=real):
        assert "fake_elman" not in get_cells()
        assert [r["name"] for r in list_plugins()] == [BUILTIN]


def test_lstmrs_plugins_selects_by_entry_point_or_package_name(site):
    site("fake-a", ELMAN_SRC.format(version="1", cell="cell_a"))
    site("fake-b", ELMAN_SRC.format(version="1", cell="cell_b"))
    with isolated_plugins(load=""):
        assert set(get_cells()) == {"lstm", "gru"}
    with isolated_plugins(load="fake_a"):
        assert set(get_cells()) == {"lstm", "gru", "cell_a"}
    with isolated_plugins(load=" fake-b , "):
        assert set(get_cells()) == {"lstm", "gru", "cell_b"}
    with isolated_plugins(load=None):
        assert {"cell_a", "cell_b"} <= set(get_cells())
    warning = "LSTMRS_PLUGINS names 'fake_c'.*not an installed"
    with pytest.warns(UserWarning, match=warning), isolated_plugins(load="fake_a,fake_c"):
        assert "cell_a" in get_cells()


def test_lstmrs_block_plugins(site):
    site("fake-a", ELMAN_SRC.format(version="1", cell="cell_a"))
    site("fake-b", ELMAN_SRC.format(version="1", cell="cell_b"))
    with isolated_plugins(load=None, block="fake_a"):
        cells = get_cells()
        assert "cell_a" not in cells and "cell_b" in cells
        assert get_manager().is_blocked("fake_a")
    with isolated_plugins(load="fake_a,fake_b", block="fake-b"):  # blocking wins
        assert "cell_a" in get_cells() and "cell_b" not in get_cells()
    with pytest.warns(UserWarning, match="cannot be blocked"), isolated_plugins(block=BUILTIN):
        assert "lstm" in get_cells()


def test_trace_prints_hook_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv("LSTMRS_TRACE_PLUGINS", "1")
    with isolated_plugins():
        get_cells()
    err = capsys.readouterr().err
    assert "lstmrs_register_cells" in err and "finish" in err
    monkeypatch.setenv("LSTMRS_TRACE_PLUGINS", "0")
    with isolated_plugins():
        get_cells()
    assert capsys.readouterr().err == ""


def test_misspelt_hook_is_an_error(site):
    site(
        "fake-typo",
        """
        from lstmrs.plugins import hookimpl

        @hookimpl
        def lstmrs_register_cell(register):
            pass
        """,
    )
    with plugin_warnings() as w, isolated_plugins(load=None):
        assert "lstm" in get_cells()  # the built-ins still work
        reason = get_manager().broken["fake_typo"]["reason"]
    assert "'fake_typo'" in reason and "'lstmrs_register_cell'" in reason
    assert "Did you mean 'lstmrs_register_cells'" in reason
    assert len(w) == 1 and "LSTMRS_BLOCK_PLUGINS=fake_typo" in w[0]


def test_unmarked_prefixed_functions_are_hooks_too():
    plugin = types.ModuleType("unmarked")
    plugin.lstmrs_register_cells = lambda register: register(
        Cell.define("plain", lambda c: {"h": tanh(c.x_gates(1)[0])})
    )
    with register_temporarily(plugin, name="unmarked"):
        assert "plain" in get_cells()
    typo = types.ModuleType("typo")
    typo.lstmrs_epoch_ends = lambda model: None
    hint = "'lstmrs_epoch_ends'.*Did you mean 'lstmrs_epoch_end'"
    with pytest.raises(PluginError, match=hint), register_temporarily(typo, name="typo"):
        pass
    assert get_manager().get_plugin("typo") is None  # unregistered after the failure


def test_wrong_hook_arguments_are_an_error():
    class Bad:
        @hookimpl
        def lstmrs_register_cells(self, register, extra):
            pass

    with pytest.raises(PluginError, match="(?s)'bad'.*extra"):
        get_manager().register(Bad(), name="bad")


def test_two_plugins_registering_one_name_warn_naming_both_and_the_first_keeps_it(site):
    site("fake-one", ELMAN_SRC.format(version="1", cell="same"))
    site("fake-two", ELMAN_SRC.format(version="1", cell="same"))
    both = (
        r"cell 'same' is registered by both 'fake_one' \(package fake-one 1.0.0\) and "
        r"'fake_two' \(package fake-two 1.0.0\).*LSTMRS_BLOCK_PLUGINS=fake_two"
    )
    with plugin_warnings() as w, isolated_plugins(load=None):
        assert get_manager().owner("cells", "same") == "fake_one"
        get_tasks(), get_cells()  # collected again: reported once
    assert len(w) == 1 and re.search(both, w[0])


def test_a_plugin_cannot_take_a_builtin_name():
    class Shadow:
        @hookimpl
        def lstmrs_register_optimizers(self, register):
            class Adam(optim.Optimizer):
                name = "adam"

            class Lion(optim.Optimizer):
                name = "lion"

            register(Adam)
            register(Lion)

    both = f"optimizer 'adam' is registered by both '{BUILTIN}' \\(package lstmrs\\) and 'shadow'"
    with plugin_warnings() as w, register_temporarily(Shadow(), name="shadow"):
        opts = get_optimizers()
        # The clash changes neither the clashing name nor an unrelated one.
        assert opts["adam"] is optim.Adam and opts["lion"].name == "lion"
        assert isinstance(optim.get_optimizer("lion", 0.01), opts["lion"])
        assert isinstance(optim.get_optimizer("adam", 0.01), optim.Adam)
    assert len(w) == 1 and re.search(both, w[0])
    assert "lion" not in get_optimizers()


def test_every_clash_is_reported(site):
    site("fake-one", ELMAN_SRC.format(version="1", cell="dup_a"))
    site("fake-two", ELMAN_SRC.format(version="1", cell="dup_a"))
    site("fake-three", ELMAN_SRC.format(version="1", cell="dup_a"))
    with plugin_warnings() as messages, isolated_plugins(load=None):
        clashes = list_clashes()
    assert {(c["kept"], c["refused"]) for c in clashes} == {
        ("fake_one", "fake_two"),
        ("fake_one", "fake_three"),
    }
    assert len(messages) == 2
    assert any("'fake_three'" in m for m in messages) and any("'fake_two'" in m for m in messages)


def test_two_packages_claiming_one_plugin_name(site):
    site("fake-x", ELMAN_SRC.format(version="1", cell="x1"), ep_name="clash")
    site("fake-y", ELMAN_SRC.format(version="1", cell="y1"), ep_name="clash")
    clash = "'clash' is claimed by two installed packages: fake-x 1.0.0 and fake-y 1.0.0"
    with plugin_warnings() as w, isolated_plugins(load=None):
        cells = get_cells()
        assert "x1" not in cells and "y1" not in cells and "lstm" in cells
        assert "clash" in get_manager().broken
    assert len(w) == 1 and clash in w[0]


def test_a_plugin_that_fails_to_import(site, capsys):
    site("fake-broken", "raise RuntimeError('boom')\n")
    site("fake-good", ELMAN_SRC.format(version="1", cell="good_cell"))
    failed = (
        r"'fake_broken' \(package fake-broken 1.0.0\) is disabled: failed to import.*boom.*"
        r"LSTMRS_BLOCK_PLUGINS=fake_broken"
    )
    with plugin_warnings() as w, isolated_plugins(load=None):
        assert {"lstm", "good_cell"} <= set(get_cells())
        get_tasks()
        rows = {r["name"]: r for r in list_plugins()}
    assert len(w) == 1 and re.search(failed, w[0])  # reported once
    assert rows["fake_good"]["broken"] is None and rows["fake_good"]["cells"] == ["good_cell"]
    assert "RuntimeError: boom" in rows["fake_broken"]["broken"]
    assert rows["fake_broken"]["package"] == "fake-broken"
    with plugin_warnings(), isolated_plugins(load=None):
        assert plugins_command(["--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "boom" in rows["fake_broken"]["broken"] and rows["fake_good"]["broken"] is None
    with plugin_warnings() as w, isolated_plugins(load=None, block="fake_broken"):
        assert "good_cell" in get_cells() and get_manager().broken == {}
    assert w == []  # blocking silences it


@pytest.mark.parametrize(
    "source, reason",
    [
        (
            """
            from lstmrs.plugins import hookimpl

            @hookimpl
            def lstmrs_register_cells(register):
                register("not a spec")
            """,
            "not an lstmrs.cells.CellSpec",
        ),
        (
            """
            from lstmrs.plugins import hookimpl

            @hookimpl
            def lstmrs_register_tasks(register):
                raise KeyError("no data dir")
            """,
            "failed in lstmrs_register_tasks: KeyError",
        ),
        (
            """
            from lstmrs.plugins import hookimpl

            @hookimpl
            def lstmrs_register_cells(register, extra):
                pass
            """,
            "extra",
        ),
    ],
)
def test_a_plugin_that_fails_to_register_is_disabled(site, source, reason):
    site("fake-bad", source)
    site("fake-good", ELMAN_SRC.format(version="1", cell="good_cell"))
    with plugin_warnings() as w, isolated_plugins(load=None):
        # Everything the broken plugin registered (in any category) is gone; the rest works.
        assert {"lstm", "gru", "good_cell"} <= set(get_cells())
        assert "plugins" in get_commands() and "adam" in get_optimizers()
        get_tasks()
        assert reason in get_manager().broken["fake_bad"]["reason"]
        assert get_manager().get_plugin("fake_bad") is None
    assert len(w) == 1 and "'fake_bad' (package fake-bad 1.0.0) is disabled" in w[0]


def test_cli_works_beside_a_broken_plugin_and_lists_it(site, tmp_path):
    """The issue's scenario, through the real CLI in a subprocess: a broken plugin installed
    beside a good one. `lstmrs plugins` lists both, `lstmrs train` trains the good one's cell."""
    real = _installed_here()
    site("fake-broken", "import no_such_module_anywhere\n")
    site("fake-good", ELMAN_SRC.format(version="1", cell="good_cell"))
    env = dict(os.environ, PYTHONPATH=f"{site.path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["LSTMRS_BLOCK_PLUGINS"] = real
    env.pop("LSTMRS_PLUGINS", None)

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "lstmrs.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    out = cli("plugins")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "fake_good" in rows, out.stdout + out.stderr
    assert "cells: good_cell" in rows["fake_good"]
    assert "BROKEN: failed to import" in rows["fake_broken"]
    assert "No module named 'no_such_module_anywhere'" in rows["fake_broken"]
    assert out.stderr.count("PluginWarning") == 1
    assert "LSTMRS_BLOCK_PLUGINS=fake_broken" in out.stderr
    run = tmp_path / "run"
    small = ["data.seq_len=6", "data.n_train=64", "data.n_val=16", "data.n_test=16"]
    small += ["train.epochs=1", "model.hidden_size=4"]
    sets = [a for kv in small for a in ("--set", kv)]
    out = cli("train", "--cell", "good_cell", "--run-dir", str(run), "--no-plots", *sets)
    assert out.returncode == 0, out.stderr
    assert 'cell = "good_cell"' in (run / "config.toml").read_text()
    assert json.loads((run / "state.json").read_text())["status"] == "completed"


# --------------------------------------------------------------------------------------------
# What plugins register


def _plugin(_name="plugin", **hooks):
    """A module-like plugin object (pluggy needs hashable plugins) with the given hooks."""
    module = types.ModuleType(_name)
    for k, v in hooks.items():
        setattr(module, f"lstmrs_{k}", hookimpl(v))
    return module


@pytest.mark.parametrize(
    "category, func, match",
    [
        ("cells", lambda register: register("not a spec"), "not an lstmrs.cells.CellSpec"),
        ("optimizers", lambda register: register(object), "not a subclass of lstmrs.optim"),
        (
            "tasks",
            lambda register: register(types.SimpleNamespace(name="t", description="d")),
            "without a valid default_config, make_data",
        ),
        ("commands", lambda register: register("go", "not callable"), "non-callable"),
        ("commands", lambda register: register("Bad Name", print), "lowercase identifiers"),
        ("cells", lambda register: 1 / 0, "failed in lstmrs_register_cells: ZeroDivisionError"),
    ],
)
def test_invalid_registrations(category, func, match):
    plugin = _plugin(**{f"register_{category}": func})
    with register_temporarily(plugin, name="p"), pytest.raises(PluginError, match=match):
        get_manager().registries()


def test_each_registry_is_collected_on_its_own():
    plugin = _plugin(register_tasks=lambda register: 1 / 0)
    with register_temporarily(plugin, name="bad_tasks"):
        assert "lstm" in get_cells()  # a broken task hook does not block the cells
        with pytest.raises(PluginError, match="'bad_tasks' failed in lstmrs_register_tasks"):
            get_tasks()


def test_register_after_the_hook_returned():
    kept = []
    with register_temporarily(_plugin(register_tasks=lambda register: kept.append(register))):
        get_tasks()
        with pytest.raises(PluginError, match="register\\(\\) called after lstmrs_register_tasks"):
            kept[0](types.SimpleNamespace())


def test_tasks_and_commands_round_trip():
    class Task:
        name = "toy"
        description = "a toy task"
        default_config: ClassVar[dict] = {"n": 2}

        def make_data(self, config, seed):
            return [seed] * config["n"], None

    task = Task()
    plugin = _plugin(
        register_tasks=lambda register: register(task),
        register_commands=lambda register: register("hello", lambda argv: len(argv), help="hi"),
    )
    with register_temporarily(plugin, name="toys"):
        assert get_tasks()["toy"] is task
        cmd = get_commands()["hello"]
        assert (cmd.name, cmd.help, cmd.plugin, cmd.func(["a", "b"])) == ("hello", "hi", "toys", 2)
        row = next(r for r in list_plugins() if r["name"] == "toys")
        assert row["tasks"] == ["toy"] and row["commands"] == ["hello"]
        assert row["package"] is None and row["version"] is None
    assert "toy" not in get_tasks() and "hello" not in get_commands()


def test_register_temporarily_unregisters_on_error():
    spec = Cell.define("temp_cell", lambda c: {"h": tanh(c.x_gates(1)[0])})
    plugin = _plugin(register_cells=lambda register: register(spec))
    with pytest.raises(KeyError), register_temporarily(plugin) as name:
        assert get_cells()["temp_cell"] is spec
        raise KeyError("inside")
    assert get_manager().get_plugin(name) is None
    assert "temp_cell" not in get_cells()


def test_isolated_plugins_restores_manager_and_environment(monkeypatch):
    monkeypatch.setenv("LSTMRS_BLOCK_PLUGINS", "something")
    outer = get_manager()
    with isolated_plugins(load="") as inner:
        assert inner is get_manager() and inner is not outer
        assert os.environ["LSTMRS_PLUGINS"] == "" and "LSTMRS_BLOCK_PLUGINS" not in os.environ
    assert get_manager() is outer
    assert os.environ["LSTMRS_BLOCK_PLUGINS"] == "something"


# --------------------------------------------------------------------------------------------
# Lifecycle hooks


def test_lifecycle_hooks_reach_observers():
    seen = []

    class Observer:
        @hookimpl
        def lstmrs_train_start(self, model, config):
            seen.append(("start", model, dict(config)))

        @hookimpl
        def lstmrs_epoch_end(self, epoch, logs):  # a subset of the arguments
            seen.append(("epoch", epoch, dict(logs)))

        @hookimpl
        def lstmrs_train_end(self, history):
            seen.append(("end", history))

    model = object()
    with register_temporarily(Observer()):
        notify_train_start(model, {"epochs": 2})
        notify_epoch_end(model, 0, {"loss": 1.5})
        notify_epoch_end(model, 1, {"loss": 0.5})
        notify_train_end(model, "history")
    notify_epoch_end(model, 2, {"loss": 0.1})  # unregistered: not seen
    assert seen == [
        ("start", model, {"epochs": 2}),
        ("epoch", 0, {"loss": 1.5}),
        ("epoch", 1, {"loss": 0.5}),
        ("end", "history"),
    ]


# --------------------------------------------------------------------------------------------
# `lstmrs plugins`


def test_plugins_command_table_and_json(site, capsys):
    real = _installed_here()
    site("fake-cells", ELMAN_SRC.format(version="0", cell="tbl_cell"), version="0.9.1")
    with isolated_plugins(load=None, block=real):
        assert plugins_command([]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["NAME", "VERSION", "PACKAGE", "PROVIDES"]
        assert table[1].split() == ["fake_cells", "0.9.1", "fake-cells", "cells:", "tbl_cell"]
        assert len(table) == 2  # the built-ins only with --all
        assert plugins_command(["--all", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["name"] for r in rows] == [BUILTIN, "fake_cells"]
        assert rows[0]["optimizers"] == ["adagrad", "adam", "adamw", "rmsprop", "sgd"]
    with isolated_plugins():
        assert plugins_command([]) == 0
        assert "No lstmrs plugins installed" in capsys.readouterr().out


def test_plugins_command_reports_clashes(site, capsys):
    site("fake-one", ELMAN_SRC.format(version="1", cell="dup"))
    site("fake-two", ELMAN_SRC.format(version="1", cell="dup"))
    with plugin_warnings() as w, isolated_plugins(load=None):
        assert plugins_command([]) == 0
        out = capsys.readouterr().out
    assert len(w) == 1
    assert "clash: cell 'dup' is registered by 'fake_one' and 'fake_two'" in out


def test_plugins_command_reports_errors_of_run_time_plugins(capsys):
    plugin = _plugin(register_cells=lambda register: 1 / 0)
    with register_temporarily(plugin, name="live"):
        assert plugins_command([]) == 1
        assert "'live' failed in lstmrs_register_cells" in capsys.readouterr().err


def test_reset_manager_builds_a_fresh_one_from_the_environment(monkeypatch):
    first = get_manager()
    old = manager_mod.reset_manager()
    assert old is first
    assert get_manager() is not first


def test_builtin_cell_specs_are_valid_descriptions():
    for spec in get_cells().values():
        assert CellSpec.from_json(spec.to_json()) == spec


def test_plugin_packages_in_this_repository_declare_the_entry_point_group():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    root = Path(__file__).resolve().parents[1] / "plugins"
    found = {}
    for toml in sorted(root.glob("*/pyproject.toml")):
        meta = tomllib.loads(toml.read_text())["project"]
        found[meta["name"]] = meta["entry-points"]["lstmrs"]
        assert any(d.startswith("lstmrs") for d in meta["dependencies"])
    assert found == {
        "lstmrs-cells": {"lstmrs_cells": "lstmrs_cells"},
        "lstmrs-copytask": {"lstmrs_copytask": "lstmrs_copytask"},
        "lstmrs-lion": {"lstmrs_lion": "lstmrs_lion"},
    }


def test_training_lifecycle_hooks_are_called():
    """fit() tells observer plugins when training starts, after every epoch and at the end."""
    import numpy as np
    from lstmrs.plugins import hookimpl
    from lstmrs.testing import register_temporarily

    seen = []

    class Observer:
        @hookimpl
        def lstmrs_train_start(self, model, config):
            seen.append(("start", config["epochs"]))

        @hookimpl
        def lstmrs_epoch_end(self, model, epoch, logs):
            seen.append(("epoch", epoch, round(logs["loss"], 12)))

        @hookimpl
        def lstmrs_train_end(self, model, history):
            seen.append(("end", len(history.history["loss"])))

    x = np.random.default_rng(0).standard_normal((8, 5, 2)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None].astype(np.float32)
    import lstmrs

    model = lstmrs.Model(input_size=2, hidden_size=4, seed=0)
    model.compile("adam", lr=1e-2)
    with register_temporarily(Observer()):
        history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert seen[0] == ("start", 2)
    assert [s[1] for s in seen if s[0] == "epoch"] == [0, 1]
    assert [s[2] for s in seen if s[0] == "epoch"] == [
        round(v, 12) for v in history.history["loss"]
    ]
    assert seen[-1] == ("end", 2)
