"""The import graph of fxdelta's own source, read from the files (no import is executed).

Every ``import`` counts, wherever it sits: at the top, inside a function, or under
``TYPE_CHECKING``. Edges go from a file to the files it names (``from fxdelta import x`` names
``fxdelta/x.py`` when ``x`` is a submodule, else the package's ``__init__.py``); a package's
``__init__`` running before its submodules is not an edge, so those files must stay light.

    python tests/import_graph.py [repo root]   # files, floors, circles
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIRS = {"fxdelta": "fxdelta", "fxdelta.passes": "passes"}


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every source file of the package (``passes/`` included)."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for file in sorted((root / folder).rglob("*.py")):
            rel = file.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if folder == "fxdelta" and parts[:1] == ["passes"]:
                continue
            out[name] = file
    return out


def _imported(tree: ast.AST, module: str, is_package: bool, files: dict[str, Path]) -> Iterator[str]:
    """Package modules named by the imports of one file."""
    package = module if is_package else module.rpartition(".")[0]

    def known(name: str) -> str:
        while name and name not in files:  # "import fxdelta.a.b.c" where c is a name, not a file
            name = name.rpartition(".")[0]
        return name

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (known(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:  # a submodule of base, or a name defined in base
                sub = f"{base}.{a.name}"
                yield sub if sub in files else known(base)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        tree = ast.parse(file.read_text(), str(file))
        graph[name] = {t for t in _imported(tree, name, file.name == "__init__.py", files) if t and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def floors(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain, with each circle counted as one module."""
    component_of = {m: i for i, comp in enumerate(circles(graph)) for m in comp}
    node = {m: component_of.get(m, m) for m in graph}
    edges: dict[object, set[object]] = {}
    for m, targets in graph.items():
        edges.setdefault(node[m], set()).update(node[t] for t in targets if node[t] != node[m])
    depth: dict[object, int] = {}

    def height(v: object) -> int:
        if v not in depth:
            depth[v] = 1 + max((height(w) for w in edges.get(v, ())), default=0)
        return depth[v]

    return max((height(v) for v in edges), default=0)


def folder_of(module: str) -> str:
    """``fxdelta.compiler.plan`` -> ``fxdelta.compiler``; top-level files (``fxdelta.api``) are their own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between folders (and top-level files), without edges inside one folder."""
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(folder_of(m), set()).update(folder_of(t) for t in targets if folder_of(t) != folder_of(m))
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """One longest import chain (the graph must have no circle)."""
    best: dict[str, list[str]] = {}

    def chain(v: str) -> list[str]:
        if v not in best:
            best[v] = [v, *max((chain(w) for w in graph[v]), key=len, default=[])]
        return best[v]

    return max((chain(v) for v in graph), key=len, default=[])


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    graph = import_graph(root)
    found = circles(graph)
    print(f"files: {len(graph)}, floors: {floors(graph)}, circles: {len(found)}")
    for circle in found:
        print("  circle:", ", ".join(circle))
    if not found:
        print("  longest chain:", " -> ".join(longest_chain(graph)))
        folders = folder_graph(graph)
        print(
            f"folders and top-level files: {len(folders)}, floors: {floors(folders)}, circles: {len(circles(folders))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
