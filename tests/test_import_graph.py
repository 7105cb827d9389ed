"""Code health: the module import graph (``tools/import_graph.py``) has no cycles and imports only go down the
layers; the tool itself finds the cycles and layer breaks it is meant to find (function-body imports count,
``TYPE_CHECKING`` ones do not); no module is over the style guide's 600 lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


graph_tool = _load_tool()


@pytest.mark.parametrize("parents", [False, True], ids=["modules", "with-package-inits"])
def test_repository_has_no_import_cycle(parents: bool) -> None:
    cycles = graph_tool.find_cycles(ROOT, parents=parents)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_every_module_has_a_layer_and_imports_go_down() -> None:
    graph = graph_tool.import_graph(ROOT)
    assert "tokenizer.datamodule" in graph and "mmduplex.feature_cache" in graph["tokenizer.datamodule"]
    assert graph_tool.layer_violations(graph) == []


MAX_LINES = 600


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in graph_tool.DEFAULT_PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_cycle_through_a_function_body_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from . import a\n    return a\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    assert graph_tool.find_cycles(tmp_path, ["pkg"]) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert graph_tool.main(["--root", str(tmp_path), "--packages", "pkg"]) == 1


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": (
                "import typing\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.a import X\nelse:\n    import os\n"
                "if typing.TYPE_CHECKING:\n    import pkg.a\n"
                "def thing(): ...\n"
            ),
        },
    )
    graph = graph_tool.import_graph(tmp_path, ["pkg"])
    assert graph["pkg.b"] == set() and graph["pkg.a"] == {"pkg.b"}
    assert graph_tool.find_cycles(tmp_path, ["pkg"]) == []


def test_package_init_reading_counts_entered_packages(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "low/__init__.py": "from low.core import helper\n",
            "low/core.py": "def helper():\n    from high.app import run\n",
            "high/__init__.py": "",
            "high/app.py": "from low.leaf import value\ndef run(): ...\n",
            "low/leaf.py": "value = 1\n",
        },
    )
    assert graph_tool.find_cycles(tmp_path, ["low", "high"]) == []  # high.app -> low.leaf only
    cycles = graph_tool.find_cycles(tmp_path, ["low", "high"], parents=True)
    assert cycles == [["high.app", "low", "low.core", "high.app"]]  # importing low.leaf runs low/__init__.py


def test_layer_breaks_are_reported() -> None:
    graph = {
        "mmduplex.errors": {"mmduplex.video"},  # foundation -> data: up
        "tokenizer.bflow": {"mmduplex.model", "mmduplex.fileio"},  # tokenizer -> duplex LM: sideways
        "mmduplex.model": {"mmduplex.errors"},
        "mmduplex.video": set(),
        "mmduplex.fileio": set(),
        "somewhere.new": set(),
    }
    assert graph_tool.layer_violations(graph) == [
        "somewhere.new: in no layer (add it to LAYERS in tools/import_graph.py)",
        "mmduplex.errors (foundation) imports mmduplex.video (data and I/O)",
        "tokenizer.bflow (tokenizer) imports mmduplex.model (duplex LM)",
    ]
    assert graph_tool.layer_of("mmduplex.data.synthetic_cache")[1] == "training and pipelines"  # exact beats .*
    assert graph_tool.layer_of("mmduplex.data.transcripts")[1] == "data and I/O"
