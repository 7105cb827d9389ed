"""``DuplexLM``: the delayed-streams duplex model — parallel video / user / text streams summed per step.

One sequence position per time step. At step ``s`` the backbone's input is the sum of

- the text embedding of the model's own text token ``text[s]`` (the LM's input embeddings; PAD and EPAD have their
  own trainable rows, so a frozen LM still learns them),
- the user stream's embedding: ``U`` slots per step (``user_slots_per_step``); a slot's token is embedded with the
  LM's input embeddings plus a learned stream vector, and with ``U > 1`` also scaled and shifted by learned per-slot
  vectors, so that the order of a step's tokens survives the sum over its slots (PAD = an empty slot or user silence,
  which embeds to zero), and
- the video slots: the ``K`` slot tokens ``[Dv]`` of the step (optionally after attending to each other, so an
  object's colour, shape and position stay bound together) are projected to the LM width with a learned slot
  embedding, and the unmasked slots are summed (an empty step embeds to zero; :class:`VideoProjector`).

The backbone is any Hugging Face causal LM with rotary positions (Llama, Qwen2, SmolLM, Mistral, ...), used through
``inputs_embeds``; its LM head gives the text logits, whose PAD / EPAD columns come from a small trainable head, plus
an optional copy head's bonus on the words the user typed (:mod:`mmduplex.lm.copy_head`). Logits at step ``s``
predict ``text[s + 1]``. The same ``forward`` serves teacher-forced training over a window and streaming (``S = 1``
with a KV cache), so both give the same numbers (tested).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmduplex.errors import CheckpointError, InputError
from mmduplex.lm.copy_head import CopyHead, extend_memory
from mmduplex.lm.projector import VideoProjector
from mmduplex.lm.readout import SlotReadout, extend_readout_memory

log = logging.getLogger(__name__)


@dataclass
class DuplexOutput:
    """What :meth:`DuplexLM.forward` returns."""

    logits: torch.Tensor
    """``[B, S, V]`` float32 text logits; step ``s`` predicts the text token of step ``s + 1`` (``[B, S - 1, V]``, the
    steps that have a target in the window, with ``targets_only``)."""
    past_key_values: Any = None
    """The backbone's KV cache (a ``transformers`` ``Cache``) when ``use_cache`` is set."""
    copy_loss: torch.Tensor | None = None
    """The ``mix`` copy head's supervision (a scalar) when ``copy_labels`` are given."""


def default_attn_implementation() -> str:
    """``"flash_attention_2"`` when flash-attn is installed and CUDA is available, else ``"sdpa"``."""
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A torch dtype by name (``"bfloat16"``), ``None`` for ``None``.

    Raises:
        InputError: ``name`` names no torch dtype.
    """
    if name is None:
        return None
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise InputError("torch_dtype", f"not a torch dtype: {name!r}")
    return value


def backbone_config(spec: dict, vocab_size: int | None = None) -> Any:
    """A ``transformers`` config from a dict with ``model_type`` (e.g. a tiny random ``llama`` / ``qwen2``).

    Args:
        spec: config fields; ``model_type`` selects the architecture.
        vocab_size: overrides ``spec``'s vocabulary size (an LM trained from scratch on the text tokenizer).
    """
    from transformers import AutoConfig

    fields = {k: v for k, v in spec.items() if k != "transformers_version"}
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise InputError("backbone", f"a backbone config needs a 'model_type' (e.g. 'llama'), got keys {sorted(spec)}")
    if vocab_size is not None:
        fields["vocab_size"] = int(vocab_size)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        raise InputError("backbone", f"unknown model_type {model_type!r} ({exc})") from exc


def build_backbone(
    spec: str | dict,
    vocab_size: int | None = None,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """The causal LM: ``from_pretrained`` for a hub id / local folder / registry name, ``from_config`` for a dict.

    A hub id means the hub's weights (``from_pretrained`` on the id itself); the offline copies are registry names
    (``smollm2-135m-instruct-q4_1``, see ``mmduplex weights list``), loaded from their prepared folder, and the
    model's ``config.name_or_path`` keeps the registry name (so a bundle records it, not the cache path).

    Args:
        spec: a hub id, a local folder or a registry name; or a config dict with ``model_type`` (random init).
        vocab_size: vocabulary size of a config-built LM (ignored for pretrained weights).
        torch_dtype: parameter dtype name (``"bfloat16"``, ``"float32"``); ``None`` keeps the default.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` picks
            :func:`default_attn_implementation`.
    """
    from transformers import AutoModelForCausalLM

    attn = attn_implementation or default_attn_implementation()
    dtype = parse_dtype(torch_dtype)
    kwargs: dict[str, Any] = {"attn_implementation": attn}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if isinstance(spec, str):
        from transformers.utils import logging as hf_logging

        from mmduplex.weights import offline_copies, resolve_pretrained

        source = resolve_pretrained(spec)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per load (the demo and stream stay quiet)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            copies = offline_copies(spec)
            hint = f"; its offline copy (close, not the same weights) is {copies[0]}" if copies else ""
            raise CheckpointError(spec, f"cannot load the backbone LM ({exc}){hint}") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if source != spec:  # a registry name: record it, not the cache folder
            model.config.name_or_path = spec
    else:
        model = AutoModelForCausalLM.from_config(backbone_config(dict(spec), vocab_size), **kwargs)
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_theta", None)
    if rope is None:
        log.warning("backbone %s has no rotary position settings; the streaming cache needs a rotary LM", spec)
    return model


class DuplexLM(nn.Module):
    """Causal LM over summed per-step stream embeddings; predicts the next step's text token.

    Args:
        backbone: a ``transformers`` causal LM (``get_decoder()``, ``get_input_embeddings()``,
            ``get_output_embeddings()``).
        vocab_size: ``V``, the text tokenizer's vocabulary size (PAD / EPAD included).
        pad_id: the PAD id (also user silence).
        epad_id: the EPAD id.
        token_dim: ``Dv``, the video tokens' width.
        slots_per_step: ``K``, video slots per step.
        projector_hidden: width of the video projector's hidden layer (``None``: the LM width).
        projector_layers: attention layers between a step's slots (:class:`VideoProjector`; 0: none).
        projector_heads: their attention heads.
        projector_gated: a gated (GLU) slot MLP (:class:`VideoProjector`'s ``gated``).
        projector_slot_maps: one output layer per video slot (:class:`VideoProjector`'s ``slot_maps``).
        user_slots_per_step: ``U``, user-stream tokens per step. With ``U = 1`` the model has no per-slot
            parameters (its state dict is the one-token-per-step model's); with ``U > 1`` slot ``u`` embeds as
            ``token_embedding(id) * (1 + user_slot_gain[u]) + user_slot_bias[u] + user_stream`` (the gain is kept
            as a deviation from 1, so weight decay pulls it towards the plain embedding).
        user_scale: fixed factor on the user stream's step embedding. A from-scratch LM's token embeddings are small
            next to a step's summed video slots (norm ~1.4 for a 4-token question step against ~38 in the demo), so
            the question drowns in the step's sum; 1 keeps the LM's own embedding scale (pretrained LMs).
        text_scale: fixed factor on the embedding of the model's own text token (PAD / EPAD included), for the same
            reason: a step's own word (norm ~0.9 in the demo) is what a look-up back into the question starts from.
        copy_dim: width of the copy head's queries and keys (:class:`~mmduplex.lm.copy_head.CopyHead`: a pointer
            into the user stream that raises the logits of the words typed at the steps it attends to); 0: no copy
            head. Its copy targets are set from the text tokenizer (``copy_head.set_targets``) or the state dict.
        copy_mode: ``"add"`` (a gated bonus on the logits) or ``"mix"`` (a pointer-generator mixture of
            probabilities, scale-free: the logits are then log-probabilities); see :mod:`mmduplex.lm.copy_head`.
        readout_dim: per-head width of the slot readout (:class:`~mmduplex.lm.readout.SlotReadout`: the final hidden
            state attends to the separate projected video slots of the steps held, before the text head); 0: none.
        readout_heads: its attention heads.
    """

    def __init__(
        self,
        backbone: nn.Module,
        vocab_size: int,
        pad_id: int,
        epad_id: int,
        token_dim: int,
        slots_per_step: int,
        projector_hidden: int | None = None,
        projector_layers: int = 0,
        projector_heads: int = 4,
        user_slots_per_step: int = 1,
        user_scale: float = 1.0,
        text_scale: float = 1.0,
        projector_gated: bool = False,
        copy_dim: int = 0,
        copy_mode: str = "add",
        readout_dim: int = 0,
        readout_heads: int = 4,
        projector_slot_maps: bool = False,
    ) -> None:
        super().__init__()
        if user_slots_per_step < 1:
            raise InputError("user_slots_per_step", f"must be >= 1, got {user_slots_per_step}")
        if not user_scale > 0:
            raise InputError("user_scale", f"must be > 0, got {user_scale}")
        if not text_scale > 0:
            raise InputError("text_scale", f"must be > 0, got {text_scale}")
        self.user_scale = float(user_scale)
        self.text_scale = float(text_scale)
        self.backbone = backbone
        self.vocab_size = int(vocab_size)
        self.pad_id = int(pad_id)
        self.epad_id = int(epad_id)
        self.hidden = int(backbone.get_input_embeddings().embedding_dim)
        self.special_embedding = nn.Embedding(2, self.hidden)  # rows: PAD, EPAD
        nn.init.normal_(self.special_embedding.weight, std=0.02)
        self.special_head = nn.Linear(self.hidden, 2)  # PAD, EPAD logits
        nn.init.zeros_(self.special_head.weight)
        nn.init.zeros_(self.special_head.bias)
        self.user_stream = nn.Parameter(torch.zeros(self.hidden))  # [H] marks user tokens apart from text tokens
        self.user_slots_per_step = int(user_slots_per_step)
        if self.user_slots_per_step > 1:  # distinct per-slot transforms keep the order of a step's user tokens
            u = self.user_slots_per_step
            self.user_slot_gain = nn.Parameter(torch.randn(u, self.hidden) * 0.02)  # [U, H]; scale = 1 + gain
            self.user_slot_bias = nn.Parameter(torch.randn(u, self.hidden) * 0.02)  # [U, H]
        self.video = VideoProjector(
            token_dim,
            self.hidden,
            slots_per_step,
            projector_hidden,
            projector_layers,
            projector_heads,
            projector_gated,
            projector_slot_maps,
        )
        self.copy_head = None
        if copy_dim > 0:
            self.copy_head = CopyHead(self.hidden, copy_dim, self.vocab_size, self.user_slots_per_step, copy_mode)
        self.readout = SlotReadout(self.hidden, readout_dim, readout_heads) if readout_dim > 0 else None
        decoder_params = inspect.signature(backbone.get_decoder().forward).parameters
        self._cache_kw = "cache" if "cache" in decoder_params else "past_key_values"

    @property
    def slots_per_step(self) -> int:
        return self.video.slots_per_step

    @property
    def token_dim(self) -> int:
        return self.video.token_dim

    def new_parameter_names(self) -> list[str]:
        """Parameters that are not part of the backbone (trained in every fine-tuning mode)."""
        return [name for name, _ in self.named_parameters() if not name.startswith("backbone.")]

    def _token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, S, ...]`` ids -> ``[B, S, ..., H]``: the LM's input embeddings, PAD / EPAD from their own rows."""
        table = self.backbone.get_input_embeddings()
        is_pad, is_epad = ids == self.pad_id, ids == self.epad_id
        special = is_pad | is_epad
        base = table(torch.where(special, torch.zeros_like(ids), ids)).to(self.special_embedding.weight.dtype)
        extra = self.special_embedding(is_epad.long())  # [B, S, H]
        return torch.where(special.unsqueeze(-1), extra, base)

    def embed(
        self,
        text_ids: torch.Tensor,
        video_slots: torch.Tensor,
        video_mask: torch.Tensor,
        user_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The summed per-step input embeddings ``[B, S, H]``."""
        return self._embed(text_ids, video_slots, video_mask, user_ids)[0]

    def _embed(
        self,
        text_ids: torch.Tensor,
        video_slots: torch.Tensor,
        video_mask: torch.Tensor,
        user_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`embed`, the user stream's part of it ``[B, S, H]`` (``None`` without a user stream) and, with a slot
        readout, the projected video slots ``[B, S, K, H]`` (else ``None``)."""
        if text_ids.dim() != 2:
            raise InputError("text_ids", f"expected [B, S], got {tuple(text_ids.shape)}")
        if video_slots.shape[:2] != text_ids.shape:
            raise InputError(
                "video_slots", f"expected [B, S] = {tuple(text_ids.shape)} leading, got {tuple(video_slots.shape)}"
            )
        if int(text_ids.max()) >= self.vocab_size or int(text_ids.min()) < 0:
            raise InputError(
                "text_ids", f"ids must be in [0, {self.vocab_size}), got [{int(text_ids.min())}, {int(text_ids.max())}]"
            )
        if self.readout is not None:  # the readout also reads the projected slots one by one
            video, slots = self.video(video_slots, video_mask, per_slot=True)
        else:
            video, slots = self.video(video_slots, video_mask), None
        embeds = self._token_embedding(text_ids) * self.text_scale + video  # [B, S, H]
        user = None
        if user_ids is not None:
            user = self.embed_user(user_ids, text_ids.shape)  # [B, S, H]
            embeds = embeds + user
        return embeds, user, slots

    def embed_user(self, user_ids: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The user stream's per-step embedding ``[B, S, H]``; PAD (an empty slot, silence) embeds to zero.

        Args:
            user_ids: ``[B, S]`` (``U = 1``) or ``[B, S, U]``.
            shape: ``(B, S)`` of the text stream.
        """
        u = self.user_slots_per_step
        if user_ids.dim() == 3 and user_ids.shape[2] == 1 == u:
            user_ids = user_ids[..., 0]  # [B, S]
        expected = tuple(shape) if u == 1 else (*shape, u)
        if tuple(user_ids.shape) != expected:
            raise InputError("user_ids", f"expected {expected} ({u} user slots per step), got {tuple(user_ids.shape)}")
        speaking = (user_ids != self.pad_id).unsqueeze(-1)  # [B, S, (U,) 1]
        tokens = self._token_embedding(user_ids)  # [B, S, (U,) H]
        if u == 1:
            user = tokens + self.user_stream  # [B, S, H]
            return torch.where(speaking, user, torch.zeros_like(user)) * self.user_scale
        user = tokens * (1.0 + self.user_slot_gain) + self.user_slot_bias + self.user_stream  # [B, S, U, H]
        return torch.where(speaking, user, torch.zeros_like(user)).sum(dim=2) * self.user_scale  # [B, S, H]

    def _copy_tokens(self, user_ids: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, S, U, H]``: the user slots' token embeddings, for a ``mix`` copy head (else ``None``)."""
        if user_ids is None or self.copy_head is None or self.copy_head.mode != "mix":
            return None
        return self._token_embedding(user_ids if user_ids.dim() == 3 else user_ids.unsqueeze(-1))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``[B, S, H]`` -> text logits ``[B, S, V]`` (float32)."""
        lm_logits = self.backbone.get_output_embeddings()(hidden)  # [B, S, rows]
        special = self.special_head(hidden.to(self.special_head.weight.dtype)).float()  # [B, S, 2]
        rows = lm_logits.shape[-1]
        if self.pad_id == rows == self.vocab_size - 2 and self.epad_id == rows + 1:
            # PAD / EPAD right after the LM's rows (a pretrained LM's tokenizer with the two added): one copy, in
            # float32, of the same values the general path writes
            return torch.cat([lm_logits, special], dim=-1)
        lm_logits = lm_logits.float()
        if rows >= self.vocab_size:
            logits = lm_logits[..., : self.vocab_size]
        else:  # the tokenizer's PAD / EPAD lie past the LM's rows
            filler = lm_logits.new_full((*lm_logits.shape[:-1], self.vocab_size - rows), float("-inf"))
            logits = torch.cat([lm_logits, filler], dim=-1)
        logits = logits.clone()
        logits[..., self.pad_id] = special[..., 0]
        logits[..., self.epad_id] = special[..., 1]
        return logits

    def forward(
        self,
        text_ids: torch.Tensor,
        video_slots: torch.Tensor,
        video_mask: torch.Tensor,
        user_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        targets_only: bool = False,
        copy_labels: torch.Tensor | None = None,
    ) -> DuplexOutput:
        """Run ``S`` steps.

        Args:
            text_ids: ``[B, S]`` the model's text stream (teacher-forced, or the tokens it emitted).
            video_slots: ``[B, S, K, Dv]`` video tokens per step and slot.
            video_mask: ``[B, S, K]`` bool, which slots hold a token.
            user_ids: ``[B, S]`` user stream (PAD = silence), ``[B, S, U]`` with ``U`` user slots per step
                (``[B, S, 1]`` is the same as ``[B, S]``), or ``None``.
            past_key_values: a KV cache from an earlier call (streaming), or ``None``.
            position_ids: ``[B, S]`` positions; ``None`` continues after the cache (``0..S-1`` without one).
            use_cache: return the updated cache.
            targets_only: the LM head runs only on the steps whose prediction has a target in the window (all but
                the last): ``logits [B, S - 1, V]``, the same values as the first ``S - 1`` steps of the full logits
                (the training loss, :func:`text_loss`, needs no more).
            copy_labels: ``[B, S - 1]`` with ``targets_only`` (else ``[B, S]``), the token each step's prediction
                should be: a ``mix`` copy head's supervision comes back as ``copy_loss``.

        Returns:
            :class:`DuplexOutput` with ``logits [B, S, V]`` (step ``s`` predicts ``text[s + 1]``).
        """
        embeds, user, slots = self._embed(text_ids, video_slots, video_mask, user_ids)
        param = next(self.backbone.parameters())
        if not torch.is_autocast_enabled(embeds.device.type):
            embeds = embeds.to(param.dtype)
        start = 0 if past_key_values is None else int(past_key_values.get_seq_length())
        if position_ids is None:
            position_ids = torch.arange(start, start + text_ids.shape[1], device=text_ids.device)
            position_ids = position_ids.unsqueeze(0).expand(text_ids.shape[0], -1)  # [B, S]
        out = self.backbone.get_decoder()(
            inputs_embeds=embeds,
            position_ids=position_ids,
            use_cache=use_cache,
            **{self._cache_kw: past_key_values},
        )
        cache = None
        if use_cache:
            cache = out["cache"] if "cache" in out else out["past_key_values"]
        hidden = out.last_hidden_state  # [B, S, H]
        if targets_only:
            hidden = hidden[:, :-1].contiguous()  # [B, S - 1, H] (contiguous: one matmul, not one per window)
        if self.readout is not None:
            memory = extend_readout_memory(past_key_values, self.readout.step_memory(slots, video_mask), start)
            hidden = self.readout(hidden, memory, first=start)
        logits = self.head(hidden)
        if self.copy_head is not None:
            memory = self.copy_head.step_memory(user, user_ids, text_ids.shape, self._copy_tokens(user_ids))
            memory = extend_memory(past_key_values, memory, start)  # the cached steps', then these
            logits = self.copy_head(hidden, memory, first=start, logits=logits, labels=copy_labels)
            if copy_labels is not None:
                logits, copy_loss = logits
                return DuplexOutput(logits=logits, past_key_values=cache, copy_loss=copy_loss)
        elif copy_labels is not None:
            raise InputError("copy_labels", "the model has no copy head")
        return DuplexOutput(logits=logits, past_key_values=cache)


@dataclass
class LossWeights:
    """Per-target weights of the text loss."""

    pad: float = 1.0
    """Weight of PAD targets (Moshi: 0.5)."""
    epad: float = 1.0
    """Weight of EPAD targets."""
    silence: float = 0.0
    """Weight of the extra speak/silent term: binary cross-entropy of P(PAD) against "the target is PAD"."""


def text_loss(
    logits: torch.Tensor, text_ids: torch.Tensor, pad_id: int, epad_id: int, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted next-token cross-entropy on the text stream.

    ``loss = sum_s w_s * CE(logits[s], text[s + 1]) / sum_s w_s`` with ``w = weights.pad`` on PAD targets,
    ``weights.epad`` on EPAD targets and 1 elsewhere, plus ``weights.silence`` times the mean binary cross-entropy
    of ``P(PAD)`` against ``[text[s + 1] == PAD]`` (VideoLLM-online style emphasis on the speak/silent decision).

    Args:
        logits: ``[B, S, V]`` (the last step's logits have no target and are not used), or ``[B, S - 1, V]``, only
            the steps with a target (``DuplexLM.forward(..., targets_only=True)``).
        text_ids: ``[B, S]`` the same window's text stream.
        pad_id: PAD id.
        epad_id: EPAD id.
        weights: the loss weights.

    Returns:
        The scalar loss and detached figures (``ce``, ``ce_words``, ``pad_fraction``).
    """
    steps = text_ids.shape[1]
    if logits.shape[:2] == text_ids.shape:
        logits = logits[:, :-1]
    elif logits.shape[:2] != (text_ids.shape[0], steps - 1):
        raise InputError(
            "logits", f"expected [B, S] or [B, S - 1] = {tuple(text_ids.shape)} leading, got {tuple(logits.shape)}"
        )
    pred = logits.float()  # [B, S-1, V]
    target = text_ids[:, 1:]  # [B, S-1]
    # Per-token CE is kept for the logged figures; its weighted mean equals F.cross_entropy(weight=class_weight),
    # except that a window whose targets all weigh 0 gives 0 here instead of torch's 0/0 = NaN.
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
    is_pad, is_epad = target == pad_id, target == epad_id
    class_weight = pred.new_ones(pred.shape[-1])  # [V]
    class_weight[pad_id], class_weight[epad_id] = weights.pad, weights.epad
    w = class_weight[target]  # [B, S-1]
    loss = (ce * w).sum() / w.sum().clamp_min(1e-8)
    if weights.silence:
        log_p_pad = torch.log_softmax(pred, dim=-1)[..., pad_id]  # [B, S-1]
        bce = F.binary_cross_entropy_with_logits(
            log_p_pad - torch.log1p(-log_p_pad.exp().clamp(max=1 - 1e-6)), is_pad.float()
        )
        loss = loss + weights.silence * bce
    words = ~(is_pad | is_epad)
    stats = {
        "ce": ce.mean().detach(),
        "ce_words": (ce[words].mean() if bool(words.any()) else ce.new_zeros(())).detach(),
        "pad_fraction": is_pad.float().mean().detach(),
    }
    return loss, stats


@dataclass
class LoraSettings:
    """LoRA adapters on the backbone (``peft``), used with ``finetune: lora``."""

    r: int
    """Rank of the adapters."""
    alpha: float
    """Scaling numerator (the update is scaled by ``alpha / r``)."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: list[str] | None = None
    """Names of the linear layers to adapt (``None``: peft's default for the architecture, e.g. q_proj, v_proj)."""


def apply_lora(backbone: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into ``backbone`` in place (parameter names gain ``lora_A`` / ``lora_B``).

    The adapters are float32 whatever the LM's dtype: on an LM held in bfloat16 (trained under bf16 autocast) their
    AdamW updates would otherwise round away.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = settings.target_modules
    if targets is None:
        model_type = getattr(backbone.config, "model_type", None)
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if targets is None:
            raise InputError("lora.target_modules", f"no default LoRA targets for model_type {model_type!r}; set them")
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=list(targets)
    )
    backbone = inject_adapter_in_model(config, backbone)
    for name, param in backbone.named_parameters():
        if "lora_" in name and param.is_floating_point():
            param.data = param.data.float()
    return backbone
