"""Commentary of one stream, line by line as it is produced: a source of frames driven through the streaming loop
(:class:`~mmduplex.inference.loop.StepLoop`), questions typed at their times, optional real-time pacing, the model's
word pieces grouped into lines (:class:`~mmduplex.io.outputs.LineBuilder`), the end-of-input flush, and the timing
figures of ``mmduplex stream --report``.

A source is a video file path, ``"-"`` (a stream on stdin) or a URL PyAV opens, decoded incrementally at the
session's fps (:func:`mmduplex.io.video.iter_video`), or an iterable of ``(t, frame [H, W, 3] uint8)`` or
``(t, patches [P, D])`` pairs in time order.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mmduplex.errors import CheckpointError, InputError
from mmduplex.inference.loop import Ask, Question, RealtimePacer, StepLoop, questions_of, timeline
from mmduplex.io.outputs import CommentaryLine, LineBuilder

if TYPE_CHECKING:
    from mmduplex.inference.session import DuplexSession, StepOutput
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder

log = logging.getLogger(__name__)

Source = str | os.PathLike | Iterable[tuple[float, Any]]
"""A video file, ``"-"`` (stdin), a URL, or ``(t, frame)`` / ``(t, patches)`` pairs."""

DEFAULT_LINE_PAUSE_S = 1.0
"""Seconds of silence that end a commentary line."""
DEFAULT_LINE_WORDS = 12
"""Words that end a commentary line."""
DEFAULT_LINE_DISPLAY_S = 2.0
"""Seconds a line stays up after its last word."""


def frame_size(encoder: FrozenImageEncoder) -> int | None:
    """The size frames are decoded at for ``encoder``: its input side when decoding may resize (shorter side + centre
    crop is the encoder's own preprocessing), else ``None`` (the encoder resizes)."""
    return encoder.image_size if encoder.resize_mode == "shortest" else None


def is_url(source: str | os.PathLike) -> bool:
    return "://" in str(source) and not os.path.exists(source)


def open_frames(source: Source, session: DuplexSession) -> Iterable[tuple[float, Any]]:
    """The ``(t, frame)`` pairs of ``source`` (a path, ``"-"`` or a URL is decoded at the session's fps; an
    iterable of pairs is returned as it is).

    Raises:
        CheckpointError: a video to decode, but the bundle records no fps.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    from mmduplex.io import video

    if session.fps is None:
        raise CheckpointError("bundle", "the bundle records no video fps")
    return video.iter_video(source, session.fps, size=frame_size(session.encoder))


class LineCollector:
    """Step outputs -> commentary lines (:meth:`LineBuilder.push_piece`) and every ``(t, word)`` said.

    Args:
        builder: groups words into lines.
        on_line: called with each line as it is finished.
    """

    def __init__(self, builder: LineBuilder, on_line: Callable[[CommentaryLine], None] | None = None) -> None:
        self.builder, self.on_line = builder, on_line
        self.words: list[tuple[float, str]] = []
        """``(t, word)`` of every word said (a piece that does not start a word is glued to the previous one)."""
        self.steps = 0

    @property
    def lines(self) -> list[CommentaryLine]:
        """The lines finished so far."""
        return self.builder.lines

    def push(self, out: StepOutput) -> CommentaryLine | None:
        """Take one step's output; return the line it finished, if any."""
        self.steps += 1
        if out.word is not None:
            if self.words and not out.word_start:
                self.words[-1] = (self.words[-1][0], self.words[-1][1] + out.word)
            else:
                self.words.append((out.t, out.word))
        return self._emit(self.builder.push_piece(out.t, out.word, out.word_start))

    def flush(self) -> CommentaryLine | None:
        """End of stream: finish and return the open line, if any."""
        return self._emit(self.builder.flush())

    def _emit(self, line: CommentaryLine | None) -> CommentaryLine | None:
        if line is not None and self.on_line is not None:
            self.on_line(line)
        return line


class Commentary:
    """The commentary of one stream through ``session``; iterate to get its lines as they are produced.

    The session is reset first (unless ``reset`` is false). Questions are typed at their times (those asked at
    ``"end"`` after the last frame); a question timed after the input's end is not typed (``on_not_asked``). When
    the input ends, the steps the model still owes run (the flush) and the open line is finished, so the last lines
    carry times after the last frame. After iterating (or after :meth:`finish`, e.g. on an interrupt), ``lines``,
    ``words`` and :meth:`report` hold the whole stream. A commentary streams once.

    Args:
        session: the session to stream through.
        source: frames (see the module docstring).
        ask: questions ``{t: text}`` / ``[(t, text)]``; ``t`` in seconds or ``"end"``.
        end_s: read at most this many seconds of input (the steps still owed run after).
        realtime: pace the input at wall-clock speed (:class:`~mmduplex.inference.loop.RealtimePacer`).
        line_pause_s: seconds of silence that end a line (``pause_steps`` overrides it in steps).
        line_words: words that end a line.
        line_display_s: seconds a line stays up after its last word.
        pause_steps: silent steps that end a line (``None``: ``line_pause_s`` in steps).
        reset: reset the session before streaming.
        on_step: called with every step's output (progress bars).
        on_not_asked: called with a question timed after the input's end and the input's end (s); ``None``: logs
            a warning.
    """

    def __init__(
        self,
        session: DuplexSession,
        source: Source,
        *,
        ask: Ask = None,
        end_s: float | None = None,
        realtime: bool = False,
        line_pause_s: float = DEFAULT_LINE_PAUSE_S,
        line_words: int = DEFAULT_LINE_WORDS,
        line_display_s: float = DEFAULT_LINE_DISPLAY_S,
        pause_steps: int | None = None,
        reset: bool = True,
        on_step: Callable[[StepOutput], None] | None = None,
        on_not_asked: Callable[[Question, float], None] | None = None,
    ) -> None:
        if end_s is not None and not end_s > 0:
            raise InputError("end_s", f"must be > 0, got {end_s}")
        if pause_steps is None:
            if not line_pause_s > 0:
                raise InputError("line_pause_s", f"must be > 0, got {line_pause_s}")
            pause_steps = max(1, round(line_pause_s * session.step_hz))
        self.session, self.source, self.end_s, self.reset = session, source, end_s, reset
        self.questions = questions_of(ask)
        self.collector = LineCollector(LineBuilder(pause_steps, line_words, line_display_s))
        self.pacer = RealtimePacer(session.step_hz) if realtime else None
        self.on_step, self.on_not_asked = on_step, on_not_asked
        self.loop: StepLoop | None = None
        self.step_ms: list[float] = []
        self.cache_peak = 0
        self.flush_steps = 0
        self.wall_s = 0.0

    @property
    def lines(self) -> list[CommentaryLine]:
        """The lines finished so far."""
        return self.collector.lines

    @property
    def words(self) -> list[tuple[float, str]]:
        """``(t, word)`` of every word said so far."""
        return self.collector.words

    @property
    def steps(self) -> int:
        """Steps run so far (flushed ones included)."""
        return self.collector.steps

    def __iter__(self) -> Iterator[CommentaryLine]:
        if self.loop is not None:
            raise InputError("Commentary", "a stream runs once; its lines are in .lines (stream again for a new run)")
        session = self.session
        if self.reset:
            session.reset()
        frames = open_frames(self.source, session)
        events = timeline(frames, self.questions, self.end_s)
        self.loop = StepLoop(session, events, end_s=self.end_s, wait=self.pacer)
        started = time.perf_counter()
        try:
            for out in self.loop:
                self.step_ms.append(out.elapsed_s * 1000)
                if self.pacer is not None:
                    self.pacer.record(out.t, time.perf_counter() - out.elapsed_s)
                self.cache_peak = max(self.cache_peak, session.cache.length)
                self.flush_steps += out.flushed
                line = self.collector.push(out)
                if self.on_step is not None:
                    self.on_step(out)
                if line is not None:
                    yield line
        finally:
            self.wall_s = time.perf_counter() - started
        for question in self.loop.not_asked:
            end = (self.loop.input_steps or 0) / session.step_hz
            if self.on_not_asked is not None:
                self.on_not_asked(question, end)
            else:
                log.warning("a question at %g s comes after the input's end (%.1f s): not asked (ask it at 'end' to "
                            "type it after the last frame): %s", question.t, end, question.text)  # fmt: skip
        line = self.finish()
        if line is not None:
            yield line

    def finish(self) -> CommentaryLine | None:
        """Finish the open line (the end of the stream, or an interrupt); return it, if there was one."""
        return self.collector.flush()

    def report(self) -> dict[str, Any]:
        """The timing figures of the stream so far (``mmduplex stream --report``; keys in docs/DESIGN.md)."""
        session = self.session
        hz = session.step_hz
        stream_s = session.step_index / hz  # the flushed steps included: they are steps the model ran
        video_s = (session.step_index - self.flush_steps) / hz
        pacer = self.pacer
        compute_s = self.wall_s - (pacer.slept_s if pacer is not None else 0.0)
        return {
            "steps": session.step_index,
            "step_hz": hz,
            "rtf": compute_s / stream_s if stream_s else None,
            "step_ms_p50": percentile(self.step_ms, 50),
            "step_ms_p95": percentile(self.step_ms, 95),
            "peak_rss_mb": peak_rss_mb(),
            "video_tokens_per_second": session.video_tokens / video_s if video_s else None,
            "stream_s": stream_s,
            "video_s": video_s,
            "flush_steps": self.flush_steps,
            "compute_s": compute_s,
            "frames": session.frames_pushed,
            "fps": session.fps,
            "video_tokens": session.video_tokens,
            "dropped_video_tokens": session.dropped_video_tokens,
            "cache_max_length": session.cache.max_length,
            "cache_peak_length": self.cache_peak,
            "sink": session.sink,
            "window": session.window,
            "realtime": pacer is not None,
            "late_steps": pacer.late_steps if pacer is not None else None,
            "max_lag_s": pacer.max_lag_s if pacer is not None else None,
            "lines": len(self.lines),
            "questions": [{"t": "end" if q.t is None else q.t, "text": q.text} for q in self.questions],
            "settings": {
                "temperature": session.temperature,
                "top_k": session.top_k,
                "pad_bias": session.pad_bias,
                "seed": session.seed,
            },
        }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (nearest rank), ``None`` for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def peak_rss_mb() -> float:
    """The process's peak resident memory (MiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)
