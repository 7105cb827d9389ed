"""What ``mmduplex demo`` shows a person: the results table on the terminal, a page per held-out video, an index.

- :func:`results_table` / :func:`summary_lines`: the report as a markdown table (every model, the video ablation)
  and the closing lines against the demo's targets.
- :func:`write_video_page`: ``DIR/<video>.html``: the video with the model's commentary as its ``<track>``, the
  reference events beside the model's lines (hits, misses and invented lines marked) and a strip of the video
  tokens each frame cost, with the events marked on it (inline SVG). No script beyond the cue list's, no network.
- :func:`write_index`: ``DIR/index.html``: the results table, ``curve.png`` when present, a link per video.
- :func:`write_pages`: the ``.vtt`` and page of every held-out video, then the index (the demo's last stage).

Every ``src`` / ``href`` is relative, so the folder works when served over HTTP (browsers refuse a ``<track>`` from
``file://``). Pages are written atomically.
"""

from __future__ import annotations

import html
import math
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmduplex.fileio import write_text_atomic

MODEL_NAMES = {"bflow": "B-Flow duplex (main)", "text_only": "text only", "uniform_tokens": "uniform tokens"}
COLUMNS = (
    ("event accuracy", "event_accuracy", 3),
    ("1 object", ("event_accuracy_by_objects", "1"), 3),
    ("2+ objects", ("event_accuracy_by_objects", "2+"), 3),
    ("event precision", "event_precision", 3),
    ("median latency (s)", "median_latency_s", 2),
    ("talk ratio", "talk_ratio", 2),
    ("PAD bias", "pad_bias", 2),
    ("video tokens/s", "video_tokens_per_second", 1),
    ("RTF", "rtf", 3),
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _get(figures: dict[str, Any], key: str | tuple[str, str]) -> Any:
    if isinstance(key, tuple):
        return (figures.get(key[0]) or {}).get(key[1])
    return figures.get(key)


def table_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, figures)`` of every model in the report: the main one, each baseline, the video ablation."""
    rows = [(MODEL_NAMES["bflow"], report["details"]["bflow"])]
    rows += [(MODEL_NAMES.get(name, name), figures) for name, figures in report["baselines"].items()]
    if report.get("video_ablation"):
        rows.append(("main, another video's features", report["video_ablation"]))
    return rows


def results_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: the main model, each baseline and the video ablation."""
    lines = ["| model | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, figures in table_rows(report):
        lines.append(f"| {label} | " + " | ".join(_fmt(_get(figures, key), d) for _, key, d in COLUMNS) + " |")
    return "\n".join(lines)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Closing lines: wall time, and the main figures against the demo's targets."""
    main = report["details"]["bflow"]
    text_only = report["baselines"].get("text_only")
    margin = None if text_only is None else main["event_accuracy"] - text_only["event_accuracy"]
    ablation = (report.get("video_ablation") or {}).get("event_accuracy")
    by_objects = report.get("event_accuracy_by_objects") or {}
    target = report.get("settings", {}).get("demo", {}).get("wall_target_s", 600.0)
    return [
        f"wall time: {report['wall_s']:.0f} s (target <= {target:.0f} s)",
        f"event accuracy {main['event_accuracy']:.3f} (target >= 0.9; 1 object {_fmt(by_objects.get('1'))}, "
        f"2+ objects {_fmt(by_objects.get('2+'))}, target >= 0.85 each)"
        + ("" if margin is None else f", {margin:+.3f} over text-only (target >= +0.3)"),
        f"video ablation (another video's features): event accuracy {_fmt(ablation)} (target <= 0.1)",
        f"median latency {_fmt(main['median_latency_s'], 2)} s (target <= 1.0 s); "
        f"video tokens/s {main['video_tokens_per_second']:.1f}",
        *qa_lines(report.get("qa")),
    ]


def qa_lines(qa: dict[str, Any] | None) -> list[str]:
    """Closing lines of the questions-while-watching figures (none when the demo asked no questions)."""
    if not qa:
        return []
    lvb = qa.get("lvb") or {}
    with_q, without_q = qa["event_accuracy_with_questions"], qa["event_accuracy_without_questions"]
    drop = None if with_q is None or without_q is None else without_q - with_q
    return [
        f"questions: LongVideoBench split (model mode) accuracy {_fmt(lvb.get('overall'))} on {lvb.get('n', 0)} "
        f"questions, {lvb.get('no_letter', 0)} without a letter (target >= 0.9, chance 0.25)",
        f"open-question accuracy {_fmt(qa['open_accuracy'])} (target >= 0.85), median answer latency "
        f"{_fmt(qa['median_answer_latency_s'], 2)} s (target <= 2 s)",
        f"event accuracy with questions {_fmt(with_q)} vs without {_fmt(without_q)} "
        f"(drop {_fmt(drop)}, target <= 0.02)",
    ]


# ----------------------------------------------------------------------------------------------- pages

_STYLE = """body { font-family: system-ui, sans-serif; margin: 1rem; background: #fafafa; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #eee; }
.hit { background: #d8f5d0; } .miss { background: #fbd5d5; } .invented { background: #fbe3c0; }
.early { background: #e8e0f8; }
.columns { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
video { max-width: 100%; width: 480px; background: #000; }
svg { display: block; margin: 0.5rem 0; }
.mono { font-family: ui-monospace, monospace; }
"""

_TRACK_SCRIPT = """<script>
"use strict";
const trackElement = document.getElementById("commentary");
trackElement.addEventListener("load", () => {
  document.body.dataset.trackCues = String(trackElement.track.cues.length);
});
trackElement.addEventListener("error", () => { document.body.dataset.trackError = "true"; });
</script>"""


def _page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>\n{_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n{script}\n</body>\n</html>\n"
    )


def _href(target: str | os.PathLike, page_dir: Path) -> str:
    relative = os.path.relpath(Path(target).resolve(), page_dir.resolve())
    return html.escape(urllib.parse.quote(Path(relative).as_posix()))


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"


def token_strip(frame_tokens: Sequence[tuple[float, int]], event_times: Sequence[float], duration_s: float) -> str:
    """An inline SVG: one bar per frame, its height the video tokens the frame cost; events as red ticks."""
    width, height, top = 640, 60, 8
    scale = width / max(duration_s, 1e-6)
    most = max((n for _, n in frame_tokens), default=0) or 1
    bar = max(1.0, width / max(len(frame_tokens), 1) - 1)
    parts = [
        f'<svg id="tokens" role="img" aria-label="video tokens per frame" width="{width}" height="{height + top}" '
        f'viewBox="0 0 {width} {height + top}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{width}" height="{height + top}" fill="#fff" stroke="#ccc"/>',
    ]
    for t, n in frame_tokens:
        h = height * n / most
        parts.append(
            f'<rect class="frame" x="{t * scale:.1f}" y="{top + height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="#4a78c8"><title>{t:.1f} s: {n} tokens</title></rect>'
        )
    for t in event_times:
        parts.append(
            f'<line x1="{t * scale:.1f}" y1="0" x2="{t * scale:.1f}" y2="{top}" stroke="#d22" stroke-width="2"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def write_video_page(
    path: str | os.PathLike,
    video: str | os.PathLike,
    vtt: str | os.PathLike,
    events: Sequence[Any],
    score: Any,
    duration_s: float,
    title: str,
) -> Path:
    """One held-out video's page (see the module docstring).

    Args:
        path: the HTML file to write.
        video: the video file; vtt: the model's WebVTT commentary (both linked relatively).
        events: the reference events (``t``, ``text``), in time order.
        score: the video's :class:`~mmduplex.demo.stream.VideoScore` (lines, line kinds, latencies, objects,
            tokens per frame).
        duration_s: the video's duration (the strip's time axis).
        title: page title and heading.
    """
    page_dir = Path(path).parent
    described = sum(latency is not None for latency in score.latencies)
    rows = []
    for event, latency, objects in zip(events, score.latencies, score.objects, strict=True):
        kind, outcome = ("hit", f"said after {latency:.1f} s") if latency is not None else ("miss", "missed")
        rows.append(
            f'<tr class="{kind}"><td class="mono">{_clock(event.t)}</td><td>{html.escape(event.text)}</td>'
            f"<td>{objects}</td><td>{outcome}</td></tr>"
        )
    labels = {"hit": "describes an event", "early": "said before the event", "invented": "invented"}
    lines = [
        f'<tr class="{kind}"><td class="mono">{_clock(line.start)}</td><td>{html.escape(line.text)}</td>'
        f"<td>{labels[kind]}</td></tr>"
        for line, kind in zip(score.lines, score.line_kinds, strict=True)
    ]
    invented = score.line_kinds.count("invented")
    strip = token_strip(score.frame_tokens, [e.t for e in events], duration_s)
    most = max((n for _, n in score.frame_tokens), default=0)
    body = (
        f"<p>{described} of {len(events)} events described; {len(score.lines)} lines, {invented} invented. "
        f'<a href="index.html">All videos and results</a></p>\n'
        f'<video id="video" controls preload="metadata" src="{_href(video, page_dir)}">\n'
        f'<track id="commentary" kind="captions" srclang="en" label="Commentary" src="{_href(vtt, page_dir)}" default>'
        f"\n</video>\n<h2>Video tokens per frame</h2>\n{strip}"
        f"<p>A bar per frame (the tallest: {most} tokens; hover for each frame's count); red ticks: the events.</p>"
        f'\n<div class="columns">\n<section><h2>Reference events</h2>\n<table id="reference">\n'
        f"<tr><th>time</th><th>event</th><th>objects on screen</th><th>model</th></tr>\n"
        + "\n".join(rows)
        + '\n</table></section>\n<section><h2>Model commentary</h2>\n<table id="model">\n'
        "<tr><th>time</th><th>line</th><th>judged</th></tr>\n" + "\n".join(lines) + "\n</table></section>\n</div>"
    )
    return write_text_atomic(path, _page(title, body, _TRACK_SCRIPT))


def write_index(path: str | os.PathLike, report: dict[str, Any], videos: Sequence[tuple[str, str]]) -> Path:
    """``DIR/index.html``: the results table, ``curve.png`` beside it when present, a link per video.

    Args:
        videos: ``(video id, one-line summary)`` per held-out video; each links to ``<video id>.html``.
    """
    page_dir = Path(path).parent
    head = "<tr><th>model</th>" + "".join(f"<th>{html.escape(c[0])}</th>" for c in COLUMNS) + "</tr>"
    rows = [
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_fmt(_get(figures, key), d)}</td>" for _, key, d in COLUMNS)
        + "</tr>"
        for label, figures in table_rows(report)
    ]
    curve = ""
    if (page_dir / "curve.png").is_file():
        curve = '<h2>Event accuracy against video tokens/s</h2>\n<img id="curve" src="curve.png" alt="curve">\n'
    links = "\n".join(
        f'<li><a href="{urllib.parse.quote(vid)}.html">{html.escape(vid)}</a> {html.escape(summary)}</li>'
        for vid, summary in videos
    )
    body = (
        f'<h2>Results on {len(videos)} held-out videos</h2>\n<table id="results">\n{head}\n'
        + "\n".join(rows)
        + f"\n</table>\n<p>wall time {_fmt(report.get('wall_s'), 0)} s; report: "
        f'<a href="report.json">report.json</a></p>\n{curve}<h2>Videos</h2>\n<ul id="videos">\n{links}\n</ul>'
    )
    return write_text_atomic(path, _page("mmduplex demo", body))


def write_pages(
    root: Path, dataset: Any, scores: Sequence[Any], report: dict[str, Any] | None = None, split: str = "heldout"
) -> None:
    """Each held-out video's ``<video>.vtt`` and page in ``root`` and, given the ``report``, ``index.html``.

    Args:
        dataset: the :class:`~mmduplex.data.synthetic.SyntheticDataset` (events, video files, durations).
        scores: each video's :class:`~mmduplex.demo.stream.VideoScore` (the main model's).
    """
    from mmduplex.io.outputs import write_vtt

    durations = {Path(clip.video).stem: clip.end_s - clip.start_s for clip in dataset.clips(split)}
    summaries = []
    for score in scores:
        vid = score.video_id
        events = dataset.events(vid)
        vtt = write_vtt(score.lines, root / f"{vid}.vtt")
        page = root / f"{vid}.html"
        write_video_page(page, dataset.video_path(vid), vtt, events, score, durations[vid], f"mmduplex demo: {vid}")
        described = sum(latency is not None for latency in score.latencies)
        summaries.append((vid, f"{described}/{len(events)} events described, {len(score.lines)} lines"))
    if report is not None:
        write_index(root / "index.html", report, summaries)
