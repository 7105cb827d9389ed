"""pyproject.toml names every package of the source folders and every data file in them, so the wheel holds them all.

The folders install through setuptools' ``package-dir`` (``tokenizer/`` as ``mmduplex.tokenizer``, ...) with an
explicit package list: a new subpackage or data file that is not listed is left out of the wheel, while the editable
install still finds it. ``.ci/wheel_check`` checks a built wheel's file list the same way.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]


def _folder(package: str) -> Path:
    """The source folder of ``package`` under package-dir (the longest mapped prefix)."""
    parts = package.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in PACKAGE_DIR:
            return ROOT / PACKAGE_DIR[prefix] / Path(*parts[end:])
    raise AssertionError(f"{package}: under no package-dir entry")


def _files() -> list[Path]:
    """Every file of the mapped folders, caches and hidden files aside."""
    files = []
    for folder in {ROOT / f for f in PACKAGE_DIR.values()}:
        for path in folder.rglob("*"):
            rel = path.relative_to(ROOT).parts
            if path.is_file() and "__pycache__" not in rel and not any(p.startswith(".") for p in rel):
                files.append(path)
    return files


def test_every_package_folder_is_listed():
    listed = set(SETUPTOOLS["packages"])
    assert all(_folder(package).joinpath("__init__.py").is_file() for package in listed), "a listed package is gone"
    folders = {_folder(package): package for package in listed}
    unlisted = sorted(str(p.parent.relative_to(ROOT)) for p in _files() if p.name == "__init__.py")
    unlisted = [folder for folder in unlisted if ROOT / folder not in folders]
    assert not unlisted, f"package folders missing from pyproject.toml's [tool.setuptools] packages: {unlisted}"


def test_every_data_file_matches_package_data():
    covered: set[Path] = set()
    for package, patterns in SETUPTOOLS["package-data"].items():
        for pattern in patterns:
            covered.update(_folder(package).glob(pattern))
    data = [p for p in _files() if p.suffix != ".py"]
    assert any(p.name == "py.typed" for p in data) and any(p.suffix == ".yaml" for p in data)
    missing = sorted(str(p.relative_to(ROOT)) for p in data if p not in covered)
    assert not missing, f"data files no [tool.setuptools.package-data] pattern ships: {missing}"
