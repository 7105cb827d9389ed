"""Step-grid alignment: text stream with PAD / EPAD and delay, its inverse, the user stream, video slot packing."""

from __future__ import annotations

import pytest
import torch

from mmduplex.data.transcripts import Word
from mmduplex.errors import InputError
from mmduplex.lm.alignment import VideoSlotPacker, align_text, align_user, pack_video, text_to_words
from mmduplex.lm.text import build_word_tokenizer
from mmduplex.tokenizer.base import FrameTokens

WORDS = ["red", "square", "enters", "blue", "circle", "leaves"]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(WORDS)


def ids_of(tok, *words):
    return [tok.encode_word(w)[0] for w in words]


def test_pad_epad_and_delay(tok):
    P, E = tok.pad_id, tok.epad_id
    words = [Word(0.5, 0.7, "red"), Word(0.72, 0.9, "square"), Word(2.0, 2.3, "enters")]
    ids = align_text(words, 14, 5.0, tok, delay_steps=0).tolist()
    r, s, e = ids_of(tok, "red", "square", "enters")
    assert ids == [P, E, r, s, P, P, P, P, P, E, e, P, P, P]  # square at floor(0.72 * 5) = 3
    delayed = align_text(words, 14, 5.0, tok, delay_steps=3).tolist()
    assert delayed == [P, P, P] + ids[:11]


def test_spill_forward_and_overlap(tok):
    P, E = tok.pad_id, tok.epad_id
    fast = [Word(1.0, 1.05, "red"), Word(1.05, 1.1, "square"), Word(1.08, 1.2, "enters")]  # all within one step
    ids = align_text(fast, 8, 5.0, tok).tolist()
    assert ids == [P, P, P, P, E, *ids_of(tok, "red", "square", "enters"), P][:8]
    overlapping = [Word(0.45, 1.0, "blue"), Word(0.3, 0.5, "circle")]  # sorted by start: circle first
    ids = align_text(overlapping, 5, 5.0, tok).tolist()
    assert ids == [E, *ids_of(tok, "circle", "blue"), P, P]  # blue (step 2) spills behind circle (step 1)


def test_window_edges_and_empty(tok):
    P = tok.pad_id
    assert align_text([], 5, 5.0, tok, delay_steps=2).tolist() == [P] * 5
    # a word starting before the window (negative time) is dropped unless the delay brings it in
    assert align_text([Word(-0.3, 0.0, "red")], 4, 5.0, tok).tolist() == [P] * 4
    early = [Word(-0.1, 0.0, "red")]  # step -1, delayed to step 1
    assert align_text(early, 4, 5.0, tok, delay_steps=2).tolist() == [tok.epad_id, *ids_of(tok, "red"), P, P]
    # words that do not fit before the end are dropped whole (no dangling EPAD)
    late = [Word(0.6, 0.8, "red"), Word(0.7, 0.8, "square"), Word(0.75, 0.8, "enters")]
    assert align_text(late, 5, 5.0, tok).tolist() == [P, P, tok.epad_id, *ids_of(tok, "red", "square")]


def test_text_to_words_round_trip(tok):
    words = [Word(0.4, 0.6, "red"), Word(0.6, 0.8, "square"), Word(2.2, 2.5, "blue"), Word(4.0, 4.2, "leaves")]
    for delay in (0, 3):
        ids = align_text(words, 30, 5.0, tok, delay_steps=delay)
        back = text_to_words(ids, 5.0, tok, delay_steps=delay)
        assert [w.text for w in back] == [w.text for w in words]
        for got, want in zip(back, words, strict=True):
            assert want.start - 0.2 < got.start <= want.start + 1e-9
            assert got.end == pytest.approx(got.start + 0.2)
    assert text_to_words(torch.full((6,), tok.pad_id), 5.0, tok) == []
    shifted = text_to_words(align_text(words[:1], 10, 5.0, tok), 5.0, tok, offset_s=100.0)
    assert shifted[0].start == pytest.approx(100.4)


def test_user_stream(tok):
    P = tok.pad_id
    ids = align_user([(0.4, "red square"), (0.5, "enters")], 6, 5.0, tok).tolist()
    assert ids == [P, P, *ids_of(tok, "red", "square", "enters"), P]
    assert align_user([(0.8, "red square")], 6, 5.0, tok).tolist()[-1] == ids_of(tok, "square")[0]
    assert align_user([(1.1, "red square")], 6, 5.0, tok).tolist() == [P] * 5 + ids_of(tok, "red")


def test_user_stream_with_several_slots_per_step(tok):
    """U tokens per step in order, spilling into the next steps; a later question starts in slot 0 of the step after
    the earlier one's last token; a question timed before step 0 starts at step 0 (as with one token per step);
    tokens past the end are dropped; U = 1 is the one-token stream."""
    P = tok.pad_id
    r, s, e, b, c, lv = ids_of(tok, *WORDS)
    questions = [(0.4, "red square enters blue"), (0.5, "circle leaves")]
    ids = align_user(questions, 6, 5.0, tok, slots_per_step=3)
    assert ids.shape == (6, 3) and ids.dtype == torch.long
    assert ids.tolist() == [[P, P, P], [P, P, P], [r, s, e], [b, P, P], [c, lv, P], [P, P, P]]
    late = align_user([(1.2, "circle leaves")], 6, 5.0, tok, slots_per_step=3).tolist()
    assert late == [[P] * 3] * 6  # 1.2 s is step 6: past the end
    early = align_user([(-0.2, "red square enters blue circle")], 4, 5.0, tok, slots_per_step=2).tolist()
    assert early == [[r, s], [e, b], [c, P], [P, P]]
    assert align_user([(-0.2, "red square")], 3, 5.0, tok).tolist() == [r, s, P]
    spill = align_user([(0.8, "red square enters blue circle")], 5, 5.0, tok, slots_per_step=2).tolist()
    assert spill == [[P, P]] * 4 + [[r, s]]  # the rest falls past the window's end
    for text in ("red square enters blue circle", "red"):
        one = align_user([(0.2, text)], 8, 5.0, tok, slots_per_step=1)
        assert one.shape == (8,) and torch.equal(one, align_user([(0.2, text)], 8, 5.0, tok))
    with pytest.raises(InputError, match="slots_per_step"):
        align_user(questions, 6, 5.0, tok, slots_per_step=0)
    # each line starts a new step: an option line never shares its step with another line
    lines = align_user([(0.2, "red square enters\nblue circle\nleaves")], 5, 5.0, tok, slots_per_step=3).tolist()
    assert lines == [[P, P, P], [r, s, e], [b, c, P], [lv, P, P], [P, P, P]]
    assert align_user([(0.2, "red\nsquare")], 4, 5.0, tok).tolist() == [P, r, s, P]  # U = 1: unchanged


def frame(t, n, dim=4, base=0.0):
    tokens = base + torch.arange(n * dim, dtype=torch.float32).reshape(n, dim)
    return FrameTokens(t, "key" if n else "none", tokens, torch.full((n,), -1))


def test_packer_fifo_spill():
    frames = [frame(0.0, 5, base=0), frame(0.5, 1, base=100), frame(0.55, 0), frame(1.0, 2, base=200)]
    slots, mask = pack_video(frames, 6, 2, 4.0, 4)  # K=2, 4 steps/s: frames at steps 0, 2, 2, 4
    assert slots.shape == (6, 2, 4) and mask.shape == (6, 2)
    assert mask.sum(1).tolist() == [2, 2, 2, 0, 2, 0]
    assert slots[0, 0, 0] == 0 and slots[1, 0, 0] == 8 and slots[2, 0, 0] == 16  # frame 0 spills over steps 0..2
    assert slots[2, 1, 0] == 100  # frame 1 waits behind frame 0's last token
    assert slots[4, 0, 0] == 200 and (slots[3] == 0).all() and (slots[5] == 0).all()


def test_packer_step_api_equals_batch():
    frames = [frame(k / 2, n, base=10 * k) for k, n in enumerate([4, 0, 3, 1, 6, 2])]
    batch_slots, batch_mask = pack_video(frames, 12, 3, 2.5, 4, start_s=0.0)
    packer = VideoSlotPacker(3, 2.5, 4)
    pending = list(frames)
    for s in range(12):  # streaming: push what has arrived by this step, pop one step
        while pending and pending[0].t < (s + 1) / 2.5:
            packer.push(pending.pop(0))
        slots, mask = packer.pop_step()
        assert torch.equal(slots, batch_slots[s]) and torch.equal(mask, batch_mask[s])
    assert packer.pending == 0
    with pytest.raises(Exception, match="expected"):
        packer.push(frame(6.0, 2, dim=5))
