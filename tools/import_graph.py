"""The project's module import graph, built with ``ast``, and its import cycles.

Usage: ``python tools/import_graph.py [--root DIR] [--packages mmduplex tokenizer eval recipes] [--edges]
[--parents]``. Prints each import cycle (a strongly connected group of modules, with one cycle path through it) and
each import that breaks the layering (:data:`LAYERS`), and exits 1 when there is any, 0 when there is none;
``--edges`` also prints every first-party edge.

What counts as an import: every ``import`` / ``from ... import`` statement anywhere in a module (module level,
function and class bodies, ``try`` blocks), except those in the body of an ``if TYPE_CHECKING:`` (or
``if typing.TYPE_CHECKING:``) block, which never run. An edge goes to the most specific first-party module the
statement names: ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``; ``import a.b``
points at ``a.b``. The implicit import of parent packages (``a/__init__.py`` runs before ``a.b``) is not an edge:
re-exports in a package's ``__init__`` would otherwise make every submodule that imports a sibling part of a cycle.
Only modules under the given packages are nodes; third-party and standard-library imports are ignored.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DEFAULT_PACKAGES = ("mmduplex", "tokenizer", "eval", "recipes")

LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (0, "foundation", ("mmduplex", "mmduplex.errors", "mmduplex.fileio", "recipes.*")),
    (
        1,
        "data and I/O",
        ("mmduplex.video", "mmduplex.data.*", "mmduplex.feature_cache", "mmduplex.outputs", "mmduplex.weights"),
    ),
    (2, "tokenizer", ("tokenizer.*",)),
    (2, "duplex LM", ("mmduplex.text", "mmduplex.alignment", "mmduplex.kvcache", "mmduplex.model")),
    (
        3,
        "training and pipelines",
        (
            *("mmduplex.features", "mmduplex.data.synthetic_cache", "tokenizer.module", "tokenizer.datamodule"),
            *("mmduplex.module", "mmduplex.datamodule", "mmduplex.lightning_cli", "mmduplex.bundle"),
            *("mmduplex.streaming", "mmduplex.schedules"),
        ),
    ),
    (
        4,
        "applications",
        (
            *("eval.*", "mmduplex.demo", "mmduplex.demo_stages", "mmduplex.demo_stream", "mmduplex.demo_pages"),
            "mmduplex.demo_qa",
            *("mmduplex.cli", "mmduplex.__main__", "mmduplex.commands.*"),
        ),
    ),
)
"""The layers, lowest first, as ``(rank, name, patterns)``: a module may import modules of its own layer or of a
lower rank, never of a higher rank nor of another layer at its rank (the tokenizer and the duplex LM are side by side
and independent). A pattern ``a.b`` names one module, ``a.b.*`` the package ``a.b`` and everything under it; the
most specific pattern wins. ``docs/ARCHITECTURE.md`` draws them."""


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Module name -> file for every ``.py`` file under the given top-level packages of ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (any module alias)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` that can run (``if TYPE_CHECKING:`` bodies skipped, their ``else`` kept)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a known module, or ``None``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names an import statement in ``module`` refers to (relative imports made absolute)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    for alias in node.names:
        yield f"{base}.{alias.name}" if alias.name != "*" else base


def _entered_packages(module: str, target: str, modules: dict[str, Path]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` from ``module`` may run: its ancestors not ``module``'s."""
    own = module.split(".")
    parts = target.split(".")
    entered = set()
    for end in range(1, len(parts)):
        package = ".".join(parts[:end])
        if package in modules and parts[:end] != own[:end]:
            entered.add(package)
    return entered


def import_graph(
    root: str | Path, packages: Iterable[str] = DEFAULT_PACKAGES, parents: bool = False
) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports (see the module docstring for what counts).

    Args:
        root: the repository root.
        packages: the top-level packages to scan.
        parents: also count the ``__init__`` of each package an import enters from outside it (``from a.b import
            c`` in ``x.y`` runs ``a/__init__.py`` and ``a/b/__init__.py``): the stricter reading.
    """
    root = Path(root)
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for node in _import_nodes(tree):
            for name in _imported(node, module, path.name == "__init__.py"):
                target = _resolve(name, modules)
                if target is None:
                    continue
                targets.add(target)
                if parents:
                    targets |= _entered_packages(module, target, modules)
        targets.discard(module)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted, sorted by first name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_path(graph: dict[str, set[str]], component: Sequence[str]) -> list[str]:
    """One cycle through the component's first module: ``[a, b, ..., a]`` (breadth-first, so a shortest one)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def find_cycles(root: str | Path, packages: Iterable[str] = DEFAULT_PACKAGES, parents: bool = False) -> list[list[str]]:
    """One cycle path per strongly connected group of modules under ``root`` (empty: the graph is acyclic)."""
    graph = import_graph(root, packages, parents)
    return [cycle_path(graph, component) for component in strongly_connected(graph)]


def _specificity(pattern: str, module: str) -> int | None:
    """How specifically ``pattern`` names ``module`` (higher wins), or ``None`` when it does not."""
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return 2 * package.count(".") + 1 if module == package or module.startswith(package + ".") else None
    return 2 * pattern.count(".") + 2 if module == pattern else None


def layer_of(module: str) -> tuple[int, str] | None:
    """``(rank, name)`` of the layer ``module`` belongs to (see :data:`LAYERS`), or ``None`` when unassigned."""
    best: tuple[int, tuple[int, str]] | None = None
    for rank, name, patterns in LAYERS:
        for pattern in patterns:
            score = _specificity(pattern, module)
            if score is not None and (best is None or score > best[0]):
                best = (score, (rank, name))
    return None if best is None else best[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per module without a layer and per import that goes up a layer or sideways into another layer."""
    problems = [f"{module}: in no layer (add it to LAYERS in tools/import_graph.py)" for module in sorted(graph)]
    problems = [line for line in problems if layer_of(line.split(":")[0]) is None]
    for module in sorted(graph):
        source = layer_of(module)
        for target in sorted(graph[module]):
            destination = layer_of(target)
            if source is None or destination is None or destination[1] == source[1] or destination[0] < source[0]:
                continue
            problems.append(f"{module} ({source[1]}) imports {target} ({destination[1]})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Print the import cycles (and with ``--edges`` the edges); exit status 1 when there is a cycle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="repository root")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="top-level packages to scan")
    parser.add_argument("--edges", action="store_true", help="also print every first-party import edge")
    parser.add_argument(
        "--parents", action="store_true", help="also count the package __init__ files an import enters (stricter)"
    )
    args = parser.parse_args(argv)
    graph = import_graph(args.root, args.packages, args.parents)
    if args.edges:
        for module in sorted(graph):
            for target in sorted(graph[module]):
                print(f"{module} -> {target}")
    cycles = [cycle_path(graph, component) for component in strongly_connected(graph)]
    for cycle in cycles:
        print("cycle: " + " -> ".join(cycle))
    violations = layer_violations(graph)
    for line in violations:
        print("layer: " + line)
    print(
        f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, {len(cycles)} import cycle(s), "
        f"{len(violations)} layer violation(s)"
    )
    return 1 if cycles or violations else 0


if __name__ == "__main__":
    sys.exit(main())
