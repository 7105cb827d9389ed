"""Where a demo model's commentary goes wrong: held-out event accuracy broken down by bucket and by stage.

Usage: ``python -m mmduplex.demo.breakdown DEMO_DIR [--bundle DIR] [--split heldout|val|train] [--videos N]
[--pad-bias B] [--json OUT]``.

Streams the videos of ``DEMO_DIR`` (a ``mmduplex demo --out`` folder) from the demo's cached features through the
bundle (default ``DEMO_DIR/bundle``; the same session, tokenizer and slot packer as the demo, only the decode and
encoder are skipped: on the 2026-11-29 demo this gave 0.538 where the demo's video path gave 0.537), then prints

- event accuracy by action, by objects on screen (``1`` / ``2+``) and by event time (before / after the training
  window's length, i.e. before / after the streaming cache starts to evict);
- for each missed event, which of its words (colour, shape, action) were absent from its tolerance window
  (``silent``: no word at all): a wrong action is a perception of change, a wrong colour and shape another object;
- by event time and objects on screen together, and by event time and action (later events have more shapes on
  screen, and fewer of them are ``enters``); by objects on screen and whether another shape was moving at the event
  (its flow tokens then share the event's steps: on the demo's val split that bucket holds nearly every two-shape
  miss, notebooks/LOG.md#2026-12-07-moving-pairs);
- by the video's history at the event: how many other shapes have been in the video before it (on screen now or
  gone), and whether the acting shape has changed colour before (its name then differs from the one it entered with);
- by **video evidence**: whether B-Flow emitted a flow token within 2 patches of the acting shape within ``--within``
  seconds of the event (the stage before the model: an event the tokens never show cannot be described);
- by **video on time**: whether the first frame at or after the event has reached the model (its last token out of
  the slot queue) by the step before the one where the reference line must start (its first word the demo's
  ``word_delay_s`` after the event, plus the text delay tau): a model cannot describe in time what it has not yet
  seen;
- the median latency of the described events.

With ``--split train`` the same on training videos (a model that also fails there is not only over-fitting).
With ``--cut S`` each video is streamed from ``S`` seconds on, as a fresh stream (its features from ``S``, times
shifted), and only the events from ``S + 1`` s are scored; ``--min-event-s`` scores only the events from a time on.
``--min-event-s 11`` against ``--cut 10`` tells what a stream's history costs later events (the cache, the model's
own earlier lines) from what makes them hard in themselves.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

WORDS = ("colour", "shape", "action")


def _flow_near(
    frames: list, track: Any, event: Any, within_s: float, grid: tuple[int, int], size: tuple, shift_s: float = 0.0
) -> bool:
    """A flow token within 2 patches of ``track``'s centre in a frame of ``[event.t, event.t + within_s]`` (frame and
    event times ``shift_s`` earlier than the track's video time)."""
    rows, cols = grid
    for frame in frames:
        if frame.kind != "flow" or not event.t - 1e-6 <= frame.t <= event.t + within_s:
            continue
        centre = track.position(frame.t + shift_s)
        if centre is None:
            continue
        row, col = int(centre[1] // (size[1] / rows)), int(centre[0] // (size[0] / cols))
        if any(abs(p // cols - row) <= 2 and abs(p % cols - col) <= 2 for p in frame.positions.tolist()):
            return True
    return False


def delivered_steps(frames: list, slots_per_step: int, step_hz: float, start_s: float = 0.0) -> list[int]:
    """The step at which each frame has wholly reached the model: its last token out of the slot queue, or its own
    step when it has no tokens. The frames go through the model's own packer (:func:`mmduplex.lm.alignment.pack_video`)
    with every token replaced by its frame's index, so the steps are the packer's, not a re-implementation."""
    import torch

    from mmduplex.lm.alignment import pack_video, time_to_step

    done = [time_to_step(float(f.t) - start_s, step_hz) for f in frames]
    if not frames:
        return done
    tagged = [SimpleNamespace(t=f.t, tokens=torch.full((f.n_tokens, 1), float(k))) for k, f in enumerate(frames)]
    steps = done[-1] + 1 + -(-sum(f.n_tokens for f in frames) // slots_per_step)  # enough to empty the queue
    slots, mask = pack_video(tagged, steps, slots_per_step, step_hz, 1, start_s)  # [S, K, 1], [S, K]
    for step, k in mask.nonzero().tolist():
        done[int(slots[step, k, 0])] = step  # steps ascend: the last one a frame's tokens occupy wins
    return done


def video_on_time(frames: list, delivered: list[int], event_t: float, line_step: int) -> bool:
    """Whether the first frame at or after ``event_t`` has reached the model before step ``line_step``."""
    for frame, step in zip(frames, delivered, strict=True):
        if frame.t >= event_t - 1e-6:
            return step < line_step
    return False


def demo_word_delay(demo_dir: Path) -> float:
    """The reference commentary's delay after an event (s): the start of ``word_delay_s`` in the demo's config."""
    config = demo_dir / "demo_config.json"
    if not config.is_file():
        return 0.2
    return float(json.loads(config.read_text(encoding="utf-8"))["word_delay_s"][0])


def demo_pad_bias(demo_dir: Path) -> float:
    """The main model's PAD bias in ``DEMO_DIR/report.json`` (the one the demo streamed it at), else 0."""
    report = demo_dir / "report.json"
    if not report.is_file():
        return 0.0
    return float(json.loads(report.read_text(encoding="utf-8"))["settings"]["pad_bias"].get("bflow", 0.0))


def breakdown(
    demo_dir: Path,
    bundle: Path,
    split: str = "heldout",
    videos: int | None = None,
    within_s: float = 1.0,
    pad_bias: float | None = None,
    tolerance_s: float = 3.0,
    word_delay_s: float | None = None,
    cut_s: float = 0.0,
    min_event_s: float = 0.0,
    events_out: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures the module docstring lists, as a JSON-ready dict (``pad_bias`` / ``word_delay_s`` ``None``: the
    demo's; ``cut_s`` / ``min_event_s``: see ``--cut`` / ``--min-event-s``). With ``events_out`` a list, one row per
    scored event is appended to it: its video, time, words, buckets, whether it was described and the words said in
    its window (to compare two models event by event)."""
    import torch

    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stream import event_scene, stream_features
    from mmduplex.eval.commentary import match_events, timed_words
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key
    from mmduplex.lm.alignment import time_to_step

    dataset = SyntheticDataset(demo_dir / "data")
    cache = FeatureCache(demo_dir / "features")
    pad_bias = demo_pad_bias(demo_dir) if pad_bias is None else pad_bias
    word_delay_s = demo_word_delay(demo_dir) if word_delay_s is None else word_delay_s
    session = DuplexSession.from_bundle(bundle, pad_bias=pad_bias)
    window_s = (session.sink + session.window + 1) / session.step_hz
    total, hit, missing = Counter(), Counter(), Counter()

    def line_step(event_t: float) -> int:
        return time_to_step(event_t + word_delay_s, session.step_hz) + int(session.bundle.delay_steps)

    latencies: list[float] = []
    for vid in dataset.video_ids(split)[:videos]:
        record = cache.load(video_key(dataset.video_path(vid)))
        keep = record.timestamps >= cut_s - 1e-6
        stamps, patches = record.timestamps[keep] - cut_s, record.patches[keep]
        first = min_event_s if not cut_s else max(min_event_s, cut_s + 1.0)
        scene = event_scene(dataset, vid)  # objects on screen and others moving at each event: the planned tracks
        scored = [
            (replace(e, t=e.t - cut_s), objects, moving)
            for e, objects, moving in zip(dataset.events(vid), scene.objects, scene.others_moving, strict=True)
            if e.t >= first - 1e-6
        ]
        events = [event for event, _, _ in scored]
        if not events or not len(stamps):
            continue
        result = stream_features(session, vid, stamps.tolist(), patches, pause_steps=3)
        with torch.no_grad():
            frames = session.video_tokenizer.tokenize(patches, stamps).frames
        delivered = delivered_steps(frames, session.model.slots_per_step, session.step_hz)  # the session's clock
        spec = dataset.spec(vid)
        tracks = {track.shape_id: track for track in spec.shapes}
        match = match_events(result.lines, events, tolerance_s)
        words = timed_words(result.lines)
        seen, turned = set(), set()  # shapes with an event so far; shapes that changed colour (whole video)
        for e in dataset.events(vid):
            if e.t >= first - 1e-6:
                break
            seen.add(e.shape_id)
            if e.action == "turns":
                turned.add(e.shape_id)
        for (event, objects, moving), latency in zip(scored, match.latencies, strict=True):
            grid, size = session.video_tokenizer.grid, (spec.width, spec.height)
            evidence = _flow_near(frames, tracks[event.shape_id], event, within_s, grid, size, cut_s)
            groups = {
                "all": "all",
                "action": event.action,
                "objects": "1" if objects <= 1 else "2+",
                "time": f"< {window_s:g} s" if event.t < window_s else f">= {window_s:g} s",
                "flow_at_shape": "yes" if evidence else "no",
                "video_on_time": "yes" if video_on_time(frames, delivered, event.t, line_step(event.t)) else "no",
            }
            groups["time, objects"] = f"{groups['time']}, {groups['objects']}"  # is the time effect the objects?
            groups["time, action"] = f"{groups['time']}, {groups['action']}"  # ... or the mix of actions?
            others = len(seen - {event.shape_id})
            groups["other shapes before"] = "2+" if others >= 2 else str(others)
            groups["time, other shapes before"] = f"{groups['time']}, {groups['other shapes before']}"
            groups["turned before"] = "yes" if event.shape_id in turned else "no"
            groups["objects, another moving"] = f"{groups['objects']}, {'yes' if moving else 'no'}"
            seen.add(event.shape_id)
            if event.action == "turns":
                turned.add(event.shape_id)
            for kind, group in groups.items():
                total[kind, group] += 1
                hit[kind, group] += latency is not None
            window = [w for t, w in words if event.t - 1e-6 <= t <= event.t + tolerance_s + 1e-6]
            if events_out is not None:
                events_out.append({
                    "video": vid, "t": round(event.t + cut_s, 3), "shape_id": event.shape_id,
                    "words": [event.colour, event.shape, event.action], "hit": latency is not None,
                    "latency_s": latency, "said": window, **groups,
                })  # fmt: skip
            if latency is not None:
                latencies.append(latency)
                continue
            said = set(window)
            absent = [name for name, w in zip(WORDS, (event.colour, event.shape, event.action), strict=True)
                      if w not in said]  # fmt: skip
            missing["silent" if not said else "+".join(absent)] += 1
    accuracy: dict[str, dict[str, dict[str, float | int]]] = {}
    for (kind, group), count in sorted(total.items()):
        accuracy.setdefault(kind, {})[group] = {"events": count, "accuracy": round(hit[kind, group] / count, 3)}
    return {
        "demo_dir": str(demo_dir),
        "bundle": str(bundle),
        "split": split,
        "pad_bias": pad_bias,
        "accuracy": accuracy,
        "missed_events_absent_words": dict(missing.most_common()),
        "median_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "flow_evidence_within_s": within_s,
        "word_delay_s": word_delay_s,
        "cut_s": cut_s,
        "min_event_s": min_event_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--bundle", type=Path, default=None, help="inference bundle (default DEMO_DIR/bundle)")
    parser.add_argument("--split", choices=("heldout", "val", "train"), default="heldout")
    parser.add_argument("--videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--within", type=float, default=1.0, help="seconds after an event for the flow evidence")
    parser.add_argument("--pad-bias", type=float, default=None, help="default: the demo's (report.json), else 0")
    parser.add_argument("--cut", type=float, default=0.0, help="stream each video from this time (s), fresh")
    parser.add_argument("--min-event-s", type=float, default=0.0, help="score only the events from this time (s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--events", type=Path, default=None, help="also write one JSON line per scored event here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    bundle = args.bundle or args.demo_dir / "bundle"
    rows: list[dict[str, Any]] = []
    figures = breakdown(
        args.demo_dir, bundle, args.split, args.videos, args.within, args.pad_bias,
        cut_s=args.cut, min_event_s=args.min_event_s, events_out=rows,
    )  # fmt: skip
    for kind, groups in figures["accuracy"].items():
        cells = ", ".join(f"{g} {v['accuracy']:.3f} ({v['events']})" for g, v in groups.items())
        print(f"{kind}: {cells}")
    print("missed events, words absent from the window:", figures["missed_events_absent_words"])
    print("median latency (s):", figures["median_latency_s"])
    if args.json is not None:
        from mmduplex.fileio import write_json_atomic

        write_json_atomic(args.json, figures)
    if args.events is not None:
        from mmduplex.fileio import write_text_atomic

        write_text_atomic(args.events, "".join(json.dumps(row) + "\n" for row in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
