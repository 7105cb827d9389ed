"""``DuplexSession``: streaming == offline forward, bounded cache, questions, causality, copy/reset, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mmduplex.alignment import align_user, pack_video, time_to_step
from mmduplex.bundle import load_bundle
from mmduplex.errors import InputError
from mmduplex.streaming import DuplexSession, StepOutput
from mmduplex.video import read_video

SECONDS = 8.0  # 16 frames at the bundle's 2 fps, 40 steps at 5 Hz


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def clip(duplex_data, bundle):
    """The first ``SECONDS`` of a synthetic video at the bundle's fps and encoder size: (times [T], frames)."""
    video = sorted((duplex_data["synthetic_dir"] / "videos").glob("*.mp4"))[0]
    frames = read_video(video, bundle.fps, size=96, end_s=SECONDS)
    return frames.timestamps.tolist(), frames.frames  # [T], [T, H, W, 3]


def stream(session: DuplexSession, clip, end_s: float | None = None) -> list[StepOutput]:
    times, frames = clip
    return list(session.run(zip(times, frames, strict=True), end_s=end_s))


def test_session_equals_offline_forward(bundle, clip):
    session = DuplexSession(bundle, sink=4, window=60, pad_bias=-2.0)  # 40 steps fit in the cache
    question = (3.0, "red circle")
    session.ask(question[1], t=question[0])
    outs = stream(session, clip)
    steps = len(outs)
    assert steps == round(SECONDS * bundle.step_hz) and [o.index for o in outs] == list(range(steps))
    assert session.cache.length == steps <= session.cache.max_length
    tokens = [o.token_id for o in outs]
    assert any(o.word for o in outs), "the PAD bias should make the tiny model talk"

    # offline: the same frames tokenized in one go, packed by pack_video, teacher-forced with the session's tokens
    times, frames = clip
    encoder, tok = session.encoder, bundle.text_tokenizer
    with torch.inference_mode():
        patches = torch.cat([encoder.encode(f[None]).patches for f in frames])  # [T, P, D]
        video = bundle.video_tokenizer.tokenize(patches, torch.tensor(times, dtype=torch.float64))
        slots, mask = pack_video(video.frames, steps, bundle.slots_per_step, bundle.step_hz, bundle.model.token_dim)
        text = torch.tensor([tok.pad_id, *tokens[:-1]])[None]  # [1, S]: step s sees the token emitted by s - 1
        user = align_user([question], steps, bundle.step_hz, tok)[None]  # [1, S]
        offline = bundle.model(text, slots[None], mask[None], user).logits[0]  # [S, V]
    streamed = torch.stack([o.logits for o in outs])  # [S, V]
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-4)
    assert session.video_tokens == video.tokens_total and session.frames_pushed == len(times)


def test_window_smaller_than_stream_stays_bounded(bundle, clip):
    sink, window = 2, 6
    session = DuplexSession(bundle, sink=sink, window=window, pad_bias=-2.0)
    unbounded = DuplexSession(bundle, sink=4, window=200, pad_bias=-2.0)
    times, frames = clip
    lengths, outs = [], []
    for out in session.run(zip(times, frames, strict=True)):
        lengths.append(session.cache.length)
        outs.append(out)
    assert len(outs) == round(SECONDS * bundle.step_hz) > 4 * (sink + window)
    assert max(lengths) <= sink + window and lengths[-1] == sink + window
    assert session.cache.total_seen == len(outs)
    assert all(torch.isfinite(o.logits).all() for o in outs)
    reference = stream(unbounded, clip)
    for a, b in zip(outs[: sink + window], reference, strict=False):  # identical until the first eviction
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_question_mid_stream_changes_the_following_output(bundle, clip):
    plain = stream(DuplexSession(bundle, sink=4, window=60), clip)
    asking = DuplexSession(bundle, sink=4, window=60)
    asking.ask("what moved", t=4.0)
    asked = stream(asking, clip)
    at = time_to_step(4.0, bundle.step_hz)
    for a, b in zip(plain[:at], asked[:at], strict=True):
        assert torch.equal(a.logits, b.logits) and a.token_id == b.token_id
    gap = max(float((a.logits - b.logits).abs().max()) for a, b in zip(plain[at:], asked[at:], strict=True))
    assert gap > 1e-3, f"the question changed the logits by at most {gap}"


def test_later_frames_never_change_earlier_outputs(bundle, clip):
    times, frames = clip
    cut = 5.0
    other = frames.clone()
    later = torch.tensor(times) >= cut
    other[later] = torch.flip(frames[later], dims=(1, 2))  # different video from `cut` on
    a = stream(DuplexSession(bundle, sink=4, window=60, pad_bias=-2.0), clip)
    b = stream(DuplexSession(bundle, sink=4, window=60, pad_bias=-2.0), (times, other))
    before = time_to_step(cut, bundle.step_hz)  # steps before the first changed frame's step
    for x, y in zip(a[:before], b[:before], strict=True):
        assert torch.equal(x.logits, y.logits) and x.token_id == y.token_id
    assert any(not torch.equal(x.logits, y.logits) for x, y in zip(a[before:], b[before:], strict=True))


def test_copy_is_independent_and_reset_restarts(bundle, clip):
    times, frames = clip
    half = len(times) // 2
    session = DuplexSession(bundle, sink=4, window=60, temperature=1.0, seed=3)
    first = list(session.run(zip(times[:half], frames[:half], strict=True)))
    fork = session.copy()
    fork.ask("red circle")
    fork_outs = [fork.step() for _ in range(10)]
    rest = [session.step() for _ in range(10)]
    fresh = DuplexSession(bundle, sink=4, window=60, temperature=1.0, seed=3)
    again = list(fresh.run(zip(times[:half], frames[:half], strict=True))) + [fresh.step() for _ in range(10)]
    assert [o.token_id for o in first + rest] == [o.token_id for o in again]  # the fork left the original alone
    assert any(not torch.equal(x.logits, y.logits) for x, y in zip(fork_outs, rest, strict=True))
    session.reset()
    assert session.step_index == 0 and session.cache.length == 0 and session.pending_user_tokens == 0
    assert [o.token_id for o in stream(session, clip)][: len(first)] == [o.token_id for o in first]


def test_sampling_settings(bundle, clip):
    greedy = [o.token_id for o in stream(DuplexSession(bundle, window=60), clip)]
    top1 = [o.token_id for o in stream(DuplexSession(bundle, window=60, temperature=2.0, top_k=1), clip)]
    assert top1 == greedy
    hot = [[o.token_id for o in stream(DuplexSession(bundle, temperature=2.0, seed=s), clip)] for s in (1, 1, 2)]
    assert hot[0] == hot[1] != hot[2]
    pad = bundle.text_tokenizer.pad_id
    assert all(o.token_id == pad and o.word is None for o in stream(DuplexSession(bundle, pad_bias=1e4), clip))
    talkative = stream(DuplexSession(bundle, pad_bias=-1e4), clip)
    assert all(o.token_id != pad for o in talkative)
    for bad in ({"temperature": -1.0}, {"top_k": 0}, {"pad_bias": math.nan}, {"window": 0}):
        with pytest.raises(InputError):
            DuplexSession(bundle, **bad)


def test_run_clock_and_wait_order(bundle, clip):
    times, frames = clip
    events: list[float] = []
    session = DuplexSession(bundle)
    outs = list(session.run(zip(times, frames, strict=True), end_s=3.1, wait=events.append))
    assert len(outs) == math.ceil(3.1 * bundle.step_hz) and session.frames_pushed == 7  # frames at 0, 0.5, .., 3.0
    assert events == sorted(events) and len(events) == len(outs) + session.frames_pushed
    assert [o.t for o in outs] == pytest.approx([(k + 1) / bundle.step_hz for k in range(len(outs))])
    assert session.time == pytest.approx(len(outs) / bundle.step_hz)
    with pytest.raises(InputError, match="increase"):
        session.push_frame(1.0, frames[0])
    with pytest.raises(InputError, match="empty question"):
        session.ask("   ")
