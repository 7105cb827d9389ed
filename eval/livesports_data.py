"""LiveSports-3K (LiveCC's commentary benchmark, CC split): the event files and prediction files as published.

Event files, in a ``--data-root`` folder as the data set's page (``stdKonjac/LiveSports-3K``) publishes them:

- ``LiveSports-3K-CC.json``: a JSON list of event records (1,702 events);
- the older ``LiveSports-3K-CC-val.csv`` (202 events, with the human ASR) and ``LiveSports-3K-CC-test.csv`` (1,500
  events, ASR withheld).

Both carry ``video``, ``video_id``, ``event_id``, ``begin``, ``end`` (seconds in the source video), ``event_title``,
``preasr_text`` (what was said before the event) and ``event_asr_text`` (the human commentary during it), plus
columns this reader keeps in :attr:`Event.extra` (``url``, ``event_type``, ``class``, ``event_asr``, ``preasr``).

Predictions are LiveCC's JSONL, one ``{"video_id", "event_id", "begin", "end", "pred"}`` object per line (LiveCC's
repository publishes its own and GPT-4o / Gemini files in this form; extra keys such as ``gt_asr`` are ignored). An
event is keyed as LiveCC's judge keys it: ``f"{video_id}_{event_id}"``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmduplex.errors import AnnotationError, InputError
from mmduplex.fileio import iter_jsonl, read_json, read_text, write_text_atomic

JSON_FILE = "LiveSports-3K-CC.json"
CSV_FILES = ("LiveSports-3K-CC-val.csv", "LiveSports-3K-CC-test.csv")
VIDEO_DIR = "videos"
_FIELDS = ("video", "video_id", "event_id", "begin", "end", "event_title", "preasr_text", "event_asr_text")


@dataclass(frozen=True)
class Event:
    """One LiveSports-3K CC event: a span of a source video and the commentary said during it."""

    video: str
    """The video file name (under ``videos/``)."""
    video_id: str
    event_id: str
    """The event's id within its video, as text (``3``, never ``3.0``)."""
    begin: float
    """Event start in the source video (s)."""
    end: float
    """Event end in the source video (s)."""
    title: str
    preasr: str
    """What was said before the event (``preasr_text``)."""
    asr: str
    """The human commentary during the event (``event_asr_text``; empty where withheld)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """LiveCC's key of the event: ``f"{video_id}_{event_id}"``."""
        return event_key(self.video_id, self.event_id)


@dataclass(frozen=True)
class Prediction:
    """One line of a LiveCC prediction file."""

    video_id: str
    event_id: str
    begin: float | None
    end: float | None
    pred: str

    @property
    def key(self) -> str:
        """LiveCC's key of the event."""
        return event_key(self.video_id, self.event_id)


def event_key(video_id: str, event_id: Any) -> str:
    """``f"{video_id}_{event_id}"`` with the event id as an integer where it is one (``3``, ``"3"``, ``3.0``)."""
    return f"{video_id}_{_event_id(event_id)}"


def _event_id(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _seconds(value: Any, where: str, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(path, f"{where}: expected a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise AnnotationError(path, f"{where}: expected a number of seconds >= 0, got {value!r}")
    return number


def _text(value: Any) -> str:
    """A text column: missing, null and NaN (an empty CSV cell read by pandas) are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _event(record: Any, where: str, path: Path) -> Event:
    if not isinstance(record, Mapping):
        raise AnnotationError(path, f"{where}: expected an object with keys {', '.join(_FIELDS[:5])}, ...")
    for key in ("video_id", "event_id", "begin", "end"):
        if _text(record.get(key)) == "":
            raise AnnotationError(path, f"{where}: missing {key!r}")
    begin = _seconds(record["begin"], f"{where}: begin", path)
    end = _seconds(record["end"], f"{where}: end", path)
    if not end > begin:
        raise AnnotationError(path, f"{where}: end {end} is not after begin {begin}")
    video_id = _text(record["video_id"])
    return Event(
        video=_text(record.get("video")) or f"{video_id}.mp4",
        video_id=video_id,
        event_id=_event_id(record["event_id"]),
        begin=begin,
        end=end,
        title=_text(record.get("event_title")),
        preasr=_text(record.get("preasr_text")),
        asr=_text(record.get("event_asr_text")),
        extra={k: v for k, v in record.items() if k not in _FIELDS},
    )


def read_events_json(path: str | os.PathLike) -> list[Event]:
    """Events of ``LiveSports-3K-CC.json`` (a JSON list of records; a JSON Lines copy is read too)."""
    path = Path(path)
    try:
        records = read_json(path, AnnotationError, "event file")
    except AnnotationError:
        if not read_text(path, AnnotationError, "event file").lstrip().startswith("{"):
            raise
        return [_event(record, f"line {n}", path) for n, record in iter_jsonl(path, AnnotationError)]  # JSON Lines
    if not isinstance(records, list):
        raise AnnotationError(path, f"expected a JSON list of event records, got {type(records).__name__}")
    return [_event(record, f"record {i}", path) for i, record in enumerate(records)]


def read_events_csv(path: str | os.PathLike) -> list[Event]:
    """Events of a ``LiveSports-3K-CC-{val,test}.csv`` file (header row; row numbers in errors count it)."""
    path = Path(path)
    rows = csv.DictReader(read_text(path, AnnotationError, "event file").splitlines(keepends=True))
    missing = [key for key in ("video_id", "event_id", "begin", "end") if key not in (rows.fieldnames or [])]
    if missing:
        raise AnnotationError(path, f"line 1: the header lacks column(s) {', '.join(missing)}")
    return [_event(row, f"line {rows.line_num}", path) for row in rows]


def load_events(data_root: str | os.PathLike) -> tuple[list[Event], list[Path]]:
    """The CC events in ``data_root``: ``LiveSports-3K-CC.json`` if present, else the CSV files present.

    Returns:
        ``(events, files read)``.

    Raises:
        AnnotationError: no event file in the folder, a malformed record, or an event listed twice.
    """
    root = Path(data_root)
    files = (
        [root / JSON_FILE]
        if (root / JSON_FILE).is_file()
        else [p for p in map(root.joinpath, CSV_FILES) if p.is_file()]
    )
    if not files:
        raise AnnotationError(root, f"no LiveSports-3K CC event file: expected {JSON_FILE} or {' / '.join(CSV_FILES)}")
    events: list[Event] = []
    seen: dict[str, Path] = {}
    for path in files:
        for event in read_events_json(path) if path.suffix == ".json" else read_events_csv(path):
            if event.key in seen:
                raise AnnotationError(path, f"event {event.key!r} listed twice (also in {seen[event.key].name})")
            seen[event.key] = path
            events.append(event)
    return events, files


def load_predictions(path: str | os.PathLike) -> dict[str, Prediction]:
    """A LiveCC prediction JSONL as ``key -> Prediction``.

    Raises:
        InputError: the file is missing or empty, a line is not JSON or lacks ``video_id`` / ``event_id`` / a string
            ``pred``, or an event appears twice (the message names the file and line).
    """
    path = Path(path)
    predictions: dict[str, Prediction] = {}
    for number, record in iter_jsonl(path, InputError, "predictions file"):
        where = f"line {number}"
        if not isinstance(record, dict) or _text(record.get("video_id")) == "" or _text(record.get("event_id")) == "":
            raise InputError(path, f'{where}: expected {{"video_id", "event_id", "begin", "end", "pred"}}')
        if not isinstance(record.get("pred"), str):
            raise InputError(path, f"{where}: 'pred' must be a string, got {record.get('pred')!r}")
        span = [record.get(key) for key in ("begin", "end")]
        if any(value is not None and not isinstance(value, (int, float)) for value in span):
            raise InputError(path, f"{where}: 'begin' / 'end' must be numbers, got {span}")
        prediction = Prediction(
            _text(record["video_id"]),
            _event_id(record["event_id"]),
            *(None if value is None else float(value) for value in span),
            record["pred"],
        )
        if prediction.key in predictions:
            raise InputError(path, f"{where}: second prediction for event {prediction.key!r}")
        predictions[prediction.key] = prediction
    if not predictions:
        raise InputError(path, "no predictions in the file")
    return predictions


def write_predictions(predictions: Iterable[Prediction], path: str | os.PathLike) -> Path:
    """Write LiveCC's prediction JSONL (integer event ids where they are integers), atomically."""
    rows = []
    for p in predictions:
        event_id: int | str = int(p.event_id) if p.event_id.isdigit() else p.event_id
        rows.append(
            json.dumps({"video_id": p.video_id, "event_id": event_id, "begin": p.begin, "end": p.end, "pred": p.pred})
        )
    return write_text_atomic(path, "".join(row + "\n" for row in rows))
