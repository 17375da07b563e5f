"""``import lstmrs`` and ``import lstmrs.<module>`` load only what they need.

``lstmrs/__init__.py`` imports a few base modules when it runs (Python runs it before any
submodule) and every other public name on first access (PEP 562 ``__getattr__``). These tests run
fresh interpreters, since this one has long loaded the whole package: they check what a submodule
import loads, that every public name still resolves (to the object its module defines), and that
pickles, threads and missing dependencies behave as with an eager ``__init__``. The static side,
that ``__init__`` imports nothing above layer base, is in ``test_layers.py``.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import import_graph as ig
import lstmrs
import numpy as np
import pytest

INIT = Path(lstmrs.__file__)
# No installed plugin loads in the subprocesses (as in the rest of the suite).
ENV = {**os.environ, "LSTMRS_PLUGINS": "", "LSTMRS_NUM_THREADS": "2"}
#: Modules a light import must not load: the model layer and above.
HEAVY = ("lstmrs.models", "lstmrs.seq2seq", "lstmrs.tasks", "lstmrs.training", "lstmrs.callbacks")


def run_python(code: str) -> dict:
    """Runs ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    res = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def loaded_by(statement: str) -> set[str]:
    code = (
        "import json, sys\n"
        f"{statement}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'lstmrs')))"
    )
    return set(run_python(code))


def _type_checking_imports() -> dict[str, str]:
    """``{name: defining module}`` of the ``if TYPE_CHECKING:`` block of lstmrs/__init__.py (what
    type checkers see)."""
    out = {}
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and ig._is_type_checking(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.dump(imp)
                for alias in imp.names:
                    out[alias.name] = f"lstmrs.{imp.module}" if imp.module else "lstmrs"
    return out


@pytest.mark.parametrize("module", ["lstmrs.errors", "lstmrs.cells", "lstmrs.rnn"])
def test_a_submodule_import_does_not_load_the_package(module):
    """`import lstmrs.errors` (or a plugin's `import lstmrs.cells`, or the layers) loads that
    module, what it imports and the package's base modules: not models, seq2seq, tasks."""
    loaded = loaded_by(f"import {module}")
    assert module in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert {"lstmrs.forksafe", "lstmrs._lstmrs"} <= loaded  # the eager side effects ran


def test_import_lstmrs_loads_what_the_import_graph_says():
    """The static model (tests/import_graph.py `preloaded`) and the interpreter agree, so the
    layer test's check of the package's eager imports is a check of what really loads."""
    graph = ig.read_package()
    assert loaded_by("import lstmrs") == ig.preloaded(graph)
    # And it sees the `__getattr__` (the package node's edges in the cycle check).
    on_access = {i.target for i in graph[ig.PACKAGE] if i.on_access}
    assert {"lstmrs.models", "lstmrs.rnn", "lstmrs.tasks", "lstmrs.tuning"} <= on_access


def test_every_public_name_resolves_lazily_and_is_listed():
    code = (
        "import json, sys, lstmrs\n"
        "listed = set(lstmrs.__all__) <= set(dir(lstmrs))\n"
        "before = 'lstmrs.models' in sys.modules\n"
        "kinds = {n: type(getattr(lstmrs, n)).__name__ for n in lstmrs.__all__}\n"
        "print(json.dumps({'listed': listed, 'before': before, 'kinds': kinds,\n"
        "                  'after': 'lstmrs.models' in sys.modules}))"
    )
    out = run_python(code)
    assert out["listed"] and not out["before"] and out["after"]
    assert set(out["kinds"]) == set(lstmrs.__all__)
    assert out["kinds"]["Model"] == "type" and out["kinds"]["cells"] == "module"
    assert out["kinds"]["load"] == "function" and out["kinds"]["__version__"] == "str"


def test_lazy_names_are_the_objects_their_modules_define():
    """Each name of the `TYPE_CHECKING` block (what type checkers see) is, at run time, the
    object of the module it names there; and every public name is in `__all__`."""
    typed = _type_checking_imports()
    assert "Model" in typed and "LSTM" in typed
    for name, module in typed.items():
        if module == "lstmrs":  # `from . import cells`: the submodule itself
            expected = importlib.import_module(f"lstmrs.{name}")
        else:
            expected = getattr(importlib.import_module(module), name)
        assert getattr(lstmrs, name) is expected, name
        assert name in lstmrs.__all__, name
    names = {n: m for n, m in typed.items() if m != "lstmrs"}
    assert names == {n: f"lstmrs.{m}" for n, m in lstmrs._LAZY.items()}


def test_submodules_load_on_attribute_access_and_unknown_names_fail():
    code = (
        "import json, sys, lstmrs\n"
        "from lstmrs import Model, Seq2Seq\n"
        "tasks = lstmrs.tasks is sys.modules['lstmrs.tasks']\n"
        "try:\n"
        "    lstmrs.no_such_name\n"
        "    err = None\n"
        "except AttributeError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps({'tasks': tasks, 'err': err, 'has': hasattr(lstmrs, 'no_such_name'),\n"
        "                  'private': hasattr(lstmrs, '_no_such'),\n"
        "                  'model': Model.__module__, 'seq2seq': Seq2Seq.__module__}))"
    )
    out = run_python(code)
    assert out["tasks"] and out["model"] == "lstmrs.models" and out["seq2seq"] == "lstmrs.seq2seq"
    assert out["err"] == "module 'lstmrs' has no attribute 'no_such_name'"
    assert out["has"] is False and out["private"] is False


def test_a_missing_dependency_of_a_lazy_module_is_an_import_error():
    """`lstmrs.LSTM` whose module cannot import numpy raises that ImportError, not an
    AttributeError that would hide it (and make `hasattr` answer False)."""
    code = (
        "import json, sys\n"
        "sys.modules['numpy'] = None  # makes `import numpy` fail\n"
        "import lstmrs\n"
        "try:\n"
        "    lstmrs.LSTM\n"
        "    got = None\n"
        "except Exception as e:\n"
        "    got = [type(e).__name__, getattr(e, 'name', None)]\n"
        "try:\n"
        "    lstmrs.cells\n"
        "    sub = None\n"
        "except Exception as e:\n"
        "    sub = [type(e).__name__, getattr(e, 'name', None)]\n"
        "print(json.dumps({'attr': got, 'submodule': sub}))"
    )
    out = run_python(code)
    assert out == {"attr": ["ModuleNotFoundError", "numpy"], "submodule": out["attr"]}


def test_concurrent_first_access_gives_one_object():
    code = (
        "import json, threading, lstmrs\n"
        "got = []\n"
        "start = threading.Barrier(8)\n"
        "def read():\n"
        "    start.wait()\n"
        "    got.append((id(lstmrs.Model), id(lstmrs.LSTM), id(lstmrs.Stepper)))\n"
        "threads = [threading.Thread(target=read) for _ in range(8)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(json.dumps({'n': len(got), 'distinct': len(set(got))}))"
    )
    assert run_python(code) == {"n": 8, "distinct": 1}


def test_pickles_name_the_defining_module_and_load_in_a_fresh_interpreter(tmp_path):
    """A pickle stores `lstmrs.rnn.LSTM`, not `lstmrs.LSTM`; loading it in an interpreter that
    has imported nothing of lstmrs runs the package, then the module (Model is not picklable:
    its Rust core has no pickle support, as before)."""
    layers = (
        lstmrs.LSTM(input_size=3, hidden_size=4, seed=0),
        lstmrs.GRU(input_size=3, hidden_size=4, seed=1),
    )
    blob = pickle.dumps(layers)
    assert b"lstmrs.rnn" in blob and b"\x8c\x04LSTM" in blob
    x = np.linspace(-1, 1, 2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    (tmp_path / "layers.pkl").write_bytes(blob)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import json, pickle, sys, numpy as np\n"
        f"layers = pickle.loads(open({str(tmp_path / 'layers.pkl')!r}, 'rb').read())\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "print(json.dumps({'out': [layer(x)[0].tolist() for layer in layers],\n"
        "                  'models': 'lstmrs.models' in sys.modules}))"
    )
    out = run_python(code)
    assert out["models"] is False
    for layer, got in zip(layers, out["out"]):
        np.testing.assert_array_equal(np.asarray(got, np.float32), layer(x)[0])
