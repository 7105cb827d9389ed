"""``mmduplex demo``: synthetic data -> features -> B-Flow -> duplex model -> streaming -> evaluation, on a CPU.

``--seeds 0 1 2`` runs the demo once per training seed into ``OUT/seed-<N>`` (the seeds share the data set and its
features) and writes the mean and spread of every figure to ``OUT/seeds.json`` (:mod:`mmduplex.demo.seeds`).
``--config`` names a shipped demo recipe (``smoke``, ``default``, ``smollm2``, ...: ``recipes/demo/NAME.yaml``) or a
YAML path; its settings are :class:`mmduplex.demo.stages.DemoConfig` fields, read by jsonargparse with the dataclass
as the schema. ``--print_config`` prints the resolved settings as YAML (a file ``--config`` takes) and exits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import mmduplex.recipes
from mmduplex.errors import InputError

if TYPE_CHECKING:
    from mmduplex.demo.stages import DemoConfig

HELP = "Run the whole pipeline on the built-in synthetic set (offline, CPU, minutes) and report the results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output folder (default: demo_out; with --seeds: demo_seeds)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed: retrains every model on the same data (default: recipe's)",
    )
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="training seeds: one whole demo per seed into OUT/seed-N (sharing the data and features), then the mean "
        "and spread of every figure in OUT/seeds.json and on the terminal",
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
    if args.seeds is not None:
        return _run_seeds(args.out or "demo_seeds", config, args.seeds)
    out = args.out or "demo_out"
    report = run_demo(out, config)
    print(results_table(report))
    for line in summary_lines(report):
        print(line)
    print(f"report: {out}/report.json; commentary: {out}/*.vtt, *.html; bundle: {out}/bundle/")
    sys.stdout.flush()
    return 0


def _run_seeds(out: str, config: DemoConfig, seeds: list[int]) -> int:
    from mmduplex.demo.seeds import SEEDS_FILE, run_seeds, seeds_table, summary_lines

    summary = run_seeds(out, config, seeds)
    print(seeds_table(summary))
    for line in summary_lines(summary):
        print(line)
    print(f"per seed: {out}/seed-<N>/report.json (and the demo's pages); all seeds: {out}/{SEEDS_FILE}")
    sys.stdout.flush()
    return 0
