"""No module of ours imports itself back through others: the import graph of every package is acyclic.

Every import counts, wherever it is written: at the top, inside a function (a "lazy" import that hides a
circle is still a circle in the design), and under ``if TYPE_CHECKING:`` (a class that needs its host's
type to check is one half of a class). Edges go to the most specific module named: ``from a.b import c``
is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Import circles that exist today (none: the agent-host rebuild removed the last ones, in workers/host).
# This list must only shrink, to empty: a circle not listed fails test_no_import_cycles, and a listed one
# that is gone fails test_known_import_cycles_still_exist (delete its entry then).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    """Every module of the import root, by dotted name, laid out as pyproject's package-dir says."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    found: dict[str, Path] = {}
    for package, folder in package_dir.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            # A folder mapped to its own package (openfang.control) wins over the same folder seen as a
            # plain subfolder of another mapping.
            found.setdefault(name, path)
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement may bind, relative ones resolved against ``module``."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    for alias in node.names:
        yield f"{base}.{alias.name}"
    yield base


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = list(_imported(node, name, is_package))
            if isinstance(node, ast.ImportFrom):
                # ``from a import b``: the submodule a.b if there is one, else the module a itself.
                *names, base = targets
                hits = [t for t in names if t in modules]
                if len(hits) < len(names) and base in modules:
                    hits.append(base)
            else:
                hits = [_deepest(t, modules) for t in targets]
            graph[name].update(h for h in hits if h and h != name)
    return graph


def _deepest(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; only the components with more than one module (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def _one_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """A shortest circle through the first module of ``component`` (breadth-first, inside it)."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return [start]


def _cycles() -> tuple[dict[str, set[str]], list[frozenset[str]]]:
    graph = _graph(_modules())
    return graph, _strongly_connected(graph)


def test_import_graph_covers_every_package() -> None:
    """The walk sees every package of the import root, and resolves relative and lazy imports."""
    graph = _graph(_modules())
    for package in (
        "openfang",
        "openfang.cli",
        "openfang.supervisor",
        "openfang.control",
        "openfang.workers",
        "openfang.workers.host",
        "openfang.workers.tools",
        "openfang.protocol",
        "openfang.memory",
        "openfang.security",
    ):
        assert package in graph, package
    assert "openfang.supervisor.loop" in graph["openfang.control.daemon"]


def test_import_cycle_finder_reports_a_circle() -> None:
    """A made-up graph with one circle and one tail gives exactly that circle, printed in import order."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    components = _strongly_connected(graph)
    assert components == [frozenset({"a", "b", "c"})]
    assert _one_cycle(graph, components[0]) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    """No module imports itself back through others, except the known workers circles being removed."""
    graph, components = _cycles()
    new = [c for c in components if not any(c <= known for known in KNOWN_CYCLES)]
    report = "\n".join(" -> ".join(_one_cycle(graph, c)) for c in new)
    assert not new, f"import cycles:\n{report}"


def test_known_import_cycles_still_exist() -> None:
    """Every allowlisted circle is still there; one that was removed must leave KNOWN_CYCLES too."""
    _, components = _cycles()
    gone = [sorted(known) for known in KNOWN_CYCLES if known not in components]
    assert not gone, f"these circles are gone, delete them from KNOWN_CYCLES: {gone}"
