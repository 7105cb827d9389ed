"""``mmduplex stream VIDEO --checkpoint BUNDLE``: live duplex commentary, printed line by line as it is produced.

``VIDEO`` is a file, ``-`` (a stream on stdin) or a URL PyAV opens; it is decoded incrementally at the bundle's fps
(:func:`mmduplex.io.video.iter_video`) and driven through a :class:`mmduplex.inference.session.DuplexSession`. Each
finished commentary line is printed as ``[HH:MM:SS.d] text``. When the input ends (end of file or stream, or
``--max-seconds``), the session runs the steps the model still owes (the text lags the video by tau:
:meth:`~mmduplex.inference.session.DuplexSession.flush`), so the last seconds are commented too; their lines carry times
after the last frame. At the end the outputs are written atomically: commentary by the
``--out`` suffix (.vtt / .srt / .jsonl), an ``--html`` viewer page (its WebVTT track is ``--out`` when that is a .vtt,
else a .vtt beside the page), and a ``--report`` JSON with the timing figures. An error leaves no output file; an
interrupt (Ctrl-C, the way a live stream ends) writes what was streamed so far and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

HELP = "Stream live duplex commentary for a video file, '-' (stdin) or a URL, printing lines as they are produced."
COMMENTARY_SUFFIXES = (".vtt", ".srt", ".jsonl")
DEFAULT_LINE_PAUSE_S = 1.0
DEFAULT_LINE_WORDS = 12
DEFAULT_LINE_DISPLAY_S = 2.0

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mmduplex stream``."""
    parser.add_argument("video", metavar="VIDEO", help="video file, '-' for a stream on stdin, or a URL PyAV opens")
    parser.add_argument("--checkpoint", required=True, metavar="BUNDLE", help="duplex inference bundle folder")
    parser.add_argument("--out", default=None, help="commentary file; format by suffix: .vtt, .srt, .jsonl")
    parser.add_argument("--html", default=None, help="viewer page: the video with the commentary as a <track>")
    parser.add_argument("--report", default=None, help="timing report JSON (steps, rtf, step latency, memory, ...)")
    parser.add_argument(
        "--ask",
        action="append",
        default=[],
        metavar="T:TEXT",
        help="a user question typed at stream time T seconds (repeatable), e.g. --ask '4.5:what moved'; T = end: "
        "typed after the input's last frame (LongVideoBench's way), answered while the stream flushes",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="pace the input at wall-clock speed and report late steps"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument(
        "--pad-bias", type=float, default=0.0, help="added to the PAD logit: > 0 quieter, < 0 more talkative"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    parser.add_argument("--sink", type=int, default=None, help="attention-sink positions (default: the bundle's)")
    parser.add_argument("--window", type=int, default=None, help="sliding-window positions (default: the bundle's)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="read at most this many seconds of video (the steps the model still owes for it run after)",
    )
    parser.add_argument(
        "--line-pause",
        type=float,
        default=DEFAULT_LINE_PAUSE_S,
        metavar="S",
        help=f"seconds of silence that end a commentary line (default {DEFAULT_LINE_PAUSE_S:g})",
    )
    parser.add_argument(
        "--line-words",
        type=int,
        default=DEFAULT_LINE_WORDS,
        metavar="N",
        help=f"words that end a commentary line (default {DEFAULT_LINE_WORDS})",
    )
    parser.add_argument(
        "--line-display",
        type=float,
        default=DEFAULT_LINE_DISPLAY_S,
        metavar="S",
        help=f"seconds a line stays up after its last word (default {DEFAULT_LINE_DISPLAY_S:g})",
    )


def parse_ask(value: str) -> tuple[float | None, str]:
    """``"T:TEXT"`` -> ``(T seconds, TEXT)``; ``"end:TEXT"`` -> ``(None, TEXT)``: typed after the last frame.

    Raises:
        InputError: not ``T:TEXT`` with ``end`` or a finite ``T >= 0``, and non-blank text.
    """
    from mmduplex.errors import InputError

    match = re.fullmatch(r"\s*([^:]+?)\s*:(.*)", value, flags=re.DOTALL)
    problem = f"expected T:TEXT (seconds, a colon, the question), got {value!r}"
    if match is None or not match.group(2).strip():
        raise InputError("--ask", problem)
    if match.group(1).lower() == "end":
        return None, match.group(2).strip()
    try:
        t = float(match.group(1))
    except ValueError:
        raise InputError("--ask", problem) from None
    if not (math.isfinite(t) and t >= 0):
        raise InputError("--ask", f"the time must be a finite number of seconds >= 0, got {value!r}")
    return t, match.group(2).strip()


def _check_args(args: argparse.Namespace) -> list[tuple[float | None, str]]:
    """Validate everything that needs no model or video (so a typo fails at once); return the questions."""
    from mmduplex.errors import InputError

    if args.out is not None and Path(args.out).suffix.lower() not in COMMENTARY_SUFFIXES:
        raise InputError(args.out, f"unknown commentary format; --out must end in {', '.join(COMMENTARY_SUFFIXES)}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise InputError("--max-seconds", f"must be > 0, got {args.max_seconds}")
    if not args.line_pause > 0 or args.line_words < 1 or not args.line_display > 0:
        raise InputError("--line-*", "need --line-pause > 0, --line-words >= 1 and --line-display > 0")
    targets = [Path(p).resolve() for p in (args.out, args.html, args.report) if p is not None]
    if len(set(targets)) != len(targets):
        raise InputError("--out/--html/--report", "two outputs name the same file")
    return [parse_ask(value) for value in args.ask]


def _is_url(source: str) -> bool:
    return "://" in source and not Path(source).exists()


def timestamp(seconds: float) -> str:
    """``HH:MM:SS.d`` for the printed lines."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 36000:02d}:{tenths // 600 % 60:02d}:{tenths // 10 % 60:02d}.{tenths % 10}"


class RealtimePacer:
    """The ``wait`` hook of :meth:`DuplexSession.run` for ``--realtime``: sleeps until each event's wall-clock time.

    Stream time 0 is the wall-clock time of the first event. :meth:`lag` says how late a step started; a step is
    late when it starts more than one step period after its due time (the model fell behind the video).
    """

    def __init__(self, step_hz: float) -> None:
        self.period = 1.0 / step_hz
        self.origin: float | None = None
        self.slept_s = 0.0
        self.late_steps = 0
        self.max_lag_s = 0.0

    def __call__(self, t: float) -> None:
        now = time.perf_counter()
        if self.origin is None:
            self.origin = now - t
        delay = self.origin + t - now
        if delay > 0:
            time.sleep(delay)
            self.slept_s += delay

    def record(self, due_s: float, started: float) -> None:
        """Account for a step due at stream time ``due_s`` that started at wall-clock ``started``."""
        lag = started - (self.origin or started) - due_s
        self.max_lag_s = max(self.max_lag_s, lag)
        if lag > self.period:
            self.late_steps += 1


class _Lines:
    """Word pieces -> commentary lines (:meth:`mmduplex.io.outputs.LineBuilder.push_piece`); prints finished lines."""

    def __init__(self, builder: Any, echo: Any) -> None:
        self.builder, self.echo = builder, echo

    def push(self, out: Any) -> None:
        self._emit(self.builder.push_piece(out.t, out.word, out.word_start))

    def flush(self) -> None:
        self._emit(self.builder.flush())

    def _emit(self, line: Any) -> None:
        if line is not None:
            self.echo(f"[{timestamp(line.start)}] {line.text}")


def _stream(session, frames, end_s: float | None, pacer, questions: list[tuple[float | None, str]]):
    """The session's steps over ``frames``, then the questions asked at ``end`` typed, then the flush."""
    yield from session.run(frames, end_s=end_s, wait=pacer, flush=False)
    if session.step_index == 0:
        return
    from mmduplex.lm.alignment import time_to_step

    for t, text in questions:
        if t is None:
            session.ask(text)
        elif time_to_step(t, session.step_hz) > session.step_index:  # would wait for a step the flush never runs
            end_s = session.step_index / session.step_hz
            log.warning("--ask %g:%s comes after the input's end (%.1f s): not asked (--ask end:TEXT)", t, text, end_s)
    yield from session.flush(pacer)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def run(args: argparse.Namespace) -> int:
    """Stream the video through the bundle's duplex model; print lines as produced; write the outputs at the end."""
    from mmduplex.errors import VideoError
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.outputs import LineBuilder
    from mmduplex.io.video import iter_video, probe_video

    questions = _check_args(args)
    session = DuplexSession.from_bundle(
        args.checkpoint,
        sink=args.sink,
        window=args.window,
        temperature=args.temperature,
        top_k=args.top_k,
        pad_bias=args.pad_bias,
        seed=args.seed,
    )
    if session.fps is None:
        from mmduplex.errors import CheckpointError

        raise CheckpointError(args.checkpoint, "the bundle records no video fps")
    source = args.video
    is_file = source != "-" and not _is_url(source)
    duration = probe_video(source).duration_s if is_file else None  # a missing or corrupt file fails here
    encoder = session.encoder
    size = encoder.image_size if encoder.resize_mode == "shortest" else None
    for t, text in questions:
        if t is not None:
            session.ask(text, t=t)

    hz = session.step_hz
    total_s = duration if args.max_seconds is None else min(args.max_seconds, duration or math.inf)
    progress = _progress(total_s if is_file else None)
    echo = progress.write if progress is not None else (lambda text: print(text, flush=True))
    lines = _Lines(LineBuilder(max(1, round(args.line_pause * hz)), args.line_words, args.line_display), echo)
    pacer = RealtimePacer(hz) if args.realtime else None
    step_ms: list[float] = []
    cache_peak, flush_steps, interrupted = 0, 0, False
    started = time.perf_counter()
    try:
        frames = iter_video(source, session.fps, size=size)
        for out in _stream(session, frames, args.max_seconds, pacer, questions):
            step_ms.append(out.elapsed_s * 1000)
            if pacer is not None:
                pacer.record(out.t, time.perf_counter() - out.elapsed_s)
            cache_peak = max(cache_peak, session.cache.length)
            lines.push(out)
            flush_steps += out.flushed
            if progress is not None and not out.flushed:
                progress.update(1 / hz)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted at %.1f s of stream: writing what was streamed", session.time)
    finally:
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - started
    lines.flush()
    if session.step_index == 0 and not interrupted:
        raise VideoError(source, f"no frame could be sampled at {session.fps:g} fps")

    stream_s = session.step_index / hz  # the flushed steps included: they are steps the model ran
    video_s = (session.step_index - flush_steps) / hz
    compute_s = wall - (pacer.slept_s if pacer is not None else 0.0)
    report = {
        "steps": session.step_index,
        "step_hz": hz,
        "rtf": compute_s / stream_s if stream_s else None,
        "step_ms_p50": _percentile(step_ms, 50),
        "step_ms_p95": _percentile(step_ms, 95),
        "peak_rss_mb": _peak_rss_mb(),
        "video_tokens_per_second": session.video_tokens / video_s if video_s else None,
        "stream_s": stream_s,
        "video_s": video_s,
        "flush_steps": flush_steps,
        "compute_s": compute_s,
        "frames": session.frames_pushed,
        "fps": session.fps,
        "video_tokens": session.video_tokens,
        "dropped_video_tokens": session.dropped_video_tokens,
        "cache_max_length": session.cache.max_length,
        "cache_peak_length": cache_peak,
        "sink": session.sink,
        "window": session.window,
        "realtime": bool(args.realtime),
        "late_steps": pacer.late_steps if pacer is not None else None,
        "max_lag_s": pacer.max_lag_s if pacer is not None else None,
        "lines": len(lines.builder.lines),
        "questions": [{"t": "end" if t is None else t, "text": text} for t, text in questions],
        "settings": {
            "temperature": session.temperature,
            "top_k": session.top_k,
            "pad_bias": session.pad_bias,
            "seed": session.seed,
        },
        "video": source,
        "checkpoint": str(args.checkpoint),
        "interrupted": interrupted,
    }
    page_video = Path(source) if is_file else (None if source == "-" else source)
    _write_outputs(args, lines.builder.lines, report, page_video)
    if pacer is not None:
        kept_up = "kept up" if pacer.late_steps == 0 else f"fell behind: {pacer.late_steps} late steps"
        log.info("realtime: %s (max lag %.3f s)", kept_up, pacer.max_lag_s)
    log.info(
        "%d steps (%.1f s of stream) in %.1f s: rtf %.3f, %d lines",
        report["steps"],
        stream_s,
        compute_s,
        report["rtf"] or 0.0,
        report["lines"],
    )
    return 130 if interrupted else 0


def _progress(total_s: float | None) -> Any:
    """A tqdm bar over stream seconds on stderr (file input on a terminal only), else ``None``."""
    if total_s is None or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=round(total_s, 1), unit="s", file=sys.stderr, dynamic_ncols=True, leave=False,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")  # fmt: skip


def _write_outputs(args: argparse.Namespace, lines: list, report: dict, video: str | Path | None) -> None:
    """Write commentary, HTML page (+ its VTT) and report; if one fails, remove those this call already wrote.

    ``video`` is what the page plays: the file, the URL, or ``None`` for stdin (the page notes there is no video).
    """
    from mmduplex.fileio import write_json_atomic
    from mmduplex.io.outputs import write_commentary, write_html, write_vtt

    written: list[Path] = []
    try:
        if args.out is not None:
            written.append(write_commentary(lines, args.out))
        if args.html is not None:
            page = Path(args.html)
            vtt = Path(args.out) if args.out is not None and Path(args.out).suffix.lower() == ".vtt" else None
            if vtt is None:
                vtt = page.with_suffix(".vtt")
                written.append(write_vtt(lines, vtt))
            title = f"Commentary: {Path(str(video)).name if video is not None else 'live stream'}"
            written.append(write_html(video, vtt, page, title=title))
        if args.report is not None:
            written.append(write_json_atomic(args.report, report))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
