"""B-Flow tokenizer: streaming == batch, causality, motion-sized token counts, rate control, checkpoints, errors,
baselines and training (constructed features; the tiny encoder for generated motion videos)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmduplex.errors import CheckpointError, InputError
from mmduplex.tokenizer import (
    BFlowConfig,
    BFlowTokenizer,
    CodecTokenizer,
    FrameDropTokenizer,
    UniformTokenizer,
    VideoLLMOnlineTokenizer,
    fidelity,
)
from mmduplex.train.tokenizer_module import BFlowModule

D, GRID, FPS = 32, (12, 12), 5.0
P = GRID[0] * GRID[1]


def moving_blocks(num_frames: int, speed: float, seed: int = 0, blocks: int = 2) -> torch.Tensor:
    """``[T, P, D]``: a random static background with ``blocks`` 2x2-patch objects moving ``speed`` patches/frame."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(GRID[0], GRID[1], D, generator=g)
    objects = torch.randn(blocks, D, generator=g)
    starts = torch.randint(0, GRID[0] - 2, (blocks, 2), generator=g).float()
    frames = []
    for t in range(num_frames):
        frame = background.clone()
        for k in range(blocks):
            span = GRID[1] - 2
            x = (starts[k, 1] + speed * t) % (2 * span)
            col = int(x if x <= span else 2 * span - x)  # bounce between the walls
            row = int(starts[k, 0])
            frame[row : row + 2, col : col + 2] = objects[k]
        frames.append(frame.reshape(P, D))
    return torch.stack(frames)  # [T, P, D]


def times(num_frames: int) -> torch.Tensor:
    return torch.arange(num_frames, dtype=torch.float64) / FPS


def make(**changes) -> BFlowTokenizer:
    return BFlowTokenizer(BFlowConfig(dim=D, grid=GRID, **changes)).eval()


def trained_like(tokenizer: BFlowTokenizer) -> BFlowTokenizer:
    """Perturb every weight so checks do not pass by relying on the (zero-initialised) defaults."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in tokenizer.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    return tokenizer


def assert_same(a, b) -> None:
    assert [f.kind for f in a.frames] == [f.kind for f in b.frames]
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert fa.t == fb.t
        assert torch.equal(fa.tokens, fb.tokens)
        assert torch.equal(fa.positions, fb.positions)
    assert torch.equal(a.recon, b.recon)


REGION = {"flow_mode": "region", "refresh_interval_s": 1.0}  # region flow tokens with the still-region refresh
SETTLED = {**REGION, "stop_tokens": True, "motion_kinds": True, "flow_order": "position", "split_at": "peaks"}
STEADY = {**REGION, "stop_tokens": True, "steady_every_s": 0.6}  # steady motions held back
MODES = [{}, REGION, SETTLED, STEADY]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"target_rate": 8.0, "bucket_seconds": 4.0},
        {"flow_region": 2},
        REGION,
        {**REGION, "target_rate": 8.0, "bucket_seconds": 4.0, "region_max": None},
        {**REGION, "flow_region": 2, "region_split": None, "change_tokens": True},
        SETTLED,
        STEADY,
    ],
)
def test_streaming_equals_batch(changes):
    tok = trained_like(make(**changes))
    x, ts = moving_blocks(30, 1.0), times(30)
    batch = tok.tokenize(x, ts)
    state, recons, frames = tok.init_state(1), [], []
    for i in range(30):
        out, recon, state = tok.step(x[i : i + 1], ts[i : i + 1], state)
        frames.extend(out)
        recons.append(recon)
    assert torch.equal(torch.cat(recons), batch.recon)
    assert [f.n_tokens for f in frames] == batch.n_tokens
    for fa, fb in zip(frames, batch.frames, strict=True):
        assert torch.equal(fa.tokens, fb.tokens)
    # the batched training path over several videos makes the same decisions and reconstructions
    videos = torch.stack([moving_blocks(30, s, seed=s) for s in (0, 1, 2)])  # [3, T, P, D]
    with torch.no_grad():
        recon, counts = tok(videos, ts.expand(3, -1))
    for b in range(3):
        single = tok.tokenize(videos[b], ts)
        assert counts[b].tolist() == single.n_tokens
        torch.testing.assert_close(recon[b], single.recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [{}, {"target_rate": 8.0, "bucket_seconds": 4.0}, REGION, {**REGION, "target_rate": 8.0}, SETTLED, STEADY],
)
def test_tokenize_many_equals_tokenize_of_each_video(changes):
    """Several videos of different lengths tokenized in one call: each video's tokens equal its own ``tokenize``'s
    bit for bit (what the token store writes and the demo's streaming reads), the reconstruction to rounding."""
    tok = trained_like(make(**changes))
    lengths, speeds = (30, 17, 30, 6, 1), (1.0, 0.5, 1.5, 1.0, 2.0)
    pairs = enumerate(zip(lengths, speeds, strict=True))
    videos = [(moving_blocks(n, s, seed=i, blocks=3), times(n)) for i, (n, s) in pairs]
    many, pairs = tok.tokenize_many(videos), tok.tokenize_many(videos, group=2)  # one group; three, sorted by length
    assert [len(v.frames) for v in many] == [len(v.frames) for v in pairs] == list(lengths)  # in the order given
    for (x, ts), got, paired in zip(videos, many, pairs, strict=True):
        want = tok.tokenize(x, ts)
        assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(paired.frames, want.frames, strict=True))
        assert [(f.t, f.kind) for f in got.frames] == [(f.t, f.kind) for f in want.frames]
        for fa, fb in zip(got.frames, want.frames, strict=True):
            assert torch.equal(fa.tokens, fb.tokens)
            assert torch.equal(fa.positions, fb.positions)
        torch.testing.assert_close(got.recon, want.recon, rtol=1e-5, atol=1e-5)
    assert tok.tokenize_many([]) == []
    assert sum(v.tokens_total for v in many) > 0


def test_tokenize_many_works_for_the_baselines():
    x, ts = moving_blocks(12, 1.0), times(12)
    for tok in (UniformTokenizer(D, GRID, 4), FrameDropTokenizer(D, GRID, 0.9, 4), CodecTokenizer(D, GRID, 3, 4, 2)):
        many = tok.tokenize_many([(x, ts), (x[:5], ts[:5])])
        for got, want in zip(many, (tok.tokenize(x, ts), tok.tokenize(x[:5], ts[:5])), strict=True):
            assert_same(got, want)


@pytest.mark.parametrize("mode", MODES)
def test_causality(mode):
    """Frames after ``cut`` never change the tokens or reconstruction of frames up to ``cut``; they do change later
    ones (so the check sees the tokenizer react at all). Runs both the streaming and the batched training path."""
    tok = trained_like(make(target_rate=10.0, **mode))
    x, ts = moving_blocks(40, 1.5), times(40)
    full = tok.tokenize(x, ts)
    g = torch.Generator().manual_seed(7)
    for cut in (0, 16, 38):
        future = x.clone()
        future[cut + 1 :] = torch.randn(future[cut + 1 :].shape, generator=g)  # a different future
        other = tok.tokenize(future, ts)
        head = slice(0, cut + 1)
        assert_same(type(full)(full.frames[head], full.recon[head], ts[head]),
                    type(other)(other.frames[head], other.recon[head], ts[head]))  # fmt: skip
        assert not torch.equal(full.recon[cut + 1 :], other.recon[cut + 1 :])
        later = zip(full.frames[cut + 1 :], other.frames[cut + 1 :], strict=True)
        assert any(not torch.equal(a.tokens, b.tokens) for a, b in later)
        with torch.no_grad():
            recon, counts = tok(torch.stack([x, future]), ts.expand(2, -1))
        assert torch.equal(recon[0, head], recon[1, head]) and torch.equal(counts[0, head], counts[1, head])
        assert not torch.equal(recon[0, cut + 1 :], recon[1, cut + 1 :])


@pytest.mark.parametrize("mode", MODES)
def test_static_video_costs_one_keyframe(mode):
    x = moving_blocks(1, 0.0).expand(300, -1, -1).contiguous()  # 60 s of one frame
    out = make(**mode).tokenize(x, times(300))
    assert out.frames[0].kind == "key" and out.frames[0].n_tokens == 16
    duration = 300 / FPS
    assert out.tokens_after_first_key / duration <= 1.0
    assert all(f.kind in ("none", "key") for f in out.frames[1:])  # only forced keyframes (every 20 s)
    assert out.flow_tokens == 0


@pytest.mark.parametrize("mode", MODES)
def test_tokens_follow_motion_on_constructed_features(mode):
    rates = [
        make(**mode).tokenize(moving_blocks(40, v), times(40)).tokens_after_first_key for v in (0.0, 0.25, 0.5, 1.0)
    ]
    assert rates[0] == 0
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False)), rates


@pytest.mark.parametrize("mode", MODES)
def test_tokens_follow_motion_on_generated_videos(mode):
    from mmduplex.data.synthetic import make_motion_video
    from mmduplex.tokenizer.encoders.factory import create_encoder

    encoder = create_encoder("mmduplex-tiny", device="cpu")
    tok = BFlowTokenizer(BFlowConfig(dim=encoder.width, grid=encoder.grid, **mode))
    rates = []
    for speed in (0.0, 10.0, 30.0, 60.0):
        frames = torch.from_numpy(make_motion_video(25, FPS, speed, num_shapes=2, seed=3))
        patches = encoder.encode(frames).patches
        rates.append(tok.tokenize(patches, times(25)).tokens_after_first_key / 5.0)
    assert rates[0] <= 1.0
    if mode:  # region tokens count the moving things (here 2 shapes at every speed), not how fast they move
        assert rates[0] < min(rates[1:]), rates
    else:
        assert all(a < b for a, b in zip(rates, rates[1:], strict=False)), rates


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target_rate", [10.0, 40.0])
def test_rate_controller_lands_near_its_ceiling(target_rate, mode):
    num_frames = 600  # 120 s at 5 fps of continuous motion
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, P, D, generator=g)
    phase = torch.rand(P, 1, generator=g) * 6.28 + 0.3 * torch.arange(num_frames)[:, None, None]  # [T, P, 1]
    x = torch.cos(phase) * a + torch.sin(phase) * b  # every patch turns steadily: continuous motion everywhere
    ts = times(num_frames)
    # every region wants a flow token every frame (no camera compensation, no cap): the budget is what binds
    loose = {"global_motion": False, "flow_threshold": 0.1, "max_flow_tokens": None, "min_keyframe_interval_s": 0.0}
    out = make(target_rate=target_rate, **loose, **mode).tokenize(x, ts)
    duration = num_frames / FPS
    rate = out.tokens_after_first_key / duration
    assert 0.85 * target_rate <= rate <= target_rate, rate
    spent = torch.tensor(out.n_tokens[1:], dtype=torch.float64).cumsum(0)  # never ahead of the budget
    assert bool((spent <= target_rate * (ts[1:] - ts[0]) + 1e-9).all())
    assert out.keyframes >= 1 + int(duration // 20) - 1  # forced keyframes still come (waiting for budget)


def panning(num_frames: int, radians_per_frame: float, seed: int = 0) -> torch.Tensor:
    """``[T, P, D]``: camera motion as every patch's features turning steadily (speeds 0.8-1.2x the given one)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, P, D, generator=g)
    speed = radians_per_frame * (0.8 + 0.4 * torch.rand(P, 1, generator=g))  # [P, 1]
    phase = speed * torch.arange(num_frames)[:, None, None]  # [T, P, 1]
    return torch.cos(phase) * a + torch.sin(phase) * b


@pytest.mark.parametrize("mode", MODES)
def test_camera_pan_costs_few_tokens_and_keyframes_keep_their_spacing(mode):
    x, ts = panning(100, 0.1), times(100)  # 20 s of camera motion: every patch changes every frame
    out = make(**mode).tokenize(x, ts)
    rate = out.tokens_after_first_key / 20.0
    loose = {"global_motion": False, "min_keyframe_interval_s": 0.0}
    uncompensated = make(**loose, **mode).tokenize(x, ts).tokens_after_first_key
    gain = 1.5 if mode else 2.0  # region tokens tile a frame-wide change (region_max): fewer to save
    assert rate <= 10.0 and uncompensated >= gain * out.tokens_after_first_key, (rate, uncompensated)
    key_times = [f.t for f in out.frames if f.kind == "key"]
    assert len(key_times) >= 3  # the stale scene is refreshed by keyframes ...
    assert min(b - a for a, b in zip(key_times, key_times[1:], strict=False)) >= 2.0 - 1e-9  # ... at most every 2 s


@pytest.mark.parametrize("mode", MODES)
def test_object_motion_on_a_pan_still_gets_flow_tokens(mode):
    x, ts = panning(50, 0.1), times(50)
    thing = torch.randn(D, generator=torch.Generator().manual_seed(4))
    with_object = x.clone().reshape(50, *GRID, D)
    for t in range(50):  # a 2x2 object sliding one patch per frame along rows 5-6, bouncing between the walls
        col = t % 20 if t % 20 <= 10 else 20 - t % 20
        with_object[t, 5:7, col : col + 2] = thing
    pan_only = make(**mode).tokenize(x, ts)
    out = make(**mode).tokenize(with_object.reshape(50, P, D), ts)
    assert out.flow_tokens >= 5 * max(pan_only.flow_tokens, 4), (pan_only.flow_tokens, out.flow_tokens)
    rows = torch.cat([f.positions for f in out.frames if f.kind == "flow"]) // GRID[1]
    on_object = ((rows >= 5) & (rows <= 6)).float().mean()
    assert on_object >= 0.8, rows.tolist()  # the flow tokens follow the object, not the panning scene


def test_per_frame_caps_are_respected():
    x, ts = torch.randn(30, P, D, generator=torch.Generator().manual_seed(2)), times(30)  # everything changes
    for caps, limit in (({"max_flow_tokens": 5}, 5), ({"max_flow_tokens": None, "max_tokens_per_frame": 20}, 20)):
        out = make(global_motion=False, min_keyframe_interval_s=5.0, **caps).tokenize(x, ts)
        flow_counts = [f.n_tokens for f in out.frames if f.kind == "flow"]
        assert flow_counts and max(flow_counts) == limit
    with pytest.raises(InputError, match="max_tokens_per_frame=8 must be >= num_key_tokens=16"):
        make(max_tokens_per_frame=8)


def test_flow_tokens_go_out_most_changed_first():
    g = torch.Generator().manual_seed(3)
    x = moving_blocks(1, 0.0).repeat(2, 1, 1)
    for patch, angle in ((5, 1.0), (40, 1.5), (90, 1.25), (120, 0.2)):  # 1 - cos: 0.46, 0.93, 0.68, 0.02
        other = torch.randn(D, generator=g)
        other = other - (other @ x[0, patch]) / x[0, patch].norm() ** 2 * x[0, patch]  # orthogonal to the patch
        x[1, patch] = math.cos(angle) * x[0, patch] + math.sin(angle) * other * x[0, patch].norm() / other.norm()
    out = make().tokenize(x, times(2))
    assert out.frames[1].positions.tolist() == [40, 90, 5]  # above the flow threshold, the most changed first
    assert make(max_flow_tokens=2).tokenize(x, times(2)).frames[1].positions.tolist() == [40, 90]


def test_save_load_round_trip(tmp_path):
    tok = trained_like(make(target_rate=12.0, flow_region=2))
    tok.metadata = {"encoder": {"model": "mmduplex-tiny"}, "fps": FPS}
    x, ts = moving_blocks(20, 1.0), times(20)
    tok.save_pretrained(tmp_path / "bundle")
    loaded = BFlowTokenizer.from_pretrained(tmp_path / "bundle")
    assert loaded.config == tok.config and loaded.metadata == tok.metadata
    assert_same(tok.tokenize(x, ts), loaded.tokenize(x, ts))
    assert_same(tok.tokenize(x, ts), BFlowTokenizer.from_checkpoint(tmp_path / "bundle").tokenize(x, ts))


def test_loading_refuses_wrong_or_broken_checkpoints(tmp_path):
    make().save_pretrained(tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "config.json").read_text())
    meta["kind"] = "duplex-lm"
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="kind 'duplex-lm'"):
        BFlowTokenizer.from_pretrained(tmp_path / "bundle")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="expected a B-Flow tokenizer"):
        BFlowTokenizer.from_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        BFlowTokenizer.from_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        BFlowTokenizer.from_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("patches", "stamps", "message"),
    [
        (torch.zeros(0, P, D), torch.zeros(0), "empty"),
        (torch.randn(4, P, D + 1), times(4), "dim D=32"),
        (torch.randn(4, P - 1, D), times(4), "P=144"),
        (torch.randn(P, D), times(4), r"\[T, P, D\]"),
        (torch.full((4, P, D), math.nan), times(4), "NaN"),
        (torch.randn(4, P, D), torch.tensor([0.0, 0.2, 0.2, 0.4]), "not strictly increasing"),
        (torch.randn(4, P, D), times(3), "expected shape"),
    ],
)
def test_bad_inputs_raise_input_error(patches, stamps, message):
    with pytest.raises(InputError, match=message):
        make().tokenize(patches, stamps)


def test_bad_stream_and_config_raise_input_error():
    tok = make()
    _, _, state = tok.step(torch.randn(1, P, D), torch.tensor([1.0]), tok.init_state(1))
    with pytest.raises(InputError, match="not increasing"):
        tok.step(torch.randn(1, P, D), torch.tensor([1.0]), state)
    with pytest.raises(InputError, match="cannot afford a keyframe"):
        make(target_rate=0.5)  # 16 tokens per 20 s need >= 0.8 tok/s
    with pytest.raises(InputError, match="must divide"):
        make(flow_region=5)


def test_flow_tokens_point_at_the_changed_region():
    x = moving_blocks(1, 0.0).repeat(3, 1, 1)
    x[1, 17] = torch.randn(D)
    x[2, 17] = x[1, 17]
    out = make().tokenize(x, times(3))
    assert [f.kind for f in out.frames] == ["key", "flow", "none"]
    assert out.frames[1].positions.tolist() == [17] and out.frames[1].tokens.shape == (1, D)
    assert (out.frames[0].positions == -1).all() and out.frames[0].tokens.shape == (16, D)
    torch.testing.assert_close(out.recon[1, 17], torch.nn.functional.layer_norm(x[1, 17], (D,), eps=1e-6))


def test_baselines_emit_their_advertised_counts():
    x, ts = moving_blocks(12, 1.0), times(12)
    assert UniformTokenizer(D, GRID, 64).tokenize(x, ts).n_tokens == [64] * 12
    assert UniformTokenizer(D, GRID, 10).tokenize(x, ts).n_tokens == [10] * 12
    assert fidelity(x, UniformTokenizer(D, GRID, P).tokenize(x, ts).recon) == pytest.approx(1.0, abs=1e-5)
    codec = CodecTokenizer(D, GRID, keyframe_interval=4, key_tokens=16, p_tokens=5).tokenize(x, ts)
    assert codec.n_tokens == [16, 5, 5, 5] * 3 and codec.keyframes == 3
    static = x[:1].expand(12, -1, -1).contiguous()
    assert FrameDropTokenizer(D, GRID, 0.9, 16).tokenize(static, ts).n_tokens == [16] + [0] * 11
    assert FrameDropTokenizer(D, GRID, 0.9, 16).tokenize(torch.randn(12, P, D), ts).n_tokens == [16] * 12
    assert VideoLLMOnlineTokenizer(D, GRID, 1).tokenize(x, ts).n_tokens == [1] * 12
    assert VideoLLMOnlineTokenizer(D, GRID, 10).tokenize(x, ts).n_tokens == [10] * 12
    for baseline in (
        UniformTokenizer(D, GRID, 9),
        CodecTokenizer(D, GRID, 3, 4, 2),
        FrameDropTokenizer(D, GRID, 0.5, 4),
    ):
        rebuilt = type(baseline)(**json.loads(json.dumps(baseline.init_args())))  # describable for bundles
        assert_same(baseline.tokenize(x, ts), rebuilt.tokenize(x, ts))
    # all tokenizers hand downstream the same token width
    assert {t.token_dim for t in (make(), UniformTokenizer(D, GRID, 4), CodecTokenizer(D, GRID, 2, 4, 2))} == {D}


def test_fidelity_definition():
    x = torch.randn(5, P, D)
    assert fidelity(x, x) == pytest.approx(1.0, abs=1e-5)
    assert fidelity(x, 3.0 * x + 1.0) == pytest.approx(1.0, abs=1e-5)  # per-patch normalised: scale/shift free
    assert abs(fidelity(x, torch.randn(5, P, D))) < 0.1
    with pytest.raises(InputError, match="differs"):
        fidelity(x, x[:4])


@pytest.mark.parametrize("mode", MODES)
def test_a_few_training_steps_reduce_the_loss(mode):
    module = BFlowModule(BFlowConfig(dim=D, grid=GRID, num_key_tokens=4, **mode), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(P) // GRID[1] * 3 // GRID[0]  # [P]: three horizontal bands (a structured scene)
    scenes = torch.randn(4, 3, D, generator=g)[:, rows] + 0.1 * torch.randn(4, P, D, generator=g)  # [4, P, D]
    patches = scenes[:, None].expand(-1, 8, -1, -1).clone()  # [4, 8, P, D]
    patches[:, 4:, :20] = torch.randn(4, 1, 20, D, generator=g)  # something moves in mid clip
    batch = {"patches": patches, "timestamps": times(8).expand(4, -1)}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    losses = []
    for _ in range(20):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _feature_cache(root, num_videos: int = 4, num_frames: int = 12):
    from mmduplex.train.features import FeatureCache, FeatureRecord

    cache = FeatureCache(root, fingerprint={"model": "constructed", "pretrained": None}, fps=FPS, create=True)
    for k in range(num_videos):
        patches = moving_blocks(num_frames + k, 1.0, seed=k)
        record = FeatureRecord(patches, patches.mean(1), times(num_frames + k), (num_frames + k) / FPS, f"v{k}.mp4")
        cache.add(f"v{k}", record)
    return cache


def test_lightning_fit_checkpoint_loads_for_inference(tmp_path):
    from lightning.pytorch import Trainer

    from mmduplex.train.tokenizer_datamodule import FeatureDataModule

    _feature_cache(tmp_path / "cache")
    data = FeatureDataModule(str(tmp_path / "cache"), clip_frames=8, batch_size=2, val_fraction=0.25, seed=3)
    module = BFlowModule(BFlowConfig(dim=D, grid=GRID, num_key_tokens=4), warmup_steps=1)
    trainer = Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "bflow.ckpt")
    loaded = BFlowTokenizer.from_checkpoint(tmp_path / "bflow.ckpt")
    assert loaded.metadata == {"encoder": {"model": "constructed", "pretrained": None}, "fps": FPS}
    x, ts = moving_blocks(10, 1.0, seed=9), times(10)
    assert_same(module.tokenizer.eval().tokenize(x, ts), loaded.tokenize(x, ts))
    # the clip order is a pure function of (seed, epoch)
    sampler = data.train_dataloader().sampler
    first = list(sampler)
    assert list(data.train_dataloader().sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_datamodule_rejects_features_of_another_shape(tmp_path):
    from lightning.pytorch import Trainer

    from mmduplex.errors import CacheError
    from mmduplex.train.tokenizer_datamodule import FeatureDataModule

    _feature_cache(tmp_path / "cache", num_videos=2)
    data = FeatureDataModule(str(tmp_path / "cache"), clip_frames=4, batch_size=2)
    module = BFlowModule(BFlowConfig(dim=D * 2, grid=GRID))
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(CacheError, match="tokenizer expects"):
        trainer.fit(module, datamodule=data)


def test_cells_reconstruction_is_the_fixed_rule():
    """``reconstruction="cells"``: key tokens upsampled bilinearly from their cells, flow tokens copied; the decisions
    and tokens are those of the learned decoders."""
    from mmduplex.tokenizer.base import upsample_cells
    from mmduplex.tokenizer.fidelity import normalize_features

    x = moving_blocks(1, 0.0).repeat(2, 1, 1)
    x[1, 17] = torch.randn(D)
    learned = trained_like(make())
    cells = learned.with_settings(reconstruction="cells")
    a, b = learned.tokenize(x, times(2)), cells.tokenize(x, times(2))
    assert [f.kind for f in b.frames] == ["key", "flow"] and torch.equal(a.frames[1].tokens, b.frames[1].tokens)
    with torch.no_grad():
        values = cells.key_codec.encode(normalize_features(x[:1]))[0]  # [K, D]
    torch.testing.assert_close(b.recon[0], upsample_cells(values, GRID, cells.key_layout, "bilinear"))
    torch.testing.assert_close(b.recon[1, 17], normalize_features(x[1, 17]))
    assert not torch.allclose(a.recon[0], b.recon[0])
    with pytest.raises(InputError, match="reconstruction="):
        make(reconstruction="magic")


def test_change_tokens_carry_what_changed_from_what():
    """``change_tokens``: tokens are ``[embedded value, value - before]``; a patch that turns from colour A to B
    carries ``norm(B) - norm(A)`` (not just B), keyframe tokens carry zeros there, and the decisions, token values and
    reconstructions are those of the plain tokenizer."""
    from mmduplex.tokenizer.fidelity import normalize_features

    g = torch.Generator().manual_seed(3)
    background, a, b = torch.randn(P, D, generator=g), torch.randn(D, generator=g), torch.randn(D, generator=g)
    frames = background.expand(3, P, D).clone()
    frames[1:, 40] = a  # frame 1: an object appears at patch 40 (empty background before)
    frames[2, 40] = b  # frame 2: the same object turns from a to b
    plain, change = make(), make(change_tokens=True)
    assert (plain.token_dim, change.token_dim, change.feature_dim) == (D, 2 * D, D)
    out_plain, out_change = plain.tokenize(frames, times(3)), change.tokenize(frames, times(3))
    for fp, fc in zip(out_plain.frames, out_change.frames, strict=True):
        assert (fp.kind, fp.positions.tolist()) == (fc.kind, fc.positions.tolist())
        assert fc.tokens.shape == (fp.tokens.shape[0], 2 * D)
        torch.testing.assert_close(fc.tokens[:, :D], fp.tokens)
    torch.testing.assert_close(out_change.recon, out_plain.recon)
    key, appear, turn = out_change.frames
    assert key.kind == "key" and key.tokens[:, D:].abs().max() == 0
    assert appear.kind == turn.kind == "flow" and appear.positions.tolist() == turn.positions.tolist() == [40]
    norm = normalize_features(torch.stack([background[40], a, b])[None])[0]  # [3, D]
    torch.testing.assert_close(appear.tokens[0, D:], norm[1] - norm[0])
    torch.testing.assert_close(turn.tokens[0, D:], norm[2] - norm[1])
