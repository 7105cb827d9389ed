"""Drawing the synthetic world: a planned :class:`~mmduplex.data.synthetic_plan.VideoSpec` to RGB frames.

Circles are shaded radially and triangles vertically (squares are flat), so that the shape shows inside every 8 px
patch and not only along its outline: with frozen random-init patch features a small probe then tells the shape
apart (flat shapes are barely above chance). The shape of the latest event is drawn on top, so every event's shape
is visible. :func:`make_motion_video` renders a clip with a controlled amount of motion and no events, for tokenizer
tests. Everything is a pure function of its arguments.
"""

from __future__ import annotations

import math

import numpy as np

from mmduplex.data.synthetic_plan import COLOURS, SHAPES, Mover, ShapeTrack, VideoSpec, random_direction
from mmduplex.errors import InputError


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
        mover = Mover(shape_id, shape, side, colour, 0.0, (half, size - half, half, size - half))
        mover.x, mover.y = rng.uniform(half, size - half, size=2)
        if speed > 0:
            mover.vx, mover.vy = random_direction(rng, speed)
        mover.mark()
        mover.advance(duration)
        mover.mark()
        tracks.append(ShapeTrack(shape_id, shape, side, tuple(mover.waypoints), tuple(mover.colours)))
    spec = VideoSpec(f"motion_{seed}", num_frames, fps, size, size, background_seed, tuple(tracks))
    return render_video(spec)
