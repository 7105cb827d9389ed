"""The tiny base class every evaluation task builds on (nanochat style: one small class per benchmark).

A task is constructed from its settings, :meth:`EvalTask.run` computes a results dict (always carrying a
``"settings"`` entry), and :meth:`EvalTask.write` stores it as JSON plus a markdown table beside it
(``results.json`` -> ``results.md``), both atomically. :meth:`EvalTask.evaluate` does both.

The ``mmduplex eval <task>`` command (:mod:`mmduplex.commands.eval`) is generic over tasks: each task class also
declares its command-line flags with their types (:meth:`EvalTask.add_arguments`) and their defaults
(:attr:`EvalTask.defaults`); :meth:`EvalTask.parser` makes them a jsonargparse parser with ``--config FILE`` (a YAML of
settings) and ``--print_config``, which checks flags and YAML values alike; the task builds itself from the parsed
settings (:meth:`EvalTask.from_settings`). A new task is one class plus one line in ``mmduplex.commands.eval.TASKS``.
"""

from __future__ import annotations

import abc
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mmduplex.errors import InputError
from mmduplex.fileio import write_text_atomic

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


class EvalTask(abc.ABC):
    """One evaluation: ``name``, ``settings``, ``run() -> results``, ``write(results, out)``."""

    name: ClassVar[str] = ""
    """The ``mmduplex eval`` subcommand name."""

    defaults: ClassVar[Mapping[str, Any]] = {}
    """Default value of every setting the command line / ``--config`` may give (key = the flag's ``dest``)."""

    required: ClassVar[Sequence[str]] = ()
    """Settings that must be given (on the command line or in the ``--config`` YAML)."""

    @property
    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The settings that determine the result, as plain JSON values (copied into the results)."""

    @abc.abstractmethod
    def run(self) -> dict[str, Any]:
        """Compute the results (a JSON-able dict with a ``"settings"`` entry)."""

    @abc.abstractmethod
    def markdown(self, results: Mapping[str, Any]) -> str:
        """A human-readable markdown summary (tables) of ``results``."""

    @classmethod
    @abc.abstractmethod
    def add_arguments(cls, parser: ArgumentParser) -> None:
        """Declare the task's flags on a jsonargparse parser, each with its ``type`` (which also checks the values a
        ``--config`` YAML gives); their defaults come from :attr:`defaults`, one entry per flag."""

    @classmethod
    def parser(cls, prog: str | None = None, description: str | None = None) -> ArgumentParser:
        """The task's settings parser: ``--config FILE``, ``--out FILE``, the task's flags and ``--print_config``.

        ``--config`` applies where it stands on the command line: flags after it override it (as in ``mmduplex
        fit``). Errors raise ``jsonargparse.ArgumentError`` rather than exit; ``--help`` and ``--print_config`` print
        and raise ``SystemExit(0)``.
        """
        from jsonargparse import ActionConfigFile, ArgumentParser

        parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
        parser.add_argument(
            "--config",
            action=ActionConfigFile,
            metavar="FILE",
            help="YAML of settings (e.g. recipes/eval/*.yaml; keys are the flag names, with - or _); "
            "flags after it override it",
        )
        parser.add_argument(
            "--out",
            type=str | None,
            metavar="FILE",
            help="results JSON (to run); a markdown table is written beside it",
        )
        cls.add_arguments(parser)
        parser.set_defaults({"out": None, **cls.defaults})
        return parser

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EvalTask:
        """Build the task from fully resolved settings (every key of :attr:`defaults` present, minus ``out``)."""

    def write(self, results: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``results`` to ``out`` (JSON) and the markdown table to ``out`` with suffix ``.md``, atomically.

        Both texts are rendered before anything is written, so a rendering error leaves no file behind.
        """
        out = Path(out)
        md_path = out.with_suffix(".md") if out.suffix != ".md" else out.with_name(out.name + ".md")
        json_text = json.dumps(to_json(results), indent=2) + "\n"
        md_text = self.markdown(results)
        write_text_atomic(md_path, md_text)
        write_text_atomic(out, json_text)
        return out, md_path

    def evaluate(self, out: str | os.PathLike | None = None) -> dict[str, Any]:
        """Run the task and, when ``out`` is given, write the results; returns the results."""
        results = self.run()
        if out is not None:
            self.write(results, out)
        return results


def settings_error(where: str | os.PathLike, error: Exception) -> InputError:
    """A jsonargparse parse error as one clear line: ``KEY: invalid value 'V'`` for a value of the wrong type,
    ``unknown setting 'KEY'`` for a key no flag or field declares, else jsonargparse's own words on one line."""
    text = str(error)
    key = re.match(r'Parser key "([^"]+)":', text)
    given = re.search(r"(?:Given|Got) value: (.*)$", text, re.MULTILINE)
    if key and given and key[1] != "config":
        return InputError(where, f"{key[1]}: invalid value {given[1].strip()!r}")
    unknown = re.search(r"Option '([^']+)' is not accepted|Key \"([^\"]+)\" is not expected", text)
    if unknown:
        return InputError(where, f"unknown setting {unknown[1] or unknown[2]!r} (see --help)")
    return InputError(where, " ".join(text.split()))


def to_json(value: Any) -> Any:
    """Recursively turn ``value`` into strict JSON values (NaN / inf become ``None``, tuples lists, paths str)."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats rounded, ``None`` as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
