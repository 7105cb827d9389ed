"""Every shipped recipe parses through the real CLI with ``--print_config``, one spelling for every command.

- Lightning recipes (``recipes/tokenizer``, ``duplex``, ``presets``): ``mmduplex fit --config X --print_config``.
  Presets only make sense on top of a recipe, so they are composed after the tiny duplex recipe (and the real-data
  full recipe for the multi-GPU presets).
- Evaluation recipes (``recipes/eval/<task>_<name>.yaml``): ``mmduplex eval <task> --config X --print_config``.
- Demo recipes (``recipes/demo``): ``mmduplex demo --config NAME --print_config``, and the tokenizer / duplex recipes
  they name exist.
"""

from __future__ import annotations

import pytest
import yaml

import mmduplex.recipes
from mmduplex.cli import main
from mmduplex.commands.eval import TASKS

RECIPES = mmduplex.recipes.all_recipes()
LIGHTNING_RECIPES = [p for p in RECIPES if p.parent.name not in ("eval", "demo")]
EVAL_RECIPES = [p for p in RECIPES if p.parent.name == "eval"]
DEMO_RECIPES = [p for p in RECIPES if p.parent.name == "demo"]
COMPOSED = [("duplex/tiny", "presets/cpu_smoke"), ("duplex/full", "presets/ddp"), ("duplex/lora", "presets/fsdp")]


def _recipe_id(path) -> str:
    return f"{path.parent.name}/{path.stem}"


def print_config(capsys, *configs) -> str:
    argv = ["fit"]
    for config in configs:
        argv += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err[-2000:]
    return out


def test_every_recipe_is_validated():
    assert RECIPES and set(RECIPES) == set(LIGHTNING_RECIPES) | set(EVAL_RECIPES) | set(DEMO_RECIPES)
    assert EVAL_RECIPES and DEMO_RECIPES


@pytest.mark.parametrize("path", LIGHTNING_RECIPES, ids=_recipe_id)
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


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=_recipe_id)
def test_eval_recipe_prints_config(path, capsys):
    """recipes/eval/<task>_<name>.yaml are ``mmduplex eval <task> --config`` files: every value they set comes out
    of ``--print_config`` (type-checked by the task's flags), beside the task's defaults."""
    task = next(t for t in TASKS if path.stem.startswith(t + "_"))
    assert main(["eval", task, "--config", str(path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in recipe.items():
        assert printed[key.replace("-", "_")] == value, key
    assert "out" in printed and len(printed) > len(recipe)


@pytest.mark.parametrize("path", DEMO_RECIPES, ids=_recipe_id)
def test_demo_recipe_prints_config(path, capsys):
    """A demo recipe is named by ``demo --config NAME``; its settings print as YAML that reads back the same, and
    the training recipes it names exist."""
    from mmduplex.demo.stages import DemoConfig

    assert main(["demo", "--config", path.stem, "--print_config"]) == 0
    printed = capsys.readouterr().out
    config = DemoConfig.from_yaml(path)
    assert yaml.safe_load(printed) == yaml.safe_load(config.to_yaml())
    for key, value in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        assert yaml.safe_load(printed)[key] == value, key
    mmduplex.recipes.recipe_path(config.tokenizer_recipe)
    mmduplex.recipes.recipe_path(config.duplex_recipe)


def test_print_config_is_one_spelling(capsys):
    """``--print-config`` is not a second spelling of ``--print_config`` (LightningCLI's): every command refuses it."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--config", "smoke", "--print-config"])
    assert exit_info.value.code == 2
    assert main(["eval", "commentary", "--print-config"]) == 2
    assert "print-config" in capsys.readouterr().err


def test_demo_recipe_values_are_type_checked(tmp_path, capsys):
    """A demo recipe is read with DemoConfig as its schema: a value of the wrong type or an unknown key is one line
    naming it; an empty recipe is the defaults."""
    from mmduplex.demo.stages import DemoConfig

    recipe = tmp_path / "mine.yaml"
    for text, problem in (
        ("num_videos: many\n", "num_videos: invalid value 'many'"),
        ("duration_s: [1, 2, 3]\n", "duration_s: invalid value"),
        ("model_lr: {text_only: fast}\n", "model_lr: invalid value 'fast'"),
        ("num_vidoes: 3\n", "unknown setting 'num_vidoes'"),
    ):
        recipe.write_text(text)
        assert main(["demo", "--config", str(recipe), "--print_config"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mmduplex: error: {recipe}: ") and problem in err and "\n" not in err, err
    recipe.write_text("# nothing set\n")
    assert DemoConfig.from_yaml(recipe) == DemoConfig()
    recipe.write_text("duration_s: [5, 6]\nbaselines: [text_only]\n")
    config = DemoConfig.from_yaml(recipe)
    assert config.duration_s == (5.0, 6.0) and config.baselines == ("text_only",)


def test_main_demo_recipe_is_chosen_on_val_and_reported_on_heldout():
    """The README's demo scores the held-out split and says its settings were chosen on val (issue 20): a recipe
    edited to choose on held out, or to stop saying where it chose, fails here."""
    from mmduplex.demo.stages import DemoConfig

    config = DemoConfig.from_yaml(mmduplex.recipes.recipe_path("demo/default"))
    assert (config.score_split, config.selected_on) == ("heldout", "val")
    assert config.val_fraction > 0
