"""Timed transcripts: the ``Word`` / ``TimedClip`` types and the LiveCC and moshi-finetune loaders.

Both public formats carry words with start/end times (FORMATS.md). Loading validates every record and raises one
:class:`~mmduplex.errors.AnnotationError` naming the file and the line (or alignment index) at fault.

Validation rules (the same for both formats):

- times are finite numbers, ``start >= 0`` and ``end >= start``; the word text is a non-empty string;
- start times are non-decreasing (per speaker for moshi alignments, whose speakers may talk over each other);
- a word may overlap the previous one by at most ``OVERLAP_TOLERANCE_S``: WhisperX word ends often run a little into
  the next word, so such small overlaps are clipped (the earlier word ends where the next starts); larger overlaps
  mean broken timestamps and are an error;
- words must lie inside the clip (``[video_start, video_end]`` for LiveCC, ``[0, duration]`` for a moshi manifest),
  up to ``TIME_EPSILON_S`` of rounding.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmduplex.errors import AnnotationError

OVERLAP_TOLERANCE_S = 0.5
"""Largest overlap (s) between consecutive words that is clipped instead of rejected."""

TIME_EPSILON_S = 1e-3
"""Rounding slack (s) allowed when checking that words lie inside their clip."""


@dataclass(frozen=True)
class Word:
    """One timed word; seconds relative to the clip start once loaded into a :class:`TimedClip`."""

    start: float
    end: float
    text: str


@dataclass
class TimedClip:
    """One LiveCC line or one moshi media file: a (part of a) video with its timed words.

    Attributes:
        video: the media path, resolved against the data root (``None`` for a bare alignment JSON).
        start_s: clip start in the media's time (s); word times are relative to it.
        end_s: clip end in the media's time (s), ``None`` when unknown.
        words: the words, sorted by start time, times relative to ``start_s``.
        meta: everything else the record carries (title, previous, query, category, speakers, ...).
    """

    video: str | None
    start_s: float
    end_s: float | None
    words: list[Word]
    meta: dict[str, Any] = field(default_factory=dict)


def livecc_record(
    video: str, words: list[Word], video_start: float, video_end: float, title: str = "", previous: str = ""
) -> list[dict[str, Any]]:
    """Build one LiveCC JSONL record (a two-turn conversation) from words given in video time."""
    stream = [[w.start, w.end, w.text] for w in words]
    return [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video, "video_start": video_start, "video_end": video_end},
                {"type": "text", "text": "", "previous": previous, "title": title},
            ],
        },
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]},
    ]


def _number(value: Any, where: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnnotationError(path, f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _check_words(
    raw: list[tuple[float, float, str]],
    where: list[str],
    path: Path,
    lo: float,
    hi: float | None,
) -> list[Word]:
    """Validate words (already typed, in source time), clip small overlaps, return them in order."""
    words: list[Word] = []
    for i, ((start, end, text), at) in enumerate(zip(raw, where, strict=True)):
        if not text.strip():
            raise AnnotationError(path, f"{at}: empty word text")
        if start < 0 or end < 0:
            raise AnnotationError(path, f"{at}: negative time [{start}, {end}] for {text!r}")
        if end < start:
            raise AnnotationError(path, f"{at}: end {end} < start {start} for {text!r}")
        if start < lo - TIME_EPSILON_S or (hi is not None and end > hi + TIME_EPSILON_S):
            span = f"[{lo}, {hi}]" if hi is not None else f"[{lo}, ...)"
            raise AnnotationError(path, f"{at}: word {text!r} at [{start}, {end}] is out of range {span}")
        start = max(start, lo) if hi is None else min(max(start, lo), hi)  # clamp the rounding slack away
        end = max(end, start) if hi is None else min(max(end, start), hi)
        if i > 0:
            prev = words[-1]
            if start < prev.start:
                raise AnnotationError(path, f"{at}: start times not sorted ({text!r} at {start} after {prev.start})")
            overlap = prev.end - start
            if overlap > OVERLAP_TOLERANCE_S:
                raise AnnotationError(
                    path,
                    f"{at}: {text!r} starts at {start}, {overlap:.3f} s before the previous word {prev.text!r} ends "
                    f"(at most {OVERLAP_TOLERANCE_S} s of overlap is allowed)",
                )
            if overlap > 0:
                words[-1] = Word(prev.start, start, prev.text)
        words.append(Word(start, end, text))
    return words


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed JSON ({exc})") from exc


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line; raises on a malformed line or an empty file."""
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise AnnotationError(path, f"line {lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    if not records:
        raise AnnotationError(path, "empty file: no records")
    return records


def _resolve(media: str, base: Path) -> str:
    if "://" in media or os.path.isabs(media):
        return media
    return os.fspath(base / media)


def _content_items(turn: Any, role: str, at: str, path: Path) -> list[dict]:
    content = turn.get("content")
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        raise AnnotationError(path, f"{at}: {role} turn 'content' must be a list of objects")
    return content


def _parse_livecc(record: Any, at: str, path: Path, base: Path) -> TimedClip:
    if not isinstance(record, list) or not all(isinstance(t, dict) for t in record):
        raise AnnotationError(path, f"{at}: expected a list of conversation turns (objects with 'role', 'content')")
    turns = {t.get("role"): t for t in reversed(record)}  # the first turn of each role wins
    for role in ("user", "assistant"):
        if role not in turns:
            raise AnnotationError(path, f"{at}: missing the {role!r} turn")
    user = _content_items(turns["user"], "user", at, path)
    videos = [c for c in user if c.get("type") == "video"]
    if not videos:
        raise AnnotationError(path, f"{at}: the user turn has no {{'type': 'video'}} item")
    item = videos[0]
    if not isinstance(item.get("video"), str) or not item["video"]:
        raise AnnotationError(path, f"{at}: missing key 'video' (a path string) in the video item")
    start_s = _number(item.get("video_start", 0.0), f"{at}: video_start", path)
    end_s = None if item.get("video_end") is None else _number(item["video_end"], f"{at}: video_end", path)
    if start_s < 0 or (end_s is not None and end_s < start_s):
        raise AnnotationError(path, f"{at}: bad clip range video_start={start_s}, video_end={end_s}")
    meta: dict[str, Any] = {}
    for text_item in (c for c in user if c.get("type") == "text"):
        meta.update({key: value for key, value in text_item.items() if key != "type"})
        if text_item.get("text") and "query" not in text_item:
            meta["query"] = text_item["text"]  # a non-empty user prompt is the clip's query
    for key, value in turns["user"].items():
        if key not in ("role", "content"):
            meta[key] = value
    streams = [c for c in _content_items(turns["assistant"], "assistant", at, path) if c.get("type") == "text_stream"]
    if not streams:
        raise AnnotationError(path, f"{at}: the assistant turn has no {{'type': 'text_stream'}} item")
    stream = streams[0].get("text_stream")
    if not isinstance(stream, list):
        raise AnnotationError(path, f"{at}: missing key 'text_stream' (a list of [start, end, word])")
    raw, where = [], []
    for k, entry in enumerate(stream):
        w_at = f"{at}: text_stream[{k}]"
        if not isinstance(entry, list) or len(entry) != 3:
            raise AnnotationError(path, f"{w_at}: expected [start, end, word], got {entry!r}")
        if not isinstance(entry[2], str):
            raise AnnotationError(path, f"{w_at}: word must be a string, got {entry[2]!r}")
        raw.append((_number(entry[0], f"{w_at} start", path), _number(entry[1], f"{w_at} end", path), entry[2]))
        where.append(w_at)
    words = _check_words(raw, where, path, start_s, end_s)
    rel = [Word(w.start - start_s, w.end - start_s, w.text) for w in words]
    return TimedClip(video=_resolve(item["video"], base), start_s=start_s, end_s=end_s, words=rel, meta=meta)


def load_livecc_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[TimedClip]:
    """Load a LiveCC-style JSONL (one clip per line) with validated, clip-relative words.

    Args:
        path: the JSONL file.
        root: folder the relative video paths are resolved against (default: the JSONL's folder).

    Returns:
        One :class:`TimedClip` per non-blank line; ``meta`` holds the user text item's keys (``title``,
        ``previous``, ``query``/``text``, ``category``, ``preasr``, ...) and the line number as ``line``.

    Raises:
        AnnotationError: the file is missing or empty, or a line is malformed (the message names the line).
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    clips = []
    for lineno, record in _read_jsonl(path):
        clip = _parse_livecc(record, f"line {lineno}", path, base)
        clip.meta["line"] = lineno
        clips.append(clip)
    return clips


def _parse_alignments(path: Path, end_s: float | None, speaker: str | None) -> tuple[list[Word], list[str | None]]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("alignments"), list):
        raise AnnotationError(path, "expected an object with key 'alignments': a list of [word, [start, end], speaker]")
    by_speaker: dict[str | None, tuple[list, list]] = {}
    for k, entry in enumerate(data["alignments"]):
        at = f"alignments[{k}]"
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            raise AnnotationError(path, f"{at}: expected [word, [start, end], speaker], got {entry!r}")
        text, span = entry[0], entry[1]
        who = entry[2] if len(entry) == 3 else None
        if not isinstance(text, str):
            raise AnnotationError(path, f"{at}: word must be a string, got {text!r}")
        if not isinstance(span, list) or len(span) != 2:
            raise AnnotationError(path, f"{at}: expected [start, end], got {span!r}")
        if who is not None and not isinstance(who, str):
            raise AnnotationError(path, f"{at}: speaker must be a string, got {who!r}")
        if speaker is not None and who != speaker:
            continue
        raw, where = by_speaker.setdefault(who, ([], []))
        raw.append((_number(span[0], f"{at} start", path), _number(span[1], f"{at} end", path), text))
        where.append(at)
    tagged = [
        (word, who) for who, (raw, where) in by_speaker.items() for word in _check_words(raw, where, path, 0.0, end_s)
    ]
    tagged.sort(key=lambda item: item[0].start)  # stable: keeps each speaker's order
    return [w for w, _ in tagged], [who for _, who in tagged]


def load_moshi_alignments(path: str | os.PathLike, speaker: str | None = None) -> list[TimedClip]:
    """Load moshi-finetune style word alignments.

    ``path`` is either a manifest JSONL (``{"path": "a.wav", "duration": 24.52}`` per line, media paths relative to
    the manifest's folder, each media file with its alignments in the JSON beside it: ``a.json``) or a single
    alignments JSON ``{"alignments": [[word, [start, end], speaker], ...]}``.

    Args:
        path: manifest JSONL or alignments JSON.
        speaker: keep only this speaker's words (e.g. ``"SPEAKER_MAIN"``); ``None`` keeps all.

    Returns:
        One :class:`TimedClip` per media file; ``meta["speakers"]`` is the speaker of each word (parallel to
        ``words``) and ``meta["alignments"]`` the alignments file.

    Raises:
        AnnotationError: a file is missing or malformed (the message names the file and the line / entry).
    """
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        words, speakers = _parse_alignments(path, None, speaker)
        return [TimedClip(None, 0.0, None, words, {"speakers": speakers, "alignments": os.fspath(path)})]
    clips = []
    for lineno, record in _read_jsonl(path):
        at = f"line {lineno}"
        if not isinstance(record, dict):
            raise AnnotationError(path, f"{at}: expected an object with keys 'path' and 'duration'")
        media = record.get("path")
        if not isinstance(media, str) or not media:
            raise AnnotationError(path, f"{at}: missing key 'path' (a media path string)")
        if "duration" not in record:
            raise AnnotationError(path, f"{at}: missing key 'duration'")
        duration = _number(record["duration"], f"{at}: duration", path)
        if duration < 0:
            raise AnnotationError(path, f"{at}: negative duration {duration}")
        media_path = Path(_resolve(media, path.parent))
        align_path = media_path.with_suffix(".json")
        words, speakers = _parse_alignments(align_path, duration, speaker)
        meta = {"speakers": speakers, "alignments": os.fspath(align_path), "line": lineno}
        meta.update({k: v for k, v in record.items() if k not in ("path", "duration")})
        clips.append(TimedClip(os.fspath(media_path), 0.0, duration, words, meta))
    return clips
