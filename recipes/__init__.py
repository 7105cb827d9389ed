"""Lightning CLI recipes shipped with the package: ``recipes/<stage>/<name>.yaml``."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe, e.g. ``recipe_path("duplex/tiny")`` -> ``.../recipes/duplex/tiny.yaml``."""
    path = RECIPES_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe")
    return path


def all_recipes() -> list[Path]:
    """Every shipped recipe (what the recipe test parametrises over)."""
    return sorted(RECIPES_DIR.glob("*/*.yaml"))
