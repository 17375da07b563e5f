"""One exception tree: every public lstmrs exception is defined in lstmrs.errors, exported from
lstmrs, and the modules that raise it still offer it under its old name."""

from __future__ import annotations

import ast

import import_graph as ig
import lstmrs
import pytest
from lstmrs import errors

OLD_HOMES = {
    "ConfigError": "lstmrs.config",
    "RunDirError": "lstmrs.rundir",
    "CheckpointError": "lstmrs.checkpoint",
    "TuneError": "lstmrs.tuning",
    "PluginError": "lstmrs.plugins",
    "PluginWarning": "lstmrs.plugins.manager",
    "UnsupportedOperationError": "lstmrs.cells",
}


def _exception_classes():
    return {
        name: obj
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def test_every_exception_of_errors_is_exported_from_lstmrs():
    classes = _exception_classes()
    assert set(classes) == set(errors.__all__)
    for name, cls in classes.items():
        assert name in lstmrs.__all__ and getattr(lstmrs, name) is cls
        if issubclass(cls, Exception):
            assert issubclass(cls, errors.LstmrsError) or cls is errors.PluginWarning, name


@pytest.mark.parametrize("name", sorted(OLD_HOMES))
def test_old_import_paths_give_the_same_class(name):
    module = __import__(OLD_HOMES[name], fromlist=[name])
    assert getattr(module, name) is getattr(errors, name)


def test_no_public_exception_class_is_defined_outside_errors():
    """Private helpers (``_Broken``, ``_Bad``) may stay where they are used."""
    found = []
    for module, path in ig.module_names().items():
        if path.suffix != ".py" or module == "lstmrs.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Warning")) for b in bases):
                    found.append(f"{module}.{node.name}({', '.join(bases)})")
    assert not found, f"define these in lstmrs/errors.py and re-export them: {found}"


def test_cells_is_an_attribute_after_import_lstmrs():
    assert lstmrs.cells.Cell is not None and "cells" in lstmrs.__all__
