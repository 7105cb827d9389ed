"""Every shipped Lightning recipe (every stage) parses through the real CLI: ``mmduplex fit --config X --print_config``.

Presets only make sense on top of a recipe, so they are composed after the tiny duplex recipe (and the real-data
full recipe for the multi-GPU presets). ``recipes/eval/`` (``mmduplex eval --config``) and ``recipes/demo/``
(``mmduplex demo`` sizes) are not Lightning recipes; their own tests validate them.
"""

from __future__ import annotations

import pytest

import mmduplex.recipes
from mmduplex.cli import main

LIGHTNING_RECIPES = [p for p in mmduplex.recipes.all_recipes() if p.parent.name not in ("eval", "demo")]
COMPOSED = [("duplex/tiny", "presets/cpu_smoke"), ("duplex/full", "presets/ddp"), ("duplex/lora", "presets/fsdp")]


def print_config(capsys, *configs) -> str:
    argv = ["fit"]
    for config in configs:
        argv += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err[-2000:]
    return out


@pytest.mark.parametrize("path", LIGHTNING_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_prints_config(path, capsys):
    if path.parent.name == "presets":
        base = mmduplex.recipes.recipe_path("duplex/full" if path.stem in ("ddp", "fsdp") else "duplex/tiny")
        out = print_config(capsys, base, path)
    else:
        out = print_config(capsys, path)
    assert "class_path" in out and "trainer:" in out


def test_composed_recipes_override(capsys):
    for recipe, preset in COMPOSED:
        out = print_config(capsys, mmduplex.recipes.recipe_path(recipe), mmduplex.recipes.recipe_path(preset))
        assert "mmduplex.train.duplex_module.DuplexModule" in out
    out = print_config(
        capsys, mmduplex.recipes.recipe_path("duplex/tiny"), mmduplex.recipes.recipe_path("presets/cpu_smoke")
    )
    assert "max_steps: 5" in out and "text_tokenizer: synthetic" in out
