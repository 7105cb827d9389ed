"""Lockstep batching (``mmduplex.inference.batched``): streaming several videos at once gives each video what streaming
it alone gives (per-step logits within float rounding, the same commentary), also when streams leave the batch at
different steps, past the cache window and with a question on one stream (the copy head's memory rides with the
cache); a wrong cache slice is caught."""

from __future__ import annotations

import pytest
import torch

from mmduplex.demo.stream import MAX_WORDS_PER_LINE, MIN_DISPLAY_S, stream_features
from mmduplex.errors import InputError
from mmduplex.inference import batched
from mmduplex.inference.batched import stream_batched, stream_features_batched
from mmduplex.inference.commentary import Commentary
from mmduplex.inference.loop import Question, timeline
from mmduplex.inference.session import DuplexSession
from mmduplex.io.feature_cache import FeatureCache
from mmduplex.lm.bundle import load_bundle

PAUSE = 5
SINK, WINDOW = 2, 12  # 14 cached positions: every stream below runs past them (evicts in lockstep)
SECONDS = (3.0, 9.0, 5.5, 7.0)  # different lengths: streams leave the batch at different steps


@pytest.fixture(scope="module")
def session(tiny_bundle):
    session = DuplexSession(load_bundle(tiny_bundle), sink=SINK, window=WINDOW, pad_bias=-2.0)  # the bias: it talks
    assert session.model.copy_head is not None  # the tests' tiny model has one: its memory follows each stream's rows
    return session


@pytest.fixture(scope="module")
def videos(duplex_data):
    """The first ``SECONDS[i]`` of four cached videos: ``(video_id, times, patches [T, P, D])``."""
    cache = FeatureCache(duplex_data["features"])
    out = []
    for key, seconds in zip(sorted(cache.keys()), SECONDS, strict=False):
        record = cache.load(key)
        keep = record.timestamps < seconds
        out.append((key, record.timestamps[keep].tolist(), record.patches[keep]))
    return out


def single_logits(session: DuplexSession, times, patches) -> list[torch.Tensor]:
    """Each step's logits when the video streams alone (the loop and flush :func:`stream_features` runs)."""
    session.reset()
    return [out.logits for out in session.run(zip(times, patches, strict=True))]


def batched_logits(videos, **kwargs):
    """:func:`stream_features_batched`'s results and each video's per-step logits."""
    logits: list[list[torch.Tensor]] = [[] for _ in videos]
    results = stream_features_batched(
        kwargs.pop("session"),
        videos,
        PAUSE,
        line_words=MAX_WORDS_PER_LINE,  # the demo's line settings, as stream_features uses
        line_display_s=MIN_DISPLAY_S,
        on_step=lambda i, out: logits[i].append(out.logits),
        **kwargs,
    )
    return results, logits


def assert_same_as_alone(session, videos, results, logits, exact: bool = False) -> None:
    for (vid, times, patches), result, steps in zip(videos, results, logits, strict=True):
        alone = single_logits(session, times, patches)
        assert len(steps) == len(alone) == result.steps, vid
        if exact:
            assert all(torch.equal(a, b) for a, b in zip(steps, alone, strict=True)), vid
        else:
            torch.testing.assert_close(torch.stack(steps), torch.stack(alone), rtol=0, atol=1e-5, msg=vid)
        reference = stream_features(session, vid, times, patches, PAUSE)
        assert result.video_id == reference.video_id == vid
        assert (result.lines, result.words, result.steps) == (reference.lines, reference.words, reference.steps), vid
        assert result.video_tokens == reference.video_tokens > 0
        assert [t for t, _ in result.frame_tokens] == times
        assert sum(n for _, n in result.frame_tokens) == result.video_tokens


def test_batched_streams_equal_each_stream_alone(session, videos):
    results, logits = batched_logits(videos, session=session, batch=3)  # cohorts [9, 7, 5.5 s] then [3 s]
    assert_same_as_alone(session, videos, results, logits)
    steps = [r.steps for r in results]
    assert len(set(steps)) == len(steps), "the streams should leave the batch at different steps"
    assert max(steps) > SINK + WINDOW + 10, "the longest streams should run well past the cache window"
    assert sum(len(r.words) for r in results) > 0, "the tiny model should say something (else texts prove nothing)"


def test_lockstep_streams_tokenize_their_frames_in_one_batched_step(session, videos, monkeypatch):
    """The driver tokenizes the streams' frames together (B-Flow's states stacked, then split per stream), and every
    stream still gets exactly its own tokens: the logits and words match each stream alone."""
    sizes: list[int] = []
    tokenizer = session.video_tokenizer
    step = tokenizer.step

    def counted(patches, t, state):
        sizes.append(patches.shape[0])
        return step(patches, t, state)

    monkeypatch.setattr(tokenizer, "step", counted)
    results, logits = batched_logits(videos, session=session, batch=4)
    monkeypatch.undo()
    assert max(sizes) == len(videos) and sum(sizes) == sum(len(times) for _, times, _ in videos)
    assert_same_as_alone(session, videos, results, logits)


def test_batch_of_one_is_the_plain_path_bit_for_bit(session, videos):
    results, logits = batched_logits(videos[:2], session=session, batch=1)
    assert_same_as_alone(session, videos[:2], results, logits, exact=True)


def test_batch_larger_than_the_videos(session, videos):
    results, logits = batched_logits(videos, session=session, batch=8)
    assert_same_as_alone(session, videos, results, logits)


def test_a_wrong_cache_slice_is_caught(session, videos, monkeypatch):
    """Handing the streams that stay each other's cache rows when one leaves must break the comparison."""
    keep = batched._keep_rows
    monkeypatch.setattr(batched, "_keep_rows", lambda cache, rows: keep(cache, rows[::-1]))
    results, logits = batched_logits(videos[:3], session=session, batch=3)
    with pytest.raises(AssertionError):
        assert_same_as_alone(session, videos[:3], results, logits)


def test_questions_go_to_their_own_stream(session, videos):
    """A question on one stream of the batch: that stream equals it asked alone; the other equals it unasked."""
    (vid_a, times_a, patches_a), (vid_b, times_b, patches_b) = videos[1], videos[2]
    ask = [Question(1.0, "red circle")]
    sources = [
        (vid_a, timeline(zip(times_a, patches_a, strict=True), ask)),
        (vid_b, zip(times_b, patches_b, strict=True)),
    ]
    settings = {"line_words": MAX_WORDS_PER_LINE, "line_display_s": MIN_DISPLAY_S}  # the demo's, as stream_features
    asked, plain = stream_batched(session, sources, PAUSE, batch=2, **settings)
    alone = Commentary(
        session, zip(times_a, patches_a, strict=True), ask={1.0: "red circle"}, pause_steps=PAUSE, **settings
    )
    lines = list(alone)
    assert (asked.lines, asked.words, asked.steps) == (lines, alone.words, alone.steps)
    unasked = stream_features(session, vid_a, times_a, patches_a, PAUSE)
    assert (asked.words, asked.steps) != (unasked.words, unasked.steps), "the question should change stream a"
    reference = stream_features(session, vid_b, times_b, patches_b, PAUSE)
    assert (plain.lines, plain.words, plain.steps) == (reference.lines, reference.words, reference.steps)


def test_bad_input(session, videos):
    with pytest.raises(InputError, match="batch"):
        stream_features_batched(session, videos, PAUSE, batch=0)
    with pytest.raises(InputError, match="no videos"):
        stream_features_batched(session, [], PAUSE)
    with pytest.raises(InputError, match="no videos"):
        stream_batched(session, [], PAUSE)
    vid, times, patches = videos[0]
    with pytest.raises(InputError, match=vid):
        stream_features_batched(session, [(vid, times[:-1], patches)], PAUSE)
