"""Stable import path of the commentary output API (a DESIGN contract): re-exports :mod:`mmduplex.io.outputs`."""

from mmduplex.io.outputs import (
    CommentaryLine,
    LineBuilder,
    normalize_lines,
    read_commentary,
    read_jsonl,
    read_srt,
    read_vtt,
    write_commentary,
    write_html,
    write_jsonl,
    write_srt,
    write_vtt,
)

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
