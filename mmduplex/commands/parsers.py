"""Sub-parsers that define their flags only when used, so ``mmduplex --help`` imports no heavy module.

A :class:`LazyArgumentParser` is created with a ``populate`` callable; its flags are added the first time it parses
arguments or formats its help. ``mmduplex --help`` therefore only needs each command's one-line ``HELP``; the modules
that define a command's flags (and, for running, the models) are imported when that command is the one given.
``mmduplex eval TASK`` hands the rest of its command line to the task's own jsonargparse parser
(:func:`mmduplex.commands.eval.task_parser`), as ``fit`` hands its line to LightningCLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


class LazyArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose arguments are added by ``populate(self)`` on first use.

    Args:
        *args: passed to :class:`argparse.ArgumentParser`.
        populate: adds this parser's arguments (called once, before the first parse or help); ``None``: none.
        **kwargs: passed to :class:`argparse.ArgumentParser`.
    """

    def __init__(self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populate(self) -> LazyArgumentParser:
        """Add the arguments now (idempotent); returns ``self``."""
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)
        return self

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()
