"""LongVideoBench (val) evaluation task: scoring, and the ``mmduplex eval longvideobench`` command's task class.

Two ways to get responses:

- **predictions** (``mmduplex eval longvideobench --predictions FILE``): a JSONL of ``{"id", "response"}``; only
  ``lvb_val.json`` is read. Ids absent from the annotations are an error (a file made for another split or subset);
  questions without a prediction count as wrong and are listed under ``missing``.
- **model** (``--checkpoint BUNDLE``: an :class:`mmduplex.eval.duplex_responder.DuplexResponder` on the bundle; library:
  ``LongVideoBenchEval(..., responder=...)``): the harness of :mod:`mmduplex.eval.longvideobench_model` asks every
  question through a :class:`Responder`. The responses are written as the same JSONL, so runs can be rescored.

The published files and the reference input protocol (frames, subtitles, prompt) are in
:mod:`mmduplex.eval.longvideobench_data`; their public names are re-exported here, so
``mmduplex.eval.longvideobench.{Question, load_annotations, load_frames, load_subtitles, interleave, build_prompt}``
keep working.

Scoring (:func:`score`): accuracy is micro (the fraction correct: torchmetrics' mean of 0/1 correctness in float64,
not its per-class multiclass default); a response without a letter is wrong and counted in ``no_letter``. Per-group
accuracies are ``None`` for groups without questions (the keys for the four duration groups and the 17 categories are
always present); ``counts`` gives the number of questions per group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmduplex.errors import InputError
from mmduplex.eval.answer_parser import LETTERS, parse_response
from mmduplex.eval.base import EvalTask, markdown_table
from mmduplex.eval.longvideobench_data import (
    DURATION_GROUPS,
    PROMPT_SUFFIX,
    QUESTION_CATEGORIES,
    Question,
    Subtitle,
    build_prompt,
    interleave,
    load_annotations,
    load_frames,
    load_predictions,
    load_subtitles,
    predictions_jsonl,
    sample_frame_indices,
    select_subtitles,
)
from mmduplex.eval.longvideobench_model import SCORING_MODES, ModelRun, Responder, run_responder
from mmduplex.fileio import write_text_atomic

if TYPE_CHECKING:
    import torch
    from jsonargparse import ArgumentParser

__all__ = [
    "DEFAULT_MAX_ANSWER_STEPS",
    "DURATION_GROUPS",
    "PROMPT_SUFFIX",
    "QUESTION_CATEGORIES",
    "REFERENCE_FRAMES",
    "REFERENCE_SUBTITLES",
    "SCORING_MODES",
    "LongVideoBenchEval",
    "ModelRun",
    "Question",
    "Responder",
    "Subtitle",
    "build_prompt",
    "interleave",
    "load_annotations",
    "load_frames",
    "load_predictions",
    "load_subtitles",
    "predictions_jsonl",
    "run_responder",
    "sample_frame_indices",
    "score",
    "select_subtitles",
]

log = logging.getLogger(__name__)

REFERENCE_FRAMES = 64
"""The leaderboard's headline frame cap (``longvideobench_val.yaml``); model mode's default when the bundle records no
fps. A bundle that records its fps is streamed frames at that rate instead (the rate it was trained on: the
reference's sampling gives at most one frame per second)."""
REFERENCE_SUBTITLES = True
"""Model mode interleaves subtitles when not told otherwise (the same protocol)."""
DEFAULT_MAX_ANSWER_STEPS = 32
"""``--checkpoint``: the cap on a generated reply's length in steps (an answer is one letter; not a tuned value)."""
DEFAULT_BATCH = 8
"""``--checkpoint``: questions answered at once (lockstep streams) when ``--batch`` is not given."""
_MODEL_ONLY = ("scoring", "responses_out", "max_answer_steps", "max_gap_steps", "batch")
_PREDICTIONS_NOTE = "videos and subtitles not read (predictions mode); frames and subtitles are as stated, unchecked"
_NO_ANSWER = len(LETTERS)  # class index of "no letter / no response": never equal to a target


# ----------------------------------------------------------------------------------------------------------- scoring


def _accuracy(preds: torch.Tensor, target: torch.Tensor) -> float | None:
    """Micro accuracy (fraction correct, float64) of class indices; ``None`` when there are none."""
    import torch
    from torchmetrics.aggregation import MeanMetric  # slow import, only when scoring

    if preds.numel() == 0:
        return None
    mean = MeanMetric().set_dtype(torch.float64)
    mean.update((preds == target).to(torch.float64))  # [N] 1.0 = right
    return float(mean.compute())


def score(
    questions: Sequence[Question],
    responses: Mapping[str, str],
    reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Score ``responses`` (id -> text) against ``questions`` with the reference parser.

    Questions without a response are wrong and listed under ``missing`` with ``reasons[id]`` (default
    ``"no prediction"``); a response without a letter is wrong and counted in ``no_letter``.
    """
    import torch  # only when scoring: importing the task (for its flags) stays light

    reasons = reasons or {}
    preds, no_letter, missing = [], [], []
    for q in questions:
        if q.id not in responses:
            missing.append({"id": q.id, "reason": reasons.get(q.id, "no prediction")})
            preds.append(_NO_ANSWER)
            continue
        if q.id in reasons:  # answered, but under a handicap (e.g. without its subtitle file)
            missing.append({"id": q.id, "reason": reasons[q.id]})
        letter = parse_response(responses[q.id]).letter
        if letter is None:
            no_letter.append(q.id)
        preds.append(_NO_ANSWER if letter is None else LETTERS.index(letter))
    pred_t = torch.tensor(preds, dtype=torch.long)  # [N]
    target_t = torch.tensor([q.correct_choice for q in questions], dtype=torch.long)  # [N]

    def grouped(keys: Sequence[Any], key_of) -> tuple[dict[str, float | None], dict[str, int]]:
        accuracy, counts = {}, {}
        for key in keys:
            mask = torch.tensor([key_of(q) == key for q in questions], dtype=torch.bool)  # [N]
            accuracy[str(key)], counts[str(key)] = _accuracy(pred_t[mask], target_t[mask]), int(mask.sum())
        return accuracy, counts

    by_group, n_group = grouped(DURATION_GROUPS, lambda q: q.duration_group)
    by_category, n_category = grouped(QUESTION_CATEGORIES, lambda q: q.question_category)
    by_level, n_level = grouped(sorted({q.level for q in questions}), lambda q: q.level)
    return {
        "overall": _accuracy(pred_t, target_t),
        "n": len(questions),
        "by_duration_group": by_group,
        "by_question_category": by_category,
        "by_level": by_level,
        "no_letter": len(no_letter),
        "no_letter_ids": no_letter,
        "missing": missing,
        "counts": {"by_duration_group": n_group, "by_question_category": n_category, "by_level": n_level},
    }


# -------------------------------------------------------------------------------------------------------------- task


class LongVideoBenchEval(EvalTask):
    """LongVideoBench val scoring from a predictions file, or from a :class:`Responder` (model mode).

    Args:
        data_root: the extracted data set (``lvb_val.json``, ``videos/``, ``subtitles/``).
        predictions: predictions JSONL to score (predictions mode).
        responder: a model to ask (model mode; ``--checkpoint`` builds a ``DuplexResponder``).
        annotations: annotation file name inside ``data_root``.
        frames: maximum frames per video (model mode: used; predictions mode: recorded as stated by the user).
        frame_fps: model mode without ``frames``: stream frames at this rate (the bundle's fps).
        subtitles: interleave subtitles (model mode: used; predictions mode: recorded as stated).
        scoring: model mode: ``"generation"`` (parsed answer) or ``"likelihood"`` (most likely option letter).
        responses_out: model mode: where to write the responses JSONL (``None``: beside the results JSON as
            ``<stem>.responses.jsonl`` when :meth:`write` is called, else not written).
        progress: show a progress bar over questions (model mode).
        batch: model mode, generation scoring: questions answered at once by a responder that can
            (``DuplexResponder``: that many streams in lockstep, the same replies up to rounding); 1: one at a time.
    """

    name = "longvideobench"
    defaults = {
        "data_root": None,
        "predictions": None,
        "checkpoint": None,
        "annotations": "lvb_val.json",
        "frames": None,
        "subtitles": None,
        "scoring": None,
        "responses_out": None,
        "max_answer_steps": None,
        "max_gap_steps": None,
        "batch": None,
    }
    required = ("data_root",)

    def __init__(
        self,
        data_root: str | os.PathLike,
        predictions: str | os.PathLike | None = None,
        responder: Responder | None = None,
        annotations: str = "lvb_val.json",
        frames: int | None = None,
        subtitles: bool | None = None,
        scoring: str = "generation",
        responses_out: str | os.PathLike | None = None,
        progress: bool = True,
        frame_fps: float | None = None,
        batch: int = 1,
    ) -> None:
        if (predictions is None) == (responder is None):
            raise InputError("predictions", "give exactly one of a predictions file or a responder")
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise InputError("frames", f"must be a positive integer, got {frames!r}")
        if subtitles is not None and not isinstance(subtitles, bool):
            raise InputError("subtitles", f"must be true or false, got {subtitles!r}")
        if responder is not None and ((frames is None) == (frame_fps is None) or subtitles is None):
            raise InputError("frames", "model mode needs subtitles set and exactly one of frames and frame_fps")
        if scoring not in SCORING_MODES:
            raise InputError("scoring", f"must be one of {SCORING_MODES}, got {scoring!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError("batch", f"must be a positive integer, got {batch!r}")
        self.batch = batch
        self.data_root = Path(data_root)
        self.predictions = None if predictions is None else Path(predictions)
        self.responder = responder
        self.annotations = annotations
        self.frames = frames
        self.frame_fps = None if frame_fps is None else float(frame_fps)
        self.subtitles = subtitles
        self.scoring = scoring
        self.responses_out = None if responses_out is None else Path(responses_out)
        self.progress = progress
        self._responses_text: str | None = None  # model mode: the responses JSONL of the last run

    @property
    def settings(self) -> dict[str, Any]:
        model_mode = self.responder is not None
        return {
            "mode": "model" if model_mode else "predictions",
            "data_root": str(self.data_root),
            "annotations": self.annotations,
            "predictions": None if self.predictions is None else str(self.predictions),
            "frames": self.frames,
            "frame_fps": self.frame_fps,
            "subtitles": self.subtitles,
            "scoring": self.scoring if model_mode else "generation (parsed responses)",
            "answer_parser": "reference (strip answer phrases, first A-E); no letter counts as wrong",
            "skipped": None if model_mode else _PREDICTIONS_NOTE,
            "checkpoint": str(getattr(self.responder, "bundle_path", "")) or None,
            "responder": getattr(self.responder, "settings", None),
            "batch": self.batch if model_mode else None,
        }

    def run(self) -> dict[str, Any]:
        questions = load_annotations(self.data_root / self.annotations)
        settings = self.settings
        if self.responder is None:
            responses = load_predictions(self.predictions)
            unknown = sorted(set(responses) - {q.id for q in questions})
            if unknown:
                shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
                raise InputError(self.predictions, f"{len(unknown)} id(s) not in {self.annotations}: {shown}")
            reasons: dict[str, str] = {}
            settings.update(missing_videos=None, missing_subtitles=None)
        else:
            run = run_responder(
                questions,
                self.data_root,
                self.responder,
                self.frames,
                self.subtitles,
                self.scoring,
                self.progress,
                self.annotations,
                self.frame_fps,
                self.batch,
            )
            responses, reasons = run.responses, run.missing
            settings.update(missing_videos=run.missing_videos, missing_subtitles=run.missing_subtitles)
            if hasattr(self.responder, "skipped_steps"):
                settings["skipped_steps"] = self.responder.skipped_steps
            self._responses_text = predictions_jsonl(responses)
            if self.responses_out is not None:
                write_text_atomic(self.responses_out, predictions_jsonl(responses))
                settings["responses"] = str(self.responses_out)
        results = score(questions, responses, reasons)
        settings["missing_responses"] = sum(q.id not in responses for q in questions)
        results["settings"] = settings
        log.info("longvideobench: %d questions, accuracy %s", results["n"], results["overall"])
        return results

    def write(self, results: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
        """Write the results; in model mode without ``responses_out``, also ``<out stem>.responses.jsonl`` beside."""
        if self._responses_text is None or self.responses_out is not None:
            return super().write(results, out)
        responses = Path(out).with_name(Path(out).stem + ".responses.jsonl")
        results = {**results, "settings": {**results["settings"], "responses": str(responses)}}
        write_text_atomic(responses, self._responses_text)
        return super().write(results, out)

    def markdown(self, results: Mapping[str, Any]) -> str:
        counts = results["counts"]
        settings = results["settings"]
        frames = settings["frames"] if settings.get("frame_fps") is None else f"{settings['frame_fps']:g} fps"
        parts = [
            "# LongVideoBench\n",
            f"frames: {frames}, subtitles: {settings['subtitles']}, scoring: {settings['scoring']}, "
            f"mode: {settings['mode']}\n",
            markdown_table(
                ["overall", "n", "no letter", "no response"],
                [[results["overall"], results["n"], results["no_letter"], settings["missing_responses"]]],
            ),
        ]
        for title, key in (
            ("duration group", "by_duration_group"),
            ("question category", "by_question_category"),
            ("level", "by_level"),
        ):
            rows = [[name, acc, counts[key][name]] for name, acc in results[key].items() if counts[key][name]]
            parts.append(f"\n## By {title}\n\n" + markdown_table([title, "accuracy", "n"], rows))
        return "\n".join(parts)

    @classmethod
    def add_arguments(cls, parser: ArgumentParser) -> None:
        from jsonargparse import ActionYesNo

        add = parser.add_argument
        add("--data-root", type=str | None, metavar="DIR", help="extracted LongVideoBench folder (required)")
        add(
            "--predictions",
            type=str | None,
            metavar="FILE",
            help='JSONL of {"id": ..., "response": "..."} to score (predictions mode; exclusive with --checkpoint)',
        )
        add(
            "--checkpoint",
            type=str | None,
            metavar="BUNDLE",
            help="duplex inference bundle folder to ask (model mode; exclusive with --predictions)",
        )
        add("--annotations", type=str, metavar="NAME", help="annotation file in DIR")
        add(
            "--frames",
            type=int | None,
            metavar="N",
            help="max frames per video, sampled as the reference does (model mode default: frames at the bundle's "
            f"fps, or {REFERENCE_FRAMES} if it records none; predictions mode: recorded)",
        )
        add(
            "--subtitles",
            action=ActionYesNo(no_prefix="no-"),
            type=bool | None,
            help="interleave subtitles (model mode: used, default on; predictions mode: recorded as stated)",
        )
        add(
            "--scoring",
            type=Literal[SCORING_MODES] | None,
            help="model mode: parse the generated answer (generation, default) or take the most likely letter",
        )
        add(
            "--responses-out",
            type=str | None,
            metavar="FILE",
            help="model mode: responses JSONL (rescorable with --predictions); default <out stem>.responses.jsonl",
        )
        add(
            "--max-answer-steps",
            type=int | None,
            metavar="K",
            help=f"model mode: most steps of a generated reply (default {DEFAULT_MAX_ANSWER_STEPS})",
        )
        add(
            "--max-gap-steps",
            type=int | None,
            metavar="K",
            help="model mode: run at most K empty steps between frames/subtitles, skip the rest (default: run all)",
        )
        add(
            "--batch",
            type=int | None,
            metavar="N",
            help=f"model mode, generation scoring: answer N questions at once, streamed in lockstep through one LM "
            f"step per tick (default {DEFAULT_BATCH}; 1: one at a time; the replies are the same up to rounding)",
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LongVideoBenchEval:
        if settings["checkpoint"] is None:
            if settings["predictions"] is None:
                raise InputError("--predictions", "required for 'eval longvideobench' unless --checkpoint is given")
            given = [key for key in _MODEL_ONLY if settings[key] is not None]
            if given:
                flags = ", ".join("--" + key.replace("_", "-") for key in given)
                raise InputError(flags, "only with --checkpoint (model mode)")
            return cls(
                data_root=settings["data_root"],
                predictions=settings["predictions"],
                annotations=settings["annotations"],
                frames=settings["frames"],
                subtitles=settings["subtitles"],
            )
        if settings["predictions"] is not None:
            raise InputError("--checkpoint", "give either --checkpoint (model mode) or --predictions, not both")
        from mmduplex.eval.duplex_responder import DuplexResponder  # loads torch models: only in model mode

        responder = DuplexResponder(
            settings["checkpoint"],
            max_answer_steps=settings["max_answer_steps"] or DEFAULT_MAX_ANSWER_STEPS,
            max_gap_steps=settings["max_gap_steps"],
        )
        subtitles = settings["subtitles"]
        frames, frame_fps = settings["frames"], None
        if frames is None:
            frame_fps = responder.fps
            frames = REFERENCE_FRAMES if frame_fps is None else None
        return cls(
            data_root=settings["data_root"],
            responder=responder,
            annotations=settings["annotations"],
            frames=frames,
            frame_fps=frame_fps,
            subtitles=REFERENCE_SUBTITLES if subtitles is None else subtitles,
            scoring=settings["scoring"] or "generation",
            responses_out=settings["responses_out"],
            batch=DEFAULT_BATCH if settings["batch"] is None else settings["batch"],
        )
