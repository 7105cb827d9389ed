"""``mmduplex eval <task>``: run one evaluation task and write ``--out`` JSON plus a markdown table beside it.

Each task is an :class:`mmduplex.eval.base.EvalTask` subclass listed in :data:`TASKS`; it declares its own flags, so
adding a task is one line here. Every task also takes ``--config FILE`` (a YAML mapping of flag values, keys spelled as
the flags without dashes, ``-`` or ``_``; the recipes in ``recipes/eval/``) and ``--print-config`` (print the resolved
settings as YAML and exit 0, without running; this is how the recipe test validates eval recipes). Precedence:
command-line flags over the YAML over the task's defaults.

Listing the tasks (``mmduplex eval --help``) imports none of them: each task's help text is read from its class
source, and a task's module is imported (for its flags) only when that task is the one given.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import yaml

from mmduplex.commands.parsers import LazyArgumentParser
from mmduplex.errors import InputError

log = logging.getLogger(__name__)

HELP = (
    "Evaluate: LongVideoBench val scoring, live-commentary quality and timing, LiveSports-3K CC commentary, "
    "tokenizer rate vs fidelity."
)

# Task name -> "module:EvalTask subclass". A task is listed only once it works end to end.
TASKS: dict[str, str] = {
    "longvideobench": "mmduplex.eval.longvideobench:LongVideoBenchEval",
    "commentary": "mmduplex.eval.commentary:CommentaryEval",
    "livesports": "mmduplex.eval.livesports:LiveSportsEval",
    "tokenizer": "mmduplex.eval.tokenizer_eval:TokenizerEval",
}


def _task_class(name: str) -> Any:
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def _task_help(name: str) -> str:
    """A task's ``help`` class attribute, read from its module's source (no import) when it is a string literal."""
    module, _, cls = TASKS[name].partition(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8")) if spec and spec.origin else ast.Module([], [])
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == cls):
            continue
        for item in node.body:
            targets = item.targets if isinstance(item, ast.Assign) else [getattr(item, "target", None)]
            value = getattr(item, "value", None)
            named = any(isinstance(t, ast.Name) and t.id == "help" for t in targets)
            if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return _task_class(name).help  # not a literal (or not found): import the task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-parser per task, each with the common ``--out``, ``--config`` and ``--print-config``.

    A task's flags (and its module) are added when its sub-parser is first used.
    """
    sub = parser.add_subparsers(dest="task", metavar="TASK", parser_class=LazyArgumentParser)
    for name in TASKS:
        help_text = _task_help(name)
        sub.add_parser(
            name, help=help_text, description=help_text, populate=functools.partial(_add_task_arguments, name)
        )


def _add_task_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """The common flags and task ``name``'s own on its sub-parser ``p``."""
    task = _task_class(name)
    p.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="results JSON (required); a markdown table is written beside it (.md)",
    )
    p.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="YAML of flag values (e.g. recipes/eval/*.yaml); command-line flags override it",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    task.add_arguments(p)
    p.set_defaults(_parser=p)


def _coerce(action: argparse.Action, value: Any, config: Path, key: str) -> Any:
    """Check / convert one YAML value the way argparse would treat the same flag on the command line."""
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise InputError(config, f"{key}: expected true or false, got {value!r}")
        return value
    repeatable = isinstance(action, argparse._AppendAction)
    if isinstance(value, list) and not repeatable:
        raise InputError(config, f"{key}: expected a single value, got a list")
    convert = action.type or str
    try:
        converted = [None if v is None else convert(str(v)) for v in (value if isinstance(value, list) else [value])]
    except (TypeError, ValueError) as exc:
        raise InputError(config, f"{key}: invalid value {value!r} ({exc})") from exc
    return converted if repeatable else converted[0]


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Task defaults, then the ``--config`` YAML, then the flags given on the command line."""
    task = _task_class(args.task)
    parser: argparse.ArgumentParser = args._parser
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "print_config")}
    settings: dict[str, Any] = {**task.defaults, "out": None}
    if "config" in args:
        config = Path(args.config)
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(config, "config file not found") from exc
        except yaml.YAMLError as exc:
            raise InputError(config, f"malformed YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise InputError(config, "expected a YAML mapping of flag names to values")
        for key, value in loaded.items():
            dest = str(key).replace("-", "_")
            if dest not in actions:
                raise InputError(config, f"unknown setting {key!r} for 'eval {args.task}' (known: {sorted(actions)})")
            settings[dest] = _coerce(actions[dest], value, config, str(key))
    given = {k: v for k, v in vars(args).items() if k in actions}
    settings.update(given)
    return settings


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, run the task, write ``--out`` (+ ``.md``); ``--print-config`` only prints."""
    if args.task is None:
        raise InputError("eval", f"name a task: {', '.join(TASKS)} (see mmduplex eval --help)")
    settings = resolve_settings(args)
    if args.print_config:
        print(yaml.safe_dump({"task": args.task, **settings}, sort_keys=False), end="")
        return 0
    task_cls = _task_class(args.task)
    for key in (*task_cls.required, "out"):
        if settings.get(key) in (None, []):
            raise InputError(f"--{key.replace('_', '-')}", f"required for 'eval {args.task}' (flag or --config)")
    task = task_cls.from_settings({k: v for k, v in settings.items() if k != "out"})
    results = task.run()
    json_path, md_path = task.write(results, settings["out"])
    print(task.markdown(results), end="")
    log.info("wrote %s and %s", json_path, md_path)
    return 0
