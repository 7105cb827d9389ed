"""No import cycle between any two modules of the installed ``mmduplex`` (DESIGN: imports under TYPE_CHECKING excepted).

import-linter's ``acyclic_siblings`` contract (pyproject.toml) finds cycles between the children of each package; it
disregards imports between a package's ``__init__`` and its own descendants, the cycle that importing through a
package's re-exports makes. This check covers every module pair on grimp's graph (import-linter's library): an
import ``a -> b`` is part of a cycle when ``b`` reaches ``a`` again. Run it with the interpreter that has the wheel
installed, from outside the checkout (grimp reads the files of the package found on ``sys.path``).
Exit status 1 and one line per cycle when there is any, 0 when there is none.
"""

from __future__ import annotations

import sys

import grimp


def import_cycles(package: str = "mmduplex") -> list[tuple[list[str], list[str]]]:
    """Each group of modules that import each other (a strongly connected group), as ``(members, one cycle)``."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    groups: list[tuple[list[str], list[str]]] = []
    seen: set[str] = set()
    for module in sorted(graph.modules):
        if module in seen:
            continue
        # Modules it reaches that reach it back: its group (grimp's "upstream" = imported, "downstream" = importers).
        group = graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        if not group:
            continue
        seen |= group | {module}
        first = min(graph.find_modules_directly_imported_by(module) & group)
        cycle = [module, *graph.find_shortest_chain(importer=first, imported=module)]
        groups.append((sorted(group | {module}), cycle))
    return groups


def main() -> int:
    cycles = import_cycles()
    for members, cycle in cycles:
        print(f"import cycle among {len(members)} modules ({', '.join(members)}), e.g. " + " -> ".join(cycle))
    if not cycles:
        print("no import cycle")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
