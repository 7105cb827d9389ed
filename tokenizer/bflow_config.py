"""The settings of a B-Flow tokenizer (:mod:`mmduplex.tokenizer.bflow`), saved with every checkpoint and bundle.

A bundle written before a field existed loads with that field's default, which keeps the behaviour it was written
with (``flow_mode`` defaults to ``"patch"``, the only mode there was).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mmduplex.errors import InputError
from mmduplex.tokenizer.flow import FLOW_MODES

RECONSTRUCTIONS = ("learned", "cells")
FLOW_ORDERS = ("score", "position")
SPLITS = ("blobs", "peaks")


@dataclass
class BFlowConfig:
    """Hyper-parameters of a B-Flow tokenizer (saved with every checkpoint and bundle)."""

    dim: int
    """Patch feature width D of the frozen encoder (the token width, or twice it with ``change_tokens``)."""
    grid: tuple[int, int]
    """Patch grid (h, w) of the encoder; P = h * w."""
    num_key_tokens: int = 16
    """K: tokens per keyframe."""
    key_threshold: float = 0.5
    """A keyframe is wanted when more than this fraction of the regions moved by more than ``key_motion``."""
    key_motion: float = 0.5
    """Motion ``1 - cos(x_t, S)`` a region needs to count towards the keyframe rule (the scene has gone stale)."""
    flow_threshold: float = 0.4
    """A region changed when its motion exceeds the frame's global motion (if compensated) by more than this."""
    global_motion: bool = True
    """Compensate global (camera) motion: a region's flow score is its motion minus the median region motion."""
    flow_region: int = 1
    """Flow regions are flow_region x flow_region patch blocks (1 = single patches); must divide the grid."""
    max_flow_tokens: int | None = 8
    """At most this many flow tokens per frame, the most changed first (None = one per region)."""
    max_tokens_per_frame: int | None = None
    """At most this many tokens in any frame (None = no cap): flow frames keep their most-changed regions; must be
    >= num_key_tokens. Tie it to what the consumer carries per frame interval (duplex slots per step x steps/frame)."""
    min_keyframe_interval_s: float = 2.0
    """A wanted (not forced) keyframe waits until the last one is this old (s); bounds keyframes to K / this tok/s."""
    max_keyframe_interval_s: float = 20.0
    """A keyframe is forced when the last one is this old (s); a duplex recipe keeps it below the model's window."""
    target_rate: float | None = None
    """Token budget in tokens/s after the first keyframe (None = variable rate, thresholds only)."""
    bucket_seconds: float = 2.0
    """Token bucket capacity in seconds of budget (at least K tokens)."""
    hidden_dim: int | None = None
    """Width of the attention / MLP layers of the learned decoders (None = D)."""
    embed_scale: float = 1.0
    """RMS of the kind/time/position embeddings added to token values handed downstream (values have RMS 1)."""
    change_tokens: bool = False
    """Hand downstream what changed, not only what is there: each token is ``[embedded value, value - before]``
    (width 2D), where ``before`` is what the tokens had described at the flow token's region (its reference
    state); keyframe tokens carry zeros in the second half. A colour change in place then differs from an object
    entering empty background, and motion from a new object. Decisions and reconstruction do not depend on it."""
    reconstruction: str = "learned"
    """``"learned"``: the trained decoders; ``"cells"``: the fixed rule every tokenizer can be judged by (key tokens
    bilinearly upsampled from their cells, flow tokens copied to their regions). Decisions do not depend on it."""
    flow_mode: str = "patch"
    """What a flow token covers (:mod:`mmduplex.tokenizer.flow`). ``"patch"``: one ``flow_region`` cell, cells
    ranked most changed first, the reference updated only where tokens went out (what bundles written before
    ``flow_mode`` existed do). ``"region"``: one connected changed region sized to the motion, its value pooled, its
    position and extent embedded; the reference is updated over every changed region, emitted or not, so a change
    past the caps is dropped, never queued behind later frames (no backlog: a stop is news at once)."""
    region_grow: float = 0.5
    """Region mode: a region grows over neighbouring cells whose flow score exceeds this fraction of
    ``flow_threshold`` (hysteresis; 1 = seeds only)."""
    region_max: int | None = 4
    """Region mode: a region wider or taller than this many cells is cut into tiles of at most this side (None =
    never)."""
    region_split: float | None = 2.0
    """Region mode: a region holding several blobs of cells that differ from the last keyframe by more than this
    times ``flow_threshold`` (what is new there: an object, not the background it vacated) is split into one region
    per blob, so two objects whose changes touch get a token each (None = never split)."""
    split_at: str = "blobs"
    """Region mode, with ``region_split``: what a region is split between. ``"blobs"``: the connected blobs of its
    cells new since the keyframe; ``"peaks"``: the cells among those that are local maxima (3 x 3) of that novelty,
    so two objects whose halos in the encoder's features touch (on a 12 x 12 grid, objects a few cells apart) still
    get a token each (each cell joins its nearest peak)."""
    refresh_interval_s: float | None = None
    """Region mode: every this many seconds, the still regions that differ from the last keyframe (what appeared
    since and stays, e.g. a shape that stopped) get a token of kind ``still`` if the frame has room after its changed
    regions (None = no refresh: a still shape is seen again at the next keyframe)."""
    stop_tokens: bool = False
    """Region mode: where a motion ended (a changed region of the previous frame of which under a third changes now),
    the cells that differ clearly from the last keyframe (``region_split`` times ``flow_threshold``: an object that
    came to rest there) get a ``still`` token at once, ranked after the frame's changed regions: a stop is news as a
    token, not only as an absence (with two objects moving, the absence alone does not say which one stopped)."""
    motion_kinds: bool = False
    """Region mode: a flow token says what the motion did, by its kind embedding: ``start`` where under a third of its
    region changed in the previous frame (an object starts to move or comes in), ``gone`` where its region is
    back to the last keyframe's content (what was there left; the token then carries what the tokens had described
    there, not the background now), ``flow`` for a motion going on. Decisions and reconstruction do not depend on it.
    With two objects moving, the event is then in the one token of the object it happened to, not only in how the
    step's sum differs from the last one."""
    steady_every_s: float | None = None
    """Region mode: a changed region that goes on with a motion of the previous frame (at least a third of its cells
    were in the previous frame's changed regions) and looks like what moved there (its pooled value's cosine to
    theirs at least ``steady_similarity``) is a *steady* motion: it gets a token only once this many seconds have
    passed since the last token of the motion it continues (followed from frame to frame through the regions'
    cells); a motion that starts, an object that comes in, a change of appearance get a token at once. With two
    objects moving, the frame where one of them acts then holds that object's token alone, not both summed (None:
    every changed region gets a token, as before the option). Pair it with ``stop_tokens``: a steady motion sends
    few tokens, so its end is not visible as an absence. On the demo's val split (1 s, with ``stop_tokens``) every
    bucket fell, single-shape events too: the model reads motion from a shape's tokens frame after frame
    (notebooks/LOG.md#2026-12-07-steady-motion)."""
    steady_similarity: float = 0.9
    """Region mode, with ``steady_every_s``: the cosine a region's pooled value needs to what moved there in the
    previous frame for the motion to count as steady (the same object's look)."""
    flow_order: str = "score"
    """Region mode: the order of a frame's flow tokens (hence of the duplex model's video slots). ``"score"``: the
    largest change first; ``"position"``: the regions chosen (still the largest changes first when a cap binds) in
    raster order of their centres, so an object keeps its place among the frame's tokens from one frame to the next
    while the objects do not pass each other (a slot then tends to follow one object)."""

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        h, w = self.grid
        problems = []
        if self.dim < 2 or h < 1 or w < 1:
            problems.append(f"need dim >= 2 and a positive grid, got dim={self.dim}, grid={self.grid}")
        if self.num_key_tokens < 1 or self.num_key_tokens > h * w:
            problems.append(f"num_key_tokens={self.num_key_tokens} must be in [1, {h * w}]")
        if not 0.0 <= self.key_threshold <= 1.0:
            problems.append(f"key_threshold={self.key_threshold} must be a fraction in [0, 1]")
        if not 0.0 <= self.key_motion < 2.0:
            problems.append(f"key_motion={self.key_motion} must be in [0, 2)")
        if not 0.0 <= self.flow_threshold < 2.0:
            problems.append(f"flow_threshold={self.flow_threshold} must be in [0, 2)")
        if self.flow_region < 1 or h % self.flow_region or w % self.flow_region:
            problems.append(f"flow_region={self.flow_region} must divide the {h}x{w} grid")
        if self.max_flow_tokens is not None and self.max_flow_tokens < 0:
            problems.append(f"max_flow_tokens={self.max_flow_tokens} must be >= 0")
        if self.max_tokens_per_frame is not None and self.max_tokens_per_frame < self.num_key_tokens:
            problems.append(
                f"max_tokens_per_frame={self.max_tokens_per_frame} must be >= num_key_tokens={self.num_key_tokens}"
            )
        if not 0.0 <= self.min_keyframe_interval_s <= self.max_keyframe_interval_s:
            problems.append(
                f"min_keyframe_interval_s={self.min_keyframe_interval_s} must be in [0, max_keyframe_interval_s]"
            )
        if not self.max_keyframe_interval_s > 0:
            problems.append(f"max_keyframe_interval_s={self.max_keyframe_interval_s} must be > 0")
        if self.flow_mode not in FLOW_MODES:
            problems.append(f"flow_mode={self.flow_mode!r} must be one of {FLOW_MODES}")
        if not 0.0 < self.region_grow <= 1.0:
            problems.append(f"region_grow={self.region_grow} must be in (0, 1]")
        if self.region_max is not None and self.region_max < 1:
            problems.append(f"region_max={self.region_max} must be >= 1 (or None)")
        if self.region_split is not None and not self.region_split > 0:
            problems.append(f"region_split={self.region_split} must be > 0 (or None)")
        if self.refresh_interval_s is not None and not (self.refresh_interval_s > 0 and self.flow_mode == "region"):
            problems.append(f"refresh_interval_s={self.refresh_interval_s} needs flow_mode 'region' and must be > 0")
        if self.split_at not in SPLITS:
            problems.append(f"split_at={self.split_at!r} must be one of {SPLITS}")
        for name in ("stop_tokens", "motion_kinds"):
            if getattr(self, name) and self.flow_mode != "region":
                problems.append(f"{name} needs flow_mode 'region'")
        if self.steady_every_s is not None and not (self.steady_every_s > 0 and self.flow_mode == "region"):
            problems.append(f"steady_every_s={self.steady_every_s} needs flow_mode 'region' and must be > 0")
        if not -1.0 <= self.steady_similarity <= 1.0:
            problems.append(f"steady_similarity={self.steady_similarity} must be a cosine in [-1, 1]")
        if self.flow_order not in FLOW_ORDERS or (self.flow_order != "score" and self.flow_mode != "region"):
            problems.append(f"flow_order={self.flow_order!r} must be one of {FLOW_ORDERS} (position needs region mode)")
        if self.reconstruction not in RECONSTRUCTIONS:
            problems.append(f"reconstruction={self.reconstruction!r} must be one of {RECONSTRUCTIONS}")
        if not self.bucket_seconds > 0:
            problems.append(f"bucket_seconds={self.bucket_seconds} must be > 0")
        if self.target_rate is not None and not (
            self.target_rate > 0 and self.target_rate * self.max_keyframe_interval_s >= self.num_key_tokens
        ):
            problems.append(
                f"target_rate={self.target_rate} tok/s cannot afford a keyframe of {self.num_key_tokens} tokens "
                f"every {self.max_keyframe_interval_s}s (need >={self.num_key_tokens / self.max_keyframe_interval_s:g})"
            )
        if problems:
            raise InputError("config", "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BFlowConfig:
        """Build from a plain dict (a bundle's ``config.json``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("config", f"unknown B-Flow config keys {unknown}")
        return cls(**data)
