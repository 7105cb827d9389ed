"""The streaming loop: timed frames and user text in, one :class:`~mmduplex.inference.session.DuplexSession` step per
tick out. Every caller drives a session through it (``mmduplex stream``, :class:`~mmduplex.inference.model.DuplexModel`,
the demo, the evaluation responders, :meth:`DuplexSession.run <mmduplex.inference.session.DuplexSession.run>`).

The input is one sequence of events in stream order:

- ``(t, frame)``: a ``[H, W, 3]`` uint8 RGB frame shown at ``t`` seconds (the session's encoder encodes it), or
  ``(t, patches)``: the ``[P, D]`` patch features of one (cached features, benchmarks);
- :class:`Question`: user text typed at ``t`` seconds (``t = None``: after the input's last frame).

Before an event at ``t`` is taken in, the steps before the one holding ``t`` run (each on whatever video has arrived:
the video never waits). A question is taken in when the next frame arrives (or the input ends), so a question timed
after the input's end is known as such; :meth:`DuplexSession.ask` then queues it from the step holding its time.
The input ends ``hold_s`` after its last frame (default: that frame's display period, ``1 / fps``; never before the
end of the step holding it) or at ``end_s``, whichever comes first. Then the questions asked at the end are typed and
``after`` says what runs: ``"flush"`` the steps the model still owes (the text lags the video by tau:
:meth:`DuplexSession.flush`), ``"drain"`` steps until the queued video and user tokens have gone in (the state to ask
more questions on), ``"stop"`` nothing.

Sparse frames of a long video would leave long runs of empty steps: with ``max_gap_steps`` at most that many steps
run from one event to the next (more while queued user tokens still need steps to go out); the rest are skipped by
shifting every later stream time back (:attr:`StepLoop.skipped_steps`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from mmduplex.errors import InputError
from mmduplex.lm.alignment import time_to_step

if TYPE_CHECKING:
    from mmduplex.inference.session import DuplexSession, StepOutput

log = logging.getLogger(__name__)

After = Literal["flush", "drain", "stop"]
LateQuestions = Literal["drop", "wait"]


@dataclass(frozen=True)
class Question:
    """User text typed on the user stream at stream time ``t`` seconds (``None``: after the input's last frame)."""

    t: float | None
    text: str


Event = Question | tuple[float, Any]
"""One input event: a :class:`Question`, or ``(t, frame [H, W, 3] uint8)`` / ``(t, patches [P, D])``."""

Ask = Mapping[Any, str] | Iterable[tuple[Any, str]] | None
"""Questions as users give them: ``{t: text}`` or ``[(t, text), ...]``; ``t`` in seconds, or ``"end"`` / ``None``
for a question typed after the input's last frame."""


def questions_of(ask: Ask) -> list[Question]:
    """``ask`` as :class:`Question` objects, in the order given.

    Raises:
        InputError: a time that is not ``"end"``, ``None`` or a finite number >= 0, or blank text.
    """
    if ask is None:
        return []
    pairs = ask.items() if isinstance(ask, Mapping) else ask
    questions = []
    for t, text in pairs:
        if not isinstance(text, str) or not text.strip():
            raise InputError("ask", f"a question needs non-blank text, got {text!r} at {t!r}")
        if t is None or (isinstance(t, str) and t.strip().lower() == "end"):
            questions.append(Question(None, text.strip()))
            continue
        try:
            seconds = float(t)
        except (TypeError, ValueError):
            raise InputError("ask", f"a question's time is seconds >= 0 or 'end', got {t!r}") from None
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InputError("ask", f"a question's time must be a finite number of seconds >= 0, got {t!r}")
        questions.append(Question(seconds, text.strip()))
    return questions


def timeline(frames: Iterable[Event], questions: Iterable[Question], end_s: float | None = None) -> Iterator[Event]:
    """``frames`` (in time order) with ``questions`` merged in by time: a question comes before the first frame shown
    at or after its time; those timed after the last frame, then those asked at the end (``t = None``), follow.
    Frames at or after ``end_s`` are not read. A :class:`Question` among ``frames`` (a live source's user text,
    e.g. ``mmduplex serve``'s question box) passes through where it is."""
    questions = list(questions)
    timed = sorted((q for q in questions if q.t is not None), key=lambda q: q.t)
    due = 0
    for event in frames:
        if isinstance(event, Question):
            yield event
            continue
        t, frame = event
        if end_s is not None and float(t) >= end_s:
            break
        while due < len(timed) and timed[due].t <= float(t):
            yield timed[due]
            due += 1
        yield t, frame
    yield from timed[due:]
    yield from (q for q in questions if q.t is None)


class StepLoop:
    """The steps of ``session`` over ``events`` (see the module docstring); iterate to run them.

    Args:
        session: the session to drive (not reset: call ``reset()`` first for a fresh stream).
        events: frames / patch features and :class:`Question` objects in stream order.
        end_s: the input ends at this stream time at the latest; frames at or after it are not read.
        wait: called with a stream time before each event at that time (a frame arriving at ``t``, step ``k`` due
            at ``(k + 1) / step_hz``), in time order; real-time pacing sleeps until then (:class:`RealtimePacer`).
        after: what runs once the input has ended: ``"flush"``, ``"drain"`` or ``"stop"``.
        hold_s: how long the last frame stays on screen (``None``: ``1 / fps``; 0: the end of its step).
        max_gap_steps: most steps run from one event to the next (``None``: the stream's own timing).
        late_questions: a question timed after the input's end: ``"drop"`` (not typed; :attr:`not_asked`) or
            ``"wait"`` (steps run, without video, until its time; it is typed then).

    Attributes:
        asked: ``(question, step)`` for every question typed, ``step`` being the session's step index when it was.
        not_asked: the questions timed after the input's end (``late_questions="drop"``) or given with no frame.
        skipped_steps: steps cut out by ``max_gap_steps``.
        input_steps: the session's step index when the input ended (``None`` until then, or without frames).
    """

    def __init__(
        self,
        session: DuplexSession,
        events: Iterable[Event],
        *,
        end_s: float | None = None,
        wait: Callable[[float], None] | None = None,
        after: After = "flush",
        hold_s: float | None = None,
        max_gap_steps: int | None = None,
        late_questions: LateQuestions = "drop",
    ) -> None:
        if after not in ("flush", "drain", "stop"):
            raise InputError("after", f"must be 'flush', 'drain' or 'stop', got {after!r}")
        if late_questions not in ("drop", "wait"):
            raise InputError("late_questions", f"must be 'drop' or 'wait', got {late_questions!r}")
        if max_gap_steps is not None and max_gap_steps < 1:
            raise InputError("max_gap_steps", f"must be >= 1 or None, got {max_gap_steps}")
        self.session, self.events = session, events
        self.end_s, self.wait, self.after, self.hold_s = end_s, wait, after, hold_s
        self.max_gap_steps, self.late_questions = max_gap_steps, late_questions
        self.asked: list[tuple[Question, int]] = []
        self.not_asked: list[Question] = []
        self.skipped_steps = 0
        self.input_steps: int | None = None

    def __iter__(self) -> Iterator[StepOutput]:
        session = self.session
        waiting: list[Question] = []  # timed questions taken in when the next frame arrives
        at_end: list[Question] = []
        last: tuple[float, int] | None = None  # (given time, step) of the last frame
        for event in self.events:
            if isinstance(event, Question):
                (waiting if event.t is not None else at_end).append(event)
                continue
            t, payload = float(event[0]), event[1]
            if self.end_s is not None and t >= self.end_s:
                break
            for question in waiting:
                yield from self._type(question)
            waiting.clear()
            step, stream_t = self._place(t)
            yield from self._steps_before(step)
            if self.wait is not None:
                self.wait(stream_t)
            patches = torch.as_tensor(payload)
            if patches.dim() == 2:
                session.push_features(stream_t, patches)
            else:
                session.push_frame(stream_t, patches)
            last = (t, step)
        if last is None:
            self.not_asked += waiting + at_end
            return
        end_step = self._end_step(*last)
        for question in waiting:
            late = time_to_step(question.t, session.step_hz) - self.skipped_steps > end_step
            if late and self.late_questions == "drop":
                self.not_asked.append(question)
            else:
                yield from self._type(question)
        yield from self._steps_before(end_step)
        self.input_steps = session.step_index
        for question in at_end:
            session.ask(question.text)
            self.asked.append((question, session.step_index))
        if self.after == "flush":
            yield from session.flush(self.wait)
        elif self.after == "drain":
            while session.pending_user_tokens or session.pending_video_tokens:
                yield from self._steps_before(session.step_index + 1)

    def _place(self, t: float) -> tuple[int, float]:
        """The step and stream time of an event given at ``t``, after the gap cut (which may grow here)."""
        session = self.session
        step = time_to_step(t, session.step_hz) - self.skipped_steps
        if self.max_gap_steps is not None:
            allowed = max(self.max_gap_steps, session.pending_user_tokens)
            excess = step - session.step_index - allowed
            if excess > 0:
                self.skipped_steps += excess
                step -= excess
        return step, t - self.skipped_steps / session.step_hz

    def _type(self, question: Question) -> Iterator[StepOutput]:
        """Run the steps before ``question``'s and type it (blank text types nothing)."""
        step, stream_t = self._place(question.t)
        yield from self._steps_before(step)
        if question.text.split():
            self.session.ask(question.text, stream_t)
            self.asked.append((question, self.session.step_index))

    def _end_step(self, last_t: float, last_step: int) -> int:
        """The step at which the input ends: after the last frame's hold (at ``end_s`` at the latest), never before
        the end of the step holding it."""
        session = self.session
        hold = self.hold_s if self.hold_s is not None else (1.0 / session.fps if session.fps else 0.0)
        end = last_t + hold if self.end_s is None else min(last_t + hold, self.end_s)
        return max(math.ceil(end * session.step_hz - 1e-6) - self.skipped_steps, last_step + 1, session.step_index)

    def _steps_before(self, stop: int) -> Iterator[StepOutput]:
        """Run steps until ``step_index == stop``; each waits (``wait``) for its due time, the end of its span."""
        session = self.session
        while session.step_index < stop:
            if self.wait is not None:
                self.wait((session.step_index + 1) / session.step_hz)
            yield session.step()


def feed_steps(session: DuplexSession, text: str) -> Iterator[StepOutput]:
    """Type ``text`` from the next step and yield each step run (no new video) until its last token has been fed;
    the last one's token is the model's first reply to ``text``. Reads only the session's queue between steps (so a
    lockstep stream can run it, :func:`~mmduplex.inference.batched.run_lockstep`)."""
    session.ask(text)
    yield session.step()
    while session.pending_user_tokens:
        yield session.step()


def feed(session: DuplexSession, text: str) -> StepOutput:
    """Type ``text`` from the next step and run steps (no new video) until its last token has been fed.

    Returns:
        The output of the step that fed the last token (its token is the model's first reply to ``text``).
    """
    *_, out = feed_steps(session, text)
    return out


def spoken_words(outputs: Iterable[StepOutput]) -> list[tuple[float, str]]:
    """Every ``(t, word)`` said in ``outputs``: a piece that does not start a word is glued to the previous word."""
    words: list[tuple[float, str]] = []
    for out in outputs:
        if out.word is None:
            continue
        if words and not out.word_start:
            words[-1] = (words[-1][0], words[-1][1] + out.word)
        else:
            words.append((out.t, out.word))
    return words


class RealtimePacer:
    """The ``wait`` hook for real-time pacing: sleeps until each event's wall-clock time.

    Stream time 0 is the wall-clock time of the first event. :meth:`record` says how late a step started; a step is
    late when it starts more than one step period after its due time (the model fell behind the video).
    """

    def __init__(self, step_hz: float) -> None:
        self.period = 1.0 / step_hz
        self.origin: float | None = None
        self.slept_s = 0.0
        self.late_steps = 0
        self.max_lag_s = 0.0

    def __call__(self, t: float) -> None:
        now = time.perf_counter()
        if self.origin is None:
            self.origin = now - t
        delay = self.origin + t - now
        if delay > 0:
            time.sleep(delay)
            self.slept_s += delay

    def record(self, due_s: float, started: float) -> None:
        """Account for a step due at stream time ``due_s`` that started at wall-clock ``started``."""
        lag = started - (self.origin or started) - due_s
        self.max_lag_s = max(self.max_lag_s, lag)
        if lag > self.period:
            self.late_steps += 1
