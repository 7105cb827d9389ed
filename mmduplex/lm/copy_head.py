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

That is the ``add`` mode. An additive bonus is not scale-free: it works where the letters' logits sit a few apart (a
from-scratch LM) and not where they are far apart (a pretrained LM's; notebooks/LOG.md#2026-12-07-copy-head). The
``mix`` mode is a pointer-generator mixture in probability space, whatever the logits' scale::

    lambda_t = sigmoid(w_g . h_t + b_g)                      (0 before the first typed step)
    b_tsu = softmax_{typed u of step s} (r_t . W_w e_su / sqrt(d))     e_su: the LM's embedding of slot u's token
    w_tc = sum_{s, u : target(user_su) = c} a_ts * b_tsu               sums to 1 over c
    p_t(v) = p_gen,t(v) * ((1 - lambda_t) + lambda_t * w_t,target(v) / p_gen,t(class target(v)))

(``r_t = W_r h_t``: which word of the step, e.g. an option line's letter rather than its colour). The copy mass of a
word goes to its surface forms (``A``, `` A``) in the LM's own proportions, and the output sums to 1; the model returns
``log p_t`` as its logits. Only the typed words' classes are touched (a sparse gather and scatter over their members,
not a dense ``[B, T, V]`` bonus). ``b_g`` starts at 0 (``lambda = 1/2``), which keeps the ranking of every word not
typed.

The mixture's gradient to the pointer is proportional to ``lambda``: a gate that shuts early (most steps after a
question are commentary, where copying is wrong) leaves the pointer untrained, as SmolLM2's did
(notebooks/LOG.md#2026-12-07-copy-mix). So in training the ``mix`` head can be supervised (:meth:`CopyHead.forward`
with ``labels``; ``copy_loss_weight`` in :class:`~mmduplex.train.duplex_module.DuplexModule`), as pointer networks
with a supervised switch are::

    present_t = the target word's class is typed at a step the query may attend to
    loss = mean_{t : present_t} -log w_t,target(y_t)  +  mean_{t : a typed step} BCE(lambda_t, present_t)

which trains the pointer whatever the gate, and opens the gate where the word to say was typed.

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
from mmduplex.lm.kvcache import extend_side_memory

__all__ = ["COPY_MODES", "CopyHead", "copy_targets", "extend_memory"]

COPY_MODES = ("add", "mix")

_STRIP = " \t\n()[]{}.,:;!?\"'\ufffd"  # \ufffd: a byte-level BPE's token that is part of a character
_SIDE = ("copy_keys", "copy_targets", "copy_word_keys")  # the cache's side tensors, in the memory's order


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
    """The copy head: the text logits with the pointer's words raised (see the module docstring).

    Args:
        hidden: ``H``, the LM width.
        dim: ``d``, the query / key width.
        vocab_size: ``V``.
        user_slots: ``U``, user tokens per step.
        mode: ``"add"`` (a gated bonus on the logits) or ``"mix"`` (a pointer-generator mixture of probabilities).
    """

    def __init__(self, hidden: int, dim: int, vocab_size: int, user_slots: int, mode: str = "add") -> None:
        super().__init__()
        if dim < 1:
            raise InputError("copy_dim", f"must be >= 1, got {dim}")
        if mode not in COPY_MODES:
            raise InputError("copy_mode", f"must be one of {COPY_MODES}, got {mode!r}")
        self.dim, self.vocab_size, self.user_slots, self.mode = int(dim), int(vocab_size), int(user_slots), mode
        self.key_norm = nn.LayerNorm(hidden)
        self.key = nn.Linear(hidden, dim, bias=False)
        self.query = nn.Linear(hidden, dim, bias=False)
        self.gate = nn.Linear(hidden, 1)
        if mode == "mix":  # which typed word of a step
            self.word_key = nn.Linear(hidden, dim, bias=False)
            self.word_query = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        # every token's copy target (set from the text tokenizer with set_targets; saved in the state dict)
        self.register_buffer("targets", torch.full((vocab_size,), vocab_size, dtype=torch.long))  # [V]
        self._members: tuple[tuple, tuple] | None = None  # (the targets' version, members()): rebuilt when they change

    def set_targets(self, targets: torch.Tensor) -> None:
        """Set the ``[V]`` copy targets (:func:`copy_targets`)."""
        if targets.shape != (self.vocab_size,):
            raise InputError("copy targets", f"expected [{self.vocab_size}], got {tuple(targets.shape)}")
        self.targets.copy_(targets)

    def members(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tokens of each copy target, as a ragged table (cached): the tokens that have one, sorted by it
        (``[N]``), and each id's first row and count in it (``[V + 1]`` each)."""
        version = (self.targets.data_ptr(), self.targets._version, self.targets.device)
        if self._members is None or self._members[0] != version:
            v = self.vocab_size
            tokens = torch.nonzero(self.targets < v).squeeze(-1)  # [N]
            tokens = tokens[torch.argsort(self.targets[tokens], stable=True)]
            counts = torch.bincount(self.targets[tokens], minlength=v + 1)  # [V + 1]
            self._members = (version, (tokens, torch.cumsum(counts, 0) - counts, counts))
        return self._members[1]

    def step_memory(self, user_embed, user_ids, shape, user_tokens=None) -> tuple[torch.Tensor, ...]:
        """This call's per-step memory: keys ``[B, S, d]``, targets ``[B, S, U]`` (``V``: nothing to copy) and, in
        ``mix`` mode, the typed words' keys ``[B, S, U, d]``.

        Args:
            user_embed: ``[B, S, H]`` the user stream's embedding (:meth:`DuplexLM.embed_user`), or ``None``.
            user_ids: ``[B, S]`` or ``[B, S, U]`` the user stream's ids, or ``None``.
            shape: ``(B, S)``.
            user_tokens: ``[B, S, U, H]`` the LM's embeddings of the user slots' tokens (``mix`` mode).
        """
        b, s = shape
        if user_ids is None or user_embed is None:
            keys = self.key.weight.new_zeros(b, s, self.dim)
            targets = torch.full((b, s, self.user_slots), self.vocab_size, dtype=torch.long, device=keys.device)
            if self.mode == "add":
                return keys, targets
            return keys, targets, keys.new_zeros(b, s, self.user_slots, self.dim)
        ids = user_ids if user_ids.dim() == 3 else user_ids.unsqueeze(-1)  # [B, S, U]
        keys = self.key(self.key_norm(user_embed.to(self.key.weight.dtype)))  # [B, S, d]
        if self.mode == "add":
            return keys, self.targets[ids]  # [B, S, d], [B, S, U]
        if user_tokens is None or user_tokens.shape[:3] != ids.shape:
            raise InputError("user_tokens", f"a mix copy head needs slot embeddings for ids {tuple(ids.shape)}")
        return keys, self.targets[ids], self.word_key(user_tokens.to(self.word_key.weight.dtype))  # [B, S, U, d]

    def forward(
        self,
        hidden: torch.Tensor,
        memory: tuple[torch.Tensor, ...],
        first: int,
        logits: torch.Tensor,
        labels: torch.Tensor | None = None,
    ):
        """The text logits ``[B, T, V]`` (float32) of ``T`` query steps with the copy head applied.

        Args:
            hidden: ``[B, T, H]`` final hidden states; query ``t`` is memory step ``first + t``.
            memory: :meth:`step_memory`'s tensors over the memory's ``P`` steps (the cached ones, then this call's).
            first: the memory index of the first query.
            logits: ``[B, T, V]`` the LM's own logits at those steps.
            labels: ``[B, T]`` the token each query should say (``mix`` only): also return the head's supervision.

        Returns:
            ``add``: ``logits`` plus the gated bonus; ``mix``: the mixture's log-probabilities; with ``labels``,
            ``(those, the supervision loss)`` (a scalar; see the module docstring).
        """
        keys, targets = memory[:2]
        b, t, _ = hidden.shape
        p = keys.shape[1]
        if first + t > p:
            raise InputError("copy memory", f"queries reach step {first + t - 1} of a memory of {p}")
        typed = targets < self.vocab_size  # [B, P, U]
        seen = torch.arange(p, device=keys.device)[None] <= torch.arange(first, first + t, device=keys.device)[:, None]
        allowed = seen[None] & typed.any(dim=-1)[:, None]  # [B, T, P]
        on = allowed.any(dim=-1)  # [B, T]: a typed step to point at
        x = hidden.to(self.query.weight.dtype)
        scores = (self.query(x) @ keys.transpose(1, 2)).float() / math.sqrt(self.dim)  # [B, T, P]
        attn = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)  # no NaN rows
        attn = torch.where(on[..., None], attn, torch.zeros_like(attn))  # no typed step: 0
        gate = self.gate(x).float().squeeze(-1)  # [B, T]
        if self.mode == "add":
            if labels is not None:
                raise InputError("labels", "only a mix copy head is supervised")
            return logits.float() + F.softplus(gate)[..., None] * self._dense_bonus(attn, typed, targets)
        scores = torch.einsum("btd,bpud->btpu", self.word_query(x), memory[2]).float() / math.sqrt(self.dim)
        within = torch.softmax(scores.masked_fill(~typed[:, None], torch.finfo(scores.dtype).min), dim=-1)
        weights = attn.unsqueeze(-1) * within * typed[:, None]  # [B, T, P, U]
        mixed = self._mix(logits, weights, targets, gate, on)
        if labels is None:
            return mixed
        return mixed, self._supervision(weights, allowed, targets, gate, on, labels)

    def _supervision(self, weights, allowed, targets, gate, on, labels) -> torch.Tensor:
        """The pointer's ``-log`` weight on the label's class where it was typed, plus the gate's cross-entropy
        against "it was typed" (see the module docstring)."""
        b, t = labels.shape
        if weights.shape[:2] != (b, t):
            raise InputError("labels", f"expected {tuple(weights.shape[:2])}, got {tuple(labels.shape)}")
        wanted = self.targets[labels]  # [B, T]: V for PAD, EPAD and punctuation
        same = (targets[:, None] == wanted[..., None, None]) & (wanted < self.vocab_size)[..., None, None]  # [B,T,P,U]
        same = same & allowed[..., None]
        present = same.flatten(2).any(dim=-1)  # [B, T]
        mass = (weights * same).flatten(2).sum(dim=-1)  # [B, T]
        pointer = -(mass.clamp(min=1e-6).log() * present).sum() / present.sum().clamp(min=1)
        switch = F.binary_cross_entropy_with_logits(gate, present.float(), reduction="none")
        return pointer + (switch * on).sum() / on.sum().clamp(min=1)

    def _dense_bonus(self, attn: torch.Tensor, typed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``add``'s ungated bonus ``[B, T, V]``: per token, the attention on the steps that typed its word."""
        b, t, _ = attn.shape
        weights = attn.unsqueeze(-1) * typed[:, None].float()  # [B, T, P, U]
        index = targets[:, None].expand(b, t, -1, -1).reshape(b, t, -1)  # [B, T, P * U]
        per_target = attn.new_zeros(b, t, self.vocab_size + 1).scatter_add_(2, index, weights.reshape(b, t, -1))
        per_target[..., self.vocab_size] = 0.0  # the "none" column
        return per_target.gather(2, self.targets.expand(b, t, -1))  # [B, T, V]

    def _mix(self, logits, weights, targets, gate, on) -> torch.Tensor:
        """``mix``'s log-probabilities ``[B, T, V]``, touching only the typed words' classes' members.

        Args:
            weights: ``[B, T, P, U]`` the pointer's weight on each typed word (0 on untyped slots).
        """
        b, t, v = logits.shape
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
        log_keep = torch.where(on, F.logsigmoid(-gate), torch.zeros_like(gate))[..., None]  # log(1 - lambda) [B, T, 1]
        log_copy = torch.where(on, F.logsigmoid(gate), torch.full_like(gate, -math.inf))[..., None]  # log lambda
        typed = targets < v  # [B, P, U]
        classes, inverse = torch.unique(targets[typed], return_inverse=True)  # [K], [N]
        k = len(classes)
        if k == 0:
            return logp
        slot = torch.full_like(targets, k)
        slot[typed] = inverse  # [B, P, U]: each typed word's class, K for none
        index = slot[:, None].expand(b, t, -1, -1).reshape(b, t, -1)  # [B, T, P * U]
        w = weights.new_zeros(b, t, k + 1).scatter_add_(2, index, weights.reshape(b, t, -1))[..., :k]  # [B, T, K]
        tokens, first_row, counts = self.members()
        sizes = counts[classes]  # [K]
        owner = torch.repeat_interleave(torch.arange(k, device=classes.device), sizes)  # [M]: each member's class
        rank = torch.arange(len(owner), device=owner.device) - (torch.cumsum(sizes, 0) - sizes)[owner]
        members = tokens[first_row[classes][owner] + rank]  # [M]: the typed classes' tokens
        member_logp = logp[..., members]  # [B, T, M]
        top = torch.full_like(w, -math.inf).scatter_reduce(2, owner.expand(b, t, -1), member_logp.detach(), "amax")
        mass = torch.zeros_like(w).scatter_add(2, owner.expand(b, t, -1), (member_logp - top[..., owner]).exp())
        log_mass = top + mass.log()  # [B, T, K]: p_gen of each class (a logsumexp over its tokens)
        # each member of class c: p = p_gen * ((1 - lambda) + lambda * w_c / p_gen(c)); outside: p_gen * (1 - lambda)
        shift = torch.logaddexp(log_keep, log_copy + torch.log(w.clamp(min=1e-30)) - log_mass)  # [B, T, K]
        return (logp + log_keep).scatter_add(2, members.expand(b, t, -1), (shift - log_keep)[..., owner])


def extend_memory(cache, memory: tuple[torch.Tensor, ...], start: int) -> tuple[torch.Tensor, ...]:
    """The copy memory with this call's steps appended (:meth:`CopyHead.step_memory`'s tensors, ``[B, P, ...]``), kept
    on ``cache``'s side tensors (:func:`~mmduplex.lm.kvcache.extend_side_memory`; ``cache`` ``None``: no memory)."""
    return extend_side_memory(cache, _SIDE, memory, start, "copy")  # add: 2 tensors, mix: 3
