"""One viewer's live stream: a video file decoded on the server at the video's clock and driven through the one
streaming loop (:class:`~mmduplex.inference.commentary.Commentary` over
:class:`~mmduplex.inference.loop.StepLoop`) on a :class:`~mmduplex.inference.session.DuplexSession` of the viewer's
own, in a worker thread; what it produces goes to the viewer as messages (``emit``).

The clock: stream time 0 is the wall-clock moment the viewer's browser started playing the same file (``origin``);
the loop's real-time pacer sleeps until each frame's and step's time, and never waits for the model. When compute
falls behind, steps run late: every ``step`` message carries that lag, so the page shows it rather than slowing
the video. Questions typed in the page (:meth:`LiveStream.ask`, at the browser's video time) join the loop's
input before the first frame at or after their time, so a question is typed at the next frame (within ``1 / fps``).

Messages (JSON objects; ``t`` in seconds of stream):

- ``{"type": "frame", "t", "tokens", "dropped"}``: one frame's video tokens (B-Flow sizes each frame by its motion);
- ``{"type": "step", "index", "t", "ms", "lag_s", "rtf", "flushed"}``: one model step, its latency, how late it ran
  and the stream's real-time factor so far (compute over stream time, as :meth:`Commentary.report` counts it);
- ``{"type": "word", "t", "text", "start"}``: a word piece as the model says it (``start``: it begins a word);
- ``{"type": "asked", "id", "t", "text"}``: a question typed into the user stream at ``t``;
- ``{"type": "not_asked", "id", "text", "reason"}``: a question that came after the video's end;
- ``{"type": "line", "start", "end", "text", "answer_to"}``: a finished commentary line; ``answer_to`` is the id of
  the question it is the first line after (the model's reply), else ``null``;
- ``{"type": "end", "report"}``: the stream is over (``report``: :meth:`Commentary.report`'s figures);
- ``{"type": "error", "message"}``: the stream failed (the server goes on serving the others).
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmduplex.errors import InputError, MMDuplexError

if TYPE_CHECKING:
    from mmduplex.inference.commentary import Commentary
    from mmduplex.inference.loop import Question
    from mmduplex.inference.model import DuplexModel
    from mmduplex.inference.session import DuplexSession, StepOutput
    from mmduplex.io.outputs import CommentaryLine

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 500
"""Longest question accepted from the page."""
REPORT_KEYS = ("steps", "step_hz", "rtf", "step_ms_p50", "step_ms_p95", "late_steps", "max_lag_s", "frames",
               "video_tokens", "dropped_video_tokens", "video_tokens_per_second", "lines", "stream_s")  # fmt: skip
"""The :meth:`Commentary.report` figures sent with the ``end`` message."""

Emit = Callable[[dict[str, Any]], None]


class SessionClosed(Exception):
    """The viewer left: the stream stops at the next frame or step."""


class LiveStream:
    """One viewer's stream of ``video`` through a new session on ``model`` (see the module docstring).

    Args:
        model: the loaded model, shared by every viewer (each gets its own session).
        video: the file to decode; the browser plays the same file.
        emit: called from the worker thread with each message for the viewer.
        sampling: :meth:`DuplexModel.session <mmduplex.inference.model.DuplexModel.session>` arguments
            (``temperature``, ``top_k``, ``pad_bias``, ``seed``).
    """

    def __init__(self, model: DuplexModel, video: Path, emit: Emit, sampling: Mapping[str, Any] | None = None) -> None:
        self.model, self.video, self.emit = model, Path(video), emit
        self.sampling = dict(sampling or {})
        self.closed = threading.Event()
        self._questions: queue.SimpleQueue[Question] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._question_ids: list[tuple[Question, int]] = []  # every question given, with its id
        self._typed: list[tuple[float, int]] = []  # (typed at, id) of the questions not answered yet
        self._announced = 0  # questions of loop.asked already sent as "asked"
        self._origin = 0.0
        self._commentary: Commentary | None = None

    def ask(self, text: str, t: float) -> int:
        """Queue a question typed at the viewer's video time ``t`` (s); it joins the stream at the next frame.

        Returns:
            The question's id (``asked`` / ``not_asked`` / ``answer_to`` name it).

        Raises:
            InputError: blank or too long text, or a time that is not a finite number >= 0.
        """
        from mmduplex.inference.loop import questions_of

        if isinstance(text, str) and len(text) > MAX_QUESTION_CHARS:
            raise InputError("question", f"at most {MAX_QUESTION_CHARS} characters, got {len(text)}")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise InputError("question", f"its time must be seconds of video, got {t!r}")
        (question,) = questions_of([(t, text)])
        qid = next(self._ids)
        self._question_ids.append((question, qid))
        self._questions.put(question)
        return qid

    def close(self) -> None:
        """Stop the stream (the viewer left); :meth:`run` returns within a step."""
        self.closed.set()

    def run(self, origin: float) -> None:
        """Stream the video, paced from ``origin`` (``time.perf_counter()`` when the browser started playing it);
        runs in a worker thread until the stream ends or :meth:`close`. Errors become an ``error`` message."""
        from mmduplex.inference.commentary import Commentary

        self._origin = origin
        try:
            session = self.model.session(**self.sampling)
            self._commentary = Commentary(
                session,
                self._events(session),
                realtime=True,
                on_step=self._on_step,
                on_not_asked=self._on_not_asked,
            )
            self._commentary.pacer.origin = origin  # stream time 0 = when the browser started playing
            for line in self._commentary:
                self._send_line(line)
            report = self._commentary.report()
            self.emit({"type": "end", "report": {key: _finite(report[key]) for key in REPORT_KEYS}})
        except SessionClosed:
            log.info("viewer left: stream of %s stopped", self.video.name)
        except MMDuplexError as err:
            self.emit({"type": "error", "message": str(err)})
        except Exception as err:  # the server goes on serving the others
            log.exception("stream of %s failed", self.video)
            self.emit({"type": "error", "message": f"the stream failed on the server: {type(err).__name__}: {err}"})
        finally:
            self._commentary = None  # the session (and its cache) goes with it

    # ------------------------------------------------------------------ the loop's input and hooks

    def _events(self, session: DuplexSession) -> Iterator[Any]:
        """The video's frames at the session's fps, with the page's questions merged in by time; emits each frame's
        token count once the loop has pushed it (the loop asks for the next event right after)."""
        from mmduplex.inference.commentary import open_frames

        held: list[Question] = []
        for t, frame in open_frames(self.video, session):
            self._check_open()
            held += self._take_questions()
            yield from (q for q in held if q.t <= t)
            held = [q for q in held if q.t > t]
            emitted = session.video_tokens + session.dropped_video_tokens
            dropped = session.dropped_video_tokens
            yield t, frame
            tokens = session.video_tokens + session.dropped_video_tokens - emitted
            self.emit({"type": "frame", "t": t, "tokens": tokens, "dropped": session.dropped_video_tokens > dropped})
        yield from held + self._take_questions()  # after the last frame: typed if before the input's end

    def _take_questions(self) -> list[Question]:
        taken = []
        while True:
            try:
                taken.append(self._questions.get_nowait())
            except queue.Empty:
                return taken

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise SessionClosed

    def _on_step(self, out: StepOutput) -> None:
        self._check_open()
        now = time.perf_counter()
        lag = now - out.elapsed_s - self._origin - out.t  # step k is due at (k + 1) / step_hz: its video is in
        commentary = self._commentary
        assert commentary is not None and commentary.pacer is not None and commentary.loop is not None
        compute = now - self._origin - commentary.pacer.slept_s  # decoding, encoding and steps: what the report counts
        ms, rtf = round(out.elapsed_s * 1000, 3), round(compute / out.t, 4)
        self.emit({"type": "step", "index": out.index, "t": out.t, "ms": ms, "lag_s": round(max(0.0, lag), 3),
                   "rtf": rtf, "flushed": out.flushed})  # fmt: skip
        for question, step in commentary.loop.asked[self._announced :]:
            qid = self._id_of(question)
            typed = step / self.model.step_hz
            self._typed.append((typed, qid))
            self.emit({"type": "asked", "id": qid, "t": typed, "text": question.text})
        self._announced = len(commentary.loop.asked)
        if out.word is not None:
            self.emit({"type": "word", "t": out.t, "text": out.word, "start": out.word_start})

    def _on_not_asked(self, question: Question, end_s: float) -> None:
        reason = f"the video ended at {end_s:.1f} s, before the question's time ({question.t:.1f} s)"
        self.emit({"type": "not_asked", "id": self._id_of(question), "text": question.text, "reason": reason})

    def _send_line(self, line: CommentaryLine) -> None:
        """A finished line; the first line that starts at or after a question was typed is its reply."""
        answered = [qid for typed, qid in self._typed if typed <= line.start + 1e-6]
        self._typed = [(typed, qid) for typed, qid in self._typed if qid not in answered]
        self.emit({"type": "line", "start": line.start, "end": line.end, "text": line.text,
                   "answer_to": answered[-1] if answered else None})  # fmt: skip

    def _id_of(self, question: Question) -> int:
        return next(qid for given, qid in self._question_ids if given is question)


def _finite(value: Any) -> Any:
    """JSON has no NaN / infinity: those become ``None``."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
