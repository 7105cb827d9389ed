"""The synthetic commentary data set: determinism, transcript/event agreement, rendering, split, atomic generation."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

import mmduplex.io.video
from mmduplex.data.synthetic import (
    ACTIONS,
    COLOURS,
    SHAPES,
    Event,
    ShapeTrack,
    SyntheticConfig,
    SyntheticDataset,
    VideoSpec,
    _split,
    generate_dataset,
    load_events,
    make_motion_video,
    plan_video,
    render_video,
    vocabulary,
)
from mmduplex.data.transcripts import load_livecc_jsonl
from mmduplex.errors import AnnotationError, InputError
from mmduplex.io.video import read_video

TINY = SyntheticConfig(num_videos=3, duration_s=(6.0, 8.0), heldout_fraction=0.34, seed=3)
JSON_FILES = ("transcripts.jsonl", "events.jsonl", "split.json", "manifest.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SyntheticDataset:
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", TINY)


def _planned(num: int = 30, **overrides) -> list:
    config = SyntheticConfig(num_videos=num, **overrides)
    return [plan_video(config, i) for i in range(num)]


def test_vocabulary_and_config_validation():
    world = ["red", "green", "blue", "yellow", "square", "circle", "triangle", *ACTIONS]
    assert vocabulary()[:12] == world  # the world's words keep their ids; question words follow
    assert len(set(vocabulary())) == len(vocabulary())
    assert {"?", ",", "A.", "D.", "A", "D", "zero", "twelve", "option's", "directly."} <= set(vocabulary())
    with pytest.raises(InputError, match="min_gap_s"):
        SyntheticConfig(min_gap_s=1.0)
    with pytest.raises(InputError, match="speed"):
        SyntheticConfig(speed=0.0)
    with pytest.raises(InputError, match="duration_s"):
        SyntheticConfig(duration_s=(5.0, 2.0))


def test_same_seed_same_data_other_seed_other_data(tiny, tmp_path):
    again = generate_dataset(tmp_path / "again", TINY)
    for name in JSON_FILES:
        assert (tiny.root / name).read_bytes() == (again.root / name).read_bytes(), name
    spec = plan_video(TINY, 1)
    assert np.array_equal(render_video(spec), render_video(plan_video(TINY, 1)))
    other = plan_video(SyntheticConfig(num_videos=3, duration_s=(6.0, 8.0), seed=4), 1)
    assert other.events != spec.events
    assert not np.array_equal(render_video(other)[:1], render_video(spec)[:1])  # backgrounds differ too


def test_rendering_in_processes_writes_the_same_files(tiny, tmp_path):
    """Two spawned rendering processes write byte-identical videos and annotations to one process's."""
    parallel = generate_dataset(tmp_path / "parallel", TINY, processes=2)
    names = sorted(p.relative_to(tiny.root) for p in tiny.root.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(parallel.root) for p in parallel.root.rglob("*") if p.is_file())
    assert any(name.suffix == ".mp4" for name in names)
    for name in names:
        assert (tiny.root / name).read_bytes() == (parallel.root / name).read_bytes(), name


def test_transcripts_match_events(tiny):
    clips = {os.path.basename(c.video): c for c in load_livecc_jsonl(tiny.transcripts_path)}
    assert len(clips) == TINY.num_videos
    for video_id in tiny.video_ids():
        clip, events = clips[f"{video_id}.mp4"], tiny.events(video_id)
        assert clip.video == os.fspath(tiny.video_path(video_id)) and tiny.video_path(video_id).is_file()
        assert clip.start_s == 0.0 and clip.end_s == pytest.approx(tiny.spec(video_id).duration_s)
        assert events and len(clip.words) == 3 * len(events)  # no words without an event
        for k, event in enumerate(events):
            words = clip.words[3 * k : 3 * k + 3]
            assert [w.text for w in words] == [event.colour, event.shape, event.action]
            assert all(event.t <= w.start <= event.t + 1.0 for w in words)
            assert TINY.word_delay_s[0] - 1e-6 <= words[0].start - event.t <= TINY.word_delay_s[1] + 1e-6
            assert words[0].start < words[1].start < words[2].start and words[2].end <= clip.end_s
            if k + 1 < len(events):
                assert words[2].end <= events[k + 1].t  # a description ends before the next event


def test_event_timeline_and_semantics():
    specs = _planned()
    counts = Counter(e.action for s in specs for e in s.events)
    assert set(counts) == set(ACTIONS) and min(counts.values()) >= 0.1 * sum(counts.values()), counts
    for spec in specs:
        times = [e.t for e in spec.events]
        assert all(b - a >= TINY.min_gap_s - 1e-6 for a, b in zip(times, times[1:], strict=False))
        for event in spec.events:
            track = spec.shapes[event.shape_id]
            x, y = track.position(event.t)
            edge_distance = min(x, spec.width - x, y, spec.height - y)
            assert event.shape == track.shape and event.colour == track.colour_at(event.t)
            assert event.colour in COLOURS and event.shape in SHAPES
            on_screen = [s for s in spec.shapes if s.position(event.t + 1e-3) is not None]
            assert len(on_screen) <= TINY.max_shapes
            assert len({(s.colour_at(event.t), s.shape) for s in on_screen}) == len(on_screen)
            if event.action in ("enters", "leaves"):
                assert edge_distance == pytest.approx(0.0, abs=0.1), event  # the centre crosses the edge
                inside = track.position(event.t + (0.3 if event.action == "enters" else -0.3))
                assert min(inside[0], spec.width - inside[0], inside[1], spec.height - inside[1]) > 1.0
            else:
                assert edge_distance >= track.size / 2 - 1e-6, event  # fully visible
            if event.action == "stops":
                assert track.position(event.t + 1.0) == pytest.approx((x, y))
            if event.action == "moves":
                assert track.position(event.t - 0.5) == pytest.approx((x, y))
                assert np.hypot(*np.subtract(track.position(event.t + 0.5), (x, y))) > 0.4 * 0.5 * TINY.speed
            if event.action == "turns":
                assert track.colour_at(event.t - 0.1) != event.colour


def _colour_name(pixel: np.ndarray) -> str | None:
    """The palette colour a (possibly shaded) pixel shows; ``None`` for the muted, low-saturation background."""
    pixel = pixel.astype(float)
    if pixel.max() - pixel.min() < 45:
        return None
    palette = np.array(list(COLOURS.values()), dtype=float)  # [C, 3]
    cosine = palette @ pixel / (np.linalg.norm(palette, axis=1) * np.linalg.norm(pixel))
    return list(COLOURS)[int(cosine.argmax())]


def _check_event_pixels(spec, frames: np.ndarray) -> None:
    for event in spec.events:
        k = int(np.ceil(event.t * spec.fps - 1e-6))  # first frame at or after the event
        x, y = spec.shapes[event.shape_id].position(k / spec.fps)
        col, row = int(np.clip(x, 0.5, spec.width - 0.5)), int(np.clip(y, 0.5, spec.height - 0.5))
        assert _colour_name(frames[k, row, col]) == event.colour, (spec.video_id, event)
        if event.action == "turns":
            assert _colour_name(frames[k - 1, row, col]) not in (None, event.colour), (spec.video_id, event)


def test_rendered_frames_show_the_event_shape(tiny):
    specs = _planned(10)
    for spec in specs:
        _check_event_pixels(spec, render_video(spec))
    assert {s.shape for spec in specs for s in spec.shapes} == set(SHAPES)
    video_id = tiny.video_ids()[0]
    spec = tiny.spec(video_id)
    frames = render_video(spec)  # [T, H, W, 3]
    assert frames.shape == (spec.num_frames, 96, 96, 3) and frames.dtype == np.uint8
    decoded = read_video(tiny.video_path(video_id), fps=spec.fps).frames.numpy()
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # the mp4 holds these frames (lossy)
    _check_event_pixels(spec, decoded)


def test_shapes_are_shaded_by_kind():
    still = ((0.0, 48.0, 48.0), (1.0, 48.0, 48.0))
    for kind in SHAPES:
        spec = VideoSpec("one", 2, 10.0, 96, 96, 0, (ShapeTrack(0, kind, 24.0, still, ((0.0, "red"),)),))
        red = render_video(spec)[0, :, :, 0].astype(int)  # [H, W] red channel
        centre, left, top, bottom = red[48, 48], red[48, 39], red[39, 48], red[57, 48]
        if kind == "square":
            assert centre == left == top == bottom == COLOURS["red"][0]
        elif kind == "circle":
            assert centre > left and centre > top and abs(left - top) <= 2
        else:
            assert top < centre < bottom and red[48, 45] == centre


def test_shape_of_the_latest_event_is_drawn_on_top():
    still = ((0.0, 48.0, 48.0), (2.0, 48.0, 48.0))  # two squares at the same place for 2 s
    shapes = (
        ShapeTrack(0, "square", 20.0, still, ((0.0, "red"), (1.0, "blue"))),
        ShapeTrack(1, "square", 20.0, still, ((0.0, "green"),)),
    )
    events = (Event(0.5, "green", "square", "stops", 1), Event(1.0, "blue", "square", "turns", 0))
    spec = VideoSpec("overlap", 20, 10.0, 96, 96, 0, shapes, events)
    frames = render_video(spec)  # [20, 96, 96, 3]; ties (no event yet): the higher id on top
    assert [tuple(frames[k, 48, 48]) for k in (2, 7, 12)] == [COLOURS["green"], COLOURS["green"], COLOURS["blue"]]


def test_split_is_deterministic_and_disjoint(tiny):
    train, heldout = tiny.video_ids("train"), tiny.video_ids("heldout")
    assert len(heldout) == 1 and len(train) == 2
    assert sorted(train + heldout) == tiny.video_ids()
    assert json.loads((tiny.root / "split.json").read_text()) == {"train": train, "val": [], "heldout": heldout}
    assert tiny.video_ids("val") == []
    assert [c.video for c in tiny.clips("heldout")] == [os.fspath(p) for p in tiny.videos("heldout")]
    with pytest.raises(InputError):
        tiny.video_ids("test")
    many = SyntheticConfig(num_videos=20, heldout_fraction=0.25)
    assert len(_split(many)["heldout"]) == 5 and _split(many) == _split(many)
    assert _split(SyntheticConfig(num_videos=20, heldout_fraction=0.25, seed=1)) != _split(many)


def test_a_split_written_before_val_existed_reads_as_an_empty_val(tiny, tmp_path):
    import shutil

    root = shutil.copytree(tiny.root, tmp_path / "old")
    split = json.loads((root / "split.json").read_text())
    (root / "split.json").write_text(json.dumps({"train": split["train"], "heldout": split["heldout"]}))
    old = SyntheticDataset(root)
    assert old.video_ids("val") == [] and old.video_ids("heldout") == tiny.video_ids("heldout")


def test_val_split_leaves_the_heldout_videos_where_they_were():
    """Settings are chosen on val; adding it takes videos from train only, so held-out figures stay comparable."""
    without = _split(SyntheticConfig(num_videos=40, heldout_fraction=0.2))
    with_val = _split(SyntheticConfig(num_videos=40, heldout_fraction=0.2, val_fraction=0.1))
    assert with_val["heldout"] == without["heldout"] and len(with_val["val"]) == 4 and len(with_val["train"]) == 28
    assert set(with_val["val"]) <= set(without["train"]) and not set(with_val["val"]) & set(with_val["train"])
    assert sorted(with_val["train"] + with_val["val"] + with_val["heldout"]) == sorted(
        without["train"] + without["heldout"]
    )
    with pytest.raises(InputError, match="val_fraction"):
        SyntheticConfig(num_videos=40, heldout_fraction=0.5, val_fraction=0.5)


def test_complete_dataset_is_reused_other_config_regenerated(tmp_path):
    config = SyntheticConfig(num_videos=2, duration_s=(4.0, 4.0))
    root = tmp_path / "data"
    generate_dataset(root, config)
    stamp = {name: os.stat(root / name).st_mtime_ns for name in ("manifest.json", "videos/shapes_0000.mp4")}
    generate_dataset(root, config)
    assert stamp == {name: os.stat(root / name).st_mtime_ns for name in stamp}
    changed = SyntheticConfig(num_videos=1, duration_s=(4.0, 4.0), seed=1)
    dataset = generate_dataset(root, changed)
    assert dataset.config == changed and dataset.video_ids() == ["shapes_0000"]
    assert not (root / "videos" / "shapes_0001.mp4").exists()
    (root / "videos" / "shapes_0000.mp4").unlink()  # an incomplete folder is made again, not trusted
    generate_dataset(root, changed)
    assert (root / "videos" / "shapes_0000.mp4").is_file()


def test_killed_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    config = SyntheticConfig(num_videos=3, duration_s=(4.0, 4.0))
    calls = []
    real_write = mmduplex.io.video.write_video

    def dying_write(path, frames, fps):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while writing the second video
        real_write(path, frames, fps)

    monkeypatch.setattr(mmduplex.io.video, "write_video", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "data", config)
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(mmduplex.io.video, "write_video", real_write)
    assert generate_dataset(tmp_path / "data", config).video_ids() == ["shapes_0000", "shapes_0001", "shapes_0002"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a synthetic data set"):
        generate_dataset(tmp_path / "data", SyntheticConfig(num_videos=1, duration_s=(4.0, 4.0)))
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    with pytest.raises(AnnotationError, match="manifest.json"):
        SyntheticDataset(tmp_path / "data")


def test_load_events_reports_the_bad_line(tmp_path, tiny):
    events = load_events(tiny.events_path)
    assert sorted(events) == tiny.video_ids() and events[tiny.video_ids()[0]] == tiny.events(tiny.video_ids()[0])
    lines = tiny.events_path.read_text().splitlines()
    bad = tmp_path / "events.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({"video": "x", "events": [{"t": 1.0}]}) + "\n")
    with pytest.raises(AnnotationError, match="line 2: bad event record"):
        load_events(bad)
    bad.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(AnnotationError, match="line 2: malformed JSON"):
        load_events(bad)


def test_motion_video_amount_of_motion_is_controlled():
    still = make_motion_video(12, 5.0, speed=0.0, num_shapes=2, size=96, seed=1)
    assert still.shape == (12, 96, 96, 3) and still.dtype == np.uint8
    assert (still == still[:1]).all()
    slow, fast = (make_motion_video(12, 5.0, speed=s, num_shapes=2, size=96, seed=1) for s in (10.0, 40.0))
    motion = [np.abs(np.diff(v.astype(np.int16), axis=0)).mean() for v in (still, slow, fast)]
    assert motion[0] == 0 < motion[1] < motion[2]
    assert np.array_equal(fast, make_motion_video(12, 5.0, speed=40.0, num_shapes=2, size=96, seed=1))
    assert make_motion_video(3, 5.0, speed=10.0, num_shapes=1, size=64, seed=0).shape == (3, 64, 64, 3)
