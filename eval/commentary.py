"""Live-commentary evaluation: a model's timed lines against a timed transcript and/or the synthetic set's events.

Inputs are the model's lines ``(start_s, end_s, text)`` in video time, as written by ``mmduplex stream`` (WebVTT,
SRT or JSONL ``{"start", "end", "text"}``, read by :func:`load_lines` with ``mmduplex.io.outputs``' strict readers).
Words are lower-cased alphanumeric tokens, and a line's words are spread evenly over it (word ``i`` of ``n`` at
``start + i * (end - start) / n``).

Against the synthetic set's **events** (:func:`event_metrics`, the figures ``mmduplex demo`` reports):

- ``event_accuracy``: share of events whose colour, shape and action words all occur among the model's words timed
  in ``[t, t + tolerance_s]``; ``median_latency_s`` / ``p90_latency_s``: over described events, the time of the
  first word in that window naming the event's colour, shape or action, minus ``t``;
- ``event_precision``: share of the model's lines that describe a real event (the line names its colour, shape and
  action and starts in ``[t, t + tolerance_s]``); a model that says nothing has precision 0 (not undefined), so
  silence scores badly on both figures; ``early_lines``: lines describing no event but naming one that happens
  within ``tolerance_s`` after the line starts (said before it happened).

Against a **transcript** (LiveCC JSONL; :func:`transcript_metrics`):

- content: ROUGE-L F1 (mean over windows) and corpus BLEU-4 over consecutive ``window_s`` windows of the timeline
  (torchmetrics), each window's model words against its reference words; windows where both are silent are skipped,
  windows where only one side talks count (0), so talking over silence and silence over talk are both penalised;
- timing: each reference word, in time order, is matched to the nearest unused equal model word within
  ``tolerance_s`` of it (each model word matches at most once; ties go to the earlier word); ``word_recall`` =
  matched / reference words, ``word_precision`` = matched / model words, latency = model time - reference time
  (median, p90), ``early_words`` = matches said before the reference time;
- ``talk_ratio``: model speaking time (union of its lines) / reference speaking time (union of its words).

Aggregates over videos pool everything (micro): events, lines, windows, words and speaking time.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mmduplex.errors import AnnotationError, InputError
from mmduplex.eval.base import EvalTask, markdown_table
from mmduplex.io.outputs import CommentaryLine, read_commentary

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

log = logging.getLogger(__name__)

LINE_SUFFIXES = (".vtt", ".srt", ".jsonl")
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_EPS = 1e-9


Line = CommentaryLine
"""One line of the model's commentary, ``(start, end, text)`` in video time (s): ``mmduplex.io.outputs``' type."""


class EventLike(Protocol):
    """A described event (``mmduplex.data.synthetic.Event``)."""

    t: float
    colour: str
    shape: str
    action: str


class WordLike(Protocol):
    """A timed reference word (``mmduplex.data.transcripts.Word``), in video time."""

    start: float
    end: float
    text: str


# ------------------------------------------------------------------------------------------------------ line files


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters/digits, inner apostrophes kept)."""
    return _TOKEN.findall(text.lower())


def load_lines(path: str | os.PathLike) -> list[Line]:
    """Read the model's timed lines from a ``.vtt``, ``.srt`` or ``.jsonl`` file (the project's strict readers)."""
    return sorted(read_commentary(path), key=lambda line: line.start)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc})") from exc


def as_lines(lines: Iterable[Line | tuple[float, float, str]]) -> list[Line]:
    """Accept :class:`Line` objects (or anything with ``start``, ``end``, ``text``) or ``(start, end, text)``."""
    return [
        Line(float(x.start), float(x.end), str(x.text)) if hasattr(x, "text") else Line(float(x[0]), float(x[1]), x[2])
        for x in lines
    ]


def timed_words(lines: Iterable[Line | tuple[float, float, str]]) -> list[tuple[float, str]]:
    """``(time, token)`` for every word of every line, spread evenly over the line, sorted by time."""
    words = []
    for line in as_lines(lines):
        toks = tokens(line.text)
        words += [(line.start + i * (line.end - line.start) / len(toks), tok) for i, tok in enumerate(toks)]
    return sorted(words, key=lambda w: w[0])


def _percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    median, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return float(median), float(p90)


def _union_s(spans: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(spans):
        if cur_end is None or start > cur_end:
            total += 0.0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (0.0 if cur_end is None else cur_end - cur_start)


# ---------------------------------------------------------------------------------------------------------- events


def _event_words(event: EventLike) -> set[str]:
    return {*tokens(event.colour), *tokens(event.shape), *tokens(event.action)}


@dataclass
class EventTally:
    """Raw counts behind the event figures; tallies add up across videos (micro pooling)."""

    events: int = 0
    described: int = 0
    latencies: list[float] = field(default_factory=list)
    lines: int = 0
    precise_lines: int = 0
    early_lines: int = 0

    def __iadd__(self, other: EventTally) -> EventTally:
        self.events += other.events
        self.described += other.described
        self.latencies += other.latencies
        self.lines += other.lines
        self.precise_lines += other.precise_lines
        self.early_lines += other.early_lines
        return self

    def metrics(self) -> dict[str, Any]:
        """The figures (see the module docstring); accuracy is ``None`` without events."""
        median, p90 = _percentiles(self.latencies)
        return {
            "event_accuracy": self.described / self.events if self.events else None,
            "event_precision": self.precise_lines / self.lines if self.lines else 0.0,
            "median_latency_s": median,
            "p90_latency_s": p90,
            "events": self.events,
            "described": self.described,
            "lines": self.lines,
            "precise_lines": self.precise_lines,
            "early_lines": self.early_lines,
        }


@dataclass
class EventMatch:
    """One video's lines matched against its events, item by item (what :func:`tally_events` counts)."""

    latencies: list[float | None]
    """Per event: the latency of its first matching word when described, else ``None`` (missed)."""
    line_kinds: list[str]
    """Per line: ``"hit"`` (describes an event, said in its window), ``"early"`` (names an event said before it
    happened) or ``"invented"`` (describes nothing that happens)."""


def match_events(
    lines: Iterable[Line | tuple[float, float, str]], events: Sequence[EventLike], tolerance_s: float = 3.0
) -> EventMatch:
    """Match one video's lines against its events: which events are described (and how late), and which lines
    describe a real event (the rules of :func:`event_metrics`)."""
    lines = as_lines(lines)
    words = timed_words(lines)
    latencies: list[float | None] = []
    for event in events:
        wanted = _event_words(event)
        window = [(t, w) for t, w in words if event.t - _EPS <= t <= event.t + tolerance_s + _EPS]
        described = wanted <= {w for _, w in window}
        latencies.append(min(t for t, w in window if w in wanted) - event.t if described else None)
    kinds = []
    for line in lines:
        said = set(tokens(line.text))
        named = [e for e in events if _event_words(e) <= said]
        if any(e.t - _EPS <= line.start <= e.t + tolerance_s + _EPS for e in named):
            kinds.append("hit")
        elif any(line.start < e.t <= line.start + tolerance_s + _EPS for e in named):
            kinds.append("early")
        else:
            kinds.append("invented")
    return EventMatch(latencies, kinds)


def tally_events(
    lines: Iterable[Line | tuple[float, float, str]], events: Sequence[EventLike], tolerance_s: float = 3.0
) -> EventTally:
    """Match one video's lines against its events (see :func:`event_metrics`)."""
    match = match_events(lines, events, tolerance_s)
    described = [latency for latency in match.latencies if latency is not None]
    return EventTally(
        events=len(events),
        described=len(described),
        latencies=described,
        lines=len(match.line_kinds),
        precise_lines=match.line_kinds.count("hit"),
        early_lines=match.line_kinds.count("early"),
    )


def event_metrics(
    lines: Iterable[Line | tuple[float, float, str]], events: Sequence[EventLike], tolerance_s: float = 3.0
) -> dict[str, Any]:
    """Event accuracy / precision / latency of one video's commentary (keys in :meth:`EventTally.metrics`)."""
    return tally_events(lines, events, tolerance_s).metrics()


def aggregate_event_metrics(
    videos: Iterable[tuple[Iterable[Line | tuple[float, float, str]], Sequence[EventLike]]], tolerance_s: float = 3.0
) -> dict[str, Any]:
    """Event figures pooled over videos (micro): ``videos`` yields ``(lines, events)`` per video."""
    total = EventTally()
    for lines, events in videos:
        total += tally_events(lines, events, tolerance_s)
    return total.metrics()


def speaking_s(spans: Iterable[tuple[float, float]]) -> float:
    """Speaking time: the length of the union of ``(start, end)`` spans (a model's cues, a reference's words)."""
    return _union_s(spans)


# ------------------------------------------------------------------------------------------------------ transcripts


@dataclass
class TranscriptTally:
    """Raw material behind the transcript figures; tallies add up across videos (micro pooling)."""

    window_preds: list[str] = field(default_factory=list)
    window_refs: list[str] = field(default_factory=list)
    reference_words: int = 0
    model_words: int = 0
    latencies: list[float] = field(default_factory=list)
    model_speaking_s: float = 0.0
    reference_speaking_s: float = 0.0

    def __iadd__(self, other: TranscriptTally) -> TranscriptTally:
        for name in ("window_preds", "window_refs", "latencies"):
            getattr(self, name).extend(getattr(other, name))
        self.reference_words += other.reference_words
        self.model_words += other.model_words
        self.model_speaking_s += other.model_speaking_s
        self.reference_speaking_s += other.reference_speaking_s
        return self

    def metrics(self) -> dict[str, Any]:
        """The figures (see the module docstring)."""
        from torchmetrics.text.bleu import BLEUScore  # slow imports, only when scoring
        from torchmetrics.text.rouge import ROUGEScore

        rouge = bleu = None
        if self.window_preds:
            rouge_metric = ROUGEScore(rouge_keys=("rougeL",))  # rougeLsum / stemming would need nltk data
            rouge = float(rouge_metric(self.window_preds, self.window_refs)["rougeL_fmeasure"])
            bleu = float(BLEUScore(n_gram=4)(self.window_preds, [[ref] for ref in self.window_refs]))
        median, p90 = _percentiles(self.latencies)
        matched = len(self.latencies)
        early = sum(latency < 0 for latency in self.latencies)
        return {
            "rougeL": rouge,
            "bleu": bleu,
            "windows": len(self.window_preds),
            "word_recall": matched / self.reference_words if self.reference_words else None,
            "word_precision": matched / self.model_words if self.model_words else 0.0,
            "median_latency_s": median,
            "p90_latency_s": p90,
            "early_words": early,
            "early_word_rate": early / matched if matched else None,
            "talk_ratio": self.model_speaking_s / self.reference_speaking_s if self.reference_speaking_s else None,
            "model_speaking_s": self.model_speaking_s,
            "reference_speaking_s": self.reference_speaking_s,
            "reference_words": self.reference_words,
            "model_words": self.model_words,
            "matched_words": matched,
        }


def tally_transcript(
    lines: Iterable[Line | tuple[float, float, str]],
    reference: Sequence[WordLike],
    tolerance_s: float = 3.0,
    window_s: float = 10.0,
) -> TranscriptTally:
    """Compare one video's lines with its reference words (both in video time)."""
    if not window_s > 0:
        raise InputError("window_s", f"must be > 0, got {window_s}")
    lines = as_lines(lines)
    model = timed_words(lines)
    ref = sorted(((w.start, tok) for w in reference for tok in tokens(w.text)), key=lambda x: x[0])
    tally = TranscriptTally(reference_words=len(ref), model_words=len(model))
    tally.model_speaking_s = _union_s((line.start, line.end) for line in lines)
    tally.reference_speaking_s = _union_s((w.start, w.end) for w in reference)

    times = [t for t, _ in model]
    used = [False] * len(model)
    for t_ref, tok in ref:
        lo = bisect.bisect_left(times, t_ref - tolerance_s - _EPS)
        hi = bisect.bisect_right(times, t_ref + tolerance_s + _EPS)
        candidates = [k for k in range(lo, hi) if not used[k] and model[k][1] == tok]
        if candidates:
            best = min(candidates, key=lambda k: (abs(times[k] - t_ref), times[k]))  # nearest; tie -> earlier
            used[best] = True
            tally.latencies.append(times[best] - t_ref)

    end = max([t for t, _ in model] + [t for t, _ in ref], default=0.0)
    for k in range(int(end // window_s) + 1):
        lo, hi = k * window_s, (k + 1) * window_s
        pred = " ".join(w for t, w in model if lo <= t < hi)
        target = " ".join(w for t, w in ref if lo <= t < hi)
        if pred or target:
            tally.window_preds.append(pred)
            tally.window_refs.append(target)
    return tally


def transcript_metrics(
    lines: Iterable[Line | tuple[float, float, str]],
    reference: Sequence[WordLike],
    tolerance_s: float = 3.0,
    window_s: float = 10.0,
) -> dict[str, Any]:
    """Content (ROUGE-L, BLEU), timing and talk-ratio figures of one video's commentary against a transcript."""
    return tally_transcript(lines, reference, tolerance_s, window_s).metrics()


def aggregate_transcript_metrics(
    videos: Iterable[tuple[Iterable[Line | tuple[float, float, str]], Sequence[WordLike]]],
    tolerance_s: float = 3.0,
    window_s: float = 10.0,
) -> dict[str, Any]:
    """Transcript figures pooled over videos (micro): ``videos`` yields ``(lines, reference words)`` per video."""
    total = TranscriptTally()
    for lines, reference in videos:
        total += tally_transcript(lines, reference, tolerance_s, window_s)
    return total.metrics()


# -------------------------------------------------------------------------------------------------------------- task


def video_key(name: str | os.PathLike) -> str:
    """The key pairing outputs with references: the file name without a video / commentary suffix."""
    path = Path(name)
    return path.stem if path.suffix.lower() in (*_VIDEO_SUFFIXES, *LINE_SUFFIXES) else path.name


def load_references(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Read LiveCC transcripts and/or ``events.jsonl`` files (told apart by their first record).

    Returns:
        ``(words, events)``: video key -> reference words in video time, video key -> events.
    """
    from mmduplex.data.synthetic import load_events
    from mmduplex.data.transcripts import Word, load_livecc_jsonl

    words: dict[str, list[Any]] = {}
    events: dict[str, list[Any]] = {}
    for path in map(Path, paths):
        first = next((line for line in _read_text(path).splitlines() if line.strip()), None)
        try:
            record = json.loads(first) if first is not None else None
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"malformed JSON on the first record ({exc.msg})") from exc
        if isinstance(record, list):  # a LiveCC conversation
            for clip in load_livecc_jsonl(path):
                shifted = [Word(clip.start_s + w.start, clip.start_s + w.end, w.text) for w in clip.words]
                words.setdefault(video_key(clip.video or path), []).extend(shifted)
        elif isinstance(record, dict) and "events" in record:
            for video, video_events in load_events(path).items():
                events.setdefault(video_key(video), []).extend(video_events)
        else:
            raise AnnotationError(path, "neither a LiveCC transcript JSONL nor an events.jsonl")
    for key in words:
        words[key].sort(key=lambda w: w.start)
    for key in events:
        events[key].sort(key=lambda e: e.t)
    return words, events


def collect_predictions(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Video key -> commentary file, from files and folders (a folder contributes its .vtt / .srt / .jsonl files)."""
    found: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in LINE_SUFFIXES)
            if not files:
                raise InputError(path, f"no commentary files ({', '.join(LINE_SUFFIXES)}) in the folder")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(path, "commentary file or folder not found")
        for file in files:
            key = video_key(file)
            if key in found:
                raise InputError(file, f"second commentary for video {key!r} (also {found[key]}); pass one per video")
            found[key] = file
    return found


class CommentaryEval(EvalTask):
    """Live-commentary quality and timing of the model's outputs against transcripts and/or events.

    Args:
        predictions: commentary files (.vtt / .srt / .jsonl) or folders of them, one file per video (named after it).
        references: LiveCC transcript JSONL and/or synthetic ``events.jsonl`` files.
        tolerance_s: how late (events; both ways for transcript words) a matching word may come (s).
        window_s: window length (s) of the ROUGE-L / BLEU segments.
    """

    name = "commentary"
    defaults = {"predictions": None, "reference": None, "tolerance": 3.0, "window": 10.0}
    required = ("predictions", "reference")

    def __init__(
        self,
        predictions: Sequence[str | os.PathLike],
        references: Sequence[str | os.PathLike],
        tolerance_s: float = 3.0,
        window_s: float = 10.0,
    ) -> None:
        if not tolerance_s >= 0:
            raise InputError("tolerance", f"must be >= 0 seconds, got {tolerance_s}")
        if not window_s > 0:
            raise InputError("window", f"must be > 0 seconds, got {window_s}")
        self.predictions = [Path(p) for p in predictions]
        self.references = [Path(p) for p in references]
        self.tolerance_s = tolerance_s
        self.window_s = window_s

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "predictions": [str(p) for p in self.predictions],
            "references": [str(p) for p in self.references],
            "tolerance_s": self.tolerance_s,
            "window_s": self.window_s,
            "bleu": "corpus BLEU-4 over windows (torchmetrics)",
            "rouge": "ROUGE-L F1, mean over windows (torchmetrics)",
        }

    def run(self) -> dict[str, Any]:
        words, events = load_references(self.references)
        outputs = collect_predictions(self.predictions)
        per_video: dict[str, dict[str, Any]] = {}
        event_total, transcript_total = EventTally(), TranscriptTally()
        for key, file in outputs.items():
            if key not in words and key not in events:
                raise InputError(file, f"no reference for video {key!r} in {', '.join(map(str, self.references))}")
            lines = load_lines(file)
            per_video[key] = {"file": str(file)}
            if key in events:
                tally = tally_events(lines, events[key], self.tolerance_s)
                event_total += tally
                per_video[key]["events"] = tally.metrics()
            if key in words:
                tally = tally_transcript(lines, words[key], self.tolerance_s, self.window_s)
                transcript_total += tally
                per_video[key]["transcript"] = tally.metrics()
        overall: dict[str, Any] = {"videos": len(per_video)}
        if any("events" in v for v in per_video.values()):
            overall["events"] = event_total.metrics()
        if any("transcript" in v for v in per_video.values()):
            overall["transcript"] = transcript_total.metrics()
        return {"overall": overall, "per_video": per_video, "settings": self.settings}

    def markdown(self, results: Mapping[str, Any]) -> str:
        parts = ["# Live commentary\n", f"tolerance {self.tolerance_s} s, windows {self.window_s} s\n"]
        families = (
            ("events", ["event_accuracy", "event_precision", "median_latency_s", "p90_latency_s", "events", "lines"]),
            ("transcript", ["rougeL", "bleu", "word_recall", "median_latency_s", "early_words", "talk_ratio"]),
        )
        for family, columns in families:
            if family not in results["overall"]:
                continue
            rows = [[key, *(v[family][c] for c in columns)] for key, v in results["per_video"].items() if family in v]
            rows.append(["**all**", *(results["overall"][family][c] for c in columns)])
            parts.append(f"\n## {family}\n\n" + markdown_table(["video", *columns], rows))
        return "\n".join(parts)

    @classmethod
    def add_arguments(cls, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--predictions",
            nargs="+",
            action="extend",
            type=str,
            metavar="PATH",
            help="commentary .vtt/.srt/.jsonl files or folders, named after their videos (repeatable; adds to the "
            "--config list)",
        )
        parser.add_argument(
            "--reference",
            nargs="+",
            action="extend",
            type=str,
            metavar="FILE",
            help="LiveCC transcripts.jsonl and/or synthetic events.jsonl (repeatable; adds to the --config list)",
        )
        parser.add_argument(
            "--tolerance",
            type=float,
            metavar="S",
            help="seconds a matching word may come after the event / reference word",
        )
        parser.add_argument("--window", type=float, metavar="S", help="window length in seconds for ROUGE-L / BLEU")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CommentaryEval:
        return cls(settings["predictions"], settings["reference"], settings["tolerance"], settings["window"])
