"""LongVideoBench (val) evaluation: loading the published files, the reference input protocol, and scoring.

Data root layout (as published): ``lvb_val.json`` (a list of question records), ``videos/<video_path>``,
``subtitles/<subtitle_path>``. Two ways to get responses:

- **predictions** (``mmduplex eval longvideobench --predictions FILE``): a JSONL of ``{"id", "response"}``; only
  ``lvb_val.json`` is read. Ids absent from the annotations are an error (a file made for another split or subset);
  questions without a prediction count as wrong and are listed under ``missing``.
- **model** (``--checkpoint BUNDLE``: an :class:`eval.duplex_responder.DuplexResponder` on the bundle; library:
  ``LongVideoBenchEval(..., responder=...)``): per video the reference frames and kept subtitles
  go through a :class:`Responder` once, then every question of that video is asked on the resulting state
  (``generation``: the parsed free-text answer; ``likelihood``: the letter with the highest log-probability).
  Questions whose video is missing count as wrong and are listed; a missing subtitle file means that video is
  asked without subtitles, and is listed too. The responses are written as the same JSONL, so runs can be rescored.

Reference protocol (the official loader and lmms-eval agree):

- frames: ``n = min(max_frames, int(duration))``, indices ``int(int(duration * fps) / n) * i`` for ``i < n`` with the
  decoder's average ``fps``, timestamps ``index / fps``;
- subtitles: times minus ``starting_timestamp_for_subtitles``; each subtitle goes after every sampled frame at or
  before its mid-time and is kept only if a sampled frame lies strictly inside its window (windows shorter than 1 s
  widened to 1 s around the mid). One deliberate deviation: an open-ended subtitle (non-numeric end) ends at the end
  of the video; the reference sets its end to ``duration`` *before* subtracting the starting timestamp, which moves
  it before its start whenever that timestamp is non-zero (identical results when it is zero, the common case);
- prompt: the question, one ``A. text`` line per option, then ``Answer with the option's letter from the given
  choices directly.`` (lines joined by newlines, as lmms-eval does).

Scoring (:func:`score`): accuracy is micro (the fraction correct: torchmetrics' mean of 0/1 correctness in float64,
not its per-class multiclass default); a response without a letter is wrong and counted in ``no_letter``. Per-group
accuracies are ``None`` for groups without questions (the keys for the four duration groups and the 17 categories are
always present); ``counts`` gives the number of questions per group.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import torch
from tqdm import tqdm

from eval.answer_parser import LETTERS, choice_letter, parse_response
from eval.base import EvalTask, markdown_table
from mmduplex.errors import AnnotationError, InputError, VideoError
from mmduplex.fileio import write_text_atomic
from mmduplex.video import probe_video

log = logging.getLogger(__name__)

DURATION_GROUPS: tuple[int, ...] = (15, 60, 600, 3600)
QUESTION_CATEGORIES: tuple[str, ...] = (
    *("S2E", "S2O", "S2A", "E2O", "O2E", "T2E", "T2O", "T2A"),  # L1-Perception
    *("E3E", "O3O", "SSS", "SOS", "SAA", "T3E", "T3O", "TOS", "TAA"),  # L2-Relation
)
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."
SCORING_MODES = ("generation", "likelihood")
REFERENCE_FRAMES = 64
"""Model mode's frame cap when none is given (the leaderboard's headline protocol, ``longvideobench_val.yaml``)."""
REFERENCE_SUBTITLES = True
"""Model mode interleaves subtitles when not told otherwise (the same protocol)."""
DEFAULT_MAX_ANSWER_STEPS = 32
"""``--checkpoint``: the cap on a generated reply's length in steps (an answer is one letter; not a tuned value)."""
_MODEL_ONLY = ("scoring", "responses_out", "max_answer_steps", "max_gap_steps")
_PREDICTIONS_NOTE = "videos and subtitles not read (predictions mode); frames and subtitles are as stated, unchecked"
_NO_ANSWER = len(LETTERS)  # class index of "no letter / no response": never equal to a target


@dataclass(frozen=True)
class Question:
    """One ``lvb_val.json`` record (the fields the evaluation uses)."""

    id: str
    question: str
    candidates: tuple[str, ...]
    correct_choice: int
    question_category: str
    level: str
    duration_group: int
    video_path: str | None
    subtitle_path: str | None
    duration: float | None
    starting_timestamp: float

    @property
    def answer(self) -> str:
        """The correct letter."""
        return choice_letter(self.correct_choice)


@dataclass(frozen=True)
class Subtitle:
    """One subtitle line in video time (s): the starting timestamp subtracted, an open end resolved."""

    start: float
    end: float
    text: str

    @property
    def mid(self) -> float:
        """The time the reference places the subtitle at."""
        return (self.start + self.end) / 2


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


# ---------------------------------------------------------------------------------------------------------- loading


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_annotations(path: str | os.PathLike) -> list[Question]:
    """Read and validate ``lvb_val.json``; raises :class:`AnnotationError` naming the record at fault."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed JSON ({exc})") from exc
    if not isinstance(records, list) or not records:
        raise AnnotationError(path, "expected a non-empty JSON list of question records")
    questions, seen = [], set()
    for index, record in enumerate(records):
        question = _parse_record(record, index, path)
        if question.id in seen:
            raise AnnotationError(path, f"record {index}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    return questions


def _parse_record(record: Any, index: int, path: Path) -> Question:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise AnnotationError(path, f"{where}: expected an object, got {type(record).__name__}")
    if isinstance(record.get("id"), str):
        where += f" (id {record['id']!r})"

    def fail(problem: str) -> AnnotationError:
        return AnnotationError(path, f"{where}: {problem}")

    for key, kind in (("id", str), ("question", str), ("question_category", str), ("level", str)):
        if not isinstance(record.get(key), kind) or not record[key]:
            raise fail(f"{key!r} must be a non-empty string, got {record.get(key)!r}")
    candidates = record.get("candidates")
    if not isinstance(candidates, list) or not 2 <= len(candidates) <= len(LETTERS):
        raise fail(f"'candidates' must be a list of 2-{len(LETTERS)} options, got {candidates!r}")
    if not all(isinstance(c, str) or _number(c) for c in candidates):
        raise fail("every candidate must be a string or a number")
    if "correct_choice" not in record:
        raise fail("no 'correct_choice' (the test split, lvb_test_wo_gt.json, has no answers to score against)")
    choice = record["correct_choice"]
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(candidates):
        raise fail(f"'correct_choice' must be an index into the {len(candidates)} candidates, got {choice!r}")
    if record["question_category"] not in QUESTION_CATEGORIES:
        raise fail(f"unknown question_category {record['question_category']!r} (expected one of the 17 codes)")
    if record.get("duration_group") not in DURATION_GROUPS or isinstance(record.get("duration_group"), bool):
        raise fail(f"'duration_group' must be one of {list(DURATION_GROUPS)}, got {record.get('duration_group')!r}")
    for key in ("video_path", "subtitle_path"):
        if key in record and not (isinstance(record[key], str) and record[key]):
            raise fail(f"{key!r} must be a non-empty string, got {record[key]!r}")
    duration = record.get("duration")
    if duration is not None and not (_number(duration) and duration > 0):
        raise fail(f"'duration' must be a positive number of seconds, got {duration!r}")
    start = record.get("starting_timestamp_for_subtitles", 0)
    if not _number(start):
        raise fail(f"'starting_timestamp_for_subtitles' must be a number, got {start!r}")
    return Question(
        id=record["id"],
        question=record["question"],
        candidates=tuple(str(c) for c in candidates),
        correct_choice=choice,
        question_category=record["question_category"],
        level=record["level"],
        duration_group=record["duration_group"],
        video_path=record.get("video_path"),
        subtitle_path=record.get("subtitle_path"),
        duration=None if duration is None else float(duration),
        starting_timestamp=float(start),
    )


def _clock(value: Any) -> float:
    """``"HH:MM:SS.fff"`` -> seconds (the reference's parse); raises ``ValueError``."""
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def load_subtitles(path: str | os.PathLike, starting_timestamp: float, duration: float) -> list[Subtitle]:
    """Read a subtitle file of either published shape into video-time :class:`Subtitle` lines (file order kept).

    Shapes: ``[{"timestamp": [start, end], "text"}]`` (seconds; a non-numeric end = until the end of the video) or
    ``[{"start": "HH:MM:SS.fff", "end": "HH:MM:SS.fff", "line"}]``. ``starting_timestamp`` is subtracted.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed subtitle JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise AnnotationError(path, f"expected a JSON list of subtitle lines, got {type(entries).__name__}")
    subtitles = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "timestamp" in entry:
            span, text = entry["timestamp"], entry.get("text")
            if not (isinstance(span, list) and len(span) == 2 and _number(span[0])):
                raise AnnotationError(path, f"entry {i}: 'timestamp' must be [start, end] in seconds, got {span!r}")
            start = float(span[0]) - starting_timestamp
            end = float(span[1]) - starting_timestamp if _number(span[1]) else duration
        elif isinstance(entry, dict) and "start" in entry:
            text = entry.get("line")
            try:
                start = _clock(entry["start"]) - starting_timestamp
                end = _clock(entry["end"]) - starting_timestamp
            except (KeyError, ValueError, AttributeError, TypeError) as exc:
                raise AnnotationError(
                    path,
                    f"entry {i}: 'start'/'end' must be \"HH:MM:SS.fff\", got {entry.get('start')!r}, "
                    f"{entry.get('end')!r}",
                ) from exc
        else:
            raise AnnotationError(path, f"entry {i}: expected {{'timestamp', 'text'}} or {{'start', 'end', 'line'}}")
        if not isinstance(text, str):
            raise AnnotationError(path, f"entry {i}: subtitle text must be a string, got {text!r}")
        subtitles.append(Subtitle(start, end, text))
    return subtitles


# --------------------------------------------------------------------------------------------------------- protocol


def sample_frame_indices(duration: float, native_fps: float, max_frames: int) -> tuple[list[int], list[float]]:
    """The reference's frame indices and their timestamps (s) for a video of ``duration`` s at ``native_fps``."""
    num_frames = min(max_frames, int(duration))
    if num_frames < 1:
        raise InputError("duration", f"{duration} s with max_frames={max_frames}: the reference samples no frame")
    step = int(duration * native_fps) // num_frames
    indices = [step * i for i in range(num_frames)]
    return indices, [index / native_fps for index in indices]


def interleave(frame_timestamps: Sequence[float], subtitles: Sequence[Subtitle]) -> list[int | Subtitle]:
    """The reference's interleaved sequence: frame indices (into ``frame_timestamps``) and the kept subtitles."""
    sequence: list[int | Subtitle] = []
    next_frame = 0
    for subtitle in subtitles:
        while next_frame < len(frame_timestamps) and frame_timestamps[next_frame] <= subtitle.mid:
            sequence.append(next_frame)
            next_frame += 1
        start, end = subtitle.start, subtitle.end
        if end - start < 1:
            start, end = subtitle.mid - 0.5, subtitle.mid + 0.5
        if any(start < t < end for t in frame_timestamps):
            sequence.append(subtitle)
    sequence.extend(range(next_frame, len(frame_timestamps)))
    return sequence


def select_subtitles(frame_timestamps: Sequence[float], subtitles: Sequence[Subtitle]) -> list[Subtitle]:
    """The subtitles the reference keeps for these frames, in its order."""
    return [item for item in interleave(frame_timestamps, subtitles) if isinstance(item, Subtitle)]


def build_prompt(question: Question) -> str:
    """The question, one ``A. text`` line per option, then the reference instruction."""
    options = [f"{choice_letter(i)}. {text}" for i, text in enumerate(question.candidates)]
    return "\n".join([question.question, *options, PROMPT_SUFFIX])


def load_frames(path: str | os.PathLike, duration: float, max_frames: int) -> tuple[torch.Tensor, list[float]]:
    """Decode the reference's frames by index (decord, as the reference does): ``[T, H, W, 3]`` uint8, times (s).

    Where decord cannot decode the file (decord 0.6 fails on some frame sizes) the same indices are decoded with
    PyAV. Indices past the last frame (a record ``duration`` a little longer than the file) are clamped to it.

    Raises:
        VideoError: the file is missing, empty, truncated or undecodable.
    """
    import decord  # the reference protocol is index based; mmduplex.video samples by time

    info = probe_video(path)  # a clear VideoError for empty / truncated / non-video files
    try:
        reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
        fps, count = float(reader.get_avg_fps()), len(reader)
    except (RuntimeError, decord.DECORDError):
        reader, fps, count = None, info.native_fps, info.num_frames
    indices, timestamps = sample_frame_indices(duration, fps, max_frames)
    if indices[-1] > count - 1:
        log.warning("%s: frame %d requested, the video has %d frames; clamping", path, indices[-1], count)
        indices = [min(i, count - 1) for i in indices]
        timestamps = [i / fps for i in indices]
    if reader is not None:
        try:
            batch = reader.get_batch(indices)
            frames = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.asnumpy())
            return frames, timestamps  # [T, H, W, 3] uint8
        except (RuntimeError, decord.DECORDError) as exc:
            log.info("decord cannot decode %s (%s); decoding with PyAV", path, str(exc).splitlines()[0])
    return _decode_by_index(Path(path), indices), timestamps


def _decode_by_index(path: Path, indices: Sequence[int]) -> torch.Tensor:
    """Frames ``indices`` (in decode order) of ``path`` with PyAV: ``[T, H, W, 3]`` uint8."""
    wanted, found = set(indices), {}
    try:
        with av.open(os.fspath(path)) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    found[k] = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
                if k >= max(indices):
                    break
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"cannot decode video ({exc})") from exc
    if len(found) < len(wanted):
        raise VideoError(path, f"decoded only {len(found)} of the {len(wanted)} requested frames")
    return torch.stack([found[i] for i in indices])


# ---------------------------------------------------------------------------------------------------------- responses


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Read a predictions JSONL (``{"id": ..., "response": "..."}`` per line) into ``id -> response``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "predictions file not found")
    responses: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {lineno}: malformed JSON ({exc.msg})") from exc
            if not (isinstance(record, dict) and isinstance(record.get("id"), str)):
                raise InputError(path, f'line {lineno}: expected {{"id": str, "response": str}}')
            if not isinstance(record.get("response"), str):
                raise InputError(path, f"line {lineno}: 'response' must be a string, got {record.get('response')!r}")
            if record["id"] in responses:
                raise InputError(path, f"line {lineno}: duplicate id {record['id']!r}")
            responses[record["id"]] = record["response"]
    if not responses:
        raise InputError(path, "no predictions in the file")
    return responses


def predictions_jsonl(responses: Mapping[str, str]) -> str:
    """``id -> response`` as predictions JSONL text (the format :func:`load_predictions` reads)."""
    return "".join(json.dumps({"id": qid, "response": text}) + "\n" for qid, text in responses.items())


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
    max_frames: int,
    subtitles: bool,
    scoring: str,
    progress: bool = True,
    annotations: str = "lvb_val.json",
) -> ModelRun:
    """Ask every question through ``responder``: one ``prepare_video`` per video, then its questions on that state.

    Args:
        questions: the records to ask (from :func:`load_annotations`).
        data_root: folder holding ``videos/`` and ``subtitles/``.
        responder: the model.
        max_frames: the reference's frame cap.
        subtitles: interleave the kept subtitles.
        scoring: ``"generation"`` or ``"likelihood"``.
        progress: show a progress bar over questions.
        annotations: the annotation file name (for error messages).
    """
    if scoring not in SCORING_MODES:
        raise InputError("scoring", f"must be one of {SCORING_MODES}, got {scoring!r}")
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
    for video_path, video_questions in by_video.items():
        video_file = root / "videos" / video_path
        if not video_file.is_file():
            run.missing_videos += 1
            run.missing.update({q.id: f"video missing: {video_file}" for q in video_questions})
            bar.update(len(video_questions))
            continue
        first = video_questions[0]
        frames, timestamps = load_frames(video_file, first.duration, max_frames)
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
    bar.close()
    return run


# ----------------------------------------------------------------------------------------------------------- scoring


def _accuracy(preds: torch.Tensor, target: torch.Tensor) -> float | None:
    """Micro accuracy (fraction correct, float64) of class indices; ``None`` when there are none."""
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
        subtitles: interleave subtitles (model mode: used; predictions mode: recorded as stated).
        scoring: model mode: ``"generation"`` (parsed answer) or ``"likelihood"`` (most likely option letter).
        responses_out: model mode: where to write the responses JSONL (``None``: beside the results JSON as
            ``<stem>.responses.jsonl`` when :meth:`write` is called, else not written).
        progress: show a progress bar over questions (model mode).
    """

    name = "longvideobench"
    help = (
        "LongVideoBench val: score a predictions JSONL with the reference answer parser (needs only lvb_val.json), "
        "or ask a duplex bundle (--checkpoint) through a streaming session."
    )
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
    ) -> None:
        if (predictions is None) == (responder is None):
            raise InputError("predictions", "give exactly one of a predictions file or a responder")
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise InputError("frames", f"must be a positive integer, got {frames!r}")
        if subtitles is not None and not isinstance(subtitles, bool):
            raise InputError("subtitles", f"must be true or false, got {subtitles!r}")
        if responder is not None and (frames is None or subtitles is None):
            raise InputError("frames", "model mode needs frames and subtitles set")
        if scoring not in SCORING_MODES:
            raise InputError("scoring", f"must be one of {SCORING_MODES}, got {scoring!r}")
        self.data_root = Path(data_root)
        self.predictions = None if predictions is None else Path(predictions)
        self.responder = responder
        self.annotations = annotations
        self.frames = frames
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
            "subtitles": self.subtitles,
            "scoring": self.scoring if model_mode else "generation (parsed responses)",
            "answer_parser": "reference (strip answer phrases, first A-E); no letter counts as wrong",
            "skipped": None if model_mode else _PREDICTIONS_NOTE,
            "checkpoint": str(getattr(self.responder, "bundle_path", "")) or None,
            "responder": getattr(self.responder, "settings", None),
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
        parts = [
            "# LongVideoBench\n",
            f"frames: {settings['frames']}, subtitles: {settings['subtitles']}, scoring: {settings['scoring']}, "
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
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        s = argparse.SUPPRESS
        parser.add_argument("--data-root", default=s, metavar="DIR", help="extracted LongVideoBench folder (required)")
        parser.add_argument(
            "--predictions",
            default=s,
            metavar="FILE",
            help='JSONL of {"id": ..., "response": "..."} to score (predictions mode; exclusive with --checkpoint)',
        )
        parser.add_argument(
            "--checkpoint",
            default=s,
            metavar="BUNDLE",
            help="duplex inference bundle folder to ask (model mode; exclusive with --predictions)",
        )
        parser.add_argument("--annotations", default=s, metavar="NAME", help="annotation file in DIR (lvb_val.json)")
        parser.add_argument(
            "--frames",
            type=int,
            default=s,
            metavar="N",
            help=f"max frames per video (model mode: used, default {REFERENCE_FRAMES}; predictions: recorded)",
        )
        parser.add_argument(
            "--subtitles",
            action=argparse.BooleanOptionalAction,
            default=s,
            help="interleave subtitles (model mode: used, default on; predictions mode: recorded as stated)",
        )
        parser.add_argument(
            "--scoring",
            choices=SCORING_MODES,
            default=s,
            help="model mode: parse the generated answer (generation, default) or take the most likely letter",
        )
        parser.add_argument(
            "--responses-out",
            default=s,
            metavar="FILE",
            help="model mode: responses JSONL (rescorable with --predictions); default <out stem>.responses.jsonl",
        )
        parser.add_argument(
            "--max-answer-steps",
            type=int,
            default=s,
            metavar="K",
            help=f"model mode: most steps of a generated reply (default {DEFAULT_MAX_ANSWER_STEPS})",
        )
        parser.add_argument(
            "--max-gap-steps",
            type=int,
            default=s,
            metavar="K",
            help="model mode: run at most K empty steps between frames/subtitles, skip the rest (default: run all)",
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
        from eval.duplex_responder import DuplexResponder  # loads torch models: only in model mode

        responder = DuplexResponder(
            settings["checkpoint"],
            max_answer_steps=settings["max_answer_steps"] or DEFAULT_MAX_ANSWER_STEPS,
            max_gap_steps=settings["max_gap_steps"],
        )
        subtitles = settings["subtitles"]
        return cls(
            data_root=settings["data_root"],
            responder=responder,
            annotations=settings["annotations"],
            frames=REFERENCE_FRAMES if settings["frames"] is None else settings["frames"],
            subtitles=REFERENCE_SUBTITLES if subtitles is None else subtitles,
            scoring=settings["scoring"] or "generation",
            responses_out=settings["responses_out"],
        )
