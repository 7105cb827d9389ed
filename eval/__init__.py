"""Evaluation: LongVideoBench (multiple choice), live-commentary quality and timing (tokenizer rate vs fidelity next).

Each evaluation is an :class:`~eval.base.EvalTask` run by ``mmduplex eval <task>``; the metric functions are plain
functions the demo and notebooks call directly. Import as ``from eval import ...`` (never a bare ``import eval``).
"""

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
