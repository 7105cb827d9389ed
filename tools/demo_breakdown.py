"""Where a demo model's commentary goes wrong: held-out event accuracy broken down by bucket and by stage.

Usage: ``python tools/demo_breakdown.py DEMO_DIR [--bundle DIR] [--split heldout|train] [--videos N] [--pad-bias B]
[--json OUT]``.

Streams the videos of ``DEMO_DIR`` (a ``mmduplex demo --out`` folder) from the demo's cached features through the
bundle (default ``DEMO_DIR/bundle``; the same session, tokenizer and slot packer as the demo, only the decode and
encoder are skipped: on the 2026-11-29 demo this gave 0.538 where the demo's video path gave 0.537), then prints

- event accuracy by action, by objects on screen (``1`` / ``2+``) and by event time (before / after the training
  window's length, i.e. before / after the streaming cache starts to evict);
- for each missed event, which of its words (colour, shape, action) were absent from its tolerance window
  (``silent``: no word at all): a wrong action is a perception of change, a wrong colour and shape another object;
- by event time and objects on screen together (later events have more shapes on screen);
- by **video evidence**: whether B-Flow emitted a flow token within 2 patches of the acting shape within ``--within``
  seconds of the event (the stage before the model: an event the tokens never show cannot be described);
- the median latency of the described events.

With ``--split train`` the same on training videos (a model that also fails there is not only over-fitting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = ("colour", "shape", "action")


def _flow_near(frames: list, track: Any, event: Any, within_s: float, grid: tuple[int, int], size: tuple) -> bool:
    """A flow token within 2 patches of ``track``'s centre in a frame of ``[event.t, event.t + within_s]``."""
    rows, cols = grid
    for frame in frames:
        if frame.kind != "flow" or not event.t - 1e-6 <= frame.t <= event.t + within_s:
            continue
        centre = track.position(frame.t)
        if centre is None:
            continue
        row, col = int(centre[1] // (size[1] / rows)), int(centre[0] // (size[0] / cols))
        if any(abs(p // cols - row) <= 2 and abs(p % cols - col) <= 2 for p in frame.positions.tolist()):
            return True
    return False


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
) -> dict[str, Any]:
    """The figures the module docstring lists, as a JSON-ready dict (``pad_bias`` ``None``: the demo's)."""
    import torch

    from eval.commentary import match_events, timed_words
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo_stream import event_objects, stream_features
    from mmduplex.feature_cache import FeatureCache, video_key
    from mmduplex.streaming import DuplexSession

    dataset = SyntheticDataset(demo_dir / "data")
    cache = FeatureCache(demo_dir / "features")
    pad_bias = demo_pad_bias(demo_dir) if pad_bias is None else pad_bias
    session = DuplexSession.from_bundle(bundle, pad_bias=pad_bias)
    window_s = (session.sink + session.window + 1) / session.step_hz
    total, hit, missing = Counter(), Counter(), Counter()
    latencies: list[float] = []
    for vid in dataset.video_ids(split)[:videos]:
        record = cache.load(video_key(dataset.video_path(vid)))
        result = stream_features(session, vid, record.timestamps.tolist(), record.patches, pause_steps=3)
        with torch.no_grad():
            frames = session.video_tokenizer.tokenize(record.patches, record.timestamps).frames
        spec = dataset.spec(vid)
        tracks = {track.shape_id: track for track in spec.shapes}
        events = dataset.events(vid)
        match = match_events(result.lines, events, tolerance_s)
        words = timed_words(result.lines)
        for event, objects, latency in zip(events, event_objects(dataset, vid), match.latencies, strict=True):
            evidence = _flow_near(
                frames, tracks[event.shape_id], event, within_s, session.video_tokenizer.grid, (spec.width, spec.height)
            )
            groups = {
                "all": "all",
                "action": event.action,
                "objects": "1" if objects <= 1 else "2+",
                "time": f"< {window_s:g} s" if event.t < window_s else f">= {window_s:g} s",
                "flow_at_shape": "yes" if evidence else "no",
            }
            groups["time, objects"] = f"{groups['time']}, {groups['objects']}"  # is the time effect the objects?
            for kind, group in groups.items():
                total[kind, group] += 1
                hit[kind, group] += latency is not None
            if latency is not None:
                latencies.append(latency)
                continue
            said = {w for t, w in words if event.t - 1e-6 <= t <= event.t + tolerance_s + 1e-6}
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--bundle", type=Path, default=None, help="inference bundle (default DEMO_DIR/bundle)")
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--within", type=float, default=1.0, help="seconds after an event for the flow evidence")
    parser.add_argument("--pad-bias", type=float, default=None, help="default: the demo's (report.json), else 0")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    bundle = args.bundle or args.demo_dir / "bundle"
    figures = breakdown(args.demo_dir, bundle, args.split, args.videos, args.within, args.pad_bias)
    for kind, groups in figures["accuracy"].items():
        cells = ", ".join(f"{g} {v['accuracy']:.3f} ({v['events']})" for g, v in groups.items())
        print(f"{kind}: {cells}")
    print("missed events, words absent from the window:", figures["missed_events_absent_words"])
    print("median latency (s):", figures["median_latency_s"])
    if args.json is not None:
        from mmduplex.fileio import write_json_atomic

        write_json_atomic(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
