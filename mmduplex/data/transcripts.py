"""Timed transcripts: the ``Word`` / ``TimedClip`` types and the LiveCC and moshi-finetune loaders.

Both public formats carry words with start/end times. A LiveCC line is a two-turn conversation: the user turn holds
``{"type": "video", "video", "video_start", "video_end"}`` and a text item (``title``, ``previous``, ...), the
assistant turn ``{"type": "text_stream", "text_stream": [[start_s, end_s, word], ...]}`` in video time. A moshi-finetune
manifest lists ``{"path", "duration"}`` per line, each media file with ``{"alignments": [[word, [start_s, end_s],
speaker], ...]}`` beside it. Loading validates every record and raises one :class:`~mmduplex.errors.AnnotationError`
naming the file and the line (or alignment index) at fault.

LiveCC files are read as LiveCC publishes them: JSONL streamed one line at a time (:func:`iter_livecc_jsonl`; a
5-million-line file never sits in memory), whose last line may be the *seek line* written by LiveCC's
``data/production/to_conversation.py`` -- a JSON list of the byte offset of every record, with no trailing newline.
That line is recognised and skipped by the loaders; :class:`mmduplex.data.livecc_index.LiveCCIndex` uses it to read
record ``i`` by seeking (as LiveCC's own dataset does).

Words the reference projects themselves drop are dropped here too, with one warning that counts them:

- LiveCC: empty words (its word splitter yields them for a doubled or trailing space; its phrase builder strips them);
- moshi-finetune: words whose end is not after their start (``end <= start``; its interleaver keeps only words with
  duration), and empty words (they tokenize to nothing).

Validation rules for the words kept (the same for both formats):

- times are finite numbers, ``start >= 0`` and ``end >= start``; the word text is a string;
- start times are non-decreasing (per speaker for moshi alignments, whose speakers may talk over each other);
- a word may overlap the previous one by at most ``OVERLAP_TOLERANCE_S``: WhisperX word ends often run a little into
  the next word, so such small overlaps are clipped (the earlier word ends where the next starts); larger overlaps
  mean broken timestamps and are an error;
- questions a user asks mid-clip (the user text item's ``"questions": [{"time", "text"}]``, times in video time,
  kept in ``TimedClip.meta["questions"]`` as they are) need a finite ``time >= video_start`` and a non-empty text;
- words must lie inside the clip (``[video_start, video_end]`` for LiveCC, ``[0, duration]`` for a moshi manifest),
  up to ``TIME_EPSILON_S`` of rounding.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmduplex.errors import AnnotationError
from mmduplex.fileio import iter_jsonl, read_json, read_last_line

log = logging.getLogger(__name__)

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
    video: str,
    words: list[Word],
    video_start: float,
    video_end: float,
    title: str = "",
    previous: str = "",
    questions: list[tuple[float, str]] | None = None,
) -> list[dict[str, Any]]:
    """Build one LiveCC JSONL record (a two-turn conversation) from words given in video time.

    ``questions`` (``(time s in video time, text)`` pairs, questions a user asks mid-clip) go in the user text item
    under ``"questions": [{"time", "text"}, ...]``; the key is left out when there are none.
    """
    stream = [[w.start, w.end, w.text] for w in words]
    text_item: dict[str, Any] = {"type": "text", "text": "", "previous": previous, "title": title}
    if questions:
        text_item["questions"] = [{"time": float(t), "text": str(text)} for t, text in questions]
    return [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video, "video_start": video_start, "video_end": video_end},
                text_item,
            ],
        },
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]},
    ]


@dataclass
class _Dropped:
    """Words dropped while loading one file (or one manifest), reported in one warning."""

    reason: str
    count: int = 0
    first: str = ""

    def add(self, at: str) -> None:
        self.count += 1
        self.first = self.first or at

    def warn(self, path: Path) -> None:
        if self.count:
            log.warning("%s: dropped %d %s (first at %s)", path, self.count, self.reason, self.first)


def empty_words() -> _Dropped:
    return _Dropped("empty words (LiveCC's word splitter yields them for doubled or trailing spaces)")


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


def _resolve(media: str, base: Path) -> str:
    if "://" in media or os.path.isabs(media):
        return media
    return os.fspath(base / media)


def _content_items(turn: Any, role: str, at: str, path: Path) -> list[dict]:
    content = turn.get("content")
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        raise AnnotationError(path, f"{at}: {role} turn 'content' must be a list of objects")
    return content


def _check_questions(questions: Any, at: str, path: Path, start_s: float) -> None:
    """Questions asked mid-clip: a list of ``{"time": s in video time >= video_start, "text": non-empty}``."""
    if not isinstance(questions, list):
        raise AnnotationError(path, f"{at}: 'questions' must be a list of {{'time', 'text'}} objects")
    for k, question in enumerate(questions):
        q_at = f"{at}: questions[{k}]"
        if not isinstance(question, dict):
            raise AnnotationError(path, f"{q_at}: expected an object with 'time' and 'text', got {question!r}")
        time = _number(question.get("time"), f"{q_at} time", path)
        if time < start_s - TIME_EPSILON_S:
            raise AnnotationError(path, f"{q_at}: time {time} is before video_start {start_s}")
        if not isinstance(question.get("text"), str) or not question["text"].strip():
            raise AnnotationError(path, f"{q_at}: 'text' must be a non-empty string, got {question.get('text')!r}")


def parse_livecc(record: Any, at: str, path: Path, base: Path, empty: _Dropped) -> TimedClip:
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
    if "questions" in meta:
        _check_questions(meta["questions"], at, path, start_s)
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
        if not entry[2].strip():
            empty.add(w_at)
            continue
        raw.append((_number(entry[0], f"{w_at} start", path), _number(entry[1], f"{w_at} end", path), entry[2]))
        where.append(w_at)
    words = _check_words(raw, where, path, start_s, end_s)
    rel = [Word(w.start - start_s, w.end - start_s, w.text) for w in words]
    return TimedClip(video=_resolve(item["video"], base), start_s=start_s, end_s=end_s, words=rel, meta=meta)


_SEEK_LINE = re.compile(rb"\s*\[\s*(?:\d+\s*(?:,\s*\d+\s*)*)?\]\s*")


def is_seek_line(value: Any) -> bool:
    """LiveCC's last line, parsed: a JSON list of integers (byte offsets); a conversation is a list of objects."""
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def seek_line_count(line: bytes) -> int | None:
    """The number of offsets if the raw ``line`` is a seek line (a JSON list of integers), else ``None``.

    Checked on the bytes, without building the list: the seek line of a 5-million-record file is ~50 MB.
    """
    if _SEEK_LINE.fullmatch(line) is None:
        return None
    return line.count(b",") + 1 if any(c in b"0123456789" for c in line) else 0


def iter_livecc_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[TimedClip]:
    """Stream a LiveCC-style JSONL one clip at a time (validated, clip-relative words).

    The file is read line by line; the seek line (a list of integers) is accepted as the last line only, and is
    recognised from the end of the file without being parsed. Empty words are dropped and counted in one warning
    once the file is exhausted.

    Args:
        path: the JSONL file.
        root: folder the relative video paths are resolved against (default: the JSONL's folder).

    Yields:
        One :class:`TimedClip` per record line, as :func:`load_livecc_jsonl` returns them.

    Raises:
        AnnotationError: the file is missing or has no records, a line is malformed (the message names the line),
            or a list of integers stands anywhere but on the last line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    empty = empty_words()
    seek_start, last = read_last_line(path, AnnotationError)
    offsets = seek_line_count(last)
    records = 0
    for lineno, record in iter_jsonl(path, AnnotationError, end=None if offsets is None else seek_start):
        if is_seek_line(record):
            raise AnnotationError(path, f"line {lineno}: a list of integers (LiveCC's seek line) may only be last")
        clip = parse_livecc(record, f"line {lineno}", path, base, empty)
        clip.meta["line"] = lineno
        records += 1
        yield clip
    if not records:
        raise AnnotationError(path, "empty file: no records")
    if offsets is not None and offsets != records:
        log.warning(
            "%s: the seek line lists %d offsets for %d records; seeking by it would be wrong", path, offsets, records
        )
    empty.warn(path)


def load_livecc_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[TimedClip]:
    """Load a LiveCC-style JSONL (one clip per line) with validated, clip-relative words.

    Reads the published files as they are (a last seek line is skipped, empty words are dropped with a warning);
    for a file too large to hold, stream it with :func:`iter_livecc_jsonl` or index it with
    :class:`mmduplex.data.livecc_index.LiveCCIndex`.

    Args:
        path: the JSONL file.
        root: folder the relative video paths are resolved against (default: the JSONL's folder).

    Returns:
        One :class:`TimedClip` per record line; ``meta`` holds the user text item's keys (``title``,
        ``previous``, ``query``/``text``, ``category``, ``preasr``, ...) and the line number as ``line``.

    Raises:
        AnnotationError: the file is missing or empty, or a line is malformed (the message names the line).
    """
    return list(iter_livecc_jsonl(path, root))


def _parse_alignments(
    path: Path, end_s: float | None, speaker: str | None, dropped: _Dropped
) -> tuple[list[Word], list[str | None]]:
    data = read_json(path, AnnotationError)
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
        start, end = _number(span[0], f"{at} start", path), _number(span[1], f"{at} end", path)
        if not end > start or not text.strip():
            dropped.add(f"{path.name} {at}")
            continue
        raw, where = by_speaker.setdefault(who, ([], []))
        raw.append((start, end, text))
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

    Words with ``end <= start`` or no text are dropped (as moshi-finetune does) and counted in one warning; the
    rest of the file is kept.

    Returns:
        One :class:`TimedClip` per media file; ``meta["speakers"]`` is the speaker of each word (parallel to
        ``words``) and ``meta["alignments"]`` the alignments file.

    Raises:
        AnnotationError: a file is missing or malformed (the message names the file and the line / entry).
    """
    path = Path(path)
    dropped = _Dropped("words with end <= start or no text (moshi-finetune drops them too)")
    if path.suffix.lower() != ".jsonl":
        words, speakers = _parse_alignments(path, None, speaker, dropped)
        dropped.warn(path)
        return [TimedClip(None, 0.0, None, words, {"speakers": speakers, "alignments": os.fspath(path)})]
    clips = []
    for lineno, record in iter_jsonl(path, AnnotationError):
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
        words, speakers = _parse_alignments(align_path, duration, speaker, dropped)
        meta = {"speakers": speakers, "alignments": os.fspath(align_path), "line": lineno}
        meta.update({k: v for k, v in record.items() if k not in ("path", "duration")})
        clips.append(TimedClip(os.fspath(media_path), 0.0, duration, words, meta))
    if not clips:
        raise AnnotationError(path, "empty file: no records")
    dropped.warn(path)
    return clips
