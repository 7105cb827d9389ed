"""Random access to LiveCC JSONL files by record index, and a writer of LiveCC's published layout.

LiveCC's published annotation files (``live_cc_5m_with_seeks.jsonl``, ``live_whisperx_526k_with_seeks.jsonl``) end
with a *seek line*: a JSON list of the byte offset of every record, with no trailing newline. LiveCC's dataset reads
that line once, then reads record ``i`` by seeking to its offset and parsing one line. :class:`LiveCCIndex` does the
same (and builds the offsets itself for a file without a seek line); :func:`write_livecc_jsonl` writes such files.
Records are validated exactly as :func:`mmduplex.data.transcripts.load_livecc_jsonl` validates them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmduplex.data.transcripts import TimedClip, empty_words, parse_livecc, seek_line_count
from mmduplex.errors import AnnotationError
from mmduplex.fileio import atomic_path, read_last_line

__all__ = ["LiveCCIndex", "read_seek_line", "write_livecc_jsonl"]


def read_seek_line(path: str | os.PathLike) -> tuple[int, list[int]] | None:
    """LiveCC's seek line, read from the end of the file: ``(its byte offset, the record offsets)`` or ``None``.

    Only the last non-blank line is read (backwards, in blocks), so this is cheap on a file of any size.

    Raises:
        AnnotationError: the file is missing.
    """
    start, last = read_last_line(path, AnnotationError)
    return (start, json.loads(last)) if seek_line_count(last) is not None else None


class LiveCCIndex(Sequence[TimedClip]):
    """Random access to the records of a LiveCC JSONL: ``index[i]`` seeks to record ``i`` and parses that line only.

    The record offsets come from the file's seek line when it has one (LiveCC's published files), else from one
    pass over the file that notes where each non-blank line starts (no JSON is parsed). Every access opens the file,
    so an index may be shared with data-loader worker processes.

    Args:
        path: the JSONL file.
        root: folder the relative video paths are resolved against (default: the JSONL's folder).

    Attributes:
        offsets: byte offset of every record.
        has_seek_line: whether the offsets came from the file's own seek line.

    Raises:
        AnnotationError: the file is missing, or the seek line's offsets are not increasing or run past the records.
    """

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.base = Path(root) if root is not None else self.path.parent
        self.empty_words = empty_words()
        seek = read_seek_line(self.path)
        self.has_seek_line = seek is not None
        if seek is not None:
            limit, self.offsets = seek
            bad = next((i for i, v in enumerate(self.offsets) if not 0 <= v < limit), None)
            if bad is None:
                bad = next((i for i in range(1, len(self.offsets)) if self.offsets[i] <= self.offsets[i - 1]), None)
            if bad is not None:
                raise AnnotationError(
                    self.path,
                    f"seek line: offset {bad} ({self.offsets[bad]}) is not an increasing byte offset before the "
                    f"seek line (at byte {limit})",
                )
        else:
            self.offsets = self._scan()

    def _scan(self) -> list[int]:
        offsets, pos = [], 0
        try:
            handle = self.path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise AnnotationError(self.path, "file not found") from None
        with handle:
            for line in handle:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        return offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, index: int) -> Any:
        """The raw JSON of record ``index`` (a LiveCC conversation)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        offset = self.offsets[index]
        with self.path.open("rb") as handle:
            if offset > 0:
                handle.seek(offset - 1)
                if handle.read(1) != b"\n":
                    raise AnnotationError(
                        self.path, f"seek line: offset {offset} of record {index} is not a line start"
                    )
            handle.seek(offset)
            line = handle.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationError(self.path, f"record {index} (byte {offset}): malformed JSON ({exc})") from None

    def __getitem__(self, index: int) -> TimedClip:  # type: ignore[override]  # no slices
        if not isinstance(index, int):
            raise TypeError(f"LiveCCIndex takes an integer index, got {type(index).__name__}")
        index = index % len(self) if -len(self) <= index < 0 else index
        record = self.record(index)
        at = f"record {index} (byte {self.offsets[index]})"
        clip = parse_livecc(record, at, self.path, self.base, self.empty_words)
        clip.meta.update(index=index, offset=self.offsets[index])
        return clip


def write_livecc_jsonl(
    records: Iterable[list[dict[str, Any]]], path: str | os.PathLike, seek_line: bool = True
) -> Path:
    """Write LiveCC records (e.g. from :func:`livecc_record`) as JSONL, atomically, in LiveCC's published layout.

    Args:
        records: the conversations, one per line.
        path: the file to write.
        seek_line: end the file with LiveCC's seek line (the records' byte offsets, no trailing newline), as its
            own dataset expects.
    """
    offsets: list[int] = []
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        for record in records:
            offsets.append(handle.tell())
            handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        if seek_line:
            handle.write(json.dumps(offsets).encode("ascii"))
    return Path(path)
