"""``mmduplex stream VIDEO --checkpoint BUNDLE``: live duplex commentary, printed line by line as it is produced.

The command around the streaming loop (:class:`mmduplex.inference.commentary.Commentary`, what
:meth:`mmduplex.DuplexModel.stream` returns): ``VIDEO`` is a file, ``-`` (a stream on stdin) or a URL PyAV opens,
decoded incrementally at the bundle's fps and driven through a :class:`mmduplex.inference.session.DuplexSession`. Each
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


def timestamp(seconds: float) -> str:
    """``HH:MM:SS.d`` for the printed lines."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 36000:02d}:{tenths // 600 % 60:02d}:{tenths // 10 % 60:02d}.{tenths % 10}"


def printed_line(line: Any) -> str:
    """A commentary line as printed: ``[HH:MM:SS.d] text``."""
    return f"[{timestamp(line.start)}] {line.text}"


def run(args: argparse.Namespace) -> int:
    """Stream the video through the bundle's duplex model; print lines as produced; write the outputs at the end."""
    from mmduplex.errors import CheckpointError, VideoError
    from mmduplex.inference.commentary import Commentary, is_url
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.video import probe_video

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
        raise CheckpointError(args.checkpoint, "the bundle records no video fps")
    source = args.video
    is_file = source != "-" and not is_url(source)
    duration = probe_video(source).duration_s if is_file else None  # a missing or corrupt file fails here
    total_s = duration if args.max_seconds is None else min(args.max_seconds, duration or math.inf)
    progress = _progress(total_s if is_file else None)
    echo = progress.write if progress is not None else (lambda text: print(text, flush=True))

    def on_step(out: Any) -> None:
        if progress is not None and not out.flushed:
            progress.update(1 / session.step_hz)

    def not_asked(question: Any, end_s: float) -> None:
        log.warning("--ask %g:%s comes after the input's end (%.1f s): not asked (--ask end:TEXT)",
                    question.t, question.text, end_s)  # fmt: skip

    commentary = Commentary(
        session,
        source,
        ask=questions,
        end_s=args.max_seconds,
        realtime=args.realtime,
        line_pause_s=args.line_pause,
        line_words=args.line_words,
        line_display_s=args.line_display,
        on_step=on_step,
        on_not_asked=not_asked,
    )
    interrupted = False
    try:
        for line in commentary:
            echo(printed_line(line))
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted at %.1f s of stream: writing what was streamed", session.time)
        line = commentary.finish()
        if line is not None:
            echo(printed_line(line))
    finally:
        if progress is not None:
            progress.close()
    if session.step_index == 0 and not interrupted:
        raise VideoError(source, f"no frame could be sampled at {session.fps:g} fps")

    report = {**commentary.report(), "video": source, "checkpoint": str(args.checkpoint), "interrupted": interrupted}
    page_video = Path(source) if is_file else (None if source == "-" else source)
    _write_outputs(args, commentary.lines, report, page_video)
    if commentary.pacer is not None:
        pacer = commentary.pacer
        kept_up = "kept up" if pacer.late_steps == 0 else f"fell behind: {pacer.late_steps} late steps"
        log.info("realtime: %s (max lag %.3f s)", kept_up, pacer.max_lag_s)
    log.info(
        "%d steps (%.1f s of stream) in %.1f s: rtf %.3f, %d lines",
        report["steps"],
        report["stream_s"],
        report["compute_s"],
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
