"""File I/O shared by the whole project: atomic output and the one JSON / JSONL / text reader.

Output: write to a temporary file beside the target, then rename over it. A killed process therefore leaves either
the previous file or the complete new one, never a half-written file. Every output the project writes (JSON
reports, VTT, shards, bundles) goes through these helpers.

Input: :func:`read_text`, :func:`read_json` and :func:`iter_jsonl` are the one place that turns a missing file,
text that is not UTF-8 or malformed JSON into an error naming the file (and, for JSONL, the line). Each caller
passes the :class:`~mmduplex.errors.MMDuplexError` subclass it raises, so a checkpoint reader still raises
``CheckpointError`` and an annotation reader ``AnnotationError``. JSONL is streamed line by line, never read whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmduplex.errors import AnnotationError, MMDuplexError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically and return the path."""
    return write_text_atomic(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success replace ``target`` with it.

    Used for multi-file outputs (inference bundles). An existing ``target`` is only removed once the new
    folder is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------- readers


def read_text(path: str | os.PathLike, error_cls: type[MMDuplexError] = AnnotationError, what: str = "file") -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped).

    Raises:
        error_cls: the file is missing (``"<what> not found"``) or is not UTF-8 text.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError):
        raise error_cls(path, f"{what} not found") from None
    except UnicodeDecodeError as exc:
        raise error_cls(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: str | os.PathLike, error_cls: type[MMDuplexError] = AnnotationError, what: str = "file") -> Any:
    """Parse a whole JSON file.

    Args:
        path: the file.
        error_cls: the error raised (the caller's own ``MMDuplexError`` subclass).
        what: how the file is named in the "not found" message (``"annotation file"``, ...).

    Raises:
        error_cls: the file is missing, not UTF-8, or not valid JSON (the message names the line and column).
    """
    text = read_text(path, error_cls, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error_cls(path, f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def iter_jsonl(
    path: str | os.PathLike,
    error_cls: type[MMDuplexError] = AnnotationError,
    what: str = "file",
    end: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Stream a JSONL file: ``(1-based line number, parsed value)`` for every non-blank line.

    The file is read one line at a time, so a file of millions of records costs one record of memory. With ``end``
    (a byte offset where a line starts, e.g. from :func:`read_last_line`), the lines from there on are not read.

    Raises:
        error_cls: the file is missing, or a line is not UTF-8 or not valid JSON (the message names the line).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        raise error_cls(path, f"{what} not found") from None
    with handle:
        position = 0
        for number, raw in enumerate(handle, start=1):
            if end is not None and position >= end:
                return
            position += len(raw)
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error_cls(path, f"line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error_cls(path, f"line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            yield number, value


_TAIL_BLOCK = 1 << 16


def read_last_line(
    path: str | os.PathLike, error_cls: type[MMDuplexError] = AnnotationError, what: str = "file"
) -> tuple[int, bytes]:
    """``(byte offset, content)`` of the last non-blank line, read backwards in blocks (cheap on any file size).

    Trailing white space (the final newline, blank lines) is not part of the content; a blank file gives
    ``(0, b"")``.

    Raises:
        error_cls: the file is missing.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        raise error_cls(path, f"{what} not found") from None
    chunks: list[bytes] = []
    with handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:
            step = min(_TAIL_BLOCK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            if not chunks:
                chunk = chunk.rstrip()  # the trailing newline and blank lines
                if not chunk:
                    continue
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                chunks.append(chunk[newline + 1 :])
                return position + newline + 1, b"".join(reversed(chunks))
            chunks.append(chunk)
    return 0, b"".join(reversed(chunks))
