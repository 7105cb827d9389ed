"""The ``mmduplex`` console script.

``fit``/``validate``/``test``/``predict`` are LightningCLI (recipes in ``recipes/``); every other subcommand is
one module in :mod:`mmduplex.commands` exposing ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
A command module imports only light modules at its top (its heavy ones inside ``run``), and its flags are added
only when that command is the one given (:class:`~mmduplex.commands.parsers.LazyArgumentParser`), so ``mmduplex
--help`` imports no torch. Library errors (:class:`mmduplex.errors.MMDuplexError`) become one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mmduplex.commands.parsers import LazyArgumentParser
from mmduplex.errors import MMDuplexError

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train a tokenizer or duplex model from a recipe (LightningCLI: --config recipes/<stage>/<name>.yaml).",
    "validate": "Run the validation loop of a recipe (LightningCLI).",
    "test": "Run the test loop of a recipe (LightningCLI).",
    "predict": "Run the predict loop of a recipe (LightningCLI).",
}

# Subcommand name -> module in mmduplex.commands. A command is listed here only once it works.
COMMANDS: dict[str, str] = {
    "demo": "mmduplex.commands.demo",
    "features": "mmduplex.commands.features",
    "eval": "mmduplex.commands.eval",
    "tokenize": "mmduplex.commands.tokenize",
    "export": "mmduplex.commands.export",
    "stream": "mmduplex.commands.stream",
    "serve": "mmduplex.commands.serve",
    "weights": "mmduplex.commands.weights",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-parser per project command, plus the LightningCLI ones for ``--help``.

    Each command's flags are added when its sub-parser is first used (parsing or help), not here.
    """
    parser = LazyArgumentParser(
        prog="mmduplex",
        description="Duplex video-to-text models: B-Flow video tokenizer, delayed-streams duplex LM, streaming.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in LIGHTNING_SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name in COMMANDS:
        module = _load(name)
        sub.add_parser(name, help=module.HELP, description=module.HELP, populate=module.add_arguments)
    return parser


def run_lightning(argv: Sequence[str]) -> int:
    """Hand ``argv`` (starting with fit/validate/test/predict) to the project's LightningCLI."""
    from mmduplex.train.lightning_cli import run_cli

    run_cli(list(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmduplex`` console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            return run_lightning(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        if args.command is None:
            parser.print_help()
            return 1
        return int(_load(args.command).run(args) or 0)
    except MMDuplexError as err:
        print(f"mmduplex: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmduplex: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
