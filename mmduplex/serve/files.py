"""The videos ``mmduplex serve`` may show: a library folder (``--videos DIR``, read only) and the viewers' uploads
(a temporary folder of the server's own, emptied as sessions end and removed when the server stops).

Every file is named to clients by an id, ``videos/<path under DIR>`` or ``uploads/<random name>``, and resolved
back only after a check: a library path must resolve (symlinks followed) to a file under ``DIR`` with a video
suffix, an upload id must be one the store issued. Nothing else on disk can be read through the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v", ".mkv", ".ogv")
"""Suffixes of the files listed and accepted (containers a browser's <video> may play; the codec decides)."""
MAX_LISTED = 1000
"""Most library files listed."""


@dataclass(frozen=True)
class VideoFile:
    """A video a viewer may pick."""

    id: str
    """``videos/<relative path>`` or ``uploads/<name>``: what the page sends back to start a stream."""
    name: str
    """What the page shows: the path under the library, or the uploaded file's own name."""
    url: str
    """Where the browser fetches the file."""
    path: Path
    """The file on the server (never sent to clients)."""

    def public(self) -> dict[str, str]:
        """The fields a client sees."""
        return {"id": self.id, "name": self.name, "url": self.url}


class VideoLibrary:
    """The video files under ``root`` (``--videos DIR``); ``None``: no library, uploads only.

    Raises:
        InputError: ``root`` is given but is not a folder.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        from mmduplex.errors import InputError

        self.root = None if root is None else Path(root).resolve()
        if self.root is not None and not self.root.is_dir():
            raise InputError(root, "--videos must be a folder of video files")

    def list(self) -> list[VideoFile]:
        """The library's videos (hidden files and folders skipped), sorted by path, at most :data:`MAX_LISTED`."""
        if self.root is None:
            return []
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            video = self.resolve(relative.as_posix())
            if video is not None:
                found.append(video)
            if len(found) == MAX_LISTED:
                break
        return found

    def resolve(self, relative: str) -> VideoFile | None:
        """The library file at ``relative`` (a path under the root, ``/``-separated), or ``None`` when there is none:
        a path that leaves the root (``..``, an absolute path, a symlink pointing outside), a folder, a missing file
        or one without a video suffix."""
        if self.root is None or not relative or "\0" in relative:
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
            return None
        name = path.relative_to(self.root).as_posix()
        return VideoFile(id=f"videos/{name}", name=name, url=f"/videos/{name}", path=path)


class UploadError(Exception):
    """An upload refused: ``status`` is the HTTP status to answer with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UploadStore:
    """Uploaded videos in a temporary folder of their own.

    An upload is kept until the session that streams it ends (:meth:`release`), or for ``ttl_s`` seconds when no
    session picks it; at most ``max_files`` are kept at once. :meth:`close` removes the folder.

    Args:
        max_bytes: largest upload accepted.
        max_files: most uploads kept at once.
        ttl_s: seconds an upload no session has started on is kept.
    """

    def __init__(self, max_bytes: int, max_files: int, ttl_s: float = 600.0) -> None:
        self.max_bytes, self.max_files, self.ttl_s = max_bytes, max_files, ttl_s
        self.folder = Path(tempfile.mkdtemp(prefix="mmduplex-serve-uploads-"))
        self._files: dict[str, tuple[VideoFile, float]] = {}  # name -> (file, time stored)
        self._in_use: Counter[str] = Counter()  # name -> sessions streaming it
        self._lock = threading.Lock()

    def reserve(self, filename: str) -> Path:
        """A fresh path in the store for an upload named ``filename`` (its suffix kept).

        Raises:
            UploadError: 415 for a suffix other than :data:`VIDEO_SUFFIXES`, 429 when ``max_files`` are kept.
        """
        suffix = Path(filename).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise UploadError(415, f"{filename!r} is not a video file: upload one of {', '.join(VIDEO_SUFFIXES)}")
        self.sweep()
        with self._lock:
            if len(self._files) >= self.max_files:
                raise UploadError(429, f"{self.max_files} uploads are waiting to be watched; try again later")
        return self.folder / f"{secrets.token_hex(8)}{suffix}"

    def add(self, path: Path, filename: str) -> VideoFile:
        """Keep the file written at ``path`` (a :meth:`reserve` path) as an upload named ``filename``."""
        video = VideoFile(id=f"uploads/{path.name}", name=Path(filename).name, url=f"/uploads/{path.name}", path=path)
        with self._lock:
            self._files[path.name] = (video, time.monotonic())
        return video

    def resolve(self, name: str) -> VideoFile | None:
        """The upload ``name`` (the part after ``uploads/``), or ``None`` when the store holds none by that name."""
        with self._lock:
            entry = self._files.get(name)
        return None if entry is None else entry[0]

    def use(self, name: str) -> None:
        """A session streams upload ``name``: keep it until that session calls :meth:`release`."""
        with self._lock:
            self._in_use[name] += 1

    def release(self, name: str) -> None:
        """A session that streamed upload ``name`` ended: delete it once no session streams it."""
        with self._lock:
            self._in_use[name] -= 1
            if self._in_use[name] > 0:
                return
            del self._in_use[name]
            entry = self._files.pop(name, None)
        if entry is not None:
            entry[0].path.unlink(missing_ok=True)

    def discard(self, path: Path) -> None:
        """Delete a refused upload's file (never kept)."""
        path.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Delete the uploads no session picked within ``ttl_s``."""
        now = time.monotonic()
        with self._lock:
            unwatched = [name for name, (_, at) in self._files.items() if now - at > self.ttl_s]
            stale = [self._files.pop(name)[0] for name in unwatched if not self._in_use[name]]
        for video in stale:
            log.info("upload %s was not watched within %g s: deleted", video.name, self.ttl_s)
            video.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def close(self) -> None:
        """Remove the store's folder and everything in it."""
        with self._lock:
            self._files.clear()
            self._in_use.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
