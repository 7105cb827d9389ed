"""``mmduplex eval <task>``: run one evaluation task and write ``--out`` JSON plus a markdown table beside it.

Each task is an :class:`mmduplex.eval.base.EvalTask` subclass listed in :data:`TASKS` with its one-line help; it
declares its own flags and their types, so adding a task is one line here. A task's settings are parsed by
jsonargparse (:meth:`~mmduplex.eval.base.EvalTask.parser`): its flags (spelled with hyphens, ``--data-root``),
``--config FILE`` (a YAML of settings, keys spelled as the flags, with ``-`` or ``_``: the recipes in
``recipes/eval/``; flags after it override it) and ``--print_config`` (print the resolved settings as YAML and exit
0 without running, as ``mmduplex fit --print_config`` does; this is how the recipe test validates eval recipes). The
same types check flag and YAML values alike.

``mmduplex eval --help`` lists the tasks from :data:`TASKS` and imports none of them; a task's module is imported
(for its flags) only when that task is the one given, and its heavy modules only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import textwrap
from typing import Any

from mmduplex.errors import InputError

log = logging.getLogger(__name__)

HELP = (
    "Evaluate: LongVideoBench val scoring, live-commentary quality and timing, LiveSports-3K CC commentary, "
    "tokenizer rate vs fidelity."
)

# Task name -> ("module:EvalTask subclass", one-line help). A task is listed only once it works end to end.
TASKS: dict[str, tuple[str, str]] = {
    "longvideobench": (
        "mmduplex.eval.longvideobench:LongVideoBenchEval",
        "LongVideoBench val: score a predictions JSONL with the reference answer parser (needs only lvb_val.json), "
        "or ask a duplex bundle (--checkpoint) through a streaming session.",
    ),
    "commentary": (
        "mmduplex.eval.commentary:CommentaryEval",
        "Live commentary: event accuracy/precision/latency and transcript ROUGE-L, BLEU, word timing, talk ratio.",
    ),
    "livesports": (
        "mmduplex.eval.livesports:LiveSportsEval",
        "LiveSports-3K CC: ROUGE-L / BLEU of a LiveCC prediction JSONL (or of a bundle's commentary, --checkpoint) "
        "against the human ASR; optional LLM-judge win rate against a baseline (--judge-url).",
    ),
    "tokenizer": (
        "mmduplex.eval.tokenizer_eval:TokenizerEval",
        "Tokenizer rate vs fidelity: B-Flow at token budgets and variable rate against the baselines.",
    ),
}


def task_class(name: str) -> Any:
    """The :class:`~mmduplex.eval.base.EvalTask` subclass of task ``name`` (imports its module)."""
    module, _, cls = TASKS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_parser(name: str) -> Any:
    """The jsonargparse parser of task ``name``'s settings (``--config``, ``--out``, its flags, ``--print_config``)."""
    return task_class(name).parser(prog=f"mmduplex eval {name}", description=TASKS[name][1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``TASK`` and the rest of the command line, which the task's own parser reads (see :func:`task_parser`)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(map(len, TASKS)) + 4
    tasks = "\n".join(
        textwrap.fill(help_text, 100, initial_indent=f"  {name:<{width - 2}}", subsequent_indent=" " * width)
        for name, (_, help_text) in TASKS.items()
    )
    parser.epilog = f"tasks:\n{tasks}\n\n`mmduplex eval TASK --help` lists a task's settings."
    parser.add_argument("task", nargs="?", choices=list(TASKS), metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    parser.add_argument(
        "settings",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the task's flags, --config FILE (YAML of settings), --out FILE, --print_config",
    )


def parse_settings(name: str, argv: list[str]) -> dict[str, Any] | None:
    """Task ``name``'s settings from ``argv`` (defaults, then ``--config`` and flags in order); ``None`` when
    ``--help`` or ``--print_config`` printed instead.

    Raises:
        InputError: an unknown flag or setting, a value of the wrong type, an unreadable ``--config`` file.
    """
    from jsonargparse import ArgumentError

    from mmduplex.eval.base import settings_error

    parser = task_parser(name)
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as done:  # --help / --print_config printed; nothing else exits (exit_on_error=False)
        if done.code:
            raise
        return None
    except ArgumentError as exc:
        raise settings_error(f"eval {name}", exc) from exc
    settings = namespace.as_dict()
    settings.pop("config", None)
    return settings


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, run the task, write ``--out`` (+ ``.md``); ``--help`` / ``--print_config`` only print."""
    if args.task is None:
        raise InputError("eval", f"name a task: {', '.join(TASKS)} (see mmduplex eval --help)")
    settings = parse_settings(args.task, list(args.settings))
    if settings is None:
        return 0
    task_cls = task_class(args.task)
    for key in (*task_cls.required, "out"):
        if settings.get(key) in (None, []):
            raise InputError(f"--{key.replace('_', '-')}", f"required for 'eval {args.task}' (flag or --config)")
    task = task_cls.from_settings({k: v for k, v in settings.items() if k != "out"})
    results = task.run()
    json_path, md_path = task.write(results, settings["out"])
    print(task.markdown(results), end="")
    log.info("wrote %s and %s", json_path, md_path)
    return 0
