"""Tests of the bounded sink + sliding-window KV cache with re-rotated (contiguous) positions."""

from __future__ import annotations

import copy

import pytest
import torch
from bounded_reference import bounded_hidden
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from mmduplex.errors import InputError
from mmduplex.lm.kvcache import SinkWindowCache, find_rotary, rotate_positions

VOCAB = 97
_TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
_FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
    "llama-yarn": (
        LlamaConfig,
        LlamaForCausalLM,
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            }
        },
    ),
    "llama-dynamic": (
        LlamaConfig,
        LlamaForCausalLM,
        {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
    ),
    "llama-linear": (
        LlamaConfig,
        LlamaForCausalLM,
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}},
    ),
}


def tiny_lm(family: str = "llama", num_layers: int = 2, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-initialised tiny causal LM of the given family (CPU, eval mode)."""
    config_cls, model_cls, extra = _FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**_TINY, num_hidden_layers=num_layers, **extra))
    return model.to(dtype).eval()


@torch.no_grad()
def layer0(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-0 keys/values of a fresh forward over ``ids`` at positions 0..T-1."""
    cache = model(input_ids=ids, use_cache=True).cache
    return cache.layers[0].keys, cache.layers[0].values


def test_rotation_helper_inverts_and_composes():
    rotary = find_rotary(tiny_lm("llama-yarn"))  # attention_scaling != 1 must not leak into the shift
    assert rotary.attention_scaling != 1.0
    keys = torch.randn(2, 2, 9, 16, dtype=torch.float64)
    back = rotate_positions(rotate_positions(keys, 7, rotary), -7, rotary)
    torch.testing.assert_close(back, keys, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        rotate_positions(rotate_positions(keys, 5, rotary), 11, rotary),
        rotate_positions(keys, 16, rotary),
        rtol=0,
        atol=1e-5,
    )
    assert torch.equal(rotate_positions(keys, 0, rotary), keys)
    norms = rotate_positions(keys, 123, rotary).norm(dim=-1)  # a rotation keeps every key's norm
    torch.testing.assert_close(norms, keys.norm(dim=-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", sorted(_FAMILIES))
@torch.no_grad()
def test_eviction_equals_recompute_at_contiguous_positions(family):
    model = tiny_lm(family)
    ids = torch.randint(0, VOCAB, (2, 40))
    sink, dropped = 4, 6
    kept = torch.cat((ids[:, :sink], ids[:, sink + dropped :]), dim=1)  # [2, 34]
    want_k, want_v = layer0(model, kept)

    # The helper on the full cache: drop [sink, sink + dropped), move the rest back by `dropped`.
    full_k, full_v = layer0(model, ids)
    rotary = find_rotary(model)
    got_k = torch.cat((full_k[:, :, :sink], rotate_positions(full_k[:, :, sink + dropped :], -dropped, rotary)), 2)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=1e-5)

    # The cache class does the same when one call overflows it.
    cache = SinkWindowCache(model, sink=sink, window=40 - sink - dropped)
    model(input_ids=ids, cache=cache, use_cache=True)
    assert cache.length == cache.max_length == 34 and cache.total_seen == 40
    torch.testing.assert_close(cache.current_keys(0), want_k, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, want_v, rtol=0, atol=1e-6)


@torch.no_grad()
def test_long_stream_stays_bounded_and_exact():
    model = tiny_lm("qwen2")
    sink, window, steps = 4, 32, 300
    ids = torch.randint(0, VOCAB, (1, steps))
    cache = SinkWindowCache(model, sink=sink, window=window)
    for t in range(steps):
        position_ids = cache.next_position_ids(1)
        assert position_ids.item() == min(t, sink + window)
        model(input_ids=ids[:, t : t + 1], position_ids=position_ids, cache=cache, use_cache=True)
        assert cache.length == min(t + 1, sink + window)
    assert cache.total_seen == steps
    assert all(layer.keys.shape[-2] == sink + window for layer in cache.layers)
    # ~window re-rotations per key accumulate no visible drift: layer 0 equals a fresh run on the kept tokens.
    want_k, want_v = layer0(model, torch.cat((ids[:, :sink], ids[:, -window:]), dim=1))
    torch.testing.assert_close(cache.current_keys(0), want_k, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, want_v, rtol=0, atol=1e-6)


@torch.no_grad()
def test_one_layer_stream_equals_forward_over_sink_and_window():
    """With one layer, a step's logits depend only on the kept tokens, so streaming == a fresh forward over them."""
    model = tiny_lm("llama", num_layers=1)
    sink, window, steps = 2, 8, 40
    ids = torch.randint(0, VOCAB, (2, steps))
    cache = SinkWindowCache(model, sink=sink, window=window)
    for t in range(steps):
        cached = cache.length
        assert cached == min(t, sink + window)
        start = t - (cached - min(cached, sink))  # first window token still cached
        context = torch.cat((ids[:, : min(cached, sink)], ids[:, start : t + 1]), dim=1)  # [2, cached + 1]
        logits = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1]
        want = model(input_ids=context).logits[:, -1]
        torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(_FAMILIES))
@torch.no_grad()
def test_multi_layer_stream_past_the_window_equals_bounded_reference(family):
    """With several layers a kept entry's keys come from hidden states computed in its own step's view, so no plain
    forward over the kept tokens matches; a cache-free recomputation of exactly that does (tests/bounded_reference.py),
    at every step, before and after the evictions."""
    model = tiny_lm(family)
    sink, window, steps = 3, 7, 30
    ids = torch.randint(0, VOCAB, (2, steps))
    cache = SinkWindowCache(model, sink=sink, window=window)
    stepped = [
        model(input_ids=ids[:, t : t + 1], position_ids=cache.next_position_ids(2), cache=cache).logits
        for t in range(steps)
    ]
    want = model.lm_head(bounded_hidden(model.model, model.model.embed_tokens(ids), sink, window))  # [2, S, V]
    assert cache.total_seen == steps and cache.length == sink + window
    torch.testing.assert_close(torch.cat(stepped, dim=1), want, rtol=0, atol=1e-5)


@torch.no_grad()
def test_bfloat16_stream_does_not_drift():
    """Keys are re-rotated from the as-computed keys, so a long bf16 stream keeps one rounding, not one per step."""
    model = tiny_lm("llama", num_layers=1, dtype=torch.bfloat16)
    sink, window, steps = 4, 64, 200
    ids = torch.randint(0, VOCAB, (1, steps))
    cache = SinkWindowCache(model, sink=sink, window=window)
    for t in range(steps):
        model(input_ids=ids[:, t : t + 1], cache=cache)
    want, _ = layer0(model, torch.cat((ids[:, :sink], ids[:, -window:]), dim=1))
    error = (cache.current_keys(0).float() - want.float()).abs().max() / want.float().abs().max()
    assert error < 2e-2, f"relative drift {error:.3g} after {steps} bf16 steps"


@torch.no_grad()
def test_short_stream_equals_full_forward():
    model = tiny_lm("llama")
    ids = torch.randint(0, VOCAB, (2, 20))
    cache = SinkWindowCache(model, sink=4, window=32)
    stepped = [
        model(input_ids=ids[:, t : t + 1], position_ids=cache.next_position_ids(2), cache=cache).logits
        for t in range(ids.shape[1])
    ]
    torch.testing.assert_close(torch.cat(stepped, dim=1), model(input_ids=ids).logits, rtol=0, atol=1e-5)
    plain = DynamicCache()
    model(input_ids=ids, cache=plain)
    torch.testing.assert_close(cache.current_keys(1), plain.layers[1].keys, rtol=0, atol=1e-5)


@torch.no_grad()
def test_copy_is_independent_and_continues_identically():
    model = tiny_lm("llama")
    ids = torch.randint(0, VOCAB, (1, 30))
    cache = SinkWindowCache(model, sink=2, window=10)
    model(input_ids=ids[:, :20], cache=cache)
    snapshot = [layer.keys.clone() for layer in cache.layers]
    twin, deep = cache.copy(), copy.deepcopy(cache)
    assert deep.rotary is cache.rotary
    for t in range(20, 30):
        a = model(input_ids=ids[:, t : t + 1], cache=twin).logits
        b = model(input_ids=ids[:, t : t + 1], cache=deep).logits
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(layer.keys, keys) for layer, keys in zip(cache.layers, snapshot, strict=True))
    assert cache.total_seen == 20 and twin.total_seen == 30


def test_refuses_models_without_rotary_positions():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(InputError, match="'gpt2' is not a supported rotary-position LM"):
        SinkWindowCache(gpt2, sink=4, window=32)


def test_refuses_bad_sizes_and_a_too_short_model_sliding_window():
    model = tiny_lm("llama")
    with pytest.raises(InputError, match="window >= 1"):
        SinkWindowCache(model, sink=4, window=0)
    mistral = MistralForCausalLM(MistralConfig(**_TINY, num_hidden_layers=1, sliding_window=16))
    with pytest.raises(InputError, match="sliding-window attention"):
        SinkWindowCache(mistral, sink=4, window=32)
    with pytest.raises(InputError, match="rope_type 'dynamic' changes its frequencies beyond 512 positions"):
        SinkWindowCache(tiny_lm("llama-dynamic"), sink=4, window=1024)
