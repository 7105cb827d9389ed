"""Event buckets of the commentary figures: events grouped by what the scene held (objects on screen at the event,
other shapes seen before it) and accuracy per group, from the synthetic set's planned shape tracks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from mmduplex.eval.commentary import EventLike


class TrackLike(Protocol):
    """A shape's path (``mmduplex.data.synthetic.ShapeTrack``): ``size`` px, centre at ``position(t)`` or ``None``."""

    shape_id: int
    size: float

    def position(self, t: float) -> tuple[float, float] | None: ...


def objects_on_screen(tracks: Iterable[TrackLike], event: EventLike, width: int, height: int) -> int:
    """Shapes with any part inside the ``width`` x ``height`` frame at the event's time, its own shape included."""
    seen = {getattr(event, "shape_id", None)}
    for track in tracks:
        centre = track.position(event.t)
        if centre is None:
            continue
        half = track.size / 2
        if centre[0] + half > 0 and centre[0] - half < width and centre[1] + half > 0 and centre[1] - half < height:
            seen.add(track.shape_id)
    return len(seen - {None}) or 1


def shapes_seen_before(
    tracks: Iterable[TrackLike], event: EventLike, width: int, height: int, step_s: float = 0.05
) -> int:
    """Other shapes (its own excluded) that had any part inside the ``width`` x ``height`` frame at some time before
    the event: the video's history of objects the model must keep apart. Tracks are sampled every ``step_s`` s."""
    own = getattr(event, "shape_id", None)
    times = [k * step_s for k in range(max(0, math.ceil(event.t / step_s)))]
    count = 0
    for track in tracks:
        if track.shape_id == own:
            continue
        half = track.size / 2
        for t in times:
            centre = track.position(t)
            if centre is not None and -half < centre[0] < width + half and -half < centre[1] < height + half:
                count += 1
                break
    return count


def others_moving(
    tracks: Iterable[TrackLike], event: EventLike, width: int, height: int, interval_s: float = 0.2
) -> int:
    """Other shapes (its own excluded) with any part inside the frame at the event's time that moved over the
    ``interval_s`` before it (their centre shifted by more than half a pixel): what sends flow tokens in the same
    steps as the event's own shape."""
    own = getattr(event, "shape_id", None)
    count = 0
    for track in tracks:
        now, before = track.position(event.t), track.position(event.t - interval_s)
        if track.shape_id == own or now is None or before is None:
            continue
        half = track.size / 2
        inside = -half < now[0] < width + half and -half < now[1] < height + half
        count += inside and abs(now[0] - before[0]) + abs(now[1] - before[1]) > 0.5
    return count


def count_bucket(count: int) -> str:
    """The ``"0"`` / ``"1+"`` key of an event by a count of other shapes (``event_accuracy_by_history``: seen before
    it; ``event_accuracy_by_others_moving``: moving at it)."""
    return "0" if count == 0 else "1+"


def object_bucket(count: int) -> str:
    """The ``event_accuracy_by_objects`` key of an event with ``count`` objects on screen: ``"1"`` or ``"2+"``."""
    return "1" if count <= 1 else "2+"


def accuracy_by_group(outcomes: Iterable[tuple[str, bool]]) -> dict[str, float | None]:
    """Share described per group, from ``(group, described)`` pairs (micro; groups in sorted order)."""
    counts: dict[str, list[int]] = {}
    for group, described in outcomes:
        tally = counts.setdefault(group, [0, 0])
        tally[0] += int(described)
        tally[1] += 1
    return {group: hit / total for group, (hit, total) in sorted(counts.items())}
