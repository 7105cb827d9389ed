"""Evaluation: LongVideoBench (multiple choice), live-commentary quality and timing (tokenizer rate vs fidelity next).

Each evaluation is an :class:`~eval.base.EvalTask` run by ``mmduplex eval <task>``; the metric functions are plain
functions the demo and notebooks call directly. Import as ``from eval import ...`` (never a bare ``import eval``).
The names below load their module on first use, so importing one task module (``eval.longvideobench``) does not
import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "parse_answer": "eval.answer_parser",
    "parse_response": "eval.answer_parser",
    "EvalTask": "eval.base",
    "CommentaryEval": "eval.commentary",
    "Line": "eval.commentary",
    "aggregate_event_metrics": "eval.commentary",
    "aggregate_transcript_metrics": "eval.commentary",
    "event_metrics": "eval.commentary",
    "load_lines": "eval.commentary",
    "transcript_metrics": "eval.commentary",
    "LongVideoBenchEval": "eval.longvideobench",
    "Responder": "eval.longvideobench",
    "Subtitle": "eval.longvideobench",
    "load_annotations": "eval.longvideobench",
    "score": "eval.longvideobench",
}

if TYPE_CHECKING:
    from eval.answer_parser import parse_answer, parse_response
    from eval.base import EvalTask
    from eval.commentary import (
        CommentaryEval,
        Line,
        aggregate_event_metrics,
        aggregate_transcript_metrics,
        event_metrics,
        load_lines,
        transcript_metrics,
    )
    from eval.longvideobench import LongVideoBenchEval, Responder, Subtitle, load_annotations, score


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CommentaryEval",
    "EvalTask",
    "Line",
    "LongVideoBenchEval",
    "Responder",
    "Subtitle",
    "aggregate_event_metrics",
    "aggregate_transcript_metrics",
    "event_metrics",
    "load_annotations",
    "load_lines",
    "parse_answer",
    "parse_response",
    "score",
    "transcript_metrics",
]
