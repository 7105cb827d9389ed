"""Commentary output: timed lines written as WebVTT, SRT or JSONL, an HTML viewer page, and their readers.

A commentary line is ``CommentaryLine(start, end, text)`` in seconds of video time. ``LineBuilder`` turns the
streaming model's per-step words into lines; the writers normalise the lines the same way for every format
(sorted by start, times rounded to milliseconds, zero or negative durations extended, blank text dropped) and
write atomically through ``mmduplex.fileio``. The readers are strict: a malformed file raises
``AnnotationError`` naming the file and line.

Cue text that common subtitle readers would not keep is protected in SRT and WebVTT with the invisible WORD JOINER
(U+2060), which no reader treats as white space or as a digit, and which :func:`read_srt` / :func:`read_vtt` remove
again (so the text round-trips):

- a blank line inside a cue (a blank line ends a cue for ffmpeg, browsers and most players) is written as a line
  holding only U+2060;
- a text line that a reader would take for a timing line -- ffmpeg takes a line starting ``H:M:S,f --> H:M:S,f``,
  pysubs2 any line holding two timestamps -- gets U+2060 after each colon that follows a digit;
- a text line of digits only (pysubs2 drops a cue's last such line, taking it for the next cue's number) is
  prefixed with U+2060.

WebVTT also forbids ``-->`` in cue text: ``>`` is written as ``&gt;``.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmduplex.errors import AnnotationError, InputError
from mmduplex.fileio import iter_jsonl, read_text, write_text_atomic

__all__ = [
    "CommentaryLine",
    "LineBuilder",
    "normalize_lines",
    "read_commentary",
    "read_jsonl",
    "read_srt",
    "read_vtt",
    "write_commentary",
    "write_html",
    "write_jsonl",
    "write_srt",
    "write_vtt",
]

# A cue whose end is not after its start is shown for this long (a file-format fix-up, not a model setting).
FIXUP_DURATION_S = 0.5


@dataclass(frozen=True)
class CommentaryLine:
    """One line of commentary shown from ``start`` to ``end`` (seconds of video time)."""

    start: float
    end: float
    text: str


def normalize_lines(lines: Iterable[CommentaryLine], source: str | os.PathLike | None = None) -> list[CommentaryLine]:
    """Lines as every writer emits them: sorted by start, millisecond times, ``end > start``, stripped text.

    Negative starts are clamped to 0; an end at or before its start becomes ``start + FIXUP_DURATION_S``; each text
    line is stripped, blank lines before and after the text removed (blank lines inside it are kept: the SRT and
    WebVTT writers protect them); lines with blank text are dropped.

    Raises:
        InputError: a time is not a finite number (``source`` names the output being written).
    """
    out = []
    for i, line in enumerate(lines):
        if not (math.isfinite(line.start) and math.isfinite(line.end)):
            raise InputError(source, f"commentary line {i}: times must be finite, got {line.start}..{line.end}")
        text = "\n".join(part.strip() for part in str(line.text).splitlines()).strip()
        if not text:
            continue
        start_ms = max(0, round(line.start * 1000))
        end_ms = round(line.end * 1000)
        if end_ms <= start_ms:
            end_ms = start_ms + round(FIXUP_DURATION_S * 1000)
        out.append(CommentaryLine(start_ms / 1000, end_ms / 1000, text))
    return sorted(out, key=lambda line: line.start)


def _timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (hours grow beyond two digits when needed)."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


WORD_JOINER = "\u2060"
"""Invisible, zero-width, not white space: the mark that protects cue text readers would not keep (module doc)."""

_TIME_LIKE = re.compile(r"\d:\d+(?::\d+)?[.,]\d")  # H:M:S.f or M:S.f, as pysubs2 (SRT and WebVTT) finds them
_DIGIT_COLON = re.compile(r"(?<=\d):")
_DIGITS_ONLY = re.compile(r"[0-9]+")


def _timing_like(line: str) -> bool:
    """Whether some reader would take ``line`` for a timing line (ffmpeg: ``-->`` after a number; pysubs2: 2 stamps)."""
    return ("-->" in line and _DIGIT_COLON.search(line) is not None) or len(_TIME_LIKE.findall(line)) >= 2


def _protect(text: str) -> str:
    """Cue text as SRT / WebVTT readers keep it (see the module docstring); :func:`_unprotect` undoes it."""
    out = []
    for line in text.split("\n"):
        if not line:
            line = WORD_JOINER
        elif _timing_like(line):
            line = _DIGIT_COLON.sub(":" + WORD_JOINER, line)
        elif _DIGITS_ONLY.fullmatch(line):
            line = WORD_JOINER + line
        out.append(line)
    return "\n".join(out)


def _unprotect(text: str) -> str:
    """Remove the marks :func:`_protect` adds (a WORD JOINER elsewhere in the text is kept)."""
    out = []
    for line in text.split("\n"):
        if line == WORD_JOINER:
            line = ""
        elif line.startswith(WORD_JOINER) and _DIGITS_ONLY.fullmatch(line[1:]):
            line = line[1:]
        else:
            line = line.replace(":" + WORD_JOINER, ":") if _timing_like(line.replace(WORD_JOINER, "")) else line
        out.append(line)
    return "\n".join(out)


def _escape_vtt(text: str) -> str:
    """Escape cue text as WebVTT requires (``&``, ``<``; ``>`` too so ``-->`` cannot appear), then protect it."""
    return _protect(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def write_vtt(lines: Iterable[CommentaryLine], path: str | os.PathLike) -> Path:
    """Write WebVTT: ``WEBVTT``, a blank line, then ``start --> end`` / text / blank line per cue."""
    cues = [
        f"{_timestamp(ln.start, '.')} --> {_timestamp(ln.end, '.')}\n{_escape_vtt(ln.text)}\n"
        for ln in normalize_lines(lines, path)
    ]
    return write_text_atomic(path, "WEBVTT\n\n" + "\n".join(cues))


def write_srt(lines: Iterable[CommentaryLine], path: str | os.PathLike) -> Path:
    """Write SubRip: a 1-based number, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, text and a blank line per cue.

    SubRip has no escaping: text is written verbatim (players read ``<...>`` in it as markup: ``<i>``, ...), except
    the lines readers would not keep, which are protected with U+2060 (see the module docstring).
    """
    cues = [
        f"{i}\n{_timestamp(ln.start, ',')} --> {_timestamp(ln.end, ',')}\n{_protect(ln.text)}\n"
        for i, ln in enumerate(normalize_lines(lines, path), start=1)
    ]
    return write_text_atomic(path, "\n".join(cues))


def write_jsonl(lines: Iterable[CommentaryLine], path: str | os.PathLike) -> Path:
    """Write one ``{"start", "end", "text"}`` object per line."""
    rows = [json.dumps({"start": ln.start, "end": ln.end, "text": ln.text}) for ln in normalize_lines(lines, path)]
    return write_text_atomic(path, "".join(row + "\n" for row in rows))


_WRITERS = {".vtt": write_vtt, ".srt": write_srt, ".jsonl": write_jsonl}


def _format_of(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _WRITERS:
        raise InputError(path, f"unknown commentary format {suffix or '(no suffix)'!r}; use .vtt, .srt or .jsonl")
    return suffix


def write_commentary(lines: Iterable[CommentaryLine], path: str | os.PathLike) -> Path:
    """Write ``lines`` in the format named by the suffix of ``path`` (.vtt, .srt or .jsonl).

    Raises:
        InputError: unknown suffix (nothing is written), or a non-finite time.
    """
    return _WRITERS[_format_of(path)](lines, path)


# ---------------------------------------------------------------------------------------------------- readers

_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_VTT_TIMING = re.compile(rf"^{_VTT_TIME}[ \t]+-->[ \t]+{_VTT_TIME}(?:[ \t].*)?$")
_SRT_TIMING = re.compile(r"^(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})[ \t]+-->[ \t]+(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})$")
_VTT_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&nbsp;": "\u00a0", "&lrm;": "\u200e", "&rlm;": "\u200f"}


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks with the 1-based number of their first line."""
    blocks, current, first = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                first = number
            current.append(line)
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


def _check_order(path, number: int, line: CommentaryLine, previous: CommentaryLine | None) -> None:
    if not line.end > line.start:
        raise AnnotationError(path, f"line {number}: cue does not end ({line.end}) after it starts ({line.start})")
    if previous is not None and line.start < previous.start:
        raise AnnotationError(path, f"line {number}: cue starts before the previous cue ({previous.start})")


def read_vtt(path: str | os.PathLike) -> list[CommentaryLine]:
    """Read a WebVTT file strictly (header, timing lines, cue order, no ``-->`` in text); unescape entities.

    NOTE, STYLE and REGION blocks are skipped; cue identifiers and cue settings are accepted and ignored; tags
    in cue text (``<i>``, ``<v Speaker>``) are removed.

    Raises:
        AnnotationError: the file is missing, not UTF-8, or not valid WebVTT.
    """
    text = read_text(path, AnnotationError)
    first = text.split("\n", 1)[0].rstrip("\r")
    if not re.fullmatch(r"WEBVTT([ \t].*)?", first):
        raise AnnotationError(path, f"line 1: a WebVTT file starts with 'WEBVTT', got {first[:40]!r}")
    blocks = _blocks(text)
    if any("-->" in header_line for header_line in blocks[0][1]):
        raise AnnotationError(path, "a blank line must separate the 'WEBVTT' header from the first cue")
    lines: list[CommentaryLine] = []
    for number, block in blocks[1:]:  # the first block is the header
        if re.match(r"(NOTE|STYLE|REGION)([ \t]|$)", block[0]):
            continue
        if "-->" not in block[0]:
            number, block = number + 1, block[1:]  # a cue identifier
        match = _VTT_TIMING.match(block[0]) if block else None
        if match is None:
            raise AnnotationError(path, f"line {number}: expected 'HH:MM:SS.mmm --> HH:MM:SS.mmm', got {block[:1]}")
        if any("-->" in payload for payload in block[1:]):
            raise AnnotationError(path, f"line {number}: cue text contains '-->'")
        payload = re.sub(r"<[^>]*>", "", "\n".join(block[1:]))
        payload = re.sub(r"&(amp|lt|gt|nbsp|lrm|rlm);", lambda m: _VTT_ENTITIES[m.group(0)], _unprotect(payload))
        line = CommentaryLine(_seconds(*match.groups()[:4]), _seconds(*match.groups()[4:]), payload)
        _check_order(path, number, line, lines[-1] if lines else None)
        lines.append(line)
    return lines


def read_srt(path: str | os.PathLike) -> list[CommentaryLine]:
    """Read a SubRip file strictly (cue number, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, text); undo :func:`write_srt`'s
    protection of blank, timing-like and digits-only text lines.

    Raises:
        AnnotationError: the file is missing, not UTF-8, or not valid SubRip.
    """
    lines: list[CommentaryLine] = []
    for number, block in _blocks(read_text(path, AnnotationError)):
        if len(block) < 2 or not block[0].strip().isdigit():
            raise AnnotationError(path, f"line {number}: expected a cue number then a timing line")
        match = _SRT_TIMING.match(block[1].strip())
        if match is None:
            raise AnnotationError(path, f"line {number + 1}: expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
        text = _unprotect("\n".join(block[2:]))
        line = CommentaryLine(_seconds(*match.groups()[:4]), _seconds(*match.groups()[4:]), text)
        _check_order(path, number, line, lines[-1] if lines else None)
        lines.append(line)
    return lines


def read_jsonl(path: str | os.PathLike) -> list[CommentaryLine]:
    """Read ``{"start", "end", "text"}`` objects, one per line (blank lines ignored).

    Raises:
        AnnotationError: the file is missing, a line is not JSON, or a record lacks a field or has the wrong type.
    """
    lines: list[CommentaryLine] = []
    for number, record in iter_jsonl(path, AnnotationError):
        if not isinstance(record, dict):
            raise AnnotationError(path, f"line {number}: expected an object with start, end, text")
        try:
            start, end, text = float(record["start"]), float(record["end"]), record["text"]
        except (KeyError, TypeError, ValueError) as err:
            raise AnnotationError(path, f"line {number}: needs numeric 'start', 'end' and a 'text' ({err})") from None
        if not isinstance(text, str):
            raise AnnotationError(path, f"line {number}: 'text' must be a string")
        line = CommentaryLine(start, end, text)
        _check_order(path, number, line, lines[-1] if lines else None)
        lines.append(line)
    return lines


_READERS = {".vtt": read_vtt, ".srt": read_srt, ".jsonl": read_jsonl}


def read_commentary(path: str | os.PathLike) -> list[CommentaryLine]:
    """Read a commentary file in the format named by its suffix (.vtt, .srt or .jsonl)."""
    return _READERS[_format_of(path)](path)


# ---------------------------------------------------------------------------------------------- line builder


class LineBuilder:
    """Groups the streaming model's per-step words into commentary lines.

    Feed every step with ``push(t, word)`` (``word`` is ``None`` or blank on a silent step); a line ends after
    ``pause_steps`` silent steps, once it holds ``max_words`` words, or at ``flush()`` (end of stream). A line
    starts at its first word's time and ends at its last word's time plus ``min_display_s``, so a line broken by
    ``max_words`` may overlap the next one (WebVTT shows both).

    Args:
        pause_steps: silent steps that end a line, >= 1.
        max_words: words that end a line, >= 1.
        min_display_s: how long a line stays up after its last word (seconds, > 0).
    """

    def __init__(self, pause_steps: int, max_words: int, min_display_s: float) -> None:
        if pause_steps < 1 or max_words < 1 or not min_display_s > 0:
            raise InputError(
                "LineBuilder",
                f"need pause_steps >= 1, max_words >= 1, min_display_s > 0; got {pause_steps}, {max_words}, "
                f"{min_display_s}",
            )
        self.pause_steps, self.max_words, self.min_display_s = pause_steps, max_words, min_display_s
        self.lines: list[CommentaryLine] = []  # every finished line, in order
        self._words: list[str] = []
        self._start = self._last = self._t = -math.inf
        self._silent = 0

    def push(self, t: float, word: str | None) -> CommentaryLine | None:
        """Add one step at time ``t`` (s, non-decreasing); return the line this step finished, if any."""
        if t < self._t:
            raise InputError("LineBuilder.push", f"time went backwards: {t} after {self._t}")
        self._t = t
        if word is None or not word.strip():
            self._silent += 1
            return self._close() if self._words and self._silent >= self.pause_steps else None
        self._silent = 0
        if not self._words:
            self._start = t
        self._words.append(word.strip())
        self._last = t
        return self._close() if len(self._words) >= self.max_words else None

    def push_piece(self, t: float, piece: str | None, word_start: bool = True) -> CommentaryLine | None:
        """Like :meth:`push`, for a subword tokenizer's pieces: a piece that does not start a word joins the open
        word (``word_start`` as in :class:`mmduplex.inference.session.StepOutput`); word-level pieces always start
        one."""
        if piece is not None and piece.strip() and not word_start and self._words and self._silent == 0:
            self._t = max(self._t, t)
            self._words[-1] += piece.strip()
            self._last = t
            return None
        return self.push(t, piece)

    def flush(self) -> CommentaryLine | None:
        """End of stream: finish and return the open line, if any."""
        return self._close() if self._words else None

    def _close(self) -> CommentaryLine:
        line = CommentaryLine(self._start, self._last + self.min_display_s, " ".join(self._words))
        self.lines.append(line)
        self._words = []
        return line


# ----------------------------------------------------------------------------------------------- HTML viewer

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; background: #fafafa; color: #222; }}
main {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }}
video {{ max-width: 100%; width: 640px; background: #000; }}
#cues {{ flex: 1 1 18rem; max-height: 480px; overflow-y: auto; margin: 0; padding: 0; list-style: none; }}
#cues li {{ padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; cursor: pointer; }}
#cues li.active {{ background: #ffe9a8; }}
#cues time {{ font-family: ui-monospace, monospace; color: #666; margin-right: 0.5rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
{note}<main>
<video id="video" controls preload="metadata" src="{video}">
<track id="commentary" kind="captions" srclang="en" label="Commentary" src="{vtt}" default>
</video>
<ol id="cues">
{items}
</ol>
</main>
<script>
"use strict";
const video = document.getElementById("video");
const trackElement = document.getElementById("commentary");
const items = Array.from(document.querySelectorAll("#cues li"));
trackElement.addEventListener("load", () => {{
  const cues = Array.from(trackElement.track.cues);
  document.body.dataset.trackCues = String(cues.length);
  document.body.dataset.trackTexts = JSON.stringify(cues.map((cue) => cue.getCueAsHTML().textContent));
}});
trackElement.addEventListener("error", () => {{ document.body.dataset.trackError = "true"; }});
video.addEventListener("loadedmetadata", () => {{ document.body.dataset.videoDuration = String(video.duration); }});
video.addEventListener("error", () => {{ document.body.dataset.videoError = String(video.error.code); }});
for (const item of items) {{
  item.addEventListener("click", () => {{ video.currentTime = Number(item.dataset.start); video.play(); }});
}}
video.addEventListener("timeupdate", () => {{
  const t = video.currentTime;
  for (const item of items) {{
    const active = Number(item.dataset.start) <= t && t < Number(item.dataset.end);
    if (active && !item.classList.contains("active")) item.scrollIntoView({{ block: "nearest" }});
    item.classList.toggle("active", active);
  }}
}});
</script>
</body>
</html>
"""


_NO_VIDEO = '<p id="no-video">No video file: the commentary was made from a live stream.</p>\n'


def _href(target: str | os.PathLike, page_dir: Path) -> str:
    """A URL for ``target`` as seen from a page in ``page_dir``: URLs unchanged, paths made relative."""
    target = os.fspath(target)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) and not re.match(r"^[A-Za-z]:[\\/]", target):
        return target  # http:, https:, data:, ... (but not a Windows drive letter)
    relative = os.path.relpath(Path(target).resolve(), page_dir.resolve())
    return urllib.parse.quote(Path(relative).as_posix())


def write_html(
    video: str | os.PathLike | None,
    vtt_path: str | os.PathLike,
    path: str | os.PathLike,
    title: str = "Commentary",
) -> Path:
    """Write a self-contained viewer page: the video with the commentary as a captions track, and the cue list.

    ``src`` attributes are relative to the page, so the page works when its folder is served over HTTP (browsers
    refuse a ``<track>`` from ``file://``); a video outside that folder is reachable only when the server's root
    contains both. The cue list is rendered from the WebVTT file itself; clicking a cue seeks the video.

    Args:
        video: the video file (path) or URL; ``None`` when there is none (a live stream read from stdin): the page
            says so and shows the cue list.
        vtt_path: the WebVTT commentary written by ``write_vtt``.
        path: the HTML file to write.
        title: page title and heading.

    Raises:
        AnnotationError: ``vtt_path`` is missing or not valid WebVTT.
    """
    page_dir = Path(path).parent
    items = "\n".join(
        f'<li data-start="{line.start:.3f}" data-end="{line.end:.3f}"><time>{_timestamp(line.start, ".")}</time>'
        f"<span>{html.escape(line.text)}</span></li>"
        for line in read_vtt(vtt_path)
    )
    page = _PAGE.format(
        title=html.escape(title),
        video="" if video is None else html.escape(_href(video, page_dir)),
        note="" if video is not None else _NO_VIDEO,
        vtt=html.escape(_href(vtt_path, page_dir)),
        items=items,
    )
    return write_text_atomic(path, page)
