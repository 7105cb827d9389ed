"""Tokenizer rate-vs-fidelity evaluation (``eval/tokenizer_eval.py``, ``mmduplex eval tokenizer``)."""

from __future__ import annotations

import json

import pytest
import torch

from mmduplex import cli
from mmduplex.errors import CheckpointError
from mmduplex.eval.tokenizer_eval import TokenizerEval, VideoFeatures, rate_fidelity, tokenizer_suite
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.fidelity import fidelity
from mmduplex.train.features import FeatureCache, FeatureRecord

FPS = 2.0
GRID = (8, 8)
DIM = 16
BASELINES = {
    "uniform 64/frame",
    "uniform 16/frame",
    "codec I16 every 2s + P4",
    "framedrop sim<0.9 x16",
    "videollm-online 1/frame",
    "videollm-online 10/frame",
}


def _features(frames: int, seed: int) -> torch.Tensor:
    """``[T, P, D]`` features where a third of the scene changes a lot every frame (so token budgets bind)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, GRID[0] * GRID[1], DIM, generator=g)
    fresh = torch.randn(frames, GRID[0] * GRID[1], DIM, generator=g)
    fresh[:, 24:] = 0.0  # the other patches hold still (all patches moving alike would be camera motion)
    return base + 3.0 * fresh  # [T, P, D]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A two-video feature cache built from tensors: 4 s and 5 s at 2 fps (8 and 10 frames)."""
    root = tmp_path_factory.mktemp("features")
    cache = FeatureCache(root, fingerprint={"model": "test-encoder"}, fps=FPS, create=True)
    for key, seconds, seed in (("walk-a", 4, 0), ("walk-b", 5, 1)):
        frames = int(seconds * FPS)
        patches = _features(frames, seed).half().float()
        stamps = torch.arange(frames, dtype=torch.float64) / FPS
        cache.add(key, FeatureRecord(patches, torch.zeros(frames, 4), stamps, float(seconds), f"{key}.mp4"))
    return root


@pytest.fixture(scope="module")
def results(cache_dir):
    return TokenizerEval(features=cache_dir, budgets=[4, 8], progress=False).run()


def test_rows_for_every_tokenizer(results):
    rows = {r["name"]: r for r in results["rows"]}
    assert set(rows) == {"bflow variable", "bflow 4 tok/s", "bflow 8 tok/s"} | BASELINES
    assert {r["kind"] for r in rows.values() if r["name"].startswith("bflow")} == {"bflow"}
    assert {rows[n]["kind"] for n in BASELINES} == {"baseline"}
    assert rows["bflow 8 tok/s"]["budget"] == 8.0 and rows["bflow variable"]["budget"] is None
    assert all(r["videos"] == 2 and r["frames"] == 18 and r["duration_s"] == 9.0 for r in rows.values())
    assert results["settings"]["trained"] is False and "untrained" in results["settings"]["note"]


def test_uniform_rate_is_tokens_per_frame_times_fps(results):
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["uniform 64/frame"]["tokens_per_second"] == 64 * FPS
    assert rows["uniform 16/frame"]["tokens_per_second"] == 16 * FPS
    assert rows["videollm-online 10/frame"]["tokens_per_second"] == 10 * FPS
    assert rows["uniform 64/frame"]["keyframes"] == 18 and rows["uniform 64/frame"]["flow_tokens"] == 0


def test_budgets_bound_bflow_after_the_first_keyframe(results):
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["bflow variable"]["tokens_per_second_after_first_keyframe"] > 8  # the budgets bind on this motion
    for budget in (4.0, 8.0):
        row = rows[f"bflow {budget:g} tok/s"]
        assert 0 < row["tokens_per_second_after_first_keyframe"] <= budget


def test_fidelity_is_bounded_and_ordered(results):
    rows = {r["name"]: r for r in results["rows"]}
    assert all(-1.0 <= r["fidelity"] <= 1.0 for r in rows.values())
    assert rows["uniform 64/frame"]["fidelity"] == pytest.approx(1.0, abs=1e-4)  # one token per patch on 8x8
    assert rows["uniform 64/frame"]["fidelity"] > rows["uniform 16/frame"]["fidelity"] + 0.1
    assert rows["uniform 16/frame"]["fidelity"] > rows["videollm-online 1/frame"]["fidelity"]


def test_fidelity_pools_frames_not_videos():
    """The pooled fidelity is the mean over all frames (a 1-frame video weighs a third of a 3-frame one)."""
    bflow = BFlowTokenizer(BFlowConfig(dim=DIM, grid=GRID))
    entry = next(e for e in tokenizer_suite(bflow, FPS, []) if e.name == "uniform 16/frame")
    a = VideoFeatures("a", _features(1, 3), torch.zeros(1, dtype=torch.float64), 0.5)
    b = VideoFeatures("b", _features(3, 4) * torch.linspace(0, 1, DIM), torch.arange(3, dtype=torch.float64) / FPS, 1.5)
    per_video = [fidelity(v.patches, entry.tokenizer.tokenize(v.patches, v.timestamps).recon) for v in (a, b)]
    assert abs(per_video[0] - per_video[1]) > 0.01  # the two weightings differ
    (row,) = rate_fidelity([entry], [a, b])
    assert row["tokens_per_second"] == 16 * 4 / 2.0
    assert row["fidelity"] == pytest.approx((per_video[0] + 3 * per_video[1]) / 4, abs=1e-6)


def test_cli_writes_json_and_markdown(cache_dir, tmp_path, capsys):
    out = tmp_path / "tok.json"
    argv = ["eval", "tokenizer", "--features", str(cache_dir), "--budgets", "8", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["budgets"] == [8.0] and data["settings"]["grid"] == [8, 8]
    assert [r["name"] for r in data["rows"]][:2] == ["bflow variable", "bflow 8 tok/s"]
    table = out.with_suffix(".md").read_text()
    assert "| uniform 64/frame | baseline |" in table and "untrained" in table
    assert "videollm-online 10/frame" in capsys.readouterr().out


def test_missing_cache_exits_2_without_output(tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert cli.main(["eval", "tokenizer", "--features", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no feature cache here" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_checkpoint_of_the_wrong_shape_or_kind(cache_dir, tmp_path):
    bundle = BFlowTokenizer(BFlowConfig(dim=8, grid=(4, 4))).save_pretrained(tmp_path / "small")
    with pytest.raises(CheckpointError, match="4x4 patches of width 8"):
        TokenizerEval(features=cache_dir, checkpoint=bundle, progress=False).run()
    torch.save({"mmduplex_kind": "duplex-model"}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="kind 'duplex-model'"):
        TokenizerEval(features=cache_dir, checkpoint=tmp_path / "other.ckpt", progress=False).run()


def test_trained_checkpoint_is_used(cache_dir, tmp_path):
    bundle = BFlowTokenizer(BFlowConfig(dim=DIM, grid=GRID)).save_pretrained(tmp_path / "bflow")
    settings = TokenizerEval(features=cache_dir, checkpoint=bundle, budgets=[8], progress=False).run()["settings"]
    assert settings["trained"] is True and settings["note"] is None and settings["checkpoint"] == str(bundle)


def test_videos_are_encoded_into_a_temporary_cache(tmp_path):
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset

    dataset = generate_dataset(tmp_path / "synthetic", SyntheticConfig(num_videos=1, duration_s=(3, 3)))
    (video,) = dataset.videos()
    out = tmp_path / "tok.json"
    argv = ["eval", "tokenizer", "--videos", str(video), "--fps", "2", "--budgets", "8", "--out", str(out)]
    assert cli.main([*argv, "--encoder", "mmduplex-tiny"]) == 0
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert data["settings"]["fps_used"] == 2.0 and data["settings"]["encoder"] == "mmduplex-tiny"
    assert data["settings"]["encoder_fingerprint"]["model"] == "mmduplex-tiny"
    assert rows["uniform 16/frame"]["frames"] == rows["bflow 8 tok/s"]["frames"] > 0


def test_videos_default_to_the_checkpoints_encoder(tmp_path, capsys):
    """Without --encoder, videos are encoded by the encoder the checkpoint was trained on (named again from its
    recorded fingerprint), not by a default that would not fit it."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.tokenizer.encoders.factory import create_encoder

    dataset = generate_dataset(tmp_path / "synthetic", SyntheticConfig(num_videos=1, duration_s=(3, 3)))
    (video,) = dataset.videos()
    bflow = BFlowTokenizer(BFlowConfig(dim=64, grid=(12, 12)))
    bflow.metadata = {"encoder": create_encoder("mmduplex-tiny", device="cpu").fingerprint, "fps": 2.0}
    bflow.save_pretrained(tmp_path / "bflow")
    out = tmp_path / "tok.json"
    argv = ["eval", "tokenizer", "--videos", str(video), "--checkpoint", str(tmp_path / "bflow"), "--budgets", "8"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["encoder"] == "mmduplex-tiny" and settings["fps_used"] == 2.0


def test_bad_inputs_are_refused(cache_dir):
    with pytest.raises(Exception, match="give exactly one"):
        TokenizerEval()
    with pytest.raises(Exception, match="give exactly one"):
        TokenizerEval(features=cache_dir, videos=["a.mp4"])
    with pytest.raises(Exception, match="> 0 tokens/s"):
        TokenizerEval(features=cache_dir, budgets=[0])
    with pytest.raises(Exception, match="cannot afford"):  # 0.5 tok/s < one 16-token keyframe every 20 s
        TokenizerEval(features=cache_dir, budgets=[0.5], progress=False).run()


def test_reconstruction_rule_is_one_fixed_rule_by_default(cache_dir):
    """The default judges every tokenizer by the same fixed rule (bilinear cells); ``native`` keeps each one's own."""
    fixed = TokenizerEval(features=cache_dir, budgets=[8], progress=False).run()
    native = TokenizerEval(features=cache_dir, budgets=[8], reconstruction="native", progress=False).run()
    assert fixed["settings"]["reconstruction"] == "fixed" and "bilinear" in fixed["settings"]["reconstruction_rule"]
    rows = {r["name"]: r for r in fixed["rows"]}
    native_rows = {r["name"]: r for r in native["rows"]}
    for name in ("uniform 16/frame", "bflow variable"):  # same tokens, another reconstruction
        assert rows[name]["tokens_total"] == native_rows[name]["tokens_total"]
        assert rows[name]["fidelity"] != native_rows[name]["fidelity"]
    entries = tokenizer_suite(BFlowTokenizer(BFlowConfig(dim=DIM, grid=GRID)), FPS, [8])
    assert {e.tokenizer.config.reconstruction for e in entries if e.kind == "bflow"} == {"cells"}
    assert {e.tokenizer.upsample for e in entries if e.kind == "baseline"} == {"bilinear"}
