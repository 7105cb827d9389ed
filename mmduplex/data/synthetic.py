"""The synthetic commentary data set: coloured shapes on a muted background, and a 3-word line per event.

The project's embedded default data set (the CPU demo trains on it). Each video shows at most ``max_shapes`` shapes
(colours ``red green blue yellow``, shapes ``square circle triangle``) bouncing around a static background. Events:

- ``enters``: a shape comes in through an edge (event time: its centre crosses the edge);
- ``stops`` / ``moves``: a moving shape stops / a stopped shape starts moving in a new direction;
- ``turns``: a shape changes colour (the event's colour is the NEW colour);
- ``leaves``: on reaching a wall a moving shape goes straight out (event time: its centre crosses the edge).

Each event is described by exactly the words ``<colour> <shape> <action>`` ("red square enters", "blue circle
turns"), starting ``word_delay_s`` after the event, one word every ``word_duration_s``. Events are at least
``min_gap_s`` apart, so each description ends before the next event. Shapes on screen at once have distinct
(colour, shape) pairs, and the shape of the latest event is drawn on top, so every event's shape is visible.
Circles are shaded radially and triangles vertically (squares are flat), so that the shape shows inside every 8 px
patch and not only along its outline: with frozen random-init patch features a small probe then tells the shape
apart (flat shapes are barely above chance). The next event's action is drawn among the feasible ones, rarer actions
so far being likelier, which keeps the five actions balanced.

Layout written by :func:`generate_dataset` (atomically: a temporary folder renamed at the end)::

    DIR/manifest.json        config + generator version (its presence marks a complete data set)
    DIR/videos/<id>.mp4      the rendered videos
    DIR/transcripts.jsonl    LiveCC format, one line per video, video paths relative to DIR
    DIR/events.jsonl         {"video", "duration", "events": [{"t", "colour", "shape", "action", "shape_id"}]}
    DIR/split.json           {"train": [...], "heldout": [...]} video ids

Everything is a pure function of the config: the same seed gives identical frames and byte-identical JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmduplex.data.transcripts import TimedClip, Word, livecc_record, load_livecc_jsonl
from mmduplex.errors import AnnotationError, InputError
from mmduplex.fileio import atomic_dir

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 215, 30),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
ACTIONS: tuple[str, ...] = ("enters", "stops", "moves", "turns", "leaves")
DEFAULT_SHADING = 0.6  # shading depth of circles / triangles (see ``_draw``)
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")
_MIN_AXIS = math.sin(math.radians(20))  # directions keep both velocity components >= 34% of the speed


def vocabulary() -> list[str]:
    """Every word the synthetic transcripts can use: colours, then shapes, then actions."""
    return [*COLOURS, *SHAPES, *ACTIONS]


@dataclass
class SyntheticConfig:
    """Settings of the synthetic commentary data set; the whole data set is a pure function of them."""

    num_videos: int = 40
    """Number of videos."""
    duration_s: tuple[float, float] = (10.0, 30.0)
    """Range of video durations (s), drawn uniformly per video."""
    width: int = 96
    """Frame width (px)."""
    height: int = 96
    """Frame height (px)."""
    fps: float = 10.0
    """Native frame rate of the rendered videos."""
    event_interval_s: float = 2.0
    """Mean time between consecutive events (s): the event rate is its inverse."""
    min_gap_s: float = 1.5
    """Smallest time between two events (s); must leave room for the 3 words of a description."""
    speed: float = 30.0
    """Speed of moving shapes (px/s): the amount of motion."""
    max_shapes: int = 2
    """Most shapes on screen at once."""
    shape_size: tuple[int, int] = (16, 24)
    """Range of shape sizes (px, side / diameter), drawn uniformly per shape."""
    word_delay_s: tuple[float, float] = (0.3, 0.5)
    """Range of the delay from an event to its first word (s)."""
    word_duration_s: float = 0.25
    """Duration of each word (s)."""
    shading: float = DEFAULT_SHADING
    """Depth of the shape shading (circles radial, triangles vertical, squares flat); 0 draws flat shapes."""
    heldout_fraction: float = 0.2
    """Share of the videos in the held-out split."""
    seed: int = 0
    """Seed of everything random; different seeds give different data."""

    def __post_init__(self) -> None:
        self.duration_s = tuple(float(v) for v in self.duration_s)
        self.shape_size = tuple(int(v) for v in self.shape_size)
        self.word_delay_s = tuple(float(v) for v in self.word_delay_s)
        speech = self.word_delay_s[1] + 3 * self.word_duration_s
        checks = {
            "num_videos": (self.num_videos >= 1, "must be >= 1"),
            "duration_s": (0 < self.duration_s[0] <= self.duration_s[1], "must be (min, max) with 0 < min <= max"),
            "width": (self.width >= 2 * self.shape_size[1], "must be at least twice the largest shape"),
            "height": (self.height >= 2 * self.shape_size[1], "must be at least twice the largest shape"),
            "fps": (self.fps > 0, "must be > 0"),
            "min_gap_s": (self.min_gap_s >= speech, f"must be >= word_delay_s max + 3 words = {speech:.2f} s"),
            "event_interval_s": (self.event_interval_s >= self.min_gap_s, "must be >= min_gap_s"),
            "speed": (self.speed > 0, "must be > 0 (shapes enter and leave by moving)"),
            "max_shapes": (1 <= self.max_shapes <= len(COLOURS) * len(SHAPES), "must be in [1, 12]"),
            "shape_size": (0 < self.shape_size[0] <= self.shape_size[1], "must be (min, max) with 0 < min <= max"),
            "word_delay_s": (0 <= self.word_delay_s[0] <= self.word_delay_s[1], "must be (min, max), 0 <= min <= max"),
            "word_duration_s": (self.word_duration_s > 0, "must be > 0"),
            "shading": (0 <= self.shading < 1, "must be in [0, 1)"),
            "heldout_fraction": (0 <= self.heldout_fraction < 1, "must be in [0, 1)"),
        }
        for name, (ok, problem) in checks.items():
            if not ok:
                raise InputError(f"SyntheticConfig.{name}", f"{problem}, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Event:
    """One described event: at time ``t`` the shape ``shape_id`` (now ``colour``) did ``action``."""

    t: float
    colour: str
    shape: str
    action: str
    shape_id: int

    @property
    def words(self) -> list[str]:
        """The description: ``[colour, shape, action]``."""
        return [self.colour, self.shape, self.action]

    @property
    def text(self) -> str:
        """The description as one line, e.g. ``"red square enters"``."""
        return " ".join(self.words)


@dataclass(frozen=True)
class ShapeTrack:
    """One shape's life: piecewise-linear centre path (visible between the first and last waypoint) and colours."""

    shape_id: int
    shape: str
    size: float
    waypoints: tuple[tuple[float, float, float], ...]  # (t, x, y) of the centre, px
    colours: tuple[tuple[float, str], ...]  # (from t, colour name)

    def position(self, t: float) -> tuple[float, float] | None:
        """Centre (x, y) at time ``t``, ``None`` when the shape is not in the video then."""
        times = [w[0] for w in self.waypoints]
        if not times[0] <= t <= times[-1]:
            return None
        return float(np.interp(t, times, [w[1] for w in self.waypoints])), float(
            np.interp(t, times, [w[2] for w in self.waypoints])
        )

    def colour_at(self, t: float) -> str:
        """Colour name at time ``t`` (changes take effect at their time)."""
        names = [c for start, c in self.colours if start <= t + 1e-9]
        return names[-1] if names else self.colours[0][1]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video: :func:`render_video` is a pure function of it."""

    video_id: str
    num_frames: int
    fps: float
    width: int
    height: int
    background_seed: int
    shapes: tuple[ShapeTrack, ...]
    events: tuple[Event, ...] = field(default=())
    words: tuple[Word, ...] = field(default=())  # the commentary, in video time
    shading: float = DEFAULT_SHADING  # shape shading depth (see ``_draw``)

    @property
    def duration_s(self) -> float:
        """Video duration: ``num_frames / fps``."""
        return self.num_frames / self.fps


class _Mover:
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
        probe = _Mover(self.shape_id, self.shape, self.size, self.colour, self.t, self.box)
        probe.x, probe.y, probe.vx, probe.vy = self.x, self.y, self.vx, self.vy
        while True:
            dt, axis = probe._next_hit()
            hit = probe.t + dt
            if hit + self.size / 2 / math.hypot(self.vx, self.vy) >= not_before:
                return hit, axis
            probe.advance(hit + 1e-9, record=False)


def _direction(rng: np.random.Generator, speed: float, x_sign: float = 0.0, y_sign: float = 0.0) -> tuple[float, float]:
    """A velocity of norm ``speed`` with both components >= 34% of it; a non-zero sign fixes that component's sign."""
    angle = rng.uniform(math.asin(_MIN_AXIS), math.acos(_MIN_AXIS))
    sx = x_sign or rng.choice([-1.0, 1.0])
    sy = y_sign or rng.choice([-1.0, 1.0])
    return float(sx * speed * math.cos(angle)), float(sy * speed * math.sin(angle))


class _Planner:
    """Event-driven simulation of one video: draws events one at a time and moves the shapes between them."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator, duration: float):
        self.cfg, self.rng, self.duration = config, rng, duration
        self.movers: list[_Mover] = []
        self.events: list[Event] = []

    def _on_screen(self, t: float) -> list[_Mover]:
        return [m for m in self.movers if m.gone_t > t]

    def _candidates(self, tau: float, limit: float) -> dict[str, list[tuple[float, _Mover | None]]]:
        """Feasible events at target time ``tau``: action -> [(event time, shape)]."""
        live = self._on_screen(tau)
        ready = [m for m in live if m.ready_t <= tau and m.gone_t == math.inf]
        options: dict[str, list[tuple[float, _Mover | None]]] = {
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

    def _free_pairs(self, t: float, turning: _Mover | None = None) -> list[tuple[str, str]]:
        """(colour, shape) pairs not on screen at ``t``; with ``turning``, only those that shape could turn into."""
        taken = {(m.colour, m.shape) for m in self._on_screen(t)}
        if turning is not None:
            return [(c, turning.shape) for c in COLOURS if (c, turning.shape) not in taken]
        return [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in taken]

    def _enter(self, t: float) -> _Mover:
        cfg, rng = self.cfg, self.rng
        pairs = self._free_pairs(t)
        colour, shape = pairs[rng.integers(len(pairs))]
        size = float(rng.integers(cfg.shape_size[0], cfg.shape_size[1] + 1))
        half = size / 2
        box = (half, cfg.width - half, half, cfg.height - half)
        mover = _Mover(len(self.movers), shape, size, colour, t, box)
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
        mover.vx, mover.vy = _direction(rng, cfg.speed, inward if edge < 2 else 0.0, inward if edge >= 2 else 0.0)
        mover.ready_t = mover.t
        self.movers.append(mover)
        return mover

    def _leave(self, mover: _Mover, t_exit: float) -> None:
        hit, axis = mover.next_exit(t_exit - 1e-9)
        mover.advance(hit)
        mover.mark()
        out = 1.0 if (mover.x > self.cfg.width / 2 if axis == 0 else mover.y > self.cfg.height / 2) else -1.0
        mover.vx, mover.vy = (out * self.cfg.speed, 0.0) if axis == 0 else (0.0, out * self.cfg.speed)
        mover.t = hit + mover.size / self.cfg.speed  # straight out, perpendicular to the edge: fully gone
        mover.x, mover.y = mover.x + mover.vx * (mover.t - hit), mover.y + mover.vy * (mover.t - hit)
        mover.mark()
        mover.gone_t = mover.t

    def run(self) -> tuple[list[_Mover], list[Event]]:
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
                    mover.vx, mover.vy = _direction(rng, cfg.speed)
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


def _commentary(events: list[Event], config: SyntheticConfig, rng: np.random.Generator) -> list[Word]:
    """The words describing each event: ``colour shape action`` from ``t + delay``, one word per slot."""
    words = []
    for event in events:
        start = event.t + rng.uniform(*config.word_delay_s)
        for k, text in enumerate(event.words):
            t0 = start + k * config.word_duration_s
            words.append(Word(round(t0, 3), round(t0 + config.word_duration_s, 3), text))
    return words


def plan_video(config: SyntheticConfig, index: int) -> VideoSpec:
    """The spec (shapes, events, commentary) of the ``index``-th video of the data set ``config`` describes."""
    rng = np.random.default_rng([config.seed, index])
    background_seed = int(rng.integers(2**31))
    num_frames = max(1, round(rng.uniform(*config.duration_s) * config.fps))
    movers, events = _Planner(config, rng, num_frames / config.fps).run()
    tracks = tuple(ShapeTrack(m.shape_id, m.shape, m.size, tuple(m.waypoints), tuple(m.colours)) for m in movers)
    words = _commentary(events, config, np.random.default_rng([config.seed, index, 1]))
    return VideoSpec(
        video_id=video_id(index),
        num_frames=num_frames,
        fps=config.fps,
        width=config.width,
        height=config.height,
        background_seed=background_seed,
        shapes=tracks,
        events=tuple(events),
        words=tuple(words),
        shading=config.shading,
    )


def _background(seed: int, height: int, width: int) -> np.ndarray:
    """A static, muted background: a soft two-colour gradient plus low-frequency texture. ``[H, W, 3]`` float."""
    rng = np.random.default_rng(seed)
    grey = rng.uniform(95.0, 150.0)
    start = grey + rng.uniform(-15.0, 15.0, size=3)  # low saturation: channels stay close to the grey level
    end = grey + rng.uniform(-25.0, 25.0) + rng.uniform(-12.0, 12.0, size=3)
    angle = rng.uniform(0.0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5  # [H, W] each
    ramp = ((xx - width / 2) * math.cos(angle) + (yy - height / 2) * math.sin(angle)) / max(height, width) + 0.5
    image = start * (1 - ramp[..., None]) + end * ramp[..., None]  # [H, W, 3]
    cells = 6
    grid = rng.standard_normal((cells + 1, cells + 1))
    knots = np.arange(cells + 1)
    rows = np.stack([np.interp(np.linspace(0, cells, width), knots, g) for g in grid])  # [cells + 1, W]
    texture = np.stack([np.interp(np.linspace(0, cells, height), knots, col) for col in rows.T], axis=1)  # [H, W]
    return image + 5.0 * texture[..., None]


def _draw(shape: str, size: float, cx: float, cy: float, height: int, width: int, shading: float):
    """``(rows, cols, mask, shade)`` of the pixels the shape covers (pixel centres inside it), ``None`` if off-frame.

    ``shade`` ``[h, w]`` scales the colour: circles are shaded radially (1 at the centre, ``1 - shading`` at the rim),
    triangles vertically (``1 - shading`` at the apex, 1 at the base), squares are flat. The shading makes the shape
    visible inside every patch, not only along its outline, which random patch features need.
    """
    half = size / 2
    x0, x1 = max(math.floor(cx - half), 0), min(math.ceil(cx + half), width)
    y0, y1 = max(math.floor(cy - half), 0), min(math.ceil(cy + half), height)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1) + 0.5 - cx  # [w]
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]  # [h, 1]
    flat = np.ones((len(dy), len(dx)))  # [h, w]
    if shape == "square":
        mask, shade = (np.abs(dx) <= half) & (np.abs(dy) <= half), flat
    elif shape == "circle":
        radius = np.sqrt(dx**2 + dy**2) / half  # [h, w]
        mask, shade = radius <= 1, 1 - shading * np.minimum(radius, 1)
    else:  # triangle, apex up
        mask = (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
        shade = flat * (1 - shading * np.clip((half - dy) / size, 0, 1))
    return slice(y0, y1), slice(x0, x1), mask, shade


def render_video(spec: VideoSpec) -> np.ndarray:
    """Render a spec to ``[T, H, W, 3]`` uint8 RGB frames (a pure function of the spec).

    The shape whose latest event is the most recent is drawn on top.
    """
    times = np.arange(spec.num_frames) / spec.fps  # [T]
    background = np.clip(np.round(_background(spec.background_seed, spec.height, spec.width)), 0, 255)
    frames = np.repeat(background.astype(np.uint8)[None], spec.num_frames, axis=0)  # [T, H, W, 3]
    palette = np.array(list(COLOURS.values()), dtype=np.float64)  # [C, 3]
    names = list(COLOURS)
    layers = []
    for track in spec.shapes:
        wt = np.array([w[0] for w in track.waypoints])
        xs = np.interp(times, wt, [w[1] for w in track.waypoints])  # [T]
        ys = np.interp(times, wt, [w[2] for w in track.waypoints])  # [T]
        visible = (times >= wt[0]) & (times <= wt[-1])  # [T]
        change_t = np.array([c[0] for c in track.colours])
        colour_ids = np.array([names.index(c[1]) for c in track.colours])
        colour = colour_ids[np.clip(np.searchsorted(change_t, times + 1e-9, side="right") - 1, 0, None)]  # [T]
        event_t = np.array(sorted(e.t for e in spec.events if e.shape_id == track.shape_id))
        last = np.searchsorted(event_t, times + 1e-9, side="right") - 1  # [T]
        z = np.where(last >= 0, event_t[np.clip(last, 0, None)] if len(event_t) else 0.0, wt[0])  # [T]
        layers.append((track, xs, ys, visible, colour, z))
    for k in range(spec.num_frames):
        on = sorted((layer for layer in layers if layer[3][k]), key=lambda layer: (layer[5][k], layer[0].shape_id))
        for track, xs, ys, _, colour, _ in on:
            drawn = _draw(track.shape, track.size, xs[k], ys[k], spec.height, spec.width, spec.shading)
            if drawn is not None:
                rows, cols, mask, shade = drawn
                frames[k, rows, cols][mask] = np.round(shade[mask][:, None] * palette[colour[k]])  # [n, 3]
    return frames


def make_motion_video(
    num_frames: int, fps: float, speed: float, num_shapes: int = 2, size: int = 96, seed: int = 0
) -> np.ndarray:
    """A clip with a controlled amount of motion (no events), for tokenizer tests.

    Args:
        num_frames: number of frames T.
        fps: frame rate.
        speed: shape speed in px/s; 0 gives a static scene (all frames identical).
        num_shapes: shapes in the scene (distinct colour/shape pairs, at most 12).
        size: frame side (px); shapes are 1/6 to 1/4 of it.
        seed: seed of the layout, directions and background.

    Returns:
        ``[T, size, size, 3]`` uint8 RGB frames.
    """
    if num_frames < 1 or fps <= 0 or speed < 0 or not 0 <= num_shapes <= len(COLOURS) * len(SHAPES) or size < 8:
        raise InputError("make_motion_video", f"bad arguments {num_frames=}, {fps=}, {speed=}, {num_shapes=}, {size=}")
    rng = np.random.default_rng([seed, 0x6D6F74])
    background_seed = int(rng.integers(2**31))
    pairs = [(c, s) for s in SHAPES for c in COLOURS]
    duration = num_frames / fps
    tracks = []
    for shape_id, pick in enumerate(rng.permutation(len(pairs))[:num_shapes]):
        colour, shape = pairs[pick]
        side = float(rng.uniform(size / 6, size / 4))
        half = side / 2
        mover = _Mover(shape_id, shape, side, colour, 0.0, (half, size - half, half, size - half))
        mover.x, mover.y = rng.uniform(half, size - half, size=2)
        if speed > 0:
            mover.vx, mover.vy = _direction(rng, speed)
        mover.mark()
        mover.advance(duration)
        mover.mark()
        tracks.append(ShapeTrack(shape_id, shape, side, tuple(mover.waypoints), tuple(mover.colours)))
    spec = VideoSpec(f"motion_{seed}", num_frames, fps, size, size, background_seed, tuple(tracks))
    return render_video(spec)


def _split(config: SyntheticConfig) -> dict[str, list[str]]:
    order = np.random.default_rng([config.seed]).permutation(config.num_videos)
    held = round(config.num_videos * config.heldout_fraction)
    if config.heldout_fraction > 0 and config.num_videos >= 2:
        held = min(max(held, 1), config.num_videos - 1)
    return {
        "train": sorted(video_id(int(i)) for i in order[held:]),
        "heldout": sorted(video_id(int(i)) for i in order[:held]),
    }


def _write_dataset(folder: Path, config: SyntheticConfig) -> None:
    from mmduplex.video import write_video

    transcripts, events = [], []
    for index in range(config.num_videos):
        spec = plan_video(config, index)
        relpath = f"videos/{spec.video_id}.mp4"
        write_video(folder / relpath, render_video(spec), spec.fps)
        duration = round(spec.duration_s, 6)
        record = livecc_record(relpath, list(spec.words), 0.0, duration, title=spec.video_id)
        transcripts.append(json.dumps(record))
        events.append(
            json.dumps({"video": spec.video_id, "duration": duration, "events": [asdict(e) for e in spec.events]})
        )
    (folder / "transcripts.jsonl").write_text("\n".join(transcripts) + "\n", encoding="utf-8")
    (folder / "events.jsonl").write_text("\n".join(events) + "\n", encoding="utf-8")
    (folder / "split.json").write_text(json.dumps(_split(config), indent=2) + "\n", encoding="utf-8")
    manifest = {
        "format": "mmduplex-synthetic-commentary",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_json(),
        "videos": [video_id(i) for i in range(config.num_videos)],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks complete


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnnotationError(path, "not found: not a synthetic data set (run generate_dataset first)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "mmduplex-synthetic-commentary":
        raise AnnotationError(path, "not a synthetic commentary data set manifest")
    return manifest


def _is_complete(root: Path, config: SyntheticConfig) -> bool:
    """True when ``root`` holds a finished data set made by this generator version from ``config``."""
    try:
        manifest = _read_manifest(root)
    except AnnotationError:
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("config") != config.to_json():
        return False
    files = ["transcripts.jsonl", "events.jsonl", "split.json"] + [f"videos/{v}.mp4" for v in manifest["videos"]]
    return all((root / f).is_file() for f in files)


def generate_dataset(out_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> SyntheticDataset:
    """Make the synthetic data set in ``out_dir`` (or reuse it when it is already complete with the same config).

    The data set is written into a temporary folder beside ``out_dir`` and renamed over it at the end, so a killed
    run never leaves a folder that looks complete.

    Args:
        out_dir: the data set folder.
        config: the data set settings (default: :class:`SyntheticConfig` defaults).

    Raises:
        InputError: ``out_dir`` exists, is not empty and is not a synthetic data set (it is never overwritten).
    """
    config = config if config is not None else SyntheticConfig()
    root = Path(out_dir)
    if _is_complete(root, config):
        log.info("synthetic data set %s is complete, reusing it", root)
        return SyntheticDataset(root)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / MANIFEST).is_file())):
        raise InputError(root, "exists and is not a synthetic data set (no manifest.json); refusing to replace it")
    log.info("generating %d synthetic videos in %s", config.num_videos, root)
    with atomic_dir(root) as tmp:
        _write_dataset(tmp, config)
    return SyntheticDataset(root)


def load_events(path: str | os.PathLike) -> dict[str, list[Event]]:
    """Read ``events.jsonl``: video id -> its events in time order.

    Raises:
        AnnotationError: the file is missing or a line is malformed (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    out: dict[str, list[Event]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            events = [
                Event(float(e["t"]), str(e["colour"]), str(e["shape"]), str(e["action"]), int(e["shape_id"]))
                for e in record["events"]
            ]
            out[str(record["video"])] = events
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"line {lineno}: malformed JSON ({exc.msg})") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(path, f"line {lineno}: bad event record ({type(exc).__name__}: {exc})") from exc
        for event in events:
            if event.colour not in COLOURS or event.shape not in SHAPES or event.action not in ACTIONS:
                raise AnnotationError(path, f"line {lineno}: unknown event words {event.words}")
    return out


class SyntheticDataset:
    """A generated synthetic commentary data set on disk (see the module docstring for its layout).

    Args:
        root: the data set folder (made by :func:`generate_dataset`).

    Raises:
        AnnotationError: ``root`` has no valid manifest or split.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        manifest = _read_manifest(self.root)
        try:
            self.config = SyntheticConfig(**manifest["config"])
            self._ids: list[str] = list(manifest["videos"])
        except (KeyError, TypeError) as exc:
            raise AnnotationError(self.root / MANIFEST, f"bad manifest ({exc}); regenerate the data set") from exc
        split_path = self.root / "split.json"
        try:
            self.split: dict[str, list[str]] = json.loads(split_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AnnotationError(split_path, f"cannot read the split ({exc})") from exc
        self._events: dict[str, list[Event]] | None = None

    @property
    def transcripts_path(self) -> Path:
        """The LiveCC-format transcripts (one line per video)."""
        return self.root / "transcripts.jsonl"

    @property
    def events_path(self) -> Path:
        """The per-video event lists."""
        return self.root / "events.jsonl"

    def video_ids(self, split: str | None = None) -> list[str]:
        """Video ids of ``split`` (``"train"`` or ``"heldout"``; ``None`` for all), sorted."""
        if split is None:
            return list(self._ids)
        if split not in SPLITS:
            raise InputError("split", f"must be one of {SPLITS} or None, got {split!r}")
        return list(self.split[split])

    def videos(self, split: str | None = None) -> list[Path]:
        """Video files of ``split`` (``"train"``, ``"heldout"`` or ``None`` for all), sorted by id."""
        return [self.video_path(v) for v in self.video_ids(split)]

    def video_path(self, video_id: str) -> Path:
        """The mp4 of one video."""
        return self.root / "videos" / f"{video_id}.mp4"

    def events(self, video_id: str) -> list[Event]:
        """The events of one video, in time order."""
        if self._events is None:
            self._events = load_events(self.events_path)
        if video_id not in self._events:
            raise InputError(video_id, f"no such video in {self.events_path}")
        return self._events[video_id]

    def clips(self, split: str | None = None) -> list[TimedClip]:
        """The transcripts of ``split`` as :class:`TimedClip` (video paths absolute under ``root``)."""
        keep = {os.fspath(p) for p in self.videos(split)}
        return [c for c in load_livecc_jsonl(self.transcripts_path, root=self.root) if c.video in keep]

    def spec(self, video_id: str) -> VideoSpec:
        """The render spec of one video (re-planned from the config; ``render_video`` of it gives its frames)."""
        if video_id not in self._ids:
            raise InputError(video_id, f"no such video in {self.root}")
        return plan_video(self.config, self._ids.index(video_id))
