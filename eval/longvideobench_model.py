"""LongVideoBench model mode: the :class:`Responder` interface and the harness that asks every question through it.

Per video the reference frames and kept subtitles (:mod:`mmduplex.eval.longvideobench_data`) go through a
:class:`Responder` once, then every question of that video is asked on the resulting state (``generation``: the parsed
free-text answer; ``likelihood``: the letter with the highest log-probability). Questions whose video is missing get no
response and are listed; a missing subtitle file means that video is asked without subtitles, and is listed too.
:class:`mmduplex.eval.duplex_responder.DuplexResponder` implements the interface over an inference bundle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from mmduplex.errors import AnnotationError, InputError
from mmduplex.eval.answer_parser import choice_letter
from mmduplex.eval.longvideobench_data import (
    Question,
    Subtitle,
    build_prompt,
    load_frames,
    load_subtitles,
    select_subtitles,
)

if TYPE_CHECKING:
    import torch

SCORING_MODES = ("generation", "likelihood")


class Responder(Protocol):
    """What the model-mode harness needs from a model (a ``DuplexSession``-based adapter implements it).

    ``prepare_video`` streams one video (frames at their timestamps, subtitles on the user stream at their ``mid``
    times) and returns a state; ``answer`` / ``letter_logprobs`` ask one question on that state. The harness calls
    ``prepare_video`` once per video and then asks all its questions on the same state object, so the question
    methods must leave ``state`` unchanged (work on a copy of the session state).
    """

    def prepare_video(self, frames: torch.Tensor, timestamps: Sequence[float], subtitles: Sequence[Subtitle]) -> Any:
        """``frames`` [T, H, W, 3] uint8 RGB at ``timestamps`` (s); ``subtitles`` the kept ones, in reference order."""
        ...

    def answer(self, state: Any, prompt: str) -> str:
        """The model's free-text answer to ``prompt`` (typed on the user stream after the video)."""
        ...

    def letter_logprobs(self, state: Any, prompt: str, letters: Sequence[str]) -> dict[str, float]:
        """Log-probability of each option letter as the model's first answer token after ``prompt``."""
        ...


class BatchResponder(Responder, Protocol):
    """A :class:`Responder` that also answers many questions at once (generation scoring)."""

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """What the model reads of ``frames`` [T, H, W, 3] (e.g. ``[T, P, D]`` patch features): held per video
        until its batch runs, instead of the pixels."""
        ...

    def answer_batch(self, videos: Sequence[tuple[Sequence[float], Any, Sequence[Subtitle], Sequence[str]]],
                     batch: int) -> list[list[str]]:  # fmt: skip
        """Per video ``(timestamps, features, subtitles, prompts)``, the reply to each prompt: what ``answer`` on
        ``prepare_video``'s state gives."""
        ...


@dataclass
class ModelRun:
    """What :func:`run_responder` produced: responses, why some questions have none, missing-file counts."""

    responses: dict[str, str]
    missing: dict[str, str]  # question id -> reason (no response, or answered without subtitles)
    missing_videos: int
    missing_subtitles: int


def run_responder(
    questions: Sequence[Question],
    data_root: str | os.PathLike,
    responder: Responder,
    max_frames: int | None,
    subtitles: bool,
    scoring: str,
    progress: bool = True,
    annotations: str = "lvb_val.json",
    sample_fps: float | None = None,
    batch: int = 1,
) -> ModelRun:
    """Ask every question through ``responder``: one ``prepare_video`` per video, then its questions on that state;
    with ``batch > 1``, generation scoring and a responder that has ``answer_batch`` (:class:`BatchResponder`), the
    videos go in as features (``features``) and ``batch`` questions are answered at once.

    Args:
        questions: the records to ask (from :func:`load_annotations`).
        data_root: folder holding ``videos/`` and ``subtitles/``.
        responder: the model.
        max_frames: the reference's frame cap (its uniform sampling); ``None``: frames every ``1 / sample_fps`` s.
        subtitles: interleave the kept subtitles.
        scoring: ``"generation"`` or ``"likelihood"``.
        progress: show a progress bar over questions.
        annotations: the annotation file name (for error messages).
        sample_fps: the frame rate used when ``max_frames`` is ``None`` (model mode's default: the bundle's fps).
        batch: questions answered at once by a :class:`BatchResponder` (1: one at a time, the reference's order).
    """
    if scoring not in SCORING_MODES:
        raise InputError("scoring", f"must be one of {SCORING_MODES}, got {scoring!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError("batch", f"must be a positive integer, got {batch!r}")
    if (max_frames is None) == (sample_fps is None):
        raise InputError("max_frames", "give exactly one of max_frames (reference sampling) and sample_fps")
    root = Path(data_root)
    by_video: dict[str, list[Question]] = {}
    for q in questions:
        if q.video_path is None or q.duration is None or (subtitles and q.subtitle_path is None):
            raise AnnotationError(
                root / annotations,
                f"question {q.id!r}: model mode needs video_path, "
                "duration" + (" and subtitle_path" if subtitles else ""),
            )
        by_video.setdefault(q.video_path, []).append(q)
    run = ModelRun({}, {}, 0, 0)
    bar = tqdm(total=len(questions), desc="longvideobench", unit="q", disable=not progress)
    batched = batch > 1 and scoring == "generation" and hasattr(responder, "answer_batch")
    pending: list[tuple[list[Question], tuple]] = []  # batched: videos waiting, as features

    def answer_pending() -> None:
        replies = responder.answer_batch([video for _, video in pending], batch)
        for (asked, _), answers in zip(pending, replies, strict=True):
            run.responses.update({q.id: answer for q, answer in zip(asked, answers, strict=True)})
            bar.update(len(asked))
        pending.clear()

    for video_path, video_questions in by_video.items():
        video_file = root / "videos" / video_path
        if not video_file.is_file():
            run.missing_videos += 1
            run.missing.update({q.id: f"video missing: {video_file}" for q in video_questions})
            bar.update(len(video_questions))
            continue
        first = video_questions[0]
        frames, timestamps = load_frames(video_file, first.duration, max_frames, sample_fps)
        kept: list[Subtitle] = []
        if subtitles:
            subtitle_file = root / "subtitles" / first.subtitle_path
            if subtitle_file.is_file():
                lines = load_subtitles(subtitle_file, first.starting_timestamp, first.duration)
                kept = select_subtitles(timestamps, lines)
            else:
                run.missing_subtitles += 1
                run.missing.update(
                    {q.id: f"subtitles missing (asked without): {subtitle_file}" for q in video_questions}
                )
        if batched:
            prompts = [build_prompt(q) for q in video_questions]
            pending.append((video_questions, (timestamps, responder.features(frames), kept, prompts)))
            if sum(len(asked) for asked, _ in pending) >= batch:
                answer_pending()
            continue
        state = responder.prepare_video(frames, timestamps, kept)
        for q in video_questions:
            prompt = build_prompt(q)
            if scoring == "generation":
                run.responses[q.id] = responder.answer(state, prompt)
            else:
                letters = [choice_letter(i) for i in range(len(q.candidates))]
                logprobs = responder.letter_logprobs(state, prompt, letters)
                run.responses[q.id] = max(letters, key=lambda letter: logprobs[letter])
            bar.update(1)
    if pending:
        answer_pending()
    bar.close()
    return run
