"""Evaluation: LongVideoBench (multiple choice), live-commentary quality and timing (tokenizer rate vs fidelity next).

Each evaluation is an :class:`~mmduplex.eval.base.EvalTask` run by ``mmduplex eval <task>``; the metric functions are
plain functions the demo and notebooks call directly. Import as ``from mmduplex.eval import ...`` (never a bare ``import
eval``). The names below load their module on first use, so importing one task module (``mmduplex.eval.longvideobench``)
does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "parse_answer": "mmduplex.eval.answer_parser",
    "parse_response": "mmduplex.eval.answer_parser",
    "EvalTask": "mmduplex.eval.base",
    "CommentaryEval": "mmduplex.eval.commentary",
    "Line": "mmduplex.eval.commentary",
    "aggregate_event_metrics": "mmduplex.eval.commentary",
    "aggregate_transcript_metrics": "mmduplex.eval.commentary",
    "event_metrics": "mmduplex.eval.commentary",
    "load_lines": "mmduplex.eval.commentary",
    "transcript_metrics": "mmduplex.eval.commentary",
    "LongVideoBenchEval": "mmduplex.eval.longvideobench",
    "Responder": "mmduplex.eval.longvideobench",
    "Subtitle": "mmduplex.eval.longvideobench",
    "load_annotations": "mmduplex.eval.longvideobench",
    "score": "mmduplex.eval.longvideobench",
}

if TYPE_CHECKING:
    from mmduplex.eval.answer_parser import parse_answer, parse_response
    from mmduplex.eval.base import EvalTask
    from mmduplex.eval.commentary import (
        CommentaryEval,
        Line,
        aggregate_event_metrics,
        aggregate_transcript_metrics,
        event_metrics,
        load_lines,
        transcript_metrics,
    )
    from mmduplex.eval.longvideobench import LongVideoBenchEval, Responder, Subtitle, load_annotations, score


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
