"""The import contracts (pyproject.toml's ``[tool.importlinter]``, ``.ci/import_cycles.py``) on the package as a wheel
lays it out, and that they fail when broken.

grimp, import-linter's library, reads the files under the package it finds on ``sys.path``; the editable install maps
``mmduplex.tokenizer`` (and ``.eval``, ``.recipes``) to top-level folders it would not see. So each test copies the
folders into ``mmduplex/`` as setuptools' ``package-dir`` installs them and runs the checks on that copy in a fresh
interpreter. ``.ci/wheel_check`` runs the same checks on an installed wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _stage(target: Path) -> Path:
    """The package's sources under ``target/mmduplex`` as the wheel lays them out; returns ``target``."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__")
    for package, folder in sorted(package_dir.items()):  # "mmduplex" first, then its mapped subpackages
        shutil.copytree(ROOT / folder, target / package.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)
    return target


def _run(staged: Path, *command: str) -> subprocess.CompletedProcess:
    """``command`` run with ``python``, the staged copy first on ``sys.path`` and as the working folder."""
    env = {**os.environ, "PYTHONPATH": str(staged)}
    # A guard against a hang only; grimp builds this graph in seconds.
    return subprocess.run([sys.executable, *command], cwd=staged, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


LINT = ("-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "--no-logo", "--no-cache", str(PYPROJECT))  # fmt: skip
CYCLES = (str(ROOT / ".ci" / "import_cycles.py"),)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    return _stage(tmp_path_factory.mktemp("wheel_layout"))


def test_layers_and_cycles_hold(staged):
    lint = _run(staged, *LINT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "2 kept, 0 broken" in lint.stdout
    cycles = _run(staged, *CYCLES)
    assert cycles.returncode == 0 and "no import cycle" in cycles.stdout, cycles.stdout + cycles.stderr


def test_an_upward_import_and_an_unlisted_module_break_the_layers(tmp_path):
    staged = _stage(tmp_path)
    text = staged / "mmduplex" / "lm" / "text.py"
    # In a function body (it counts), and a TYPE_CHECKING import of a higher layer (it does not).
    text.write_text(
        text.read_text()
        + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import mmduplex.train.features\n"
        + "\n\ndef _upward():\n    import mmduplex.demo.run\n"
    )
    (staged / "mmduplex" / "unlisted.py").write_text("")
    lint = _run(staged, *LINT)
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "mmduplex.lm.text -> mmduplex.demo.run" in lint.stdout
    assert "mmduplex.train" not in lint.stdout.split("Broken contracts")[1]
    assert "- mmduplex.unlisted" in lint.stdout


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    staged = _stage(tmp_path)
    # lm/__init__ re-exports from lm.kvcache, which imports through the package: the cycle the re-export rule avoids.
    lm = staged / "mmduplex" / "lm"
    reexport = (
        "\n\ndef __getattr__(name):\n    from mmduplex.lm.kvcache import SinkWindowCache\n    return SinkWindowCache\n"
    )
    (lm / "__init__.py").write_text((lm / "__init__.py").read_text() + reexport)
    through = "\n\ndef _through_the_package():\n    from mmduplex.lm import SinkWindowCache\n"
    (lm / "kvcache.py").write_text((lm / "kvcache.py").read_text() + through)
    cycles = _run(staged, *CYCLES)
    assert cycles.returncode == 1, cycles.stdout + cycles.stderr
    assert "mmduplex.lm -> mmduplex.lm.kvcache -> mmduplex.lm" in cycles.stdout
