"""Slot readout: an attention from the model's text state into the separate video slots of the steps it holds.

The input stream sums a step's projected video slots into one embedding (Moshi-style). A sum of per-object vectors
loses which features belong together: from ``f(blue triangle) + f(yellow circle)`` the LM must untangle which colour
goes with which shape, and the demo's models name the acting shape's colour with the other shape's shape
(notebooks/LOG.md#2026-12-06-third-session). The readout keeps every projected slot apart and lets the state that is
about to speak look them up one by one::

    k_sj = W_k LN(p_sj),  v_sj = W_v LN(p_sj)     p_sj: step s's projected slot j (the vectors the step sums)
    q_t = W_q h_t                                 h_t: the LM's final hidden state at step t
    a_t,sj = softmax_{s <= t, slot j filled} (q_t . k_sj / sqrt(d) + b[min(t - s, A - 1)])    per head
    h'_t = h_t + W_o sum_sj a_t,sj v_sj

``b`` is a learned bias per head and step distance (``A`` buckets, the last one for everything further back): how far
back to look is learned, not fixed. ``W_o`` starts at zero, so a new readout leaves the model's output unchanged. A
step with no filled slot before it reads nothing (``0``). The text head (and a copy head) then read ``h'_t``.

Streaming: each step's keys, values and slot mask are kept beside the bounded KV cache
(:class:`~mmduplex.lm.kvcache.SinkWindowCache`'s side tensors) and evicted with its entries; step distances are
counted over the steps the cache holds, as the LM's own positions are. So the one-step path equals the teacher-forced
forward, and memory stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmduplex.errors import InputError
from mmduplex.lm.kvcache import extend_side_memory

__all__ = ["SlotReadout", "extend_readout_memory"]

_SIDE = ("readout_keys", "readout_values", "readout_mask")  # the cache's side tensors, in the memory's order


class SlotReadout(nn.Module):
    """The slot readout (see the module docstring).

    Args:
        hidden: ``H``, the LM width (and the projected slots' width).
        dim: ``d``, each head's query / key / value width.
        heads: attention heads.
        max_age: ``A``, step-distance buckets of the learned bias (the last one holds every longer distance).
    """

    def __init__(self, hidden: int, dim: int, heads: int = 4, max_age: int = 64) -> None:
        super().__init__()
        if dim < 1 or heads < 1 or max_age < 1:
            raise InputError("readout", f"need dim, heads and max_age >= 1; got {dim}, {heads}, {max_age}")
        self.dim, self.heads, self.max_age = int(dim), int(heads), int(max_age)
        self.norm = nn.LayerNorm(hidden)
        self.key = nn.Linear(hidden, heads * dim, bias=False)
        self.value = nn.Linear(hidden, heads * dim, bias=False)
        self.query = nn.Linear(hidden, heads * dim, bias=False)
        self.age_bias = nn.Parameter(torch.zeros(heads, max_age))  # [heads, A]
        self.out = nn.Linear(heads * dim, hidden, bias=False)
        nn.init.zeros_(self.out.weight)

    def step_memory(self, slots: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This call's per-step memory from the projected slots ``[B, S, K, H]`` and their mask ``[B, S, K]``: keys
        and values ``[B, S, K, heads * d]`` and the mask (empty slots hold zeros)."""
        if slots.dim() != 4 or mask.shape != slots.shape[:-1]:
            raise InputError("readout slots", f"expected [B, S, K, H] and [B, S, K]; got {tuple(slots.shape)}, "
                             f"{tuple(mask.shape)}")  # fmt: skip
        x = self.norm(slots.to(self.key.weight.dtype))
        keep = mask.unsqueeze(-1).to(x.dtype)
        return self.key(x) * keep, self.value(x) * keep, mask.bool()

    def forward(self, hidden: torch.Tensor, memory: tuple[torch.Tensor, ...], first: int) -> torch.Tensor:
        """``hidden [B, T, H]`` with the readout added; query ``t`` is memory step ``first + t``.

        Args:
            hidden: final hidden states.
            memory: :meth:`step_memory`'s tensors over the memory's ``P`` steps (the cached ones, then this call's).
            first: the memory index of the first query.
        """
        keys, values, mask = memory
        b, t, _ = hidden.shape
        p, k = keys.shape[1], keys.shape[2]
        if first + t > p:
            raise InputError("readout memory", f"queries reach step {first + t - 1} of a memory of {p}")
        h, d = self.heads, self.dim
        age = torch.arange(first, first + t, device=keys.device)[:, None] - torch.arange(p, device=keys.device)[None]
        allowed = (age >= 0)[None, :, :, None] & mask[:, None]  # [B, T, P, K]
        bias = self.age_bias[:, age.clamp(0, self.max_age - 1)]  # [heads, T, P]
        x = hidden.to(self.query.weight.dtype)
        q = self.query(x).reshape(b, t, h, d)  # [B, T, heads, d]
        keys = keys.reshape(b, p * k, h, d)
        scores = torch.einsum("bthd,bnhd->bhtn", q, keys).float() / math.sqrt(d)  # [B, heads, T, P * K]
        scores = scores + bias.repeat_interleave(k, dim=-1)[None]  # every slot of a step: its step's distance
        allowed = allowed.reshape(b, 1, t, p * k)
        attn = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
        attn = attn * allowed.any(dim=-1, keepdim=True)  # nothing filled yet: read nothing
        read = torch.einsum("bhtn,bnhd->bthd", attn.to(values.dtype), values.reshape(b, p * k, h, d))
        return hidden + self.out(read.reshape(b, t, h * d)).to(hidden.dtype)


def extend_readout_memory(cache, memory: tuple[torch.Tensor, ...], start: int) -> tuple[torch.Tensor, ...]:
    """The readout memory with this call's steps appended (:meth:`SlotReadout.step_memory`'s tensors), kept on
    ``cache``'s side tensors (:func:`~mmduplex.lm.kvcache.extend_side_memory`; ``cache`` ``None``: no memory)."""
    return extend_side_memory(cache, _SIDE, memory, start, "readout")
