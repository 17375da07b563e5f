"""The package's layers, and the test that keeps its imports pointing one way: down.

Every module of ``python/lstmrs`` belongs to one layer of :data:`LAYERS`, written once in
:data:`LAYER_OF`. A module may import modules of its own layer and of lower ones; an import of a
higher layer fails this test, wherever it is (module level, inside a function, ``import x``,
``from x import y`` or relative), with a message naming both modules and the rule. Imports under
``if TYPE_CHECKING:`` never run and are exempt (that is how training, streaming and the checkpoint
format name ``Model`` in annotations). An import inside a function needs a comment on its line or
right above it saying why it is not at the top: an optional dependency, or start-up time with a
measured number. No modules may import each other in a circle, the package node included: its
``__init__`` can load any submodule on attribute access, so a module importing the package by
name closes a circle through it. And since Python runs ``lstmrs/__init__`` before any submodule,
what it imports at the top (and what those import) must stay in layer ``base``: importing
``lstmrs.errors`` or a plugin's ``lstmrs.cells`` must not load models, training or tasks.

The graph is read from the source with :mod:`ast` (``tests/import_graph.py``); nothing is
imported.
"""

from __future__ import annotations

import re

import import_graph as ig
import pytest

#: From the bottom up; the comment beside each says what it holds.
LAYERS = (
    "base",  # errors, the Rust extension, the GPU probe, fork safety, memory ceiling, validation
    "specs",  # descriptions without behaviour of their own: cells, optimizer spec, metrics, ...
    "registry",  # the plugin registry, the built-in cells and optimizers, the name lookups
    "layers",  # the recurrent layers and step-by-step inference
    "training",  # callbacks, progress, the checkpoint file format, the fit loop
    "model",  # Model, loading and resuming it, ensembles of models
    "applications",  # tasks, run directories, tuning, interop, the CLI, testing helpers
    "package",  # lstmrs/__init__.py: the public names
)

LAYER_OF = {
    "lstmrs._lstmrs": "base",
    "lstmrs.errors": "base",
    "lstmrs.forksafe": "base",
    "lstmrs.gpu": "base",
    "lstmrs.memory": "base",
    "lstmrs.validation": "base",
    "lstmrs.cells": "specs",
    "lstmrs.config": "specs",
    "lstmrs.csv_series": "specs",
    "lstmrs.datasets": "specs",
    "lstmrs.formats": "specs",
    "lstmrs.formats.onnx_export": "specs",
    "lstmrs.formats.onnx_graph": "specs",
    "lstmrs.formats.onnx_read": "specs",
    "lstmrs.formats.onnx_rnn": "specs",
    "lstmrs.formats.onnx_verify": "specs",
    "lstmrs.formats.optional": "specs",
    "lstmrs.formats.recipe": "specs",
    "lstmrs.formats.safetensors_export": "specs",
    "lstmrs.formats.torch_read": "specs",
    "lstmrs.metrics": "specs",
    "lstmrs.optim_spec": "specs",
    "lstmrs.plots": "specs",
    "lstmrs.schedules": "specs",
    "lstmrs.ts_format": "specs",
    "lstmrs.optim": "registry",
    "lstmrs.plugins": "registry",
    "lstmrs.plugins.builtin": "registry",
    "lstmrs.plugins.hookspecs": "registry",
    "lstmrs.plugins.manager": "registry",
    "lstmrs.convlstm": "layers",
    "lstmrs.rnn": "layers",
    "lstmrs.clockwork": "layers",
    "lstmrs.streaming": "layers",
    "lstmrs.quantization": "layers",
    "lstmrs.callbacks": "training",
    "lstmrs.checkpoint_format": "training",
    "lstmrs.fit_inputs": "training",
    "lstmrs.progress": "training",
    "lstmrs.training": "training",
    "lstmrs.explain": "training",
    "lstmrs.checkpoint": "model",
    "lstmrs.ensemble": "model",
    "lstmrs.models": "model",
    "lstmrs.hierarchical": "model",
    "lstmrs.hierarchical_model": "model",
    "lstmrs.seq2seq": "model",
    "lstmrs.cli": "applications",
    "lstmrs.explain_report": "applications",
    "lstmrs.interop": "applications",
    "lstmrs.interop.keras_import": "applications",
    "lstmrs.interop.onnx_import": "applications",
    "lstmrs.interop.torch_import": "applications",
    "lstmrs.rundir": "applications",
    "lstmrs.tasks.seq2seq": "applications",
    "lstmrs.tasks": "applications",
    "lstmrs.tasks.anomaly": "applications",
    "lstmrs.tasks.base": "applications",
    "lstmrs.tasks.baselines": "applications",
    "lstmrs.tasks.charlm": "applications",
    "lstmrs.tasks.classify": "applications",
    "lstmrs.tasks.classify_han": "applications",
    "lstmrs.tasks.forecast": "applications",
    "lstmrs.tasks.runner": "applications",
    "lstmrs.tasks.series_prep": "applications",
    "lstmrs.tasks.synthetic": "applications",
    "lstmrs.testing": "applications",
    "lstmrs.tuning": "applications",
    "lstmrs": "package",
}

#: The highest layer that ``lstmrs/__init__`` may load when it runs, i.e. before every submodule.
PRELOAD_LAYER = "base"

# What a comment must say for an import inside a function: an optional dependency, the
# start-up time saved with its number (ms or s).
_WHY_LOCAL = re.compile(r"optional|(start-?up|import time).*\d+(\.\d+)?\s*(ms|s)\b", re.IGNORECASE)


def violations(graph: dict[str, list[ig.Import]], layer_of: dict[str, str] = LAYER_OF) -> list[str]:
    """Every broken rule of ``graph`` (module -> its imports), one message each."""
    out = [
        f"{m}: not in the layer table: add it to LAYER_OF in tests/test_layers.py (layers: "
        f"{', '.join(LAYERS)})"
        for m in sorted(set(graph) - set(layer_of))
    ]
    rank = {name: k for k, name in enumerate(LAYERS)}
    for module, imports in sorted(graph.items()):
        for i in imports:
            if i.type_checking:
                continue
            if i.local and not (i.implicit or i.on_access) and not _WHY_LOCAL.search(i.comment):
                out.append(
                    f"{i.where()}: {module} imports {i.target} inside a function without a "
                    "comment (on its line or right above it) saying why: an optional "
                    "dependency, or start-up time with a measured number; otherwise import it "
                    "at the top of the module"
                )
            src, dst = layer_of.get(module), layer_of.get(i.target)
            if src is None or dst is None or rank[dst] <= rank[src]:
                continue
            how = "runs the package" if i.implicit else "imports"
            out.append(
                f"{i.where()}: {module} (layer {src!r}) {how} {i.target} (layer {dst!r}): a "
                f"module may import only its own layer and lower ones ({' < '.join(LAYERS)}); "
                "move the code, or name the type under `if TYPE_CHECKING:`"
            )
    if ig.PACKAGE in graph:
        for module in sorted(ig.preloaded(graph) - {ig.PACKAGE}):
            layer = layer_of.get(module)
            if layer is not None and rank[layer] > rank[PRELOAD_LAYER]:
                out.append(
                    f"{ig.PACKAGE}/__init__ loads {module} (layer {layer!r}) when it runs, and "
                    f"Python runs it before every {ig.PACKAGE} module: it may import only layer "
                    f"{PRELOAD_LAYER!r} at the top; load the name on first access instead "
                    "(`_LAZY` in lstmrs/__init__.py)"
                )
    for cycle in ig.cycles(ig.runtime_edges(graph)):
        out.append(f"import cycle: {', '.join(cycle)} import each other in a circle")
    return out


@pytest.fixture(scope="module")
def graph():
    return ig.read_package()


def test_every_module_is_in_the_layer_table(graph):
    assert set(LAYER_OF) == set(graph), (
        f"not in LAYER_OF: {sorted(set(graph) - set(LAYER_OF))}; "
        f"no longer in the package: {sorted(set(LAYER_OF) - set(graph))}"
    )
    assert set(LAYER_OF.values()) <= set(LAYERS)


def test_imports_point_down(graph):
    problems = violations(graph)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The test of the test: synthetic modules


def _graph_of(sources: dict[str, str]) -> dict[str, list[ig.Import]]:
    known = set(LAYER_OF) | set(sources)
    return {
        name: ig.imports_of(name, text, known, is_package=name in ("lstmrs", "lstmrs.tasks"))
        for name, text in sources.items()
    }


@pytest.mark.parametrize(
    "source",
    [
        "from .models import Model\n",
        "from . import models\n",
        "import lstmrs.models\n",
        "from lstmrs.models import Model\n",
        "def f():\n    from .models import Model  # optional dependency\n    return Model\n",
    ],
)
def test_an_upward_import_fails_naming_both_modules_and_the_rule(source):
    problems = violations(_graph_of({"lstmrs.rnn": source}))
    assert len(problems) == 1, problems
    assert problems[0].startswith("lstmrs.rnn:")
    assert "lstmrs.rnn (layer 'layers') imports lstmrs.models (layer 'model')" in problems[0]
    assert "a module may import only its own layer and lower ones" in problems[0]


def test_a_subpackage_import_runs_its_package():
    """``from .tasks.baselines import x`` runs ``lstmrs/tasks/__init__.py`` first."""
    problems = violations(_graph_of({"lstmrs.training": "from .tasks.baselines import dtw\n"}))
    assert any("runs the package lstmrs.tasks (layer 'applications')" in p for p in problems)


def test_type_checking_imports_and_downward_imports_pass():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import errors\n"
        "from .rnn import LSTM\n"
        "if TYPE_CHECKING:\n"
        "    from .models import Model\n"
    )
    assert violations(_graph_of({"lstmrs.training": source})) == []


def test_a_function_local_import_needs_a_reason():
    bare = "def f():\n    from . import errors\n    return errors\n"
    problems = violations(_graph_of({"lstmrs.training": bare}))
    assert len(problems) == 1 and "inside a function without a comment" in problems[0]
    for why in ("# optional dependency (onnx)", "# start-up time: saves 40 ms at import"):
        ok = f"def f():\n    {why}\n    from . import errors\n    return errors\n"
        assert violations(_graph_of({"lstmrs.training": ok})) == []
    vague = "def f():\n    from . import errors  # faster\n    return errors\n"
    assert violations(_graph_of({"lstmrs.training": vague}))


def test_a_new_module_must_be_placed_in_a_layer():
    problems = violations(_graph_of({"lstmrs.brand_new": "import numpy\n"}))
    assert problems == [
        (
            "lstmrs.brand_new: not in the layer table: add it to LAYER_OF in "
            f"tests/test_layers.py (layers: {', '.join(LAYERS)})"
        )
    ]


def test_a_cycle_within_one_layer_fails():
    problems = violations(
        _graph_of(
            {
                "lstmrs.callbacks": "from . import progress\n",
                "lstmrs.progress": "from . import callbacks\n",
            }
        )
    )
    assert problems == [
        "import cycle: lstmrs.callbacks, lstmrs.progress import each other in a circle"
    ]


# A package `__init__` in the shape of lstmrs': a few base imports, the rest on first access.
_LAZY_PACKAGE = (
    "from . import forksafe as _forksafe\n"
    "from .errors import ShapeError\n"
    "TYPE_CHECKING = False\n"
    "if TYPE_CHECKING:\n"
    "    from .models import Model\n"
    "if not TYPE_CHECKING:\n"
    "    def __getattr__(name):\n"
    "        import importlib\n"
    "        return importlib.import_module(f'lstmrs.{name}')\n"
)


def test_a_lazy_package_passes_and_can_load_every_submodule():
    graph = _graph_of({"lstmrs": _LAZY_PACKAGE, "lstmrs.errors": "", "lstmrs.forksafe": ""})
    assert violations(graph) == []
    assert ig.preloaded(graph) == {"lstmrs", "lstmrs.errors", "lstmrs.forksafe"}
    on_access = {i.target for i in graph["lstmrs"] if i.on_access}
    assert {"lstmrs.models", "lstmrs.tasks", "lstmrs.rnn"} <= on_access
    assert "lstmrs.tasks.base" not in on_access and "lstmrs._lstmrs" not in on_access


def test_an_eager_package_import_above_base_fails():
    """The finding: `from .models import Model` in lstmrs/__init__ makes every `import
    lstmrs.<module>` load models, and with it training, rnn, ..."""
    sources = {
        "lstmrs": _LAZY_PACKAGE + "from .models import Model\n",
        "lstmrs.models": "from . import training\n",
        "lstmrs.training": "from .rnn import LSTM\n",
        "lstmrs.rnn": "from . import errors\n",
        "lstmrs.errors": "",
        "lstmrs.forksafe": "",
    }
    problems = violations(_graph_of(sources))
    assert len(problems) == 3, problems
    for module, layer in (("models", "model"), ("rnn", "layers"), ("training", "training")):
        assert any(
            p.startswith(f"lstmrs/__init__ loads lstmrs.{module} (layer {layer!r})")
            and "it may import only layer 'base' at the top" in p
            for p in problems
        ), (module, problems)


def test_importing_the_package_by_name_closes_a_cycle_through_it():
    """`from lstmrs import LSTM` inside lstmrs.training runs the package's `__getattr__`, which
    can import lstmrs.training's importers: a circle through the package node (and an upward
    import)."""
    sources = {
        "lstmrs": _LAZY_PACKAGE,
        "lstmrs.errors": "",
        "lstmrs.forksafe": "",
        "lstmrs.training": "from lstmrs import LSTM\n",
    }
    problems = violations(_graph_of(sources))
    assert "import cycle: lstmrs, lstmrs.training import each other in a circle" in problems
    assert any(
        "lstmrs.training (layer 'training') imports lstmrs (layer 'package')" in p for p in problems
    )
    typed = "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from lstmrs import LSTM\n"
    assert violations(_graph_of({**sources, "lstmrs.training": typed})) == []
