"""The synthetic commentary world's planner: the shape simulation that makes a video's spec.

Each video shows at most ``max_shapes`` shapes (colours ``red green blue yellow``, shapes ``square circle triangle``)
bouncing around a static background. Events:

- ``enters``: a shape comes in through an edge (event time: its centre crosses the edge);
- ``stops`` / ``moves``: a moving shape stops / a stopped shape starts moving in a new direction;
- ``turns``: a shape changes colour (the event's colour is the NEW colour);
- ``leaves``: on reaching a wall a moving shape goes straight out (event time: its centre crosses the edge).

Each event is described by exactly the words ``<colour> <shape> <action>`` ("red square enters", "blue circle
turns"), starting ``word_delay_s`` after the event, one word every ``word_duration_s``. Events are at least
``min_gap_s`` apart, so each description ends before the next event. Shapes on screen at once have distinct
(colour, shape) pairs. The next event's action is drawn among the feasible ones, rarer actions so far being likelier,
which keeps the five actions balanced. With ``question_interval_s > 0`` a user also asks questions, answered in the
same word stream (:mod:`mmduplex.data.synthetic_questions`; an answer may delay an event line, and vice versa).

:func:`plan_video` turns a :class:`SyntheticConfig` and a video index into a :class:`VideoSpec` (a pure function of
both); the settings and data types live in :mod:`mmduplex.data.synthetic_world` (re-exported here),
:mod:`mmduplex.data.synthetic_render` draws a spec, :mod:`mmduplex.data.synthetic` writes and reads the data set on
disk.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mmduplex.data.synthetic_questions import (
    KINDS,
    SyntheticQuestion,
    cut_question,
    make_question,
    plan_questions,
    stream_end_words,
    vocabulary,
)
from mmduplex.data.synthetic_world import (
    ACTIONS,
    COLOURS,
    DEFAULT_SHADING,
    SHAPES,
    Event,
    ShapeTrack,
    SyntheticConfig,
    VideoSpec,
)
from mmduplex.data.transcripts import Word

__all__ = [
    "ACTIONS",
    "COLOURS",
    "DEFAULT_SHADING",
    "SHAPES",
    "Event",
    "Mover",
    "ShapeTrack",
    "SyntheticConfig",
    "SyntheticQuestion",
    "VideoSpec",
    "make_question",
    "plan_stream_end",
    "plan_video",
    "random_direction",
    "video_id",
    "vocabulary",
]

_MIN_AXIS = math.sin(math.radians(20))  # directions keep both velocity components >= 34% of the speed


class Mover:
    """Simulation state of one shape: it bounces inside the box where it is fully visible."""

    def __init__(self, shape_id: int, shape: str, size: float, colour: str, t: float, box: tuple[float, ...]):
        self.shape_id, self.shape, self.size, self.box = shape_id, shape, size, box  # box: (x_lo, x_hi, y_lo, y_hi)
        self.x = self.y = self.vx = self.vy = 0.0
        self.t = self.ready_t = t  # state time; earliest time of its next event
        self.gone_t = math.inf  # time it is fully out of the frame
        self.waypoints: list[tuple[float, float, float]] = []
        self.colours: list[tuple[float, str]] = [(t, colour)]

    @property
    def colour(self) -> str:
        return self.colours[-1][1]

    @property
    def moving(self) -> bool:
        return self.vx != 0.0 or self.vy != 0.0

    def mark(self) -> None:
        self.waypoints.append((self.t, self.x, self.y))

    def _next_hit(self) -> tuple[float, int]:
        """Time until the next wall hit and its axis (0: x, 1: y)."""
        lo_x, hi_x, lo_y, hi_y = self.box
        tx = (hi_x - self.x) / self.vx if self.vx > 0 else (lo_x - self.x) / self.vx if self.vx < 0 else math.inf
        ty = (hi_y - self.y) / self.vy if self.vy > 0 else (lo_y - self.y) / self.vy if self.vy < 0 else math.inf
        return (max(tx, 0.0), 0) if tx <= ty else (max(ty, 0.0), 1)

    def advance(self, t_to: float, record: bool = True) -> None:
        """Move (bouncing off the walls, a waypoint per bounce) until ``t_to``."""
        while self.t < t_to:
            dt, axis = self._next_hit()
            step = min(dt, t_to - self.t)
            self.x, self.y, self.t = self.x + self.vx * step, self.y + self.vy * step, self.t + step
            if step < dt or not self.moving:
                break
            if axis == 0:
                self.vx = -self.vx
            else:
                self.vy = -self.vy
            if record:
                self.mark()
        self.t = max(self.t, t_to)

    def next_exit(self, not_before: float) -> tuple[float, int]:
        """``(wall-hit time, axis)`` of the first wall hit whose edge crossing is at or after ``not_before``."""
        probe = Mover(self.shape_id, self.shape, self.size, self.colour, self.t, self.box)
        probe.x, probe.y, probe.vx, probe.vy = self.x, self.y, self.vx, self.vy
        while True:
            dt, axis = probe._next_hit()
            hit = probe.t + dt
            if hit + self.size / 2 / math.hypot(self.vx, self.vy) >= not_before:
                return hit, axis
            probe.advance(hit + 1e-9, record=False)


def random_direction(
    rng: np.random.Generator, speed: float, x_sign: float = 0.0, y_sign: float = 0.0
) -> tuple[float, float]:
    """A velocity of norm ``speed`` with both components >= 34% of it; a non-zero sign fixes that component's sign."""
    angle = rng.uniform(math.asin(_MIN_AXIS), math.acos(_MIN_AXIS))
    sx = x_sign or rng.choice([-1.0, 1.0])
    sy = y_sign or rng.choice([-1.0, 1.0])
    return float(sx * speed * math.cos(angle)), float(sy * speed * math.sin(angle))


class _Planner:
    """Event-driven simulation of one video: draws events one at a time and moves the shapes between them."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator, duration: float):
        self.cfg, self.rng, self.duration = config, rng, duration
        self.movers: list[Mover] = []
        self.events: list[Event] = []

    def _on_screen(self, t: float) -> list[Mover]:
        return [m for m in self.movers if m.gone_t > t]

    def _candidates(self, tau: float, limit: float) -> dict[str, list[tuple[float, Mover | None]]]:
        """Feasible events at target time ``tau``: action -> [(event time, shape)]."""
        live = self._on_screen(tau)
        ready = [m for m in live if m.ready_t <= tau and m.gone_t == math.inf]
        options: dict[str, list[tuple[float, Mover | None]]] = {
            "enters": [(tau, None)] if len(live) < self.cfg.max_shapes else [],
            "stops": [(tau, m) for m in ready if m.moving],
            "moves": [(tau, m) for m in ready if not m.moving],
            "turns": [(tau, m) for m in ready if self._free_pairs(tau, m)],
            "leaves": [],
        }
        for m in ready:
            if m.moving:
                hit, _ = m.next_exit(tau)
                t_exit = hit + m.size / 2 / self.cfg.speed
                if t_exit <= min(limit, tau + self.cfg.event_interval_s):  # do not wait long for a wall
                    options["leaves"].append((t_exit, m))
        return {action: found for action, found in options.items() if found}

    def _free_pairs(self, t: float, turning: Mover | None = None) -> list[tuple[str, str]]:
        """(colour, shape) pairs not on screen at ``t``; with ``turning``, only those that shape could turn into."""
        taken = {(m.colour, m.shape) for m in self._on_screen(t)}
        if turning is not None:
            return [(c, turning.shape) for c in COLOURS if (c, turning.shape) not in taken]
        return [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in taken]

    def _enter(self, t: float) -> Mover:
        cfg, rng = self.cfg, self.rng
        pairs = self._free_pairs(t)
        colour, shape = pairs[rng.integers(len(pairs))]
        size = float(rng.integers(cfg.shape_size[0], cfg.shape_size[1] + 1))
        half = size / 2
        box = (half, cfg.width - half, half, cfg.height - half)
        mover = Mover(len(self.movers), shape, size, colour, t, box)
        edge = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
        along = rng.uniform(half, (cfg.height if edge < 2 else cfg.width) - half)
        inward = 1.0 if edge in (0, 2) else -1.0
        edge_pos = 0.0 if edge in (0, 2) else float(cfg.width if edge < 2 else cfg.height)
        approach = half / cfg.speed
        for k, dt in enumerate((-approach, 0.0, approach)):  # fully out, centre on the edge, fully in
            across = edge_pos + inward * half * (k - 1)
            mover.t = t + dt
            mover.x, mover.y = (across, along) if edge < 2 else (along, across)
            mover.mark()
        mover.vx, mover.vy = random_direction(rng, cfg.speed, inward if edge < 2 else 0.0, inward if edge >= 2 else 0.0)
        mover.ready_t = mover.t
        self.movers.append(mover)
        return mover

    def _leave(self, mover: Mover, t_exit: float) -> None:
        hit, axis = mover.next_exit(t_exit - 1e-9)
        mover.advance(hit)
        mover.mark()
        out = 1.0 if (mover.x > self.cfg.width / 2 if axis == 0 else mover.y > self.cfg.height / 2) else -1.0
        mover.vx, mover.vy = (out * self.cfg.speed, 0.0) if axis == 0 else (0.0, out * self.cfg.speed)
        mover.t = hit + mover.size / self.cfg.speed  # straight out, perpendicular to the edge: fully gone
        mover.x, mover.y = mover.x + mover.vx * (mover.t - hit), mover.y + mover.vy * (mover.t - hit)
        mover.mark()
        mover.gone_t = mover.t

    def run(self) -> tuple[list[Mover], list[Event]]:
        """Simulate the whole video: the shapes (with waypoints and colours) and the events, in time order."""
        cfg, rng = self.cfg, self.rng
        limit = self.duration - (cfg.word_delay_s[1] + 3 * cfg.word_duration_s)
        tau = math.ceil(rng.uniform(0.5, 1.5) * cfg.fps) / cfg.fps
        while tau <= limit:
            for m in self._on_screen(tau):
                if m.ready_t <= tau:
                    m.advance(tau)
            options = self._candidates(tau, limit)
            if not options:
                tau = math.ceil((tau + 0.5) * cfg.fps) / cfg.fps
                continue
            names = sorted(options)  # rarer actions so far are likelier, which keeps the five actions balanced
            weights = np.array([1.0 / (1 + sum(e.action == a for e in self.events)) for a in names])
            action = names[rng.choice(len(names), p=weights / weights.sum())]
            t_event, mover = options[action][rng.integers(len(options[action]))]
            if action == "enters":
                mover = self._enter(t_event)
            elif action == "leaves":
                for m in self._on_screen(t_event):
                    if m is not mover and m.ready_t <= t_event:
                        m.advance(t_event)
                self._leave(mover, t_event)
            else:
                mover.mark()
                if action == "stops":
                    mover.vx = mover.vy = 0.0
                elif action == "moves":
                    mover.vx, mover.vy = random_direction(rng, cfg.speed)
                else:  # turns: a new colour, keeping on-screen (colour, shape) pairs distinct
                    colours = [c for c, _ in self._free_pairs(t_event, mover)]
                    mover.colours.append((t_event, colours[rng.integers(len(colours))]))
            t_event = round(t_event, 3)
            self.events.append(Event(t_event, mover.colour, mover.shape, action, mover.shape_id))
            gap = cfg.min_gap_s + rng.exponential(cfg.event_interval_s - cfg.min_gap_s)
            tau = math.ceil((t_event + gap) * cfg.fps - 1e-6) / cfg.fps
        for m in self.movers:
            if m.gone_t == math.inf:
                m.advance(max(self.duration, m.t))
                m.mark()
        return self.movers, self.events


def video_id(index: int) -> str:
    """The id (file stem) of the ``index``-th video."""
    return f"shapes_{index:04d}"


def _word_delays(events: list[Event], config: SyntheticConfig, rng: np.random.Generator) -> list[float]:
    """Each event's delay to its first word (s), drawn in event order."""
    return [float(rng.uniform(*config.word_delay_s)) for _ in events]


def _plan_world(config: SyntheticConfig, index: int) -> tuple[VideoSpec, list[float]]:
    """The ``index``-th video's spec without commentary or questions, and each event's word delay (s)."""
    rng = np.random.default_rng([config.seed, index])
    background_seed = int(rng.integers(2**31))
    num_frames = max(1, round(rng.uniform(*config.duration_s) * config.fps))
    movers, events = _Planner(config, rng, num_frames / config.fps).run()
    tracks = tuple(ShapeTrack(m.shape_id, m.shape, m.size, tuple(m.waypoints), tuple(m.colours)) for m in movers)
    delays = _word_delays(events, config, np.random.default_rng([config.seed, index, 1]))
    spec = VideoSpec(
        video_id=video_id(index),
        num_frames=num_frames,
        fps=config.fps,
        width=config.width,
        height=config.height,
        background_seed=background_seed,
        shapes=tracks,
        events=tuple(events),
        shading=config.shading,
    )
    return spec, delays


def plan_video(config: SyntheticConfig, index: int) -> VideoSpec:
    """The spec (shapes, events, commentary, questions) of the ``index``-th video of the data set ``config`` describes.

    Three random streams: the world (``[seed, index]``), the commentary's word delays (``[seed, index, 1]``) and
    the questions (``[seed, index, 2]``), so asking questions changes no video and no event.
    """
    spec, delays = _plan_world(config, index)
    words, questions = plan_questions(spec, delays, config, np.random.default_rng([config.seed, index, 2]))
    return replace(spec, words=tuple(words), questions=tuple(questions))


def plan_stream_end(
    config: SyntheticConfig, index: int, fps: float, rng: np.random.Generator, choice: bool = True
) -> tuple[float, SyntheticQuestion, list[Word]] | None:
    """The ``index``-th video with one more question, typed after its last frame (LongVideoBench's setting, and how a
    stream ends in ``mmduplex stream``): its time (the video's end), the question (its ``answer_t`` placed) and the
    stream's words (the video's commentary and answers, then this answer, past the video's end); ``None`` when the
    video's last seconds are not quiet or no question is answerable then.

    Args:
        config: the data set's settings (its questions while watching stay as planned).
        index: the video's index in the data set.
        fps: the frame rate the stream shows.
        rng: draws the kind and the options.
        choice: ask multiple choice (else an open question).
    """
    spec, delays = _plan_world(config, index)
    _, asked = plan_questions(spec, delays, config, np.random.default_rng([config.seed, index, 2]))
    cut, question = cut_question(spec, rng, fps, int(rng.integers(len(KINDS))), choice, at_end=True)
    if question is None:
        return None
    words, placed = stream_end_words(spec, delays, question, config, tuple(asked))
    return float(cut), placed, words
