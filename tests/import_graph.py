"""The imports between the modules of ``python/lstmrs``, read with :mod:`ast` (nothing is
imported), for ``test_layers.py``.

``python tests/import_graph.py [PACKAGE_DIR]`` prints the counts the layering is judged by: the
modules that import each other in a circle, the modules that importing any lstmrs module loads
first (``lstmrs/__init__`` and what it imports eagerly), and the imports of lstmrs modules made
inside functions (of this checkout's ``python/lstmrs``, or of another checkout's package
directory).

The package itself is a node of the graph like any module. Its ``__init__`` imports a few modules
when it runs (:func:`preloaded`) and, through its module ``__getattr__`` (PEP 562), any of its
submodules when a name is first read (``lstmrs.Model``, ``from lstmrs import LSTM``): those are
its ``on_access`` imports. So a module that imports the package by name can end up loading all of
it, and such an import closes a circle through the package node.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lstmrs"
SOURCE = Path(__file__).resolve().parent.parent / "python" / PACKAGE


@dataclass(frozen=True)
class Import:
    """One import of an lstmrs module by another."""

    source: str  # the importing module
    target: str  # the imported module (a package's submodule when the name is one)
    line: int
    local: bool  # inside a function: runs when the function does
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs
    comment: str  # the comment on the import's line and the comment lines right above it
    implicit: bool = False  # the package that Python runs before `target`
    on_access: bool = False  # by the package's module `__getattr__`, when a name is first read

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def module_names(root: Path = SOURCE) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package; the Rust extension, which has
    only its stub (``_lstmrs.pyi``), maps to that stub."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.suffix == ".py" or name not in found:
            found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Name)
        and test.id == "TYPE_CHECKING"
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        if not is_package:
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        out.append(sub if sub in known else prefix)
    return out


def _module_level(body: list[ast.stmt]):
    """The statements that run at module level: those of ``body`` and, recursively, of the
    branches of its ``if`` statements (``if not TYPE_CHECKING: def __getattr__ ...``)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body + node.orelse)


def imports_of(module: str, source: str, known, is_package: bool = False) -> list[Import]:
    """The imports of lstmrs modules in ``source`` (the text of ``module``), each with where it
    runs. Importing ``lstmrs.a.b`` runs the package ``lstmrs.a`` first: that is listed too
    (``implicit``), unless ``module`` is inside it already. A package whose ``__init__`` defines
    a module ``__getattr__`` may import any of its public submodules on attribute access: each is
    listed as an ``on_access`` import (whatever the body does: the graph errs towards more
    edges)."""
    lines = source.splitlines()
    found: list[Import] = []
    tree = ast.parse(source)

    def comment(line: int) -> str:
        # The import line's own comment and the block of comment lines right above it.
        near = [lines[line - 1]]
        k = line - 2
        while k >= 0 and lines[k].strip().startswith("#"):
            near.insert(0, lines[k])
            k -= 1
        return " ".join(t.split("#", 1)[1].strip() for t in near if "#" in t)

    def visit(node: ast.AST, local: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package, known):
                    if target.split(".")[0] != PACKAGE or target == module:
                        continue
                    args = (module, target, child.lineno, local, type_checking)
                    found.append(Import(*args, comment(child.lineno)))
                    parts = target.split(".")
                    for k in range(2, len(parts)):
                        package = ".".join(parts[:k])
                        if not (module + ".").startswith(package + "."):
                            found.append(Import(module, package, *args[2:], "", implicit=True))
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                # Only the `if` branch is type checking; `else` runs.
                for stmt in child.body:
                    visit_stmt(stmt, inner, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, inner, type_checking)
                continue
            visit(child, inner, type_checking)

    def visit_stmt(stmt: ast.stmt, local: bool, type_checking: bool) -> None:
        holder = ast.Module(body=[stmt], type_ignores=[])
        visit(holder, local, type_checking)

    visit(tree, False, False)
    if is_package:
        for node in _module_level(tree.body):
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                subs = sorted(
                    name
                    for name in known
                    if name.rsplit(".", 1)[0] == module
                    and not name.rsplit(".", 1)[-1].startswith("_")
                )
                for target in subs:
                    args = (module, target, node.lineno, True, False, "")
                    found.append(Import(*args, on_access=True))
    return found


def read_package(root: Path = SOURCE) -> dict[str, list[Import]]:
    """``{module: its imports of lstmrs modules}`` for every module of the package."""
    known = module_names(root)
    graph = {}
    for name, path in known.items():
        if path.suffix == ".pyi":
            graph[name] = []
            continue
        graph[name] = imports_of(name, path.read_text(), known, path.name == "__init__.py")
    return graph


def runtime_edges(graph: dict[str, list[Import]]) -> dict[str, set[str]]:
    """``{module: the modules it imports when it runs}`` (`TYPE_CHECKING` imports left out;
    a package's ``on_access`` imports kept)."""
    return {m: {i.target for i in imps if not i.type_checking} for m, imps in graph.items()}


def preloaded(graph: dict[str, list[Import]], package: str = PACKAGE) -> set[str]:
    """The modules that importing any module of ``package`` loads first: Python runs the
    package's ``__init__`` before any submodule, and that runs its module-level imports and
    theirs (the package itself included; its ``on_access`` and function-local imports left
    out)."""
    eager = {
        m: {i.target for i in imps if not (i.type_checking or i.local or i.on_access)}
        for m, imps in graph.items()
    }
    seen = {package}
    todo = [package]
    while todo:
        for target in eager.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: the
    sets of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def main(argv: list[str]) -> int:
    graph = read_package(Path(argv[0]) if argv else SOURCE)
    # The package node stays in: its edges are what its __init__ imports and what its
    # __getattr__ may import; Python running __init__ before each submodule is `preloaded`.
    knots = cycles(runtime_edges(graph))
    explicit = [i for imps in graph.values() for i in imps if not (i.implicit or i.on_access)]
    # One per import statement (`from . import a, b` is one).
    local = list(
        {(i.source, i.line): i for i in explicit if i.local and not i.type_checking}.values()
    )
    print(f"modules: {len(graph)}")
    print(f"import statements inside functions: {len(local)}")
    in_knots = sorted(m for k in knots for m in k)
    print(f"modules in import cycles: {len(in_knots)} in {len(knots)} cycle(s)")
    for k in knots:
        print("  cycle: " + ", ".join(k))
    first = sorted(preloaded(graph))
    print(f"modules that importing any {PACKAGE} module loads first: {len(first)}")
    print("  " + ", ".join(first))
    for i in local:
        print(f"  local: {i.where()} -> {i.target}" + (f"  # {i.comment}" if i.comment else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
