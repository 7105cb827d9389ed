"""The feature cache and ``mmduplex features``: round trip, resume, kill-safety, mismatch and bad-video handling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmduplex.cli import main
from mmduplex.data.samples import sample_videos
from mmduplex.errors import CacheError, InputError
from mmduplex.io.video import read_video, write_video
from mmduplex.tokenizer.encoders.factory import create_encoder
from mmduplex.train.features import INDEX_NAME, FeatureCache, FeatureRecord, extract_features, video_key

FPS = 2.0


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("mmduplex-tiny", device="cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """Three short generated videos (a moving square) and one real mp4."""
    folder = tmp_path_factory.mktemp("videos")
    paths = []
    for i in range(3):
        frames = np.zeros((12, 48, 64, 3), dtype=np.uint8)  # [T, H, W, 3], 1.5 s at 8 fps
        for t in range(12):
            frames[t, 10:26, 4 * t + i : 4 * t + i + 16, i] = 255
        path = folder / f"clip {i}.mp4"  # a space: keys are sanitised
        write_video(path, frames, fps=8)
        paths.append(path)
    return [*paths, sample_videos()["carphone"]]


def _record(t: int = 3, source: str = "/videos/a.mp4") -> FeatureRecord:
    return FeatureRecord(
        patches=torch.randn(t, 144, 64), pooled=torch.randn(t, 64),
        timestamps=torch.arange(t, dtype=torch.float64) / FPS, duration_s=t / FPS, source=source,
    )  # fmt: skip


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}


def test_video_key_sanitises_and_hashes_only_on_request(tmp_path):
    assert video_key("/data/My clip (1).mp4") == "My_clip_1"
    assert video_key(".hidden.mp4") == "hidden"
    assert video_key("/data/v1.2.mp4") == "v1.2"
    hashed = video_key(tmp_path / "a.mp4", hashed=True)
    assert hashed.startswith("a-") and len(hashed) == len("a-") + 8
    assert hashed != video_key(tmp_path / "b" / "a.mp4", hashed=True)


def test_cache_round_trip_and_rebuild(tmp_path, encoder):
    cache = FeatureCache(tmp_path, encoder.fingerprint, FPS, create=True)
    record = _record()
    cache.add("a", record)
    assert len(cache) == 1 and "a" in cache and cache.keys() == ["a"]
    loaded = FeatureCache(tmp_path).load("a")
    torch.testing.assert_close(loaded.patches, record.patches, rtol=1e-3, atol=1e-3)  # stored as float16
    torch.testing.assert_close(loaded.pooled, record.pooled, rtol=1e-3, atol=1e-3)
    assert torch.equal(loaded.timestamps, record.timestamps) and loaded.timestamps.dtype == torch.float64
    assert (loaded.duration_s, loaded.source) == (record.duration_s, record.source)

    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["encoder"] == encoder.fingerprint and index["fps"] == FPS and index["version"] == 1
    entry = index["videos"]["a"]
    assert entry["file"] == "a.safetensors" and entry["frames"] == 3 and entry["source"] == "/videos/a.mp4"
    assert entry["bytes"] == (tmp_path / "a.safetensors").stat().st_size

    cache.add("v1.2_final", _record(2, "/videos/v1.2_final.mp4"))  # keys may hold dots
    assert FeatureCache(tmp_path).load("v1.2_final").patches.shape == (2, 144, 64)
    entries = FeatureCache(tmp_path).entries()
    (tmp_path / INDEX_NAME).write_text("garbage")  # the shards alone are enough to rebuild the index
    rebuilt = FeatureCache.rebuild(tmp_path)
    assert rebuilt.entries() == entries and rebuilt.fingerprint == encoder.fingerprint
    assert FeatureCache(tmp_path).entries() == entries
    with pytest.raises(InputError, match="timestamps"):
        cache.add("b", FeatureRecord(record.patches, record.pooled, torch.zeros(2), 1.0, "x"))
    with pytest.raises(InputError, match="cache key"):
        cache.add("../escape", record)


def test_relocate_moves_the_sources_under_a_folder_and_leaves_the_shards(tmp_path, encoder):
    cache = FeatureCache(tmp_path / "f", encoder.fingerprint, FPS, create=True)
    cache.add("a", _record(source=str((tmp_path / "old" / "videos" / "a.mp4").resolve())))
    cache.add("b", _record(source="/elsewhere/b.mp4"))
    shards = _mtimes(tmp_path / "f")
    assert cache.relocate(tmp_path / "old", tmp_path / "new") == 1
    entries = FeatureCache(tmp_path / "f").entries()  # written to the index
    assert entries["a"]["source"] == str((tmp_path / "new" / "videos" / "a.mp4").resolve())
    assert entries["b"]["source"] == "/elsewhere/b.mp4" and _mtimes(tmp_path / "f") == shards


def test_opening_with_another_encoder_or_fps_is_refused(tmp_path, encoder):
    FeatureCache(tmp_path, encoder.fingerprint, FPS, create=True).add("a", _record())
    other = {**encoder.fingerprint, "weights_sha256": "0" * 64}
    with pytest.raises(CacheError, match=rf"{INDEX_NAME}: made by another encoder \(weights_sha256 differ"):
        FeatureCache(tmp_path, other, FPS)
    with pytest.raises(CacheError, match=rf"{INDEX_NAME}: made at fps 2, requested fps 5"):
        FeatureCache(tmp_path, encoder.fingerprint, 5.0, create=True)
    with pytest.raises(CacheError, match="index missing"):
        FeatureCache(tmp_path / "nowhere")
    (tmp_path / INDEX_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="unreadable feature index"):
        FeatureCache(tmp_path)


def test_truncated_shard_is_an_error_then_re_encoded(tmp_path, encoder, videos):
    report = extract_features(videos[:2], tmp_path, encoder=encoder, fps=FPS)
    key = report.encoded[0]
    shard = tmp_path / f"{key}.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CacheError, match=rf"{key}.safetensors: corrupt or truncated shard"):
        FeatureCache(tmp_path).load(key)
    again = extract_features(videos[:2], tmp_path, encoder=encoder, fps=FPS)
    assert again.encoded == [key] and again.skipped == [report.encoded[1]]
    assert FeatureCache(tmp_path).load(key).patches.shape[1:] == (144, 64)


def test_extract_matches_encoder_and_resumes(tmp_path, encoder, videos):
    report = extract_features(videos, tmp_path, encoder=encoder, fps=FPS, batch_size=3)
    assert not report.failed and report.skipped == []
    assert report.encoded == ["clip_0", "clip_1", "clip_2", "carphone_pristine"]
    cache = FeatureCache(tmp_path, encoder.fingerprint, FPS)
    clip = read_video(videos[3], FPS, size=encoder.image_size)
    direct = encoder.encode(clip.frames)
    record = cache.load("carphone_pristine")
    torch.testing.assert_close(record.patches, direct.patches, rtol=1e-2, atol=1e-2)  # float16 storage
    assert torch.equal(record.timestamps, clip.timestamps) and record.source == str(videos[3].resolve())
    assert report.frames == sum(cache.entries()[k]["frames"] for k in cache)

    before = _mtimes(tmp_path)
    again = extract_features(videos, tmp_path, encoder=encoder, fps=FPS)
    assert again.encoded == [] and sorted(again.skipped) == sorted(report.encoded) and again.frames == 0
    assert _mtimes(tmp_path) == before  # nothing rewritten

    # A shard whose index update was lost (killed between the two writes) is adopted, not re-encoded...
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    del index["videos"]["clip_1"]
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    adopted = extract_features(videos, tmp_path, encoder=encoder, fps=FPS)
    assert adopted.encoded == [] and "clip_1" in FeatureCache(tmp_path) and _mtimes(tmp_path) == before
    # ... unless its metadata belongs to another video: then it is re-encoded.
    shutil.copy(tmp_path / "clip_0.safetensors", tmp_path / "clip_2.safetensors")
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    del index["videos"]["clip_2"]
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    redone = extract_features(videos, tmp_path, encoder=encoder, fps=FPS)
    assert redone.encoded == ["clip_2"]
    assert FeatureCache(tmp_path).load("clip_2").source == str(videos[2].resolve())


def test_same_stem_in_two_folders_gets_two_keys(tmp_path, encoder, videos):
    other = tmp_path / "other"
    other.mkdir()
    twin = other / videos[0].name
    shutil.copy(videos[0], twin)
    report = extract_features([videos[0], twin], tmp_path / "cache", encoder=encoder, fps=FPS)
    assert len(set(report.encoded)) == 2 and all(k.startswith("clip_0-") for k in report.encoded)
    again = extract_features([twin, videos[0]], tmp_path / "cache", encoder=encoder, fps=FPS)
    assert sorted(again.skipped) == sorted(report.encoded)


def test_workers_and_lightning_path_give_the_same_shards(tmp_path, encoder, videos):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    inputs = [videos[0], bad, videos[3]]
    local = extract_features(inputs, tmp_path / "local", encoder=encoder, fps=FPS)
    pooled = extract_features(inputs, tmp_path / "pool", encoder=encoder, fps=FPS, workers=2)
    lightning = extract_features(
        inputs, tmp_path / "pl", encoder="mmduplex-tiny", fps=FPS, devices=1, accelerator="cpu", batch_size=4
    )
    spawned = extract_features(inputs, tmp_path / "proc", encoder="mmduplex-tiny", fps=FPS, processes=2)
    for report in (local, pooled, lightning):
        assert report.encoded == ["clip_0", "carphone_pristine"]
        assert list(report.failed) == [str(bad.resolve())]
    assert sorted(spawned.encoded) == ["carphone_pristine", "clip_0"] and list(spawned.failed) == [str(bad.resolve())]
    assert spawned.frames == local.frames
    for folder in ("pool", "pl", "proc"):
        cache = FeatureCache(tmp_path / folder)
        assert cache.entries().keys() == FeatureCache(tmp_path / "local").entries().keys()
        for key in cache:
            torch.testing.assert_close(cache.load(key).patches, FeatureCache(tmp_path / "local").load(key).patches)


def test_cli_encodes_the_good_videos_and_names_the_bad_one(tmp_path, videos, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(videos[0].read_bytes()[:300])  # truncated mp4
    out = tmp_path / "cache"
    argv = ["features", str(videos[0]), str(bad), str(videos[1]), "--out", str(out), "--fps", "2"]
    status = main([*argv, "--encoder", "mmduplex-tiny"])
    captured = capsys.readouterr()
    assert status == 1
    assert "2 encoded, 0 skipped (done), 1 failed" in captured.out and "frames/s" in captured.out
    assert f"mmduplex: error: {bad.resolve()}" in captured.err
    assert sorted(FeatureCache(out).keys()) == ["clip_0", "clip_1"]

    assert main(["features", str(videos[0]), str(videos[1]), "--out", str(out), "--encoder", "mmduplex-tiny"]) == 0
    assert "0 encoded, 2 skipped (done), 0 failed" in capsys.readouterr().out

    status = main(["features", str(videos[0]), "--out", str(out), "--encoder", "mmduplex-micro"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"mmduplex: error: {out / INDEX_NAME}: made by another encoder")
    assert main(["features", str(videos[0]), "--out", str(out), "--fps", "4", "--encoder", "mmduplex-tiny"]) == 2
    assert "requested fps 4" in capsys.readouterr().err


def test_killed_run_resumes_without_corrupt_or_temporary_files(tmp_path):
    """SIGKILL a real `mmduplex features` process after its first shard, then re-run it to completion."""
    real = sample_videos()["bikes"]  # 10 s of 640x272: each copy takes a while to decode at 10 fps
    inputs = []
    for i in range(4):
        copy = tmp_path / f"bikes{i}.mp4"
        shutil.copy(real, copy)
        inputs.append(str(copy))
    out = tmp_path / "cache"
    argv = ["features", *inputs, "--out", str(out), "--fps", "10", "--encoder", "mmduplex-tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mmduplex", *argv], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900  # a guard against a hang only: a busy machine may be slow to start
        while not list(out.glob("*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = len(list(out.glob("*.safetensors")))
    assert 1 <= finished < len(inputs), f"the kill landed after {finished} of {len(inputs)} shards"
    (out / ".bikes3.safetensors.leftover.tmp").write_bytes(b"partial")  # what a kill mid-write leaves

    assert main(argv) == 0
    cache = FeatureCache(out)
    assert sorted(cache.keys()) == [f"bikes{i}" for i in range(4)]
    for key in cache:
        assert cache.load(key).patches.shape == (100, 144, 64)
    assert list(out.glob(".*")) == [] and list(out.glob("*.tmp")) == []


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, videos):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "mmduplex", "features", *map(str, videos), "--out", str(out), "--encoder"]
    command += ["mmduplex-tiny"]
    command += ["--devices", "2", "--accelerator", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("4 encoded") == 1  # rank 0 alone reports
    assert sorted(FeatureCache(out).keys()) == ["carphone_pristine", "clip_0", "clip_1", "clip_2"]


@pytest.mark.real_weights
def test_cli_default_encoder_is_the_real_efficientnet(tmp_path, capsys):
    """`mmduplex features V --out D` without --encoder writes the real ImageNet EfficientNet-Lite0's features (the
    encoder test_encoder.py shows knows ImageNet), never a random encoder's."""
    video = sample_videos()["carphone"]
    out = tmp_path / "cache"
    assert main(["features", str(video), "--out", str(out), "--fps", "1"]) == 0
    assert "1 encoded" in capsys.readouterr().out
    lite0 = create_encoder("efficientnet-lite0", device="cpu")
    cache = FeatureCache(out)
    assert cache.fingerprint == lite0.fingerprint and cache.fingerprint["pretrained"] == "imagenet"
    (key,) = cache.keys()
    stored = cache.load(key).patches  # [T, 144, 112]
    direct = lite0.encode(read_video(video, 1.0, size=lite0.image_size).frames).patches
    assert stored.shape == direct.shape and stored.shape[1:] == (144, 112)
    torch.testing.assert_close(stored, direct, rtol=1e-2, atol=2e-2)  # float16 storage
