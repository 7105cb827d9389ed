"""The synthetic world's vocabulary and data types: colours, shapes, actions, the settings, events, tracks, specs.

The simulation that fills these types is :mod:`mmduplex.data.synthetic_plan`, the users' questions about it
:mod:`mmduplex.data.synthetic_questions`; both (and :mod:`mmduplex.data.synthetic`) re-export these names.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmduplex.data.transcripts import Word
from mmduplex.errors import InputError

if TYPE_CHECKING:
    from mmduplex.data.synthetic_questions import SyntheticQuestion

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 215, 30),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
ACTIONS: tuple[str, ...] = ("enters", "stops", "moves", "turns", "leaves")
DEFAULT_SHADING = 0.6  # shading depth of circles / triangles (see ``synthetic_render._draw``)


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
    """Share of the videos in the held-out split (scored once per configuration, never used to choose settings)."""
    val_fraction: float = 0.0
    """Share of the videos in the val split, on which settings are chosen; drawn after the held-out videos, so adding
    a val split moves videos out of train and leaves the held-out set as it was."""
    seed: int = 0
    """Seed of everything random; different seeds give different data."""
    question_interval_s: float = 0.0
    """Mean time between a question's answer and the next question (s); 0 asks none (the data is then exactly
    what it was before questions existed)."""
    choice_fraction: float = 0.5
    """Share of the questions asked as multiple choice (LongVideoBench prompt, answered by the option's letter)."""
    question_tokens_per_step: int = 4
    """How fast a typed question arrives: tokens per step (one token per word with the synthetic tokenizer), each
    line of a question starting a new step. The model trained on the set must match it (its ``user_slots_per_step``)."""
    question_step_hz: float = 5.0
    """The step rate questions are typed at (the model's ``step_hz``)."""
    answer_delay_s: float = 0.2
    """Time from a question's last token to its answer's first word (s), when no line is being spoken then."""

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
            "val_fraction": (
                0 <= self.val_fraction < 1 - self.heldout_fraction,
                "must be in [0, 1 - heldout_fraction)",
            ),
            "question_interval_s": (0 <= self.question_interval_s < math.inf, "must be >= 0 (0: no questions)"),
            "choice_fraction": (0 <= self.choice_fraction <= 1, "must be in [0, 1]"),
            "question_tokens_per_step": (self.question_tokens_per_step >= 1, "must be >= 1"),
            "question_step_hz": (0 < self.question_step_hz < math.inf, "must be > 0"),
            "answer_delay_s": (0 <= self.answer_delay_s < math.inf, "must be >= 0"),
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
    questions: tuple[SyntheticQuestion, ...] = field(default=())  # the user's questions, in time order

    @property
    def duration_s(self) -> float:
        """Video duration: ``num_frames / fps``."""
        return self.num_frames / self.fps
