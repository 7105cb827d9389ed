"""Stage 5 of ``mmduplex demo``: stream videos through a trained model, score the commentary, tune the PAD bias.

- :func:`stream_video` streams a video file frame by frame through the bundle's frozen encoder (the real path, as
  ``mmduplex stream`` does); :func:`stream_features` streams cached patch features (the same tokenizer and slot
  packer after the encoder; used for the PAD-bias search and the video ablation). Both run the one streaming loop,
  :class:`mmduplex.inference.commentary.Commentary`, with the demo's line settings.
- :func:`score_videos` gives a model's figures on held-out videos: the event figures of
  :mod:`mmduplex.eval.commentary`, ``talk_ratio`` (the model's speaking time, the union of its cue spans, over the
  reference's, the union of its word spans), ``event_accuracy_by_objects`` (events grouped by the number of
  shapes with any part inside the frame at the event's time, computed from the data set's shape tracks) and
  ``event_accuracy_by_action``.
- :func:`stream_many`: many videos through one model at once (lockstep batches of :data:`STREAM_BATCH`), each
  stream as it streams alone; the demo's scoring, PAD-bias search and ablation stream this way.
- :func:`tune_pad_bias`: the same rule for every model: the PAD bias that makes the model talk as much as the
  reference, searched on training videos only (never held-out ones).
- :func:`video_ablation`: the main model streamed over each held-out video with another held-out video's features
  (video ``i`` gets video ``i + 1``'s, cyclically, at video ``i``'s own frame times), scored against video ``i``'s
  events: a model that uses the video falls to chance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmduplex.eval.buckets import (
    accuracy_by_group,
    count_bucket,
    object_bucket,
    objects_on_screen,
    others_moving,
    shapes_seen_before,
)
from mmduplex.eval.commentary import (
    EventTally,
    match_events,
    speaking_s,
    tally_events,
)
from mmduplex.inference.commentary import Commentary, LineCollector, open_frames
from mmduplex.io.outputs import CommentaryLine, LineBuilder
from mmduplex.lm.alignment import time_to_step

if TYPE_CHECKING:
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.inference.batched import Watch
    from mmduplex.inference.session import DuplexSession, StepOutput
    from mmduplex.io.feature_cache import FeatureCache

MAX_WORDS_PER_LINE = 8
"""A commentary line closes after this many words (as ``mmduplex stream``'s default)."""
MIN_DISPLAY_S = 1.0
"""A line stays on screen this long after its last word."""
BIAS_BRACKET = (1.0, 32.0)
"""PAD-bias search: the first step away from 0 and the largest magnitude tried (logits)."""
BIAS_RESOLUTION = 0.1
"""PAD-bias search: bisection stops when the bracket is this narrow (logits). A greedy model that does not see the
video (text only) switches from silence to talking all the time at one bias: no bias between gives the target."""
TALK_TOLERANCE = 0.1
"""PAD-bias search: stop when the talk ratio is within this share of the target."""
STREAM_BATCH = 8
"""Videos the demo streams through one model at once, in lockstep (:func:`stream_many`): one batched LM step per
tick serves them all, each stream's words those of streaming it alone up to the batched matmuls' rounding."""


@dataclass
class StreamResult:
    """One model's commentary of one video."""

    video_id: str
    lines: list[CommentaryLine]
    steps: int
    compute_s: float
    stream_s: float
    video_tokens: int
    """Tokens the video tokenizer emitted for this video (all of them, also any the slot packer had to drop)."""
    frame_tokens: list[tuple[float, int]] = field(default_factory=list)
    """``(t, tokens)`` of every frame pushed, in time order."""
    words: list[tuple[float, str]] = field(default_factory=list)
    """``(t, word)`` of every word the model said (pieces glued to the word they continue)."""


def lines_of(
    outputs: Iterable[StepOutput], pause_steps: int
) -> tuple[list[CommentaryLine], int, list[tuple[float, str]]]:
    """The commentary lines of a stream's step outputs, the number of steps, and every ``(t, word)`` said."""
    collector = LineCollector(LineBuilder(pause_steps, MAX_WORDS_PER_LINE, MIN_DISPLAY_S))
    for out in outputs:
        collector.push(out)
    collector.flush()
    return collector.lines, collector.steps, collector.words


def _counting(session: DuplexSession, frames: Iterable[tuple[float, Any]], counts: list[tuple[float, int]]):
    """Yield ``frames``; each time the next one is asked for, the previous one has been pushed: count its tokens."""
    last = None
    for t, frame in frames:
        if last is not None:
            counts.append((last[0], session.video_tokens + session.dropped_video_tokens - last[1]))
        last = (float(t), session.video_tokens + session.dropped_video_tokens)
        yield t, frame
    if last is not None:
        counts.append((last[0], session.video_tokens + session.dropped_video_tokens - last[1]))


def _stream(
    session: DuplexSession, video_id: str, source: Any, pause_steps: int, counts: list[tuple[float, int]] | None = None
) -> StreamResult:
    """``source`` streamed through ``session`` (reset first) by the streaming loop, with the end-of-input flush."""
    commentary = Commentary(
        session, source, pause_steps=pause_steps, line_words=MAX_WORDS_PER_LINE, line_display_s=MIN_DISPLAY_S
    )
    lines = list(commentary)
    steps, tokens = commentary.steps, session.video_tokens + session.dropped_video_tokens
    return StreamResult(
        video_id, lines, steps, commentary.wall_s, steps / session.step_hz, tokens, counts or [], commentary.words
    )


def stream_video(session: DuplexSession, video: Path, pause_steps: int) -> StreamResult:
    """Stream one video file through ``session`` (reset first) frame by frame, with the end-of-input flush: the
    path ``mmduplex stream`` takes, with the demo's line settings."""
    counts: list[tuple[float, int]] = []
    frames = open_frames(video, session)  # decoded as the feature cache was made
    return _stream(session, video.stem, _counting(session, frames, counts), pause_steps, counts)


def stream_many(
    session: DuplexSession,
    sources: Sequence[tuple[str, Iterable[Any]]],
    pause_steps: int,
    lengths: Sequence[float] | None = None,
    batch: int = STREAM_BATCH,
    watch: Watch | None = None,
) -> list[StreamResult]:
    """Each ``(video_id, events)`` source streamed as :func:`stream_video` / :func:`stream_features` stream it alone
    through a reset ``session``, ``batch`` at a time in lockstep
    (:func:`~mmduplex.inference.batched.stream_batched`); ``session``'s own stream state is left alone.

    ``lengths`` (one per source, e.g. seconds): sources are batched longest first, so a batch's streams end together;
    the results come back in the order given. A result's ``compute_s`` is its share of its batch's wall time.
    ``watch``: :func:`~mmduplex.inference.batched.stream_batched`'s hook, called with the source's index as given.
    ``batch=1`` without ``watch`` streams them one after the other through ``session`` itself (any session with
    ``step`` / ``flush``).
    """
    from mmduplex.inference.batched import stream_batched

    if batch == 1 and watch is None:
        return [_stream(session, video_id, events, pause_steps) for video_id, events in sources]
    order = list(range(len(sources)))
    if lengths is not None:
        order.sort(key=lambda i: lengths[i], reverse=True)  # stable: ties keep their order
    streamed = stream_batched(
        session,
        [sources[i] for i in order],
        pause_steps,
        batch=batch,
        line_words=MAX_WORDS_PER_LINE,
        line_display_s=MIN_DISPLAY_S,
        watch=None if watch is None else (lambda position, *rest: watch(order[position], *rest)),
    )
    results: list[StreamResult] = [None] * len(sources)  # type: ignore[list-item]
    for i, s in zip(order, streamed, strict=True):
        stream_s = s.steps / session.step_hz
        results[i] = StreamResult(
            s.video_id, s.lines, s.steps, s.compute_s, stream_s, s.video_tokens, s.frame_tokens, s.words
        )
    return results


def feature_pairs(times: Sequence[float], patches: torch.Tensor) -> Iterator[tuple[float, torch.Tensor]]:
    """Cached patch features ``[T, P, D]`` shown at ``times`` as the ``(t, patches [P, D])`` pairs the loop takes."""
    return zip((float(t) for t in times), patches, strict=True)


def stream_features(
    session: DuplexSession, video_id: str, times: Sequence[float], patches: torch.Tensor, pause_steps: int
) -> StreamResult:
    """Stream cached patch features ``[T, P, D]`` shown at ``times`` through ``session`` (reset first)."""
    return _stream(session, video_id, feature_pairs(times, patches), pause_steps)


# ----------------------------------------------------------------------------------------------- scoring


def reference_words(dataset: SyntheticDataset, split: str | None) -> dict[str, list]:
    """Video id -> its reference words in video time (:class:`~mmduplex.data.transcripts.Word`), for the videos of
    ``split`` (``None``: every video)."""
    from mmduplex.data.transcripts import Word

    return {
        Path(clip.video).stem: [Word(clip.start_s + w.start, clip.start_s + w.end, w.text) for w in clip.words]
        for clip in dataset.clips(split)
    }


@dataclass(frozen=True)
class EventScene:
    """What the scene held at each of a video's events (from the planned shape tracks, not from the pixels), one
    entry per event: shapes on screen (its own included), other shapes seen earlier in the video, other shapes moving
    on screen (their flow tokens share the event's steps: notebooks/LOG.md#2026-12-07-moving-pairs)."""

    objects: list[int]
    history: list[int]
    others_moving: list[int]


def event_scene(dataset: SyntheticDataset, video_id: str) -> EventScene:
    """The :class:`EventScene` of each of the video's events (its spec planned once)."""
    spec, events = dataset.spec(video_id), dataset.events(video_id)
    size = (spec.width, spec.height)
    return EventScene(
        [objects_on_screen(spec.shapes, event, *size) for event in events],
        [shapes_seen_before(spec.shapes, event, *size) for event in events],
        [others_moving(spec.shapes, event, *size) for event in events],
    )


@dataclass
class VideoScore:
    """One video's commentary matched against its reference, item by item (what a video page shows)."""

    video_id: str
    lines: list[CommentaryLine]
    line_kinds: list[str]
    latencies: list[float | None]
    objects: list[int]
    frame_tokens: list[tuple[float, int]]


def score_videos(
    results: Sequence[StreamResult], dataset: SyntheticDataset, tolerance_s: float, split: str | None = None
) -> tuple[dict[str, Any], list[VideoScore]]:
    """A model's figures over ``results`` (micro-pooled) and each video's item-by-item match (``split``: where the
    results' videos are, to read fewer transcripts; ``None``: look in every split)."""
    words = reference_words(dataset, split)
    total = EventTally()
    outcomes: list[tuple[str, bool]] = []
    by_action: list[tuple[str, bool]] = []
    by_history: list[tuple[str, bool]] = []
    by_moving: list[tuple[str, bool]] = []
    spoken = reference = 0.0
    scores = []
    for result in results:
        events = dataset.events(result.video_id)
        match = match_events(result.lines, events, tolerance_s)
        scene = event_scene(dataset, result.video_id)
        objects = scene.objects
        total += tally_events(result.lines, events, tolerance_s)
        hits = [lat is not None for lat in match.latencies]
        outcomes += [(object_bucket(n), hit) for n, hit in zip(objects, hits, strict=True)]
        by_history += [(count_bucket(n), hit) for n, hit in zip(scene.history, hits, strict=True)]
        by_moving += [(count_bucket(n), hit) for n, hit in zip(scene.others_moving, hits, strict=True)]
        by_action += [(event.action, lat is not None) for event, lat in zip(events, match.latencies, strict=True)]
        spoken += speaking_s((line.start, line.end) for line in result.lines)
        reference += speaking_s((w.start, w.end) for w in words.get(result.video_id, []))
        scores.append(
            VideoScore(result.video_id, result.lines, match.line_kinds, match.latencies, objects, result.frame_tokens)
        )
    metrics = total.metrics()
    by_objects = accuracy_by_group(outcomes)
    figures = {
        "event_accuracy": metrics["event_accuracy"],
        "event_precision": metrics["event_precision"],
        "median_latency_s": metrics["median_latency_s"],
        "p90_latency_s": metrics["p90_latency_s"],
        "events": metrics["events"],
        "lines": metrics["lines"],
        "talk_ratio": spoken / reference if reference else None,
        "event_accuracy_by_objects": {key: by_objects.get(key) for key in ("1", "2+")},
        "events_by_objects": {key: sum(1 for g, _ in outcomes if g == key) for key in ("1", "2+")},
        "event_accuracy_by_action": accuracy_by_group(by_action),
        "event_accuracy_by_history": {key: accuracy_by_group(by_history).get(key) for key in ("0", "1+")},
        "events_by_history": {key: sum(1 for g, _ in by_history if g == key) for key in ("0", "1+")},
        # events while 0 / 1+ other shapes move on screen: with 1+, two shapes' tokens share the event's steps
        "event_accuracy_by_others_moving": {key: accuracy_by_group(by_moving).get(key) for key in ("0", "1+")},
        "events_by_others_moving": {key: sum(1 for g, _ in by_moving if g == key) for key in ("0", "1+")},
    }
    return figures, scores


def rate_figures(results: Sequence[StreamResult], duration_s: float) -> dict[str, Any]:
    """``video_tokens_per_second`` (over the videos' duration) and ``rtf`` (compute time / stream time)."""
    compute = sum(r.compute_s for r in results)
    stream = sum(r.stream_s for r in results)
    return {
        "video_tokens_per_second": sum(r.video_tokens for r in results) / duration_s if duration_s else None,
        "rtf": compute / stream if stream else None,
    }


# ----------------------------------------------------------------------------------------------- PAD bias


def reference_talk_ratio(dataset: SyntheticDataset, ids: Sequence[str], step_hz: float, pause_steps: int) -> float:
    """The reference's own talk ratio when its words are shown as the demo shows a model's: each word at the end of
    the step that holds it, grouped into lines by the same line builder (lines stay up ``MIN_DISPLAY_S``)."""
    words = reference_words(dataset, "train")
    spoken = reference = 0.0
    for vid in ids:
        builder = LineBuilder(pause_steps=pause_steps, max_words=MAX_WORDS_PER_LINE, min_display_s=MIN_DISPLAY_S)
        by_step = {time_to_step(w.start, step_hz): w.text for w in words[vid]}
        for k in range(max(by_step, default=-1) + pause_steps + 1):
            builder.push((k + 1) / step_hz, by_step.get(k))
        builder.flush()
        spoken += speaking_s((line.start, line.end) for line in builder.lines)
        reference += speaking_s((w.start, w.end) for w in words[vid])
    return spoken / reference if reference else 0.0


def tune_pad_bias(
    session: DuplexSession,
    dataset: SyntheticDataset,
    cache: FeatureCache,
    ids: Sequence[str],
    target: float | None,
    pause_steps: int,
    batch: int = STREAM_BATCH,
) -> dict[str, Any]:
    """The PAD bias at which ``session``'s model talks as much as the reference on the training videos ``ids``.

    Starts at 0 (kept when the talk ratio is within :data:`TALK_TOLERANCE` of the target), steps away from 0 in
    doubling steps until the target is bracketed (or :data:`BIAS_BRACKET`'s bound is hit), then bisects down to
    :data:`BIAS_RESOLUTION`; the bias tried whose talk ratio is closest to the target by ratio wins (talking twice
    as much is as far off as half as much; silence is farthest; ties: the bias nearest 0).
    The session's bias is left at the winner.

    Args:
        target: the talk ratio wanted; ``None``: :func:`reference_talk_ratio` on the same videos.
        batch: videos streamed at once (:func:`stream_many`).

    Returns:
        ``{"pad_bias", "talk_ratio_train", "target", "videos", "tried": [[bias, talk ratio], ...]}``.
    """
    from mmduplex.io.feature_cache import video_key

    records = [cache.load(video_key(dataset.video_path(vid))) for vid in ids]
    words = reference_words(dataset, "train")
    reference = sum(speaking_s((w.start, w.end) for w in words[vid]) for vid in ids)
    if target is None:
        target = reference_talk_ratio(dataset, ids, session.step_hz, pause_steps)
    tried: dict[float, float] = {}

    def talk(bias: float) -> float:
        if bias not in tried:
            session.pad_bias = bias
            sources = [
                (vid, feature_pairs(r.timestamps.tolist(), r.patches)) for vid, r in zip(ids, records, strict=True)
            ]
            results = stream_many(session, sources, pause_steps, [len(r.timestamps) for r in records], batch)
            spoken = sum(speaking_s((line.start, line.end) for line in result.lines) for result in results)
            tried[bias] = spoken / reference if reference else 0.0
        return tried[bias]

    close = abs(talk(0.0) - target) <= TALK_TOLERANCE * target
    if not close:
        sign = -1.0 if tried[0.0] < target else 1.0  # a negative bias makes the model talk more
        inner, outer = 0.0, sign * BIAS_BRACKET[0]
        while (talk(outer) < target) == (tried[0.0] < target) and abs(outer) < BIAS_BRACKET[1]:
            inner, outer = outer, outer * 2
        bracketed = (tried[outer] < target) != (tried[0.0] < target)
        while bracketed and abs(outer - inner) > BIAS_RESOLUTION:
            middle = (inner + outer) / 2
            if abs(talk(middle) - target) <= TALK_TOLERANCE * target:
                break
            if (tried[middle] < target) == (tried[0.0] < target):
                inner = middle
            else:
                outer = middle
    best = min(tried, key=lambda b: (abs(math.log(max(tried[b], 1e-6) / target)), abs(b)))
    session.pad_bias = best
    return {
        "pad_bias": best,
        "talk_ratio_train": tried[best],
        "target": target,
        "videos": len(ids),
        "tried": [[b, round(r, 4)] for b, r in sorted(tried.items())],
    }


# ----------------------------------------------------------------------------------------------- ablation


def video_ablation(
    session: DuplexSession,
    dataset: SyntheticDataset,
    cache: FeatureCache,
    tolerance_s: float,
    pause_steps: int,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The model streamed over each held-out video (``ids``, default all held out) with the next one's cached features
    (cyclically; a shorter donor is looped), at the video's own frame times, scored against the video's own events."""
    from mmduplex.io.feature_cache import video_key

    ids = list(dataset.video_ids("heldout") if ids is None else ids)
    records = [cache.load(video_key(dataset.video_path(vid))) for vid in ids]
    sources = []
    for i, vid in enumerate(ids):
        own, donor = records[i], records[(i + 1) % len(ids)]
        if len(ids) == 1:
            donor = replace(own, patches=own.patches.flip(0))  # a single video: its own features played backwards
        index = torch.arange(own.timestamps.shape[0]) % donor.patches.shape[0]  # [T]
        sources.append((vid, feature_pairs(own.timestamps.tolist(), donor.patches[index])))
    results = stream_many(session, sources, pause_steps, [len(r.timestamps) for r in records])
    figures, _ = score_videos(results, dataset, tolerance_s)
    figures["videos"] = len(ids)
    figures["pairing"] = "video i streamed with held-out video (i + 1) mod n's features, scored on video i's events"
    return figures
