"""The oracle benchmark's parts: oracle features from a synthetic spec (``benchmarks.bench_oracle``), the
``SparsePatchTokenizer`` that turns them into tokens, and the benchmark run end to end on a tiny demo folder."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from conftest import one_torch_thread

from benchmarks import bench_oracle
from benchmarks.bench_oracle import APPEARED, DX, DY, SPEED, VALUE_GAIN, VANISHED, X, Y, oracle_features
from mmduplex.data.synthetic import ShapeTrack, VideoSpec
from mmduplex.tokenizer.baselines import SparsePatchTokenizer

PX_PER_S = 30.0
RED, GREEN, BLUE = 0, 1, 2  # colour one-hot slots
SQUARE, CIRCLE = 4, 5  # shape one-hot slots


def two_shapes() -> VideoSpec:
    """A red square moving right (green from 0.75 s), gone after 1.2 s; a still blue circle in the square's first
    patch."""
    mover = ShapeTrack(0, "square", 16.0, ((0.0, 12.0, 12.0), (1.0, 42.0, 12.0), (1.2, 120.0, 12.0)),
                       ((0.0, "red"), (0.75, "green")))  # fmt: skip
    still = ShapeTrack(1, "circle", 16.0, ((0.0, 14.0, 14.0), (2.0, 14.0, 14.0)), ((0.0, "blue"),))
    return VideoSpec("two", 21, 10.0, 96, 96, 0, (mover, still))


def test_oracle_features_put_each_shape_at_its_patch():
    x = oracle_features(two_shapes(), [0.0, 0.5, 1.0, 1.5, 2.0], PX_PER_S) / VALUE_GAIN  # [T, 144, 16]
    on = [x[k].ne(0).any(dim=-1).nonzero().flatten().tolist() for k in range(5)]
    # row 1, col 1 = patch 13 for the square; the circle shares it on the first frame and moves to the nearest free one
    assert on == [[1, 13], [13, 15], [13, 17], [13, 23], [13]]
    first = x[0, 13]
    assert first[RED] == 1 and first[SQUARE] == 1 and first[APPEARED] == 1 and first[VANISHED] == 0
    assert first[X] == pytest.approx(24 / 96 - 1) and first[Y] == pytest.approx(24 / 96 - 1) and first[SPEED] == 0
    assert x[0, 1, BLUE] == 1 and x[0, 1, CIRCLE] == 1 and x[0, 1, APPEARED] == 1
    moving = x[1, 15]  # 15 px right in 0.5 s: one unit of speed x frame interval
    assert moving[RED] == 1 and moving[DX] == pytest.approx(1.0) and moving[DY] == 0 and moving[APPEARED] == 0
    assert moving[SPEED] == pytest.approx(1.0)
    assert x[2, 17, GREEN] == 1 and x[2, 17, RED] == 0  # the colour at the frame's time
    still = x[1, 13]
    assert still[BLUE] == 1 and still[DX] == 0 and still[APPEARED] == 0 and still[X] == pytest.approx(28 / 96 - 1)
    gone = x[3, 23]  # left through the right edge: one token there, on the first frame it is gone
    assert gone[VANISHED] == 1 and gone[GREEN] == 1 and gone[SQUARE] == 1 and gone[X] == pytest.approx(1.0, abs=1e-4)
    assert gone[DX] == pytest.approx((96 - 42) / 15, abs=1e-3)


def test_oracle_cache_samples_as_the_video_reader():
    assert bench_oracle.sample_times(2.0, 2.0).tolist() == [0.0, 0.5, 1.0, 1.5]
    assert bench_oracle.sample_times(2.1, 5.0).tolist()[-1] == pytest.approx(2.0)


def sparse_video(frames: int = 4) -> torch.Tensor:
    x = torch.zeros(frames, 36, 8)  # [T, P, D] on a 6 x 6 grid
    x[0, 3] = torch.arange(1.0, 9.0)
    x[0, 20, 5] = -2.0
    x[2, 20] = torch.randn(8)
    x[3, 3] = torch.arange(1.0, 9.0) + 0.5
    x[3, 35, 0] = 1e-3
    return x


def test_sparse_patch_tokenizer_emits_exactly_the_non_zero_patches():
    tok = SparsePatchTokenizer(8, (6, 6), embed_scale=0.5)
    x = sparse_video()
    out = tok.tokenize(x, torch.arange(4) * 0.5)
    assert [f.kind for f in out.frames] == ["key", "none", "key", "key"]
    assert [f.positions.tolist() for f in out.frames] == [[3, 20], [], [20], [3, 35]]
    assert out.n_tokens == [2, 0, 1, 2] and out.frames[0].tokens.shape == (2, 8)
    # the value goes in as given (not normalised) next to fixed embeddings: same patch, same embedding
    torch.testing.assert_close(out.frames[3].tokens[0] - out.frames[0].tokens[0], torch.full((8,), 0.5))
    assert not torch.allclose(out.frames[0].tokens[1] - x[0, 20], out.frames[0].tokens[0] - x[0, 3])  # positions
    torch.testing.assert_close(out.recon, x)


def test_sparse_patch_tokenizer_step_equals_batch():
    tok = SparsePatchTokenizer(8, (6, 6), embed_scale=0.5)
    a, b = sparse_video(), sparse_video().flip(0)
    times = torch.arange(4) * 0.5
    batch = [tok.tokenize(a, times).frames, tok.tokenize(b, times).frames]
    state = tok.init_state(2)
    for k in range(4):
        frames, _, state = tok.step(torch.stack([a[k], b[k]]), times[k].repeat(2), state)
        for v in range(2):
            assert frames[v].kind == batch[v][k].kind and frames[v].t == batch[v][k].t
            assert torch.equal(frames[v].positions, batch[v][k].positions)
            torch.testing.assert_close(frames[v].tokens, batch[v][k].tokens)


def test_benchmark_trains_and_scores_an_oracle_model(tmp_path):
    """The whole benchmark on a tiny demo folder: the bundle it writes loads with the sparse tokenizer and streams."""
    from mmduplex.data.synthetic import generate_dataset
    from mmduplex.demo.stages import DemoConfig
    from mmduplex.inference.session import DuplexSession
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

    base, out = tmp_path / "base", tmp_path / "oracle"
    config = DemoConfig(num_videos=10, duration_s=(6.0, 8.0), heldout_fraction=0.2, val_fraction=0.2,
                        score_split="val", duplex_recipe="duplex/tiny", duplex_epochs=1, threads=1,
                        talk_tuning_videos=1, question_interval_s=3.0)  # fmt: skip
    dataset = generate_dataset(base / "data", config.synthetic_config())
    (base / "demo_config.json").write_text(json.dumps(asdict(config)))
    bflow = BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2, embed_scale=0.25))
    bflow.save_pretrained(base / "tokenizer")
    with one_torch_thread():
        result = bench_oracle.main(["--base", str(base), "--out", str(out), "--fps", "5", "--seeds", "0", "1"])
    runs = [result["oracle"]["5/seed0"], result["oracle"]["5/seed1"]]
    for figures in runs:
        assert figures["videos"] == len(dataset.video_ids("val")) == 2 and figures["events"] > 0
        assert 0.0 <= figures["event_accuracy"] <= 1.0 and figures["video_tokens_per_second"] > 0
    assert [f["seed"] for f in runs] == [0, 1] and result["mean"]["5"]["seeds"] == [0, 1]
    assert result["mean"]["5"]["event_accuracy"] == pytest.approx(sum(f["event_accuracy"] for f in runs) / 2)
    assert json.loads((out / "oracle.json").read_text())["oracle"]["5/seed1"]["events"] == runs[1]["events"]
    session = DuplexSession.from_bundle(out / "fps5-seed1" / "bundle")
    tokenizer = session.video_tokenizer
    assert type(tokenizer) is SparsePatchTokenizer and tokenizer.embedder.scale == 0.25  # B-Flow's embed scale
    assert session.bundle.fps == 5.0 and session.bundle.encoder["model"] == "oracle-spec"
    assert "| oracle 5 fps seed 1 | 5 |" in result["table"] and "| oracle 5 fps, mean of 2 | 5 |" in result["table"]
