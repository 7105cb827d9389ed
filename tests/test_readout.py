"""The slot readout (mmduplex.lm.readout): it reads slots one by one where their sum is the same, a new readout leaves
the model as it was, streaming on the bounded cache == the teacher-forced forward and the cache-free bounded
reference, causality, and a cache filled without it is refused."""

from __future__ import annotations

import pytest
import torch
from bounded_reference import bounded_hidden, kept_steps, random_steps, stream_steps

from mmduplex.errors import InputError
from mmduplex.lm.copy_head import copy_targets
from mmduplex.lm.kvcache import SinkWindowCache
from mmduplex.lm.model import DuplexLM, build_backbone
from mmduplex.lm.readout import SlotReadout
from mmduplex.lm.text import build_word_tokenizer

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
TOKENIZER = build_word_tokenizer(["A.", "B.", "A", "B", "red", "blue", "circle", "square", "enters", "?"])
V, PAD, EPAD = TOKENIZER.vocab_size, TOKENIZER.pad_id, TOKENIZER.epad_id
DV, K, U = 8, 3, 2


def make_model(readout_dim: int = 8, copy_dim: int = 0, seed: int = 0, trained: bool = True) -> DuplexLM:
    torch.manual_seed(seed)
    backbone = build_backbone(TINY_LLAMA, vocab_size=V, attn_implementation="sdpa")
    model = DuplexLM(
        backbone, V, PAD, EPAD, DV, K, projector_hidden=32, user_slots_per_step=U, copy_dim=copy_dim,
        readout_dim=readout_dim,
    )  # fmt: skip
    if model.copy_head is not None:
        model.copy_head.set_targets(copy_targets(TOKENIZER))
    if model.readout is not None and trained:  # a new readout adds nothing (W_o = 0): give it weights that show
        with torch.no_grad():
            model.readout.out.weight.normal_(0.0, 0.5)
            model.readout.age_bias.normal_(0.0, 1.0)
    return model.eval()


def make_inputs(batch=2, steps=12, seed=1):
    return random_steps(batch, steps, K, DV, U, V, PAD, seed, fill=0.5)


def test_the_readout_tells_apart_slots_whose_sum_is_the_same():
    """Two steps whose projected slots sum to the same vector (``u + v, u - v`` against ``u + w, u - w``) embed the
    same into the stream, and the readout still reads them apart: it looks at each slot, not at the sum."""
    torch.manual_seed(0)
    readout = SlotReadout(hidden=16, dim=8, heads=2)
    with torch.no_grad():
        readout.out.weight.normal_()
    u, v, w = torch.randn(3, 16)
    first = torch.stack([u + v, u - v, torch.zeros(16)])[None, None]  # [1, 1, K, H]
    second = torch.stack([u + w, u - w, torch.zeros(16)])[None, None]
    mask = torch.tensor([[[True, True, False]]])
    torch.testing.assert_close(first.sum(2), second.sum(2))
    hidden = torch.randn(1, 1, 16)
    with torch.no_grad():
        a = readout(hidden, readout.step_memory(first, mask), first=0)
        b = readout(hidden, readout.step_memory(second, mask), first=0)
        empty = readout(hidden, readout.step_memory(first, torch.zeros_like(mask)), first=0)
    assert (a - b).abs().max() > 0.1
    torch.testing.assert_close(empty, hidden)  # no filled slot: nothing read


def test_a_new_readout_leaves_the_model_unchanged():
    text, slots, mask, user = make_inputs()
    plain, fresh = make_model(readout_dim=0), make_model(trained=False)
    with torch.no_grad():
        torch.testing.assert_close(fresh(text, slots, mask, user).logits, plain(text, slots, mask, user).logits)
    assert fresh.readout is not None and plain.readout is None


@pytest.mark.parametrize("copy_dim", [0, 8])
def test_streaming_equals_teacher_forced(copy_dim):
    model = make_model(copy_dim=copy_dim)
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        full = model(text, slots, mask, user).logits  # [B, S, V]
        unread = model.head(model.backbone.get_decoder()(inputs_embeds=model.embed(text, slots, mask, user))[0])
    cache = SinkWindowCache(model, sink=2, window=text.shape[1])  # nothing is evicted
    torch.testing.assert_close(stream_steps(model, cache, text, slots, mask, user), full, rtol=1e-4, atol=1e-5)
    if copy_dim == 0:  # and the readout is in those logits: none before the first video, some after
        assert (full - unread)[:, :2].abs().max() < 1e-5 and (full - unread)[:, 2:].abs().max() > 0.1


def test_streaming_past_the_window_reads_only_the_steps_the_cache_keeps():
    model = make_model()
    sink, window, steps = 2, 4, 14
    text, slots, mask, user = make_inputs(batch=1, steps=steps)
    cache = SinkWindowCache(model, sink=sink, window=window)
    streamed = stream_steps(model, cache, text, slots, mask, user)
    assert all(v.shape[1] == sink + window for v in cache.side.values())
    with torch.no_grad():
        hidden = bounded_hidden(model.backbone.get_decoder(), model.embed(text, slots, mask, user), sink, window)
        projected = model.video(slots, mask, per_slot=True)[1]  # [1, S, K, H]
        memory = model.readout.step_memory(projected, mask)
        kept = [[*kept_steps(t, sink, window), t] for t in range(steps)]
        read = [model.readout(hidden[:, t : t + 1], [m[:, k] for m in memory], len(k) - 1) for t, k in enumerate(kept)]
        reference = model.head(torch.cat(read, dim=1))
        everything = model.head(model.readout(hidden, memory, first=0))  # reading evicted steps too differs
    torch.testing.assert_close(streamed, reference, rtol=1e-4, atol=1e-5)
    assert (everything - reference)[:, sink + window + 1 :].abs().max() > 1e-3


def test_causality_and_the_cache_copy():
    model = make_model()
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        base = model(text, slots, mask, user).logits
        later = slots.clone()
        later[:, 8:] = torch.randn(later[:, 8:].shape)
        changed = model(text, later, mask, user).logits
    torch.testing.assert_close(changed[:, :8], base[:, :8], rtol=0, atol=1e-6)
    assert (changed[:, 8:] - base[:, 8:]).abs().max() > 1e-3
    cache = SinkWindowCache(model, sink=2, window=4)
    stream_steps(model, cache, text[:, :6], slots[:, :6], mask[:, :6], user[:, :6])
    twin = cache.copy()  # one streamed video, two continuations: each keeps its own readout memory
    a = stream_steps(model, cache, text[:, 6:], slots[:, 6:], mask[:, 6:], user[:, 6:])
    b = stream_steps(model, twin, text[:, 6:], slots[:, 6:], mask[:, 6:], user[:, 6:])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_cache_filled_without_the_readout_is_refused():
    plain, reading = make_model(readout_dim=0), make_model()
    text, slots, mask, user = make_inputs(batch=1, steps=3)
    cache = SinkWindowCache(plain, sink=2, window=4)
    stream_steps(plain, cache, text, slots, mask, user)
    with pytest.raises(InputError, match="readout memory holds 0 steps"):
        stream_steps(reading, cache, text, slots, mask, user)
