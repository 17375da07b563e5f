"""The imports between the modules of ``python/lstmrs``, read with :mod:`ast` (nothing is
imported), for ``test_layers.py``.

``python tests/import_graph.py [PACKAGE_DIR]`` prints the counts the layering is judged by: the
modules that import each other in a circle, and the imports of lstmrs modules made inside
functions (of this checkout's ``python/lstmrs``, or of another checkout's package directory).
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


def imports_of(module: str, source: str, known, is_package: bool = False) -> list[Import]:
    """The imports of lstmrs modules in ``source`` (the text of ``module``), each with where it
    runs. Importing ``lstmrs.a.b`` runs the package ``lstmrs.a`` first: that is listed too
    (``implicit``), unless ``module`` is inside it already."""
    lines = source.splitlines()
    found: list[Import] = []

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

    visit(ast.parse(source), False, False)
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
    """``{module: the modules it imports when it runs}`` (`TYPE_CHECKING` imports left out)."""
    return {m: {i.target for i in imps if not i.type_checking} for m, imps in graph.items()}


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
    # The package's own __init__ imports everything and is imported by everything (Python runs
    # it first), so it is left out of the circles, as every lstmrs import implies it.
    edges = {m: t - {PACKAGE} for m, t in runtime_edges(graph).items() if m != PACKAGE}
    knots = cycles(edges)
    explicit = [i for imps in graph.values() for i in imps if not i.implicit]
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
    for i in local:
        print(f"  local: {i.where()} -> {i.target}" + (f"  # {i.comment}" if i.comment else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
