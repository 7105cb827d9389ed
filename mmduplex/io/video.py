"""Video input/output: sampling frames at a requested fps (decord for files, PyAV for streams) and writing mp4s.

Sampling is time based. For a requested rate ``fps`` the sample times are ``start_s + k / fps`` for every
``k >= 0`` with ``t < end`` (``end`` = the video's duration, or ``end_s`` if earlier), and each sample time gets
the frame *displayed* at that time: the last frame whose presentation time is ``<= t``. Frame times are
measured from the first frame, so every video starts at ``t = 0``. Variable-frame-rate files are handled
because the rule uses each frame's own timestamp, never an assumed constant rate. Frames come out upright
(display rotation applied) and RGB.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import decord
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mmduplex.errors import InputError, VideoError
from mmduplex.fileio import atomic_path

log = logging.getLogger(__name__)

# A frame whose timestamp is within this many seconds after a sample time still counts as shown at that time
# (absorbs float rounding of timestamps, e.g. decord reports float32 seconds).
_TIME_TOLERANCE_S = 1e-4
_DECORD_BATCH = 32  # frames decoded per decord get_batch call (bounds peak memory at full resolution)


@dataclass
class VideoInfo:
    """What ``probe_video`` learns about a video file.

    Attributes:
        path: the file.
        duration_s: length in seconds (stream / container metadata, else the end of the last frame).
        native_fps: the stream's average frame rate.
        num_frames: frame count from the index, else estimated as ``duration_s * native_fps``.
        width: displayed width in pixels (after rotation).
        height: displayed height in pixels (after rotation).
        rotation: degrees counter-clockwise the stored frames are turned to display upright (0, 90, 180, 270).
    """

    path: str
    duration_s: float
    native_fps: float
    num_frames: int
    width: int
    height: int
    rotation: int


@dataclass
class VideoClip:
    """Frames sampled from a video at a fixed rate.

    Attributes:
        frames: ``[T, H, W, 3]`` uint8 RGB, upright.
        timestamps: ``[T]`` float64 seconds, ``start_s + k / fps``.
        fps: the requested sampling rate.
        duration_s: the source's duration.
        source: the file read.
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    fps: float
    duration_s: float
    source: str


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's duration, rate, size and rotation (decodes one frame, or all if there is no metadata).

    Raises:
        VideoError: the file is missing, empty, truncated, not a video, has no video stream or no duration.
    """
    path = _check_file(path)
    with _open_file(path) as container:
        stream = _video_stream(container, path)
        _check_complete(stream, path)
        frames = _decoded(container, stream, path)
        first = next(frames, None)
        if first is None:
            raise VideoError(path, "has no video frames (zero duration)")
        duration = _metadata_duration(container, stream)
        if duration is None:  # no metadata: the end of the last frame
            last, count = first, 1
            for frame in frames:
                last, count = frame, count + 1
            if first.time is None or last.time is None:  # no timestamps either: count frames
                duration = count * _frame_duration(first, stream)
            else:
                duration = last.time + _frame_duration(last, stream) - first.time
        if not duration > 0:
            raise VideoError(path, "has zero duration")
        rate = stream.average_rate or stream.guessed_rate
        native_fps = float(rate) if rate else (stream.frames or 1) / duration
        rotation = _rotation(first)
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        return VideoInfo(
            path=str(path),
            duration_s=float(duration),
            native_fps=native_fps,
            num_frames=int(stream.frames or round(duration * native_fps)),
            width=width,
            height=height,
            rotation=rotation,
        )


def read_video(
    path: str | os.PathLike, fps: float, size: int | None = None, start_s: float = 0.0, end_s: float | None = None
) -> VideoClip:
    """Sample a video file at ``fps`` frames per second (decord; PyAV where decord fails).

    Only the frames shown at the sample times are decoded into memory, so long files are fine.

    Args:
        path: the video file.
        fps: sampling rate, > 0.
        size: if set, resize the shorter side to ``size`` and centre-crop ``size x size``; ``None`` keeps the size.
        start_s: first sample time in seconds.
        end_s: samples stop before this time (default: the end of the video).

    Returns:
        the sampled frames and their times.

    Raises:
        VideoError: bad file (see ``probe_video``), undecodable frames, ``fps <= 0`` or a bad time range.
    """
    _check_fps(fps, path)
    _check_size(size)
    info = probe_video(path)
    if not 0 <= start_s < info.duration_s:
        raise VideoError(path, f"start_s={start_s} is outside the video (0 to {info.duration_s:.3f} s)")
    if end_s is not None and not end_s > start_s:
        raise VideoError(path, f"end_s={end_s} must be after start_s={start_s}")
    end = info.duration_s if end_s is None else min(end_s, info.duration_s)
    sampled = _read_decord(info, fps, size, start_s, end)
    if sampled is None:
        with _open_file(Path(path)) as container:
            pairs = list(_sample_frames(container, info.path, fps, size, start_s, end))
        empty = torch.empty((0, size or info.height, size or info.width, 3), dtype=torch.uint8)
        times = np.array([t for t, _ in pairs], dtype=np.float64)
        frames = torch.stack([frame for _, frame in pairs]) if pairs else empty  # [T, H, W, 3]
    else:
        times, frames = sampled
    return VideoClip(frames, torch.from_numpy(times), float(fps), info.duration_s, info.path)


def iter_video(
    source: str | os.PathLike | IO[bytes], fps: float, size: int | None = None
) -> Iterator[tuple[float, torch.Tensor]]:
    """Stream ``(t, frame)`` pairs sampled at ``fps``, decoding incrementally with PyAV (constant memory).

    Works where the whole file is not available up front: a pipe fed by another process, stdin, a URL. A path
    that is still being written is read up to its current end (to follow a live file, pipe ``tail -f`` into
    stdin); mp4s can only be streamed when their index (moov atom) comes first.

    Args:
        source: a path, ``"-"`` for stdin, a URL FFmpeg opens, or a binary file object (e.g. a pipe).
        fps: sampling rate, > 0.
        size: if set, resize the shorter side to ``size`` and centre-crop ``size x size``.

    Yields:
        ``(t, frame)`` with ``t = k / fps`` seconds and ``frame`` ``[H, W, 3]`` uint8 RGB, upright.

    Raises:
        VideoError: the source cannot be opened or decoded, or ``fps <= 0`` (``fps`` is checked at once, the
            source when iteration starts).
    """
    name = _source_name(source)
    _check_fps(fps, name)
    _check_size(size)
    return _iterate(source, name, fps, size)


def _iterate(source: Any, name: str, fps: float, size: int | None) -> Iterator[tuple[float, torch.Tensor]]:
    with _open_source(source, name) as container:
        yield from _sample_frames(container, name, fps, size)


# --------------------------------------------------------------------------------------------- sampling


def _sample_times(fps: float, start_s: float, end_s: float) -> np.ndarray:
    """The sample times ``start_s + k / fps`` (``k = 0, 1, ...``) below ``end_s``: float64 ``[T]``."""
    count = max(0, math.ceil((end_s - start_s) * fps)) + 1
    times = start_s + np.arange(count, dtype=np.float64) / fps  # same arithmetic as _sample_frames
    return times[times < end_s]


def _read_decord(
    info: VideoInfo, fps: float, size: int | None, start_s: float, end_s: float
) -> tuple[np.ndarray, torch.Tensor] | None:
    """Sample with decord, decoding only the frames shown at the sample times; ``None`` if decord fails."""
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0))
    except (RuntimeError, decord.DECORDError):
        log.info("decord cannot open %s; decoding it with PyAV", info.path)
        return None
    stamps = reader.get_frame_timestamp(np.arange(len(reader)))  # [N, 2] float32 (start, end) seconds
    origin = float(stamps[0, 0])
    starts = stamps[:, 0].astype(np.float64) - origin  # [N] presentation time of each frame
    end_s = min(end_s, float(stamps[-1, 1]) - origin + _TIME_TOLERANCE_S)
    times = _sample_times(fps, start_s, end_s)  # [T]
    shown = np.clip(np.searchsorted(starts, times + _TIME_TOLERANCE_S, side="right") - 1, 0, None)  # [T]
    needed, where = np.unique(shown, return_inverse=True)  # decode each needed frame once
    chunks = []
    for begin in range(0, len(needed), _DECORD_BATCH):
        try:
            batch = reader.get_batch(needed[begin : begin + _DECORD_BATCH].tolist()).asnumpy()  # [n, H, W, 3]
        except (RuntimeError, decord.DECORDError) as exc:  # e.g. decord 0.6 fails on some frame sizes
            log.warning("decord cannot decode %s (%s); decoding it with PyAV", info.path, _first_line(exc))
            return None
        chunk = torch.from_numpy(batch)
        if info.rotation in (90, 270) and chunk.shape[1:3] == (info.width, info.height):
            chunk = torch.rot90(chunk, info.rotation // 90, dims=(1, 2))  # this decord build ignored rotation
        chunks.append(_resize_crop(chunk, size) if size else chunk)
    frames = torch.cat(chunks)[torch.from_numpy(where.reshape(-1))]  # [T, H, W, 3]
    return times, frames


def _sample_frames(
    container: av.container.InputContainer,
    name: str,
    fps: float,
    size: int | None,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> Iterator[tuple[float, torch.Tensor]]:
    """Decode frame by frame and yield ``(t, frame)`` at each sample time, holding only the frame on screen."""
    stream = _video_stream(container, name)
    k, t = 0, start_s
    shown: av.VideoFrame | None = None  # the frame on screen at time t
    shown_time, image = 0.0, None  # its time from the first frame; its tensor, converted on first use
    origin = None
    for frame in _decoded(container, stream, name):
        if frame.time is not None:
            time = frame.time
        else:
            time = 0.0 if shown is None else shown_time + (origin or 0.0) + _frame_duration(shown, stream)
        origin = time if origin is None else origin
        time -= origin
        while shown is not None and t < end_s and t + _TIME_TOLERANCE_S < time:
            image = _to_tensor(shown, size) if image is None else image
            yield t, image
            k += 1
            t = start_s + k / fps
        if t >= end_s:
            return
        shown, shown_time, image = frame, time, None
    if shown is None:
        raise VideoError(name, "has no video frames")
    end = min(end_s, shown_time + _frame_duration(shown, stream))
    while t < end:
        image = _to_tensor(shown, size) if image is None else image
        yield t, image
        k += 1
        t = start_s + k / fps


# --------------------------------------------------------------------------------------------- frames


def _to_tensor(frame: av.VideoFrame, size: int | None) -> torch.Tensor:
    """A decoded frame as an upright ``[H, W, 3]`` uint8 RGB tensor, optionally resized and cropped."""
    image = np.rot90(frame.to_ndarray(format="rgb24"), _rotation(frame) // 90)  # [H, W, 3]
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    return _resize_crop(tensor[None], size)[0] if size else tensor


def _resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 -> ``[N, size, size, 3]``: shorter side to ``size`` (bicubic), centre crop."""
    images = frames.permute(0, 3, 1, 2)  # [N, 3, H, W]
    images = TF.resize(images, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    images = TF.center_crop(images, [size, size])  # [N, 3, size, size]
    return images.permute(0, 2, 3, 1).contiguous()


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a frame, normalised to 0, 90, 180 or 270."""
    return int(round(frame.rotation / 90)) * 90 % 360


def _frame_duration(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    """How long a frame is shown: its own duration, else one period of the stream's average rate, else 0."""
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.0


def _metadata_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video stream's duration from metadata (stream first, then container), ``None`` if absent."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------------------------- opening


class _PipeReader:
    """A read-only view of a pipe without ``seek``, so FFmpeg treats it as a stream; returns data as it comes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._read = getattr(stream, "read1", stream.read)

    def read(self, size: int = -1) -> bytes:
        return self._read(size)


def _source_name(source: Any) -> str:
    """How errors name a source: the path, ``<stdin>``, the URL, or the file object's name."""
    if isinstance(source, (str, os.PathLike)):
        return "<stdin>" if source == "-" else os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"<stream {name}>" if name is not None else "<stream>"


def _open_source(source: Any, name: str) -> av.container.InputContainer:
    """Open a path, ``"-"``, URL or binary file object with PyAV."""
    if isinstance(source, (str, os.PathLike)) and source != "-":
        text = os.fspath(source)
        if "://" not in text or os.path.exists(text):
            path = _check_file(text)
            container = _open_file(path)
            try:
                _check_complete(_video_stream(container, path), path)
            except VideoError:
                container.close()
                raise
            return container
        target: Any = text
    elif source == "-" or hasattr(source, "read"):
        fileobj = sys.stdin.buffer if source == "-" else source
        try:
            seekable = fileobj.seekable()
        except (AttributeError, ValueError, OSError):
            seekable = False
        target = fileobj if seekable else _PipeReader(fileobj)
    else:
        raise InputError("source", f"expected a path, '-', a URL or a binary file object, got {type(source).__name__}")
    try:
        return av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        hint = "" if isinstance(target, str) else "; an mp4 can be read from a pipe only if its index comes first"
        raise VideoError(name, f"not a video stream FFmpeg can read ({_first_line(exc)}{hint})") from exc


def _open_file(path: Path) -> av.container.InputContainer:
    """Open a video file with PyAV, turning failures into one clear ``VideoError``."""
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        with path.open("rb") as handle:
            head = handle.read(8)
        if head[4:8] == b"ftyp":
            raise VideoError(path, "truncated or corrupt mp4: its index (moov atom) is missing or unreadable") from exc
        raise VideoError(path, f"not a video file FFmpeg can read ({_first_line(exc)})") from exc


def _check_file(path: str | os.PathLike) -> Path:
    """The path of an existing, non-empty file, else ``VideoError``."""
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "file does not exist")
    if not path.is_file():
        raise VideoError(path, "is not a file")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    return path


def _check_complete(stream: av.video.stream.VideoStream, path: Path) -> None:
    """Raise if the container's index points past the end of the file (a cut-off copy or download)."""
    entries = stream.index_entries
    if len(entries):
        needed = max(entry.pos + entry.size for entry in entries)
        present = path.stat().st_size
        if needed > present:
            raise VideoError(path, f"truncated: its frames need {needed} bytes but the file has {present}")


def _video_stream(container: av.container.InputContainer, name: str | os.PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(name, "has no video stream")
    return container.streams.video[0]


def _decoded(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str | os.PathLike
) -> Iterator[av.VideoFrame]:
    """Decode a stream's frames in display order, turning decoder failures into ``VideoError``."""
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise VideoError(name, f"cannot decode the video stream, corrupt or truncated ({_first_line(exc)})") from exc


def _check_fps(fps: float, name: str | os.PathLike) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise VideoError(name, f"fps must be a positive number, got {fps!r}")


def _check_size(size: int | None) -> None:
    if size is not None and not (isinstance(size, int) and size > 0):
        raise InputError("size", f"must be a positive int or None, got {size!r}")


def _first_line(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()[0]


# --------------------------------------------------------------------------------------------- writing

# Encoder settings for written videos. libx264 at near-visually-lossless quality; mpeg4 where libx264 is absent.
_X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "rc-lookahead=0:threads=1"}
"""x264 on one thread without rate-control lookahead: the same frames always give the same bytes (with the lookahead
the output varied between writes of the same frames, so the synthetic set and its features were not reproducible)."""
_MPEG4_OPTIONS = {"qscale": "2"}


def _pick_codec() -> tuple[str, dict[str, str]]:
    """Return the best available encoder name and its options."""
    try:
        av.codec.Codec("libx264", "w")
    except (av.error.FFmpegError, ValueError):  # ValueError / UnknownCodecError when the encoder is missing
        return "mpeg4", dict(_MPEG4_OPTIONS)
    return "libx264", dict(_X264_OPTIONS)


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: float) -> None:
    """Write RGB frames to a video file atomically (H.264 or MPEG-4 part 2, yuv420p).

    The container is chosen from the file suffix (``.mp4`` when there is none). mp4/mov files are written with
    the index at the front (``faststart``) so they can be decoded from a pipe. Odd widths / heights are padded
    by one replicated row / column because yuv420p needs even sizes.

    Args:
        path: output file.
        frames: ``[T, H, W, 3]`` uint8 RGB frames (torch or numpy).
        fps: frame rate of the written video, > 0.

    Raises:
        InputError: ``frames`` has the wrong shape / dtype, is empty, or ``fps <= 0``.
        VideoError: the encoder or container could not write the file.
    """
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError("frames", f"expected [T, H, W, 3] uint8, got shape {tuple(array.shape)} {array.dtype}")
    if array.shape[0] == 0:
        raise InputError("frames", "no frames to write")
    if not fps > 0:
        raise InputError("fps", f"must be > 0, got {fps}")
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")  # [T, H', W', 3] even
    _, height, width, _ = array.shape

    target = Path(path)
    suffix = target.suffix or ".mp4"
    codec, options = _pick_codec()
    rate = Fraction(fps).limit_denominator(1001)
    container_options = {"movflags": "+faststart"} if suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    try:
        with (
            atomic_path(target, suffix=suffix) as tmp,
            av.open(str(tmp), mode="w", options=container_options) as container,
        ):
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for image in array:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))  # flush delayed frames
    except (av.error.FFmpegError, ValueError) as exc:  # ValueError: PyAV knows no container for the suffix
        raise VideoError(target, f"cannot write video ({_first_line(exc)})") from exc
