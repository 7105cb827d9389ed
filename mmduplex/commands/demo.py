"""``mmduplex demo``: synthetic data -> features -> B-Flow -> duplex model -> streaming -> evaluation, on a CPU."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace

import mmduplex.recipes

HELP = "Run the whole pipeline on the built-in synthetic set (offline, CPU, minutes) and report the results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data set and training (default: recipe's)")
    parser.add_argument(
        "--config",
        default=None,
        help="demo recipe: a name under recipes/demo/ (e.g. smoke) or a YAML path (default: recipes/demo/default)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved demo settings and exit")


def run(args: argparse.Namespace) -> int:
    from mmduplex.demo.run import DemoConfig, results_table, run_demo, summary_lines

    source = args.config or "demo/default"
    path = (
        source
        if source.endswith(".yaml")
        else mmduplex.recipes.recipe_path(source if "/" in source else f"demo/{source}")
    )
    config = DemoConfig.from_yaml(path)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.print_config:
        print(json.dumps(asdict(config), indent=2))
        return 0
    report = run_demo(args.out, config)
    print(results_table(report))
    for line in summary_lines(report):
        print(line)
    print(f"report: {args.out}/report.json; commentary: {args.out}/*.vtt, *.html; bundle: {args.out}/bundle/")
    sys.stdout.flush()
    return 0
