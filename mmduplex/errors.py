"""Project exceptions: every user-facing failure names the file (or field) at fault and the problem."""

from __future__ import annotations

import os


class MMDuplexError(Exception):
    """Base class for errors the CLI turns into one clean line on stderr and a non-zero exit.

    Args:
        path: the file, folder or field at fault (``None`` when there is none).
        problem: what is wrong with it, as a short sentence fragment.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class VideoError(MMDuplexError):
    """A video is missing, empty, truncated, undecodable or has no duration."""


class AnnotationError(MMDuplexError):
    """An annotation / transcript / benchmark record is malformed."""


class CacheError(MMDuplexError):
    """A feature cache is corrupt, stale, or was made by another encoder / fps."""


class CheckpointError(MMDuplexError):
    """A checkpoint or bundle is missing, corrupt, or of the wrong kind."""


class InputError(MMDuplexError):
    """A tensor or argument handed to the library has the wrong shape, dtype or values."""
