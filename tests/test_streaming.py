"""``DuplexSession``: streaming == offline forward (also past the window, against a cache-free reference), bounded
cache, the end-of-input flush, questions, causality, copy/reset, sampling."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from bounded_reference import bounded_reference
from delayed_echo import DelayedEcho
from safetensors.torch import load_file, save_model
from safetensors.torch import save_file as save_model_file

from mmduplex.errors import InputError
from mmduplex.inference.session import FLUSH_MAX_LINE_S, DuplexSession, StepOutput
from mmduplex.io.video import read_video
from mmduplex.lm.alignment import align_user, pack_video, time_to_step
from mmduplex.lm.bundle import CONFIG_FILE, MODEL_FILE, build_duplex_model, load_bundle

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


def stream(session: DuplexSession, clip, end_s: float | None = None, flush: bool = True) -> list[StepOutput]:
    times, frames = clip
    return list(session.run(zip(times, frames, strict=True), end_s=end_s, flush=flush))


def offline_inputs(session: DuplexSession, clip, outs: list[StepOutput], questions=()):
    """The stream's inputs built offline: the frames tokenized in one go and packed by ``pack_video``, the text
    teacher-forced with the session's own tokens, the questions by ``align_user``; ``(text, slots, mask, user)``."""
    times, frames = clip
    bundle, tok, steps = session.bundle, session.text_tokenizer, len(outs)
    with torch.inference_mode():
        patches = torch.cat([session.encoder.encode(f[None]).patches for f in frames])  # [T, P, D]
        video = bundle.video_tokenizer.tokenize(patches, torch.tensor(times, dtype=torch.float64))
    slots, mask = pack_video(video.frames, steps, bundle.slots_per_step, bundle.step_hz, bundle.model.token_dim)
    text = torch.tensor([tok.pad_id, *[o.token_id for o in outs[:-1]]])[None]  # [1, S]: step s sees step s-1's token
    user = align_user(list(questions), steps, bundle.step_hz, tok, session.user_slots_per_step)[None]  # [1, S(, U)]
    return text, slots[None], mask[None], user, video


def test_session_equals_offline_forward(bundle, clip):
    session = DuplexSession(bundle, sink=4, window=200, pad_bias=-2.0)  # 40 steps + any flush fit
    question = (3.0, "red circle")
    session.ask(question[1], t=question[0])
    outs = stream(session, clip)
    steps = len(outs)
    video_steps = round(SECONDS * bundle.step_hz)
    assert [o.index for o in outs] == list(range(steps)) and [o.flushed for o in outs].index(True) == video_steps
    assert session.cache.length == steps <= session.cache.max_length
    assert any(o.word for o in outs), "the PAD bias should make the tiny model talk"

    text, slots, mask, user, video = offline_inputs(session, clip, outs, [question])
    with torch.inference_mode():
        offline = bundle.model(text, slots, mask, user).logits[0]  # [S, V]
    streamed = torch.stack([o.logits for o in outs])  # [S, V]
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-4)
    assert session.video_tokens == video.tokens_total and session.frames_pushed == len(clip[0])


def test_session_past_the_window_equals_bounded_reference(bundle, clip):
    """40 steps on a 4 + 12 cache: every step after the first eviction equals the cache-free reference computed over
    exactly the entries the bounded cache holds, at contiguous positions (tests/bounded_reference.py)."""
    sink, window = 4, 12
    session = DuplexSession(bundle, sink=sink, window=window, pad_bias=-2.0)
    question = (3.0, "red circle")
    session.ask(question[1], t=question[0])
    outs = stream(session, clip, flush=False)
    assert len(outs) == round(SECONDS * bundle.step_hz) > 2 * (sink + window)
    assert session.cache.total_seen == len(outs) and session.cache.length == sink + window
    text, slots, mask, user, _ = offline_inputs(session, clip, outs, [question])
    with torch.inference_mode():
        embeds = bundle.model.embed(text, slots, mask, user)
        reference = bounded_reference(bundle.model, embeds, sink, window, user)  # the copy head's bonus included
        unbounded = bundle.model(text, slots, mask, user).logits[0]  # [S, V]
    streamed = torch.stack([o.logits for o in outs])  # [S, V]
    torch.testing.assert_close(streamed, reference, rtol=1e-4, atol=1e-4)
    evicted = slice(sink + window + 1, None)  # the steps that attend over a cache that has evicted entries
    assert (streamed[evicted] - unbounded[evicted]).abs().max() > 1e-3, "eviction should change the logits"


def test_window_smaller_than_stream_stays_bounded(bundle, clip):
    sink, window = 2, 6
    session = DuplexSession(bundle, sink=sink, window=window, pad_bias=-2.0)
    times, frames = clip
    lengths, outs = [], []
    for out in session.run(zip(times, frames, strict=True)):
        lengths.append(session.cache.length)
        outs.append(out)
    assert len(outs) > round(SECONDS * bundle.step_hz) > 4 * (sink + window)
    assert max(lengths) <= sink + window and lengths[-1] == sink + window
    assert session.cache.total_seen == len(outs)
    text, slots, mask, user, _ = offline_inputs(session, clip, outs)
    with torch.inference_mode():
        reference = bounded_reference(bundle.model, bundle.model.embed(text, slots, mask, user), sink, window, user)
    # every step, the flushed ones included, equals the reference over the sink + the last `window` steps
    torch.testing.assert_close(torch.stack([o.logits for o in outs]), reference, rtol=1e-4, atol=1e-4)


def test_flush_says_the_words_owed_at_the_end(bundle, clip, monkeypatch):
    """A model whose words come tau steps after the video (forced output): the flush says the last ones."""
    tau = 6  # 1.2 s at 5 Hz: longer than the last frame's display period, so its words fall after the last frame
    monkeypatch.setitem(bundle.config, "delay_steps", tau)
    tok = bundle.text_tokenizer
    word = tok.encode_text("red")[0]
    results = {}
    for flush in (False, True):
        echo = DelayedEcho(bundle.model.vocab_size, tok.pad_id, word, delay=tau)
        monkeypatch.setattr(bundle.model, "forward", echo)
        outs = stream(DuplexSession(bundle), clip, flush=flush)
        results[flush] = [o.index for o in outs if o.token_id == word], outs, echo
    said, outs, echo = results[True]
    assert said == echo.word_steps(), "every step with video is described tau steps later, the last ones included"
    last_video_step = max(k for k, video in enumerate(echo.had_video) if video)
    assert last_video_step >= time_to_step(clip[0][-1], bundle.step_hz)  # the last frame carried tokens
    video_steps = round(SECONDS * bundle.step_hz)
    flushed = [o for o in outs if o.flushed]
    assert [o.index for o in flushed] == list(range(video_steps, len(outs)))
    assert tau <= len(flushed) <= tau + 1 and flushed[-1].token_id == tok.pad_id  # tau owed steps; then silence
    late = [o for o in flushed if o.token_id == word]
    assert late, "words owed at the end come out of the flush"
    assert all(clip[0][-1] < o.t <= SECONDS + tau / bundle.step_hz for o in late)
    without, _, _ = results[False]
    assert without == [k for k in said if k < video_steps] and len(without) < len(said)


def test_flush_runs_the_owed_steps_and_finishes_the_line_within_a_cap(bundle, clip):
    tau, cap = bundle.delay_steps, math.ceil(FLUSH_MAX_LINE_S * bundle.step_hz)
    quiet = DuplexSession(bundle, pad_bias=1e4)  # always PAD: exactly the owed steps
    stream(quiet, clip, flush=False)
    owed = quiet.owed_steps()
    assert owed >= tau
    assert len(list(quiet.flush())) == owed
    talker = DuplexSession(bundle, pad_bias=-1e4)  # never PAD: the line never ends, the cap stops it
    stream(talker, clip, flush=False)
    owed = talker.owed_steps()
    flushed = list(talker.flush())
    assert len(flushed) == owed + cap and all(o.flushed and o.token_id != bundle.text_tokenizer.pad_id for o in flushed)
    assert len(list(talker.flush(max_line_steps=0))) == talker.owed_steps() == tau  # nothing left but tau
    asking = DuplexSession(bundle, pad_bias=1e4)
    stream(asking, clip, flush=False)
    asked = asking.ask("red circle moves left", t=0.0)  # due at once: U tokens a step
    user_steps = math.ceil(asked / bundle.user_slots_per_step)
    assert asking.owed_steps() == max(math.ceil(asking.pending_video_tokens / bundle.slots_per_step), user_steps) + tau
    with pytest.raises(InputError, match="max_line_steps"):
        list(asking.flush(max_line_steps=-1))


def test_question_mid_stream_changes_the_following_output(bundle, clip):
    plain = stream(DuplexSession(bundle, sink=4, window=60), clip, flush=False)
    asking = DuplexSession(bundle, sink=4, window=60)
    asking.ask("what moved", t=4.0)
    asked = stream(asking, clip, flush=False)
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
    a = stream(DuplexSession(bundle, sink=4, window=60, pad_bias=-2.0), clip, flush=False)
    b = stream(DuplexSession(bundle, sink=4, window=60, pad_bias=-2.0), (times, other), flush=False)
    before = time_to_step(cut, bundle.step_hz)  # steps before the first changed frame's step
    for x, y in zip(a[:before], b[:before], strict=True):
        assert torch.equal(x.logits, y.logits) and x.token_id == y.token_id
    assert any(not torch.equal(x.logits, y.logits) for x, y in zip(a[before:], b[before:], strict=True))


def test_copy_is_independent_and_reset_restarts(bundle, clip):
    times, frames = clip
    half = len(times) // 2
    session = DuplexSession(bundle, sink=4, window=60, temperature=1.0, seed=3)
    first = list(session.run(zip(times[:half], frames[:half], strict=True), flush=False))
    fork = session.copy()
    fork.ask("red circle")
    fork_outs = [fork.step() for _ in range(10)]
    rest = [session.step() for _ in range(10)]
    fresh = DuplexSession(bundle, sink=4, window=60, temperature=1.0, seed=3)
    again = list(fresh.run(zip(times[:half], frames[:half], strict=True), flush=False))
    again += [fresh.step() for _ in range(10)]
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
    inputs = [o for o in outs if not o.flushed]
    assert len(inputs) == math.ceil(3.1 * bundle.step_hz) and session.frames_pushed == 7  # frames at 0, .., 3.0
    assert outs[: len(inputs)] == inputs and len(outs) - len(inputs) >= bundle.delay_steps  # then the flush
    assert events == sorted(events) and len(events) == len(outs) + session.frames_pushed  # flushed steps paced too
    assert [o.t for o in outs] == pytest.approx([(k + 1) / bundle.step_hz for k in range(len(outs))])
    assert session.time == pytest.approx(len(outs) / bundle.step_hz)
    with pytest.raises(InputError, match="increase"):
        session.push_frame(1.0, frames[0])
    with pytest.raises(InputError, match="empty question"):
        session.ask("   ")


# ---------------------------------------------------------------------- several user tokens per step

USER_SLOTS = 3
QUESTIONS = [(3.0, "which entered first\nA. red\nB. green"), (3.2, "red circle")]  # 7 + 2 tokens; the second waits


@pytest.fixture(scope="module")
def slotted_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle turned into a ``USER_SLOTS``-slot one: the same weights plus random per-slot vectors."""
    folder = tmp_path_factory.mktemp("slotted") / "bundle"
    shutil.copytree(tiny_bundle, folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    config["user_slots_per_step"] = USER_SLOTS
    model = build_duplex_model(config, attn_implementation="sdpa")
    shared = {k: v for k, v in load_file(str(tiny_bundle / MODEL_FILE)).items() if not k.startswith("user_slot_")}
    missing, unexpected = model.load_state_dict(shared, strict=False)
    assert sorted(missing) == ["user_slot_bias", "user_slot_gain"] and not unexpected
    save_model(model, str(folder / MODEL_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return load_bundle(folder)


def test_bundle_without_the_user_slots_key_loads_with_one_slot(tiny_bundle, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(tiny_bundle, folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config.pop("user_slots_per_step") >= 1  # new bundles record it
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    weights = load_file(str(folder / MODEL_FILE))  # an old bundle: no per-slot parameters either
    save_model_file({k: v for k, v in weights.items() if not k.startswith("user_slot_")}, str(folder / MODEL_FILE))
    old = load_bundle(folder)  # strict weight loading: a U = 1 model has no per-slot parameters
    assert old.user_slots_per_step == old.model.user_slots_per_step == DuplexSession(old).user_slots_per_step == 1


def test_session_with_user_slots_equals_offline_forward(slotted_bundle, clip):
    bundle = slotted_bundle
    assert bundle.user_slots_per_step == bundle.model.user_slots_per_step == USER_SLOTS
    session = DuplexSession(bundle, sink=4, window=200, pad_bias=-2.0)
    sizes = [session.ask(text, t=t) for t, text in QUESTIONS]
    assert session.pending_user_tokens == sum(sizes) == 9
    outs = stream(session, clip)
    assert session.pending_user_tokens == 0
    text, slots, mask, user, _ = offline_inputs(session, clip, outs, QUESTIONS)
    assert user.shape == (1, len(outs), USER_SLOTS)
    first = time_to_step(QUESTIONS[0][0], bundle.step_hz)
    fed = (user[0] != bundle.text_tokenizer.pad_id).sum(dim=1).tolist()  # tokens per step
    # 7 tokens in 3 lines, each line from a new step (3 + 2 + 2), then the second question
    assert fed[first : first + 4] == [3, 2, 2, 2] and sum(fed) == 9
    with torch.inference_mode():
        offline = bundle.model(text, slots, mask, user).logits[0]  # [S, V]
    torch.testing.assert_close(torch.stack([o.logits for o in outs]), offline, rtol=1e-4, atol=1e-4)


def test_question_with_user_slots_changes_only_the_following_output(slotted_bundle, clip):
    bundle, tau = slotted_bundle, slotted_bundle.delay_steps
    plain = stream(DuplexSession(slotted_bundle, sink=4, window=60), clip, flush=False)
    asking = DuplexSession(slotted_bundle, sink=4, window=60)
    asking.ask(QUESTIONS[0][1], t=4.0)
    asked = stream(asking, clip, flush=False)
    at = time_to_step(4.0, bundle.step_hz)
    for a, b in zip(plain[:at], asked[:at], strict=True):
        assert torch.equal(a.logits, b.logits) and a.token_id == b.token_id
    assert not torch.equal(plain[at].logits, asked[at].logits), "the step feeding the first tokens sees them"
    late = DuplexSession(slotted_bundle, pad_bias=1e4)
    stream(late, clip, flush=False)
    asked_tokens = late.ask(QUESTIONS[0][1], t=0.0)  # 7 tokens due now: ceil(7 / 3) = 3 steps
    video = math.ceil(late.pending_video_tokens / bundle.slots_per_step)
    assert late.owed_steps() == max(video, math.ceil(asked_tokens / USER_SLOTS)) + tau
    late.step()
    assert late.pending_user_tokens == asked_tokens - USER_SLOTS
