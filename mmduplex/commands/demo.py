"""``mmduplex demo``: synthetic data -> features -> B-Flow -> duplex model -> streaming -> evaluation, on a CPU.

``--config`` names a shipped demo recipe (``smoke``, ``default``, ``smollm2``, ...: ``recipes/demo/NAME.yaml``) or a
YAML path; its settings are :class:`mmduplex.demo.stages.DemoConfig` fields, read by jsonargparse with the dataclass
as the schema. ``--print_config`` prints the resolved settings as YAML (a file ``--config`` takes) and exits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import mmduplex.recipes
from mmduplex.errors import InputError

HELP = "Run the whole pipeline on the built-in synthetic set (offline, CPU, minutes) and report the results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed: retrains every model on the same data (default: recipe's)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=None, help="seed of the synthetic data set and its splits (default: recipe's)"
    )
    parser.add_argument(
        "--score-split",
        choices=("heldout", "val"),
        default=None,
        help="split the models are scored on: val while choosing settings, heldout for the report (default: recipe's)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="demo recipe: a name under recipes/demo/ (e.g. smoke, smollm2) or a YAML path (default: default)",
    )
    parser.add_argument("--print_config", action="store_true", help="print the resolved demo settings as YAML and exit")


def run(args: argparse.Namespace) -> int:
    from mmduplex.demo.run import DemoConfig, results_table, run_demo, summary_lines

    source = args.config or "demo/default"
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        path = Path(source)
    else:
        try:
            path = mmduplex.recipes.recipe_path(source if "/" in source else f"demo/{source}")
        except FileNotFoundError as err:
            shipped = ", ".join(p.stem for p in sorted((mmduplex.recipes.RECIPES_DIR / "demo").glob("*.yaml")))
            raise InputError("--config", f"no demo recipe {source!r}: a YAML path or one of {shipped}") from err
    config = DemoConfig.from_yaml(path)
    overrides = {"seed": args.seed, "data_seed": args.data_seed, "score_split": args.score_split}
    config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    report = run_demo(args.out, config)
    print(results_table(report))
    for line in summary_lines(report):
        print(line)
    print(f"report: {args.out}/report.json; commentary: {args.out}/*.vtt, *.html; bundle: {args.out}/bundle/")
    sys.stdout.flush()
    return 0
