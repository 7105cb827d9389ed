"""An independent reference for a sink + sliding-window stream: what the bounded cache must compute, without it.

A step of a stream on :class:`mmduplex.lm.kvcache.SinkWindowCache` attends, in every layer, to the entries the cache
keeps (the first ``sink`` steps and the last ``window`` steps before it) at contiguous positions ``0..L - 1``, its
own query at ``L``. Each kept entry's key and value come from that layer's input *as it was computed at the entry's
own step* (in that step's view, which may have held entries evicted since). This module recomputes exactly that with
the backbone's decoder layers as black boxes: per step and layer, the layer runs on the recorded inputs of the kept
steps followed by the new input, at positions ``0..L``, and only the last position is kept (the last row of a causal
mask sees everything, so no mask is needed). No cache, no key re-rotation, no eviction code is involved, so a
streaming result that equals it shows that the cache evicts the right entries and re-positions their keys right.
"""

from __future__ import annotations

import torch

from mmduplex.lm.model import DuplexLM


def kept_steps(t: int, sink: int, window: int) -> list[int]:
    """The earlier steps a cache of ``sink + window`` positions holds when step ``t`` runs."""
    if t <= sink + window:
        return list(range(t))
    return list(range(sink)) + list(range(t - window, t))


@torch.no_grad()
def bounded_hidden(decoder: torch.nn.Module, embeds: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Final hidden states ``[B, S, H]`` (after the decoder's norm) of streaming ``embeds`` (``[B, S, H]``) step by
    step through ``decoder`` (an HF base model: ``layers``, ``rotary_emb``, ``norm``) on a bounded sink + window
    cache, recomputed without a cache (see the module docstring)."""
    layer_inputs: list[list[torch.Tensor]] = [[] for _ in decoder.layers]  # [layer][step] -> [B, 1, H]
    hidden = []
    for t in range(embeds.shape[1]):
        kept = kept_steps(t, sink, window)
        positions = torch.arange(len(kept) + 1)[None]  # [1, L + 1]: contiguous
        x = embeds[:, t : t + 1]  # [B, 1, H]
        for inputs, layer in zip(layer_inputs, decoder.layers, strict=True):
            inputs.append(x)
            sequence = torch.cat([inputs[k] for k in kept] + [x], dim=1)  # [B, L + 1, H]
            rotary = decoder.rotary_emb(sequence, position_ids=positions)
            out = layer(sequence, attention_mask=None, position_ids=positions, position_embeddings=rotary)
            x = (out[0] if isinstance(out, tuple) else out)[:, -1:]  # [B, 1, H]
        hidden.append(decoder.norm(x))
    return torch.cat(hidden, dim=1)  # [B, S, H]


@torch.no_grad()
def bounded_reference(
    model: DuplexLM, embeds: torch.Tensor, sink: int, window: int, user_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits ``[S, V]`` of streaming ``embeds`` (``[1, S, H]``, :meth:`DuplexLM.embed`) step by step on a bounded
    sink + window cache, recomputed without a cache (see the module docstring). With a copy head, each step's bonus
    points at the user stream's steps the cache keeps (the first ``sink``, the last ``window``, the step itself);
    ``user_ids`` (``[1, S]`` or ``[1, S, U]``) is the stream ``embeds`` was made with."""
    dtype = next(model.backbone.parameters()).dtype
    hidden = bounded_hidden(model.backbone.get_decoder(), embeds.to(dtype), sink, window)  # [1, S, H]
    logits = model.head(hidden)  # [1, S, V]
    if model.copy_head is not None:
        shape = tuple(embeds.shape[:2])
        user = model.embed_user(user_ids, shape) if user_ids is not None else None
        memory = model.copy_head.step_memory(user, user_ids, shape, model._copy_tokens(user_ids))  # [1, S, ...]
        kept = [[*kept_steps(t, sink, window), t] for t in range(shape[1])]
        step = [
            model.copy_head(hidden[:, t : t + 1], [m[:, k] for m in memory], len(k) - 1, logits[:, t : t + 1])
            for t, k in enumerate(kept)
        ]  # fmt: skip
        logits = torch.cat(step, dim=1)
    return logits[0]


@torch.no_grad()
def stream_steps(model: DuplexLM, cache, text, slots, mask, user) -> torch.Tensor:
    """Logits ``[B, S, V]`` of feeding ``text [B, S]``, ``slots [B, S, K, Dv]``, ``mask [B, S, K]`` and ``user [B, S,
    U]`` through ``model`` one step at a time on ``cache`` (the streaming path under test)."""
    out = []
    for s in range(text.shape[1]):
        step = (text[:, s : s + 1], slots[:, s : s + 1], mask[:, s : s + 1], user[:, s : s + 1])
        out.append(model(*step, past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


def random_steps(batch: int, steps: int, slots: int, token_dim: int, user_slots: int, vocab: int, pad: int, seed: int,
                 fill: float = 0.5):  # fmt: skip
    """Random stream inputs for a streaming test: ``text [B, S]``, ``slots [B, S, K, Dv]``, ``mask [B, S, K]`` (a
    slot filled with probability ``fill``) and ``user [B, S, U]`` (half typed); the first two steps hold no video
    and no typed text, so a head that reads either adds nothing there."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, vocab, (batch, steps), generator=g)
    video = torch.randn(batch, steps, slots, token_dim, generator=g)
    mask = torch.rand(batch, steps, slots, generator=g) < fill
    typed = torch.rand(batch, steps, user_slots, generator=g) > 0.5
    user = torch.where(typed, torch.randint(0, pad, (batch, steps, user_slots), generator=g), pad)
    mask[:, :2], user[:, :2] = False, pad
    return text, video, mask, user
