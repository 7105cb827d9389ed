"""DuplexLM: streaming on the bounded KV cache (one step at a time) == teacher-forced forward / the cache-free bounded
reference, causality, loss weighting."""

from __future__ import annotations

import math

import pytest
import torch
from bounded_reference import bounded_reference

from mmduplex.errors import InputError
from mmduplex.lm.kvcache import SinkWindowCache
from mmduplex.lm.model import DuplexLM, LoraSettings, LossWeights, VideoProjector, apply_lora, build_backbone, text_loss

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
V, PAD, EPAD, DV, K = 12, 10, 11, 16, 3


def make_model(spec=None, vocab_size=V, projector_layers=0, gated=False, slot_maps=False) -> DuplexLM:
    torch.manual_seed(0)
    backbone = build_backbone(spec or TINY_LLAMA, vocab_size=vocab_size, attn_implementation="sdpa")
    return DuplexLM(
        backbone, V, PAD, EPAD, DV, K, projector_hidden=32, projector_layers=projector_layers, projector_gated=gated,
        projector_slot_maps=slot_maps,
    ).eval()  # fmt: skip


def make_inputs(batch=2, steps=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, V, (batch, steps), generator=g)
    slots = torch.randn(batch, steps, K, DV, generator=g)
    mask = torch.rand(batch, steps, K, generator=g) > 0.4
    user = torch.full((batch, steps), PAD)
    user[:, 3:5] = torch.randint(0, PAD, (batch, 2), generator=g)
    return text, slots, mask, user


def stream_steps(model: DuplexLM, cache: SinkWindowCache, text, slots, mask, user) -> torch.Tensor:
    """Feed the inputs one step at a time through ``model`` on the project's bounded ``cache``; logits [B, S, V]."""
    steps = []
    with torch.no_grad():
        for s in range(text.shape[1]):
            out = model(text[:, s : s + 1], slots[:, s : s + 1], mask[:, s : s + 1], user[:, s : s + 1],
                        past_key_values=cache, position_ids=cache.next_position_ids(text.shape[0], 1),
                        use_cache=True)  # fmt: skip
            assert out.past_key_values is cache
            steps.append(out.logits)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize(
    ("model_type", "projector_layers", "gated", "slot_maps"),
    [("llama", 0, False, False), ("qwen2", 0, False, False), ("llama", 1, False, False), ("llama", 0, True, False),
     ("llama", 0, False, True)]
)  # fmt: skip
def test_streaming_equals_teacher_forced(model_type, projector_layers, gated, slot_maps):
    """Streaming on the project's SinkWindowCache (the cache DuplexSession uses) == the teacher-forced forward."""
    spec = {**TINY_LLAMA, "model_type": model_type}
    model = make_model(spec, projector_layers=projector_layers, gated=gated, slot_maps=slot_maps)
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        full = model(text, slots, mask, user).logits  # [B, S, V]
    cache = SinkWindowCache(model, sink=2, window=text.shape[1])  # holds the whole stream: nothing is evicted
    streamed = stream_steps(model, cache, text, slots, mask, user)
    assert full.shape == (2, 9, V) and cache.total_seen == cache.length == 9
    torch.testing.assert_close(streamed, full, rtol=1e-4, atol=1e-5)
    for b in range(text.shape[0]):  # the independent bounded reference agrees when nothing is evicted
        embeds = model.embed(text[b : b + 1], slots[b : b + 1], mask[b : b + 1], user[b : b + 1])
        torch.testing.assert_close(bounded_reference(model, embeds, 2, 9), full[b], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_streaming_past_the_window_equals_the_bounded_reference(model_type):
    """Past the window (eviction and key re-rotation at every step), every step equals a cache-free recomputation
    over the sink + window entries at contiguous positions (tests/bounded_reference.py)."""
    model = make_model({**TINY_LLAMA, "model_type": model_type})
    sink, window, steps = 2, 5, 24
    text, slots, mask, user = make_inputs(steps=steps)
    cache = SinkWindowCache(model, sink=sink, window=window)
    streamed = stream_steps(model, cache, text, slots, mask, user)
    assert cache.length == sink + window and cache.total_seen == steps
    for b in range(text.shape[0]):
        with torch.no_grad():
            embeds = model.embed(text[b : b + 1], slots[b : b + 1], mask[b : b + 1], user[b : b + 1])
        torch.testing.assert_close(streamed[b], bounded_reference(model, embeds, sink, window), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and eviction does matter: the unbounded forward differs after the window fills
        full = model(text, slots, mask, user).logits
    assert (streamed[:, sink + window + 1 :] - full[:, sink + window + 1 :]).abs().max() > 1e-3


def test_causality():
    model = make_model()
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        base = model(text, slots, mask, user).logits
        for s in (0, 4, 8):
            t2, v2, m2, u2 = text.clone(), slots.clone(), mask.clone(), user.clone()
            t2[:, s] = (t2[:, s] + 1) % V
            v2[:, s] += 5.0
            m2[:, s] = True
            u2[:, s] = 1
            changed = model(t2, v2, m2, u2).logits
            torch.testing.assert_close(changed[:, :s], base[:, :s], rtol=0, atol=1e-6)
            assert (changed[:, s] - base[:, s]).abs().max() > 1e-4  # step s itself does see its inputs


@pytest.mark.parametrize(("projector_layers", "gated"), [(0, False), (1, False), (0, True)])
def test_absent_streams_embed_to_zero(projector_layers, gated):
    model = make_model(projector_layers=projector_layers, gated=gated)
    text, slots, mask, _ = make_inputs()
    silent = torch.full_like(text, PAD)
    none_masked = torch.zeros_like(mask)
    with torch.no_grad():
        a = model.embed(text, slots, none_masked, silent)
        b = model.embed(text, torch.randn_like(slots), none_masked, None)
    torch.testing.assert_close(a, b)


def test_user_slots_one_slot_is_the_one_token_stream():
    """U = 1 (the default): no per-slot parameters (old state dicts load strictly), ``[B, S, 1]`` == ``[B, S]``, and
    the embedding is the token's plus the user-stream vector where the user speaks, zero elsewhere."""
    model = make_model()
    assert model.user_slots_per_step == 1 and not [n for n in model.state_dict() if "user_slot" in n]
    with torch.no_grad():
        model.user_stream.normal_()
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        flat = model(text, slots, mask, user).logits
        slotted = model(text, slots, mask, user[..., None]).logits
        user_embeds = model.embed_user(user, text.shape)
        tokens = model.backbone.get_input_embeddings()(user.clamp(max=V - 3))
    assert torch.equal(flat, slotted)
    speaking = (user != PAD)[..., None]
    torch.testing.assert_close(user_embeds, torch.where(speaking, tokens + model.user_stream, 0.0), rtol=0, atol=0)
    with pytest.raises(InputError, match="user_ids"):
        model.embed_user(torch.full((2, 9, 2), PAD), text.shape)


def make_slotted_model(slots: int = 3) -> DuplexLM:
    torch.manual_seed(0)
    backbone = build_backbone(TINY_LLAMA, vocab_size=V, attn_implementation="sdpa")
    return DuplexLM(backbone, V, PAD, EPAD, DV, K, projector_hidden=32, user_slots_per_step=slots).eval()


def test_user_slots_keep_the_order_and_empty_slots_embed_to_zero():
    model = make_slotted_model(3)
    assert {n for n in model.state_dict() if "user_slot" in n} == {"user_slot_gain", "user_slot_bias"}
    text, slots, mask, _ = make_inputs(batch=1, steps=6)
    user = torch.full((1, 6, 3), PAD)
    user[0, 2] = torch.tensor([1, 2, PAD])
    swapped = user.clone()
    swapped[0, 2, :2] = torch.tensor([2, 1])
    with torch.no_grad():
        a, b = model.embed_user(user, text.shape), model.embed_user(swapped, text.shape)
        silent = model.embed_user(torch.full((1, 6, 3), PAD), text.shape)
        one = model.embed_user(user[..., :1].expand(-1, -1, 3).masked_fill(torch.arange(3) > 0, PAD), text.shape)
        token = model.backbone.get_input_embeddings()(torch.tensor(1))
        logits_a = model(text, slots, mask, user).logits
        logits_b = model(text, slots, mask, swapped).logits
        logits_none = model(text, slots, mask, None).logits
    assert torch.equal(silent, torch.zeros_like(silent))  # all-PAD steps: no user input at all
    assert torch.equal(a[0, :2], silent[0, :2]) and torch.equal(a[0, 3:], silent[0, 3:])
    assert (a[0, 2] - b[0, 2]).abs().max() > 1e-4, "swapping two tokens within a step must change the embedding"
    expected = token * (1 + model.user_slot_gain[0]) + model.user_slot_bias[0] + model.user_stream  # 1, 2 empty
    torch.testing.assert_close(one[0, 2], expected)
    assert torch.equal(logits_a[:, :2], logits_none[:, :2]) and torch.equal(logits_a[:, :2], logits_b[:, :2])
    assert (logits_a[:, 2:] - logits_b[:, 2:]).abs().max() > 1e-4
    with pytest.raises(InputError, match="3 user slots"):
        model.embed_user(user[..., 0], text.shape)  # [B, S] for a U = 3 model
    with pytest.raises(InputError, match="user_slots_per_step"):
        make_slotted_model(0)


def _one_step(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` (each ``[DV]``) in the first slots of one step: slots ``[1, 1, K, DV]`` and mask ``[1, 1, K]``."""
    slots = torch.zeros(1, 1, K, DV)
    mask = torch.zeros(1, 1, K, dtype=torch.bool)
    for i, token in enumerate(tokens):
        slots[0, 0, i], mask[0, 0, i] = token, True
    return slots, mask


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_video_projector_binds_a_steps_slots_only_with_attention(layers):
    """Without slot attention a step's embedding is the sum of its slots' own embeddings (two objects' tokens mix
    additively); with it, what a slot contributes depends on the other slots of its step. Masked slots never count,
    and an empty step embeds to exactly zero."""
    torch.manual_seed(0)
    projector = VideoProjector(DV, 24, K, mlp_hidden=16, layers=layers).eval()
    for p in projector.parameters():  # no zero-initialised part may hide the interaction
        torch.nn.init.normal_(p, std=0.3)
    a, b, junk = torch.randn(3, DV)
    with torch.no_grad():
        both = projector(*_one_step([a, b]))
        alone_a = projector(*_one_step([a]))
        slots_b, mask_b = _one_step([a, b])
        mask_b[0, 0, 0] = False  # b alone, in its own slot
        alone_b = projector(slots_b, mask_b)
        additive_gap = (both - alone_a - alone_b).abs().max()
        slots, mask = _one_step([a, b])
        slots[0, 0, 2] = junk  # a masked slot's value changes nothing
        torch.testing.assert_close(projector(slots, mask), both)
        empty = projector(torch.randn(2, 3, K, DV), torch.zeros(2, 3, K, dtype=torch.bool))
    assert empty.abs().max() == 0
    if layers == 0:
        assert additive_gap < 1e-5
    else:
        assert additive_gap > 1e-2


def test_pad_weighting_changes_loss_as_specified():
    logits = torch.tensor([[[2.0, 0.0, 1.0, 0.0] + [0.0] * (V - 4), [0.0, 3.0, 0.0, 0.0] + [0.0] * (V - 4),
                            [0.0] * V]])  # fmt: skip
    text = torch.tensor([[0, PAD, 1]])  # targets: PAD (predicted by step 0), then word 1 (by step 1)
    log_p = torch.log_softmax(logits[0], dim=-1)
    ce_pad, ce_word = -log_p[0, PAD].item(), -log_p[1, 1].item()
    loss_half, stats = text_loss(logits, text, PAD, EPAD, LossWeights(pad=0.5))
    loss_one, _ = text_loss(logits, text, PAD, EPAD, LossWeights(pad=1.0))
    assert loss_half.item() == pytest.approx((0.5 * ce_pad + ce_word) / 1.5, rel=1e-6)
    assert loss_one.item() == pytest.approx((ce_pad + ce_word) / 2, rel=1e-6)
    assert stats["pad_fraction"].item() == pytest.approx(0.5)
    zero_pad, _ = text_loss(logits, text, PAD, EPAD, LossWeights(pad=0.0))
    assert zero_pad.item() == pytest.approx(ce_word, rel=1e-6)
    p_pad = log_p[0, PAD].exp().item()
    with_silence, _ = text_loss(logits, text, PAD, EPAD, LossWeights(pad=1.0, silence=2.0))
    bce = (-math.log(p_pad) - math.log(1 - log_p[1, PAD].exp().item())) / 2
    assert with_silence.item() == pytest.approx(loss_one.item() + 2.0 * bce, rel=1e-5)


def test_vocabulary_beyond_lm_rows_and_specials():
    """A pretrained LM whose rows end before the tokenizer's PAD / EPAD: those come from their own rows / head."""
    model = make_model(vocab_size=PAD)  # the LM has 10 rows, the text vocabulary 12
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        logits = model(text, slots, mask, user).logits
    assert logits.shape[-1] == V and torch.isfinite(logits).all()
    with pytest.raises(InputError, match="ids must be in"):
        model(text + V, slots, mask, user)


def test_lora_adds_adapters_only():
    model = make_model()
    apply_lora(model.backbone, LoraSettings(r=4, alpha=8.0))
    names = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
    assert names and all("q_proj" in n or "v_proj" in n for n in names)
    text, slots, mask, user = make_inputs()
    assert model(text, slots, mask, user).logits.shape == (2, 9, V)


def _swapped_bindings() -> tuple[torch.Tensor, torch.Tensor]:
    """Two one-step inputs ``[1, 1, 2, 4]`` whose one-hot features sum the same: (red triangle, blue circle) and (red
    circle, blue triangle) (colour one-hot in 0-1, shape in 2-3)."""

    def token(colour, shape):
        t = torch.zeros(4)
        t[colour], t[2 + shape] = 1.0, 1.0
        return t

    a = torch.stack([token(0, 0), token(1, 1)])[None, None]
    b = torch.stack([token(0, 1), token(1, 0)])[None, None]
    return a, b


def _assert_sparse_equals_dense(projector, dense_of) -> tuple[torch.Tensor, torch.Tensor]:
    """``projector`` on random slots (a third filled, one step empty) == ``dense_of(slots, mask)``, gradients too."""
    slots = torch.randn(2, 7, K, DV, requires_grad=True)
    mask = torch.rand(2, 7, K) > 0.6
    mask[0, 0] = False  # an empty step embeds to zero
    dense, sparse = dense_of(slots, mask), projector(slots, mask)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    assert sparse[0, 0].abs().max() == 0
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), slots)
    (grad_sparse,) = torch.autograd.grad(sparse.square().sum(), slots)
    torch.testing.assert_close(grad_sparse, grad_dense, rtol=1e-4, atol=1e-5)
    return slots, mask


def test_gated_projector_binds_what_a_sum_of_plain_features_cannot():
    """A step holding (red, triangle) + (blue, circle) and one holding (red, circle) + (blue, triangle) have the same
    sum of one-hot features; the gated projector embeds them apart (the products bind colour to shape), while a
    projector that is linear in the token (what a plain MLP learns first) cannot. A gate that stopped multiplying
    would make the two sums equal again."""
    from mmduplex.lm.projector import GatedMLP

    a, b = _swapped_bindings()
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    torch.manual_seed(0)
    gated = VideoProjector(4, 16, 2, mlp_hidden=16, gated=True)
    assert isinstance(gated.mlp, GatedMLP)
    gated.norm = torch.nn.Identity()  # the raw one-hot features (LayerNorm is per token, the same for a and b)
    with torch.no_grad():
        assert (gated(a, mask) - gated(b, mask)).abs().max() > 1e-3
        linear = torch.nn.Linear(4, 16)
        torch.testing.assert_close(linear(a[0, 0]).sum(0), linear(b[0, 0]).sum(0))
    with pytest.raises(InputError, match="projector_layers 0"):
        VideoProjector(4, 16, 2, layers=1, gated=True)


@pytest.mark.parametrize("gated", [False, True])
def test_projector_projects_only_filled_slots_and_sums_as_before(gated):
    """The projector runs its MLP on the filled slots only (most of a step's slots are empty); the step embedding is
    the masked sum over every slot's projection, as before, gradients included, in float32 and bfloat16."""
    torch.manual_seed(0)
    projector = VideoProjector(DV, 24, K, mlp_hidden=32, gated=gated)

    def dense_of(slots, mask):
        return ((projector.mlp(projector.norm(slots)) + projector.slot_embedding) * mask.unsqueeze(-1)).sum(dim=2)

    slots, mask = _assert_sparse_equals_dense(projector, dense_of)
    assert projector(slots, mask).dtype == torch.float32
    assert projector.to(torch.bfloat16)(slots, mask).dtype == torch.bfloat16


def test_per_slot_output_layers_keep_which_features_came_from_which_slot():
    """With ``slot_maps`` each slot has its own output layer: the step embedding is the masked sum of
    ``slot_maps[k](hidden(x_k)) + slot_embedding[k]`` (checked against that dense form, gradients included). Two
    tokens swapped between slots then embed apart, and so do (red triangle, blue circle) and (red circle, blue
    triangle) even where the token's features are linear (a plain projector's sum cannot tell either apart)."""
    torch.manual_seed(0)
    projector = VideoProjector(DV, 24, K, mlp_hidden=32, slot_maps=True)

    def dense_of(slots, mask):
        hidden = projector.mlp(projector.norm(slots))  # [B, S, K, W]
        per_slot = torch.stack([projector.slot_maps[k](hidden[:, :, k]) for k in range(K)], dim=2)
        return ((per_slot + projector.slot_embedding) * mask.unsqueeze(-1)).sum(dim=2)

    _assert_sparse_equals_dense(projector, dense_of)
    a, b = _swapped_bindings()
    swapped = a.flip(2)
    two = torch.ones(1, 1, 2, dtype=torch.bool)
    for slot_maps in (True, False):
        torch.manual_seed(0)
        projector = VideoProjector(4, 16, 2, mlp_hidden=16, slot_maps=slot_maps)
        projector.norm = torch.nn.Identity()
        projector.mlp[1] = torch.nn.Identity()  # features linear in the token: only the slot maps can bind
        with torch.no_grad():
            gaps = [(projector(a, two) - projector(other, two)).abs().max() for other in (b, swapped)]
        assert all(g > 1e-3 for g in gaps) if slot_maps else all(g < 1e-5 for g in gaps), (slot_maps, gaps)
    with pytest.raises(InputError, match="per-slot output layers"):
        VideoProjector(4, 16, 2, layers=1, slot_maps=True)
