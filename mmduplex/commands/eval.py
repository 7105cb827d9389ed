"""``mmduplex eval <task>``: run one evaluation task and write ``--out`` JSON plus a markdown table beside it.

Each task is an :class:`eval.base.EvalTask` subclass listed in :data:`TASKS`; it declares its own flags, so adding a
task is one line here. Every task also takes ``--config FILE`` (a YAML mapping of flag values, keys spelled as the
flags without dashes, ``-`` or ``_``; the recipes in ``recipes/eval/``) and ``--print-config`` (print the resolved
settings as YAML and exit 0, without running; this is how the recipe test validates eval recipes). Precedence:
command-line flags over the YAML over the task's defaults.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Any

import yaml

from mmduplex.errors import InputError

log = logging.getLogger(__name__)

HELP = "Evaluate: LongVideoBench val scoring, live-commentary quality and timing, tokenizer rate vs fidelity."

# Task name -> "module:EvalTask subclass". A task is listed only once it works end to end.
TASKS: dict[str, str] = {
    "longvideobench": "eval.longvideobench:LongVideoBenchEval",
    "commentary": "eval.commentary:CommentaryEval",
    "tokenizer": "eval.tokenizer_eval:TokenizerEval",
}


def _task_class(name: str) -> Any:
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-parser per task, each with the common ``--out``, ``--config`` and ``--print-config``."""
    sub = parser.add_subparsers(dest="task", metavar="TASK")
    for name in TASKS:
        task = _task_class(name)
        p = sub.add_parser(name, help=task.help, description=task.help)
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
