"""Copy head: a pointer from the model's state back into what the user typed (pointer-generator networks).

A multiple-choice prompt types one ``A. option`` line per step; the reply names the option, then its letter. Saying the
letter is a content look-up (which line holds the words just said?) that neither the demo's 4-layer LM trained from
scratch nor SmolLM2 + LoRA learns over a user stream whose line tokens are summed into one step: the letter stays at
chance while the named option is right (notebooks/LOG.md#2026-12-07-lvb-batched). The copy head makes the look-up one
attention over the user stream's steps, whose result raises the logits of the words typed there::

    k_s = W_k LN(u_s)                      u_s: the user stream's embedding at step s (steps where the user typed)
    q_t = W_q h_t                          h_t: the LM's final hidden state at step t
    a_ts = softmax_{s <= t} (q_t . k_s / sqrt(d))
    logits_t[v] += softplus(w_g . h_t + b_g) * sum_s a_ts * #{slots u of step s : target(user_su) = target(v)}

``target`` (:func:`copy_targets`) maps a token to the first token of the vocabulary whose text is the same word once
spaces and surrounding punctuation are stripped (``A.``, `` A``, ``(A)`` and ``A`` are one), so typing ``A.`` lends
weight to saying ``A``; tokens that are only punctuation or spaces, PAD and EPAD take no part. The gate lets the
model use the pointer only where copying is right (a letter after an option's name), and a step with no typed text
before it gets no bonus.

Streaming: each step's key and targets are kept beside the bounded KV cache (:class:`~mmduplex.lm.kvcache
.SinkWindowCache`'s side tensors), evicted with the cache's entries, so a step attends to the same user steps in
both: the one-step path equals the teacher-forced forward, and memory stays bounded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmduplex.errors import InputError

__all__ = ["CopyHead", "copy_targets", "extend_memory"]

_STRIP = " \t\n()[]{}.,:;!?\"'"
_SIDE_KEYS, _SIDE_TARGETS = "copy_keys", "copy_targets"


def copy_targets(tokenizer) -> torch.Tensor:
    """``[V]`` long: each token's copy target (the first id with the same stripped word), ``V`` for none.

    Args:
        tokenizer: a :class:`~mmduplex.lm.text.TextTokenizer` (``vocab_size``, ``pad_id``, ``epad_id``,
            ``decode``).
    """
    vocab = int(tokenizer.vocab_size)
    targets = torch.full((vocab,), vocab, dtype=torch.long)  # [V]
    first: dict[str, int] = {}
    for token in range(vocab):
        if token in (tokenizer.pad_id, tokenizer.epad_id):
            continue
        word = tokenizer.decode([token]).strip(_STRIP)
        if word:
            targets[token] = first.setdefault(word, token)
    return targets


class CopyHead(nn.Module):
    """The copy bonus ``[B, T, V]`` added to the text logits (see the module docstring).

    Args:
        hidden: ``H``, the LM width.
        dim: ``d``, the query / key width.
        vocab_size: ``V``.
        user_slots: ``U``, user tokens per step.
    """

    def __init__(self, hidden: int, dim: int, vocab_size: int, user_slots: int) -> None:
        super().__init__()
        if dim < 1:
            raise InputError("copy_dim", f"must be >= 1, got {dim}")
        self.dim, self.vocab_size, self.user_slots = int(dim), int(vocab_size), int(user_slots)
        self.key_norm = nn.LayerNorm(hidden)
        self.key = nn.Linear(hidden, dim, bias=False)
        self.query = nn.Linear(hidden, dim, bias=False)
        self.gate = nn.Linear(hidden, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        # every token's copy target (set from the text tokenizer with set_targets; saved in the state dict)
        self.register_buffer("targets", torch.full((vocab_size,), vocab_size, dtype=torch.long))  # [V]

    def set_targets(self, targets: torch.Tensor) -> None:
        """Set the ``[V]`` copy targets (:func:`copy_targets`)."""
        if targets.shape != (self.vocab_size,):
            raise InputError("copy targets", f"expected [{self.vocab_size}], got {tuple(targets.shape)}")
        self.targets.copy_(targets)

    def step_memory(self, user_embed: torch.Tensor | None, user_ids: torch.Tensor | None, shape) -> tuple:
        """This call's per-step keys ``[B, S, d]`` and targets ``[B, S, U]`` (``V``: nothing to copy).

        Args:
            user_embed: ``[B, S, H]`` the user stream's embedding (:meth:`DuplexLM.embed_user`), or ``None``.
            user_ids: ``[B, S]`` or ``[B, S, U]`` the user stream's ids, or ``None``.
            shape: ``(B, S)``.
        """
        b, s = shape
        if user_ids is None or user_embed is None:
            keys = self.key.weight.new_zeros(b, s, self.dim)
            return keys, torch.full((b, s, self.user_slots), self.vocab_size, dtype=torch.long, device=keys.device)
        ids = user_ids if user_ids.dim() == 3 else user_ids.unsqueeze(-1)  # [B, S, U]
        keys = self.key(self.key_norm(user_embed.to(self.key.weight.dtype)))  # [B, S, d]
        return keys, self.targets[ids]  # [B, S, d], [B, S, U]

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, first: int) -> torch.Tensor:
        """The bonus ``[B, T, V]`` (float32) for ``T`` query steps.

        Args:
            hidden: ``[B, T, H]`` final hidden states; query ``t`` is memory step ``first + t``.
            keys: ``[B, P, d]`` keys of the memory's steps (the cached ones, then this call's).
            targets: ``[B, P, U]`` their typed tokens' copy targets (``V``: none).
            first: the memory index of the first query.
        """
        b, t, _ = hidden.shape
        p = keys.shape[1]
        if first + t > p:
            raise InputError("copy memory", f"queries reach step {first + t - 1} of a memory of {p}")
        typed = targets < self.vocab_size  # [B, P, U]
        has_text = typed.any(dim=-1)  # [B, P]
        seen = torch.arange(p, device=keys.device)[None] <= torch.arange(first, first + t, device=keys.device)[:, None]
        allowed = seen[None] & has_text[:, None]  # [B, T, P]
        x = hidden.to(self.query.weight.dtype)
        scores = (self.query(x) @ keys.transpose(1, 2)).float() / math.sqrt(self.dim)  # [B, T, P]
        attn = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)  # no NaN rows
        attn = torch.where(allowed.any(dim=-1, keepdim=True), attn, torch.zeros_like(attn))  # no typed step: 0
        weights = attn.unsqueeze(-1) * typed[:, None].float()  # [B, T, P, U]
        index = targets[:, None].expand(b, t, -1, -1).reshape(b, t, -1)  # [B, T, P * U]
        per_target = attn.new_zeros(b, t, self.vocab_size + 1).scatter_add_(2, index, weights.reshape(b, t, -1))
        per_target[..., self.vocab_size] = 0.0  # the "none" column
        bonus = per_target.gather(2, self.targets.expand(b, t, -1))  # [B, T, V]
        gate = F.softplus(self.gate(x).float())  # [B, T, 1]
        return gate * bonus


def extend_memory(cache, keys: torch.Tensor, targets: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy memory with this call's steps appended (``[B, P, d]``, ``[B, P, U]``), kept on ``cache``'s side tensors.

    Args:
        cache: the KV cache of the call (a :class:`~mmduplex.lm.kvcache.SinkWindowCache`), or ``None`` (no memory).
        keys: ``[B, S, d]`` this call's keys.
        targets: ``[B, S, U]`` this call's copy targets.
        start: cached positions before this call (the memory must hold as many).
    """
    if cache is None:
        return keys, targets
    if not hasattr(cache, "extend_side"):
        raise InputError("past_key_values", f"the copy head streams on a SinkWindowCache, got {type(cache).__name__}")
    held = cache.side.get(_SIDE_KEYS)
    if (0 if held is None else held.shape[1]) != start:
        raise InputError(
            "past_key_values",
            f"the copy memory holds {0 if held is None else held.shape[1]} steps, the cache {start}: "
            "a cache filled by a model without the copy head, or cropped",
        )
    return cache.extend_side(_SIDE_KEYS, keys), cache.extend_side(_SIDE_TARGETS, targets)
