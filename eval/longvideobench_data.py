"""LongVideoBench files and reference input protocol: annotations, subtitles, frames, prompt, predictions JSONL.

Data root layout (as published): ``lvb_val.json`` (a list of question records), ``videos/<video_path>``,
``subtitles/<subtitle_path>``. The evaluation task that uses these is :mod:`mmduplex.eval.longvideobench`; the
model-mode harness is :mod:`mmduplex.eval.longvideobench_model`.

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

Importing this module loads no torch or video decoder; :func:`load_frames` imports them when called.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmduplex.errors import AnnotationError, InputError, VideoError
from mmduplex.eval.answer_parser import LETTERS, choice_letter
from mmduplex.fileio import iter_jsonl, read_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DURATION_GROUPS: tuple[int, ...] = (15, 60, 600, 3600)
L1_CATEGORIES: tuple[str, ...] = ("S2E", "S2O", "S2A", "E2O", "O2E", "T2E", "T2O", "T2A")
"""The ``question_category`` codes of level L1-Perception."""
L2_CATEGORIES: tuple[str, ...] = ("E3E", "O3O", "SSS", "SOS", "SAA", "T3E", "T3O", "TOS", "TAA")
"""The ``question_category`` codes of level L2-Relation."""
QUESTION_CATEGORIES: tuple[str, ...] = (*L1_CATEGORIES, *L2_CATEGORIES)
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."


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


# ---------------------------------------------------------------------------------------------------------- loading


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_annotations(path: str | os.PathLike) -> list[Question]:
    """Read and validate ``lvb_val.json``; raises :class:`AnnotationError` naming the record at fault."""
    path = Path(path)
    records = read_json(path, AnnotationError, "annotation file")
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
    entries = read_json(path, AnnotationError, "subtitle file")
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


def frame_indices_at_fps(duration: float, native_fps: float, fps: float) -> tuple[list[int], list[float]]:
    """Frames every ``1 / fps`` s over ``duration`` s (model mode's default: the bundle's own rate), and their times.

    The frame nearest to each time ``k / fps`` (``k = 0 .. floor(duration * fps) - 1``, at least one frame).
    """
    if not fps > 0 or not native_fps > 0:
        raise InputError("fps", f"need fps > 0 and native_fps > 0, got {fps}, {native_fps}")
    count = max(1, math.floor(duration * fps + 1e-6))
    indices = [round(k * native_fps / fps) for k in range(count)]
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


def load_frames(
    path: str | os.PathLike, duration: float, max_frames: int | None, sample_fps: float | None = None
) -> tuple[torch.Tensor, list[float]]:
    """Decode the reference's frames by index (decord, as the reference does): ``[T, H, W, 3]`` uint8, times (s).

    ``max_frames`` gives the reference's sampling (:func:`sample_frame_indices`); with ``max_frames=None``, frames
    are taken every ``1 / sample_fps`` s instead (:func:`frame_indices_at_fps`, model mode at the bundle's rate).

    Where decord cannot decode the file (decord 0.6 fails on some frame sizes) the same indices are decoded with
    PyAV. Indices past the last frame (a record ``duration`` a little longer than the file) are clamped to it.

    Raises:
        VideoError: the file is missing, empty, truncated or undecodable.
    """
    import decord  # the reference protocol is index based; mmduplex.io.video samples by time
    import torch

    from mmduplex.io.video import probe_video

    info = probe_video(path)  # a clear VideoError for empty / truncated / non-video files
    try:
        reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
        fps, count = float(reader.get_avg_fps()), len(reader)
    except (RuntimeError, decord.DECORDError):
        reader, fps, count = None, info.native_fps, info.num_frames
    if max_frames is not None:
        indices, timestamps = sample_frame_indices(duration, fps, max_frames)
    elif sample_fps is not None:
        indices, timestamps = frame_indices_at_fps(duration, fps, sample_fps)
    else:
        raise InputError("max_frames", "give max_frames (reference sampling) or fps (a fixed rate)")
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
    import av
    import torch

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
    responses: dict[str, str] = {}
    for lineno, record in iter_jsonl(path, InputError, "predictions file"):
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
