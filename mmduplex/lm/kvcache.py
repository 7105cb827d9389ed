"""Bounded KV cache for unbounded streams: attention sink + sliding window with contiguous positions.

A streaming duplex model runs one sequence position per tick for hours. ``SinkWindowCache`` keeps the first
``sink`` cached positions (the attention sink, StreamingLLM) plus the most recent ``window`` positions, so
memory and per-step cost stay flat. Positions stay contiguous (StreamingVLM): when entries are evicted, the
retained window's keys are re-rotated to the positions they now occupy. RoPE rotations compose, so rotating a
key cached at position ``p`` by ``-d`` gives exactly the key the model would have produced at ``p - d``; values
carry no position and are kept as they are. The next input's position id is therefore always the cache length
and never exceeds ``sink + window``, the range the model was trained on.

Eviction is automatic: each layer's ``update`` appends the new keys, returns the *untrimmed* keys/values for
this step's attention (whose query was rotated at the pre-eviction positions, so everything it sees is
consistent), and stores the trimmed cache for the next step.

Each key is re-rotated from the key *as the model computed it*, by its total shift, every time it is used
(``layers[i].keys`` hold those as-computed keys; ``current_keys(i)`` gives them at their current positions).
Re-rotating the stored keys in place by one position per eviction would round once per step of a key's life:
in bfloat16 that drifts to ~25 % relative error over a 256-position window; one rotation per use stays at one
rounding. The per-step work is the same (one rotation of the window per layer).

Only rotary-position LMs whose attention applies ``rotate_half`` RoPE to the whole head (Llama, Mistral, Qwen2,
Qwen3, SmolLM, ...) can have cached keys re-positioned; anything else is refused by ``find_rotary``. The shift
rotation is computed with the model's own rotary module, so its ``rope_type`` (default, linear, yarn, llama3, ...)
is honoured; its ``attention_scaling`` is divided out, since the cached keys already carry it once.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from mmduplex.errors import InputError

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ShiftTable",
    "SinkWindowCache",
    "SinkWindowLayer",
    "extend_side_memory",
    "find_rotary",
    "rotate_positions",
]

# Model types whose attention applies `apply_rotary_pos_emb` with `rotate_half` over the full head dim,
# computed by a single `rotary_emb` module. (SmolLM checkpoints are `llama`.)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
# Rope types whose frequencies change with the sequence length: safe only while positions stay in the original range.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _config_of(model: nn.Module):
    """The HF config of ``model`` or of the first submodule that has one (wrappers such as DuplexLM)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None) is not None:
            return config
    return None


def find_rotary(model: nn.Module, max_length: int | None = None) -> nn.Module:
    """Return the rotary-embedding module of a supported rotary-position LM, or refuse the model.

    Args:
        model: an HF causal LM (``LlamaForCausalLM``, ...), its base model, or a module wrapping one.
        max_length: the largest number of cached positions the caller will keep (``sink + window``); checked
            against the model's own sliding-window attention and length-dependent rope types.

    Raises:
        InputError: the model does not use rotary positions in the supported form, or ``max_length`` is
            incompatible with its attention.
    """
    config = _config_of(model)
    model_type = getattr(config, "model_type", None)
    name = f"model_type {model_type!r}" if model_type else type(model).__name__
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            "model",
            f"{name} is not a supported rotary-position LM: the bounded sink+window cache re-positions cached keys "
            f"by re-rotating them, which needs RoPE applied with rotate_half over the whole head "
            f"(supported model types: {', '.join(SUPPORTED_MODEL_TYPES)})",
        )
    rotaries = [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if len(rotaries) != 1:
        raise InputError("model", f"{name}: expected exactly one rotary embedding module, found {len(rotaries)}")
    rotary = rotaries[0]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if 2 * rotary.inv_freq.numel() != head_dim:
        raise InputError(
            "model",
            f"{name}: partial rotary embeddings (rotary dim {2 * rotary.inv_freq.numel()} < head dim {head_dim}) "
            "are not supported",
        )
    if max_length is not None:
        sliding = getattr(config, "sliding_window", None)
        if sliding is not None and sliding < max_length + 1:
            raise InputError(
                "model",
                f"{name}: its sliding-window attention ({sliding}) is shorter than the cache span "
                f"sink + window + 1 = {max_length + 1}; the attention sink would be masked out",
            )
        rope_type = getattr(rotary, "rope_type", "default")
        original = (getattr(config, "rope_parameters", None) or {}).get(
            "original_max_position_embeddings", getattr(config, "max_position_embeddings", None)
        )
        if rope_type in _LENGTH_DEPENDENT_ROPE and original is not None and max_length + 1 > original:
            raise InputError(
                "model",
                f"{name}: rope_type {rope_type!r} changes its frequencies beyond {original} positions; "
                f"keep sink + window + 1 <= {original} (got {max_length + 1})",
            )
    return rotary


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The RoPE helper of Llama-family attention: ``[x1, x2] -> [-x2, x1]`` over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[..., L, Dh]``) by float32 cos/sin (``[Dh]`` or ``[L, Dh]``) and cast back to ``x``'s dtype."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class ShiftTable:
    """cos/sin of rotations by 0..n-1 positions, computed once by the model's rotary module and grown on demand.

    Args:
        rotary: the model's rotary module (``find_rotary``); its ``attention_scaling`` is divided out because
            the cached keys already carry it once.
    """

    def __init__(self, rotary: nn.Module) -> None:
        self.rotary = rotary
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # shifts, cos, sin gathered

    def get(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(cos, sin)``, each ``[n, Dh]`` with ``n >= size``: row ``d`` rotates by ``+d`` positions."""
        table = self._tables.get(device)
        if table is None or table[0].shape[0] < size:
            n = max(size, 2 * table[0].shape[0] if table is not None else 64)
            if getattr(self.rotary, "rope_type", "default") in _LENGTH_DEPENDENT_ROPE:
                n = size  # probing further positions would switch the module to its long-context frequencies
            probe = torch.zeros(1, device=device, dtype=torch.float32)
            positions = torch.arange(n, device=device)[None]  # [1, n]
            cos, sin = self.rotary(probe, position_ids=positions)  # [1, n, Dh], times attention_scaling
            scale = float(getattr(self.rotary, "attention_scaling", 1.0))
            table = (cos[0].float() / scale, sin[0].float() / scale)
            self._tables[device] = table
        return table

    def rotate(self, keys: torch.Tensor, shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
        """Move each key ``[..., L, Dh]`` by its own ``shifts`` ``[L]`` (long, ``|shift| <= max_shift``) positions."""
        last = self._last  # every layer of a step, and every step of a steady stream, shares one shift pattern
        if (
            last is None
            or last[0].shape != shifts.shape
            or last[0].device != shifts.device
            or not torch.equal(last[0], shifts)
        ):
            cos, sin = self.get(max_shift + 1, keys.device)
            index = shifts.abs()
            sign = torch.where(shifts < 0, -1.0, 1.0).to(torch.float32)[:, None]  # [L, 1]: sin(-a) = -sin(a)
            last = self._last = (shifts, cos[index], sin[index] * sign)  # [L], [L, Dh], [L, Dh]
        return _apply_rotation(keys, last[1], last[2])


def rotate_positions(keys: torch.Tensor, delta: int, rotary: nn.Module) -> torch.Tensor:
    """Move RoPE-rotated keys by ``delta`` positions: a key cached at position ``p`` becomes the key at ``p + delta``.

    Args:
        keys: ``[..., L, Dh]`` keys as the model cached them (rotated at their positions).
        delta: positions to move by (negative moves keys earlier, as eviction does).
        rotary: the model's rotary module (``find_rotary``).

    Returns:
        The re-positioned keys, same shape and dtype (the arithmetic runs in float32).
    """
    if delta == 0:
        return keys
    shifts = torch.full((keys.shape[-2],), delta, dtype=torch.long, device=keys.device)  # [L]
    return ShiftTable(rotary).rotate(keys, shifts, abs(delta))


class SinkWindowLayer(DynamicLayer):
    """One layer of ``SinkWindowCache``: a ``DynamicLayer`` trimmed to ``sink + window`` after each update.

    ``keys`` hold the keys as the model computed them; ``shifts`` ``[L]`` (long, <= 0) say by how many positions
    each has moved since, and ``update`` hands attention the keys re-rotated by their shifts.

    Args:
        sink: leading positions kept for ever (the attention sink).
        window: most recent positions kept.
        table: the shared cos/sin table of the model's rotary module.
    """

    def __init__(self, sink: int, window: int, table: ShiftTable) -> None:
        super().__init__()
        self.sink, self.window = sink, window
        self.max_length = sink + window
        self.table = table
        self.shifts: torch.Tensor | None = None  # [L] long
        self.evicted = 0  # positions dropped so far
        self.max_shift = 0  # bound on |shifts|: the largest position any cached key was computed at

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[B, H, q, Dh]`` keys/values; return the untrimmed cache for this step; store the trimmed one."""
        keys, values = super().update(key_states, value_states, *args, **kwargs)  # [B, H, L + q, Dh]
        length, new = keys.shape[-2], key_states.shape[-2]
        fresh = torch.zeros(new, dtype=torch.long, device=keys.device)
        shifts = fresh if self.shifts is None else torch.cat((self.shifts, fresh))  # [L + q]
        self.max_shift = max(self.max_shift, length - 1)
        current = self.table.rotate(keys, shifts, self.max_shift) if self.evicted else keys
        if length > self.max_length:
            drop = length - self.max_length
            self.keys = torch.cat((keys[..., : self.sink, :], keys[..., self.sink + drop :, :]), dim=-2)
            self.values = torch.cat((values[..., : self.sink, :], values[..., self.sink + drop :, :]), dim=-2)
            shifts = torch.cat((shifts[: self.sink], shifts[self.sink + drop :] - drop))  # [max_length]
            self.evicted += drop
        self.shifts = shifts
        return current, values

    def current_keys(self) -> torch.Tensor | None:
        """The cached keys ``[B, H, L, Dh]`` re-rotated to the positions they occupy now."""
        if self.keys is None or not self.evicted:
            return self.keys
        return self.table.rotate(self.keys, self.shifts, self.max_shift)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` entries (HF's convention), keeping ``shifts`` aligned."""
        super().crop(tokens_to_remove)
        if self.shifts is not None:
            self.shifts = self.shifts[: self.get_seq_length()]

    def get_max_length(self) -> int:
        """The most positions this layer keeps between steps."""
        return self.max_length

    def reset(self) -> None:
        """Forget everything cached."""
        super().reset()
        self.shifts, self.evicted, self.max_shift = None, 0, 0

    def copy(self, table: ShiftTable) -> SinkWindowLayer:
        """An independent copy (cloned tensors) that uses ``table``."""
        new = SinkWindowLayer(self.sink, self.window, table)
        if self.is_initialized:
            new.lazy_initialization(self.keys, self.values)
            new.keys, new.values = self.keys.clone(), self.values.clone()
            new.shifts = None if self.shifts is None else self.shifts.clone()
        new.evicted, new.max_shift = self.evicted, self.max_shift
        return new


class SinkWindowCache(DynamicCache):
    """A ``DynamicCache`` bounded to ``sink + window`` positions with contiguous, re-rotated positions.

    Pass it to an HF causal LM as ``cache=`` (``past_key_values=`` in older transformers); feed one position
    (or a short chunk) per call with ``position_ids = cache.next_position_ids(batch)`` (which is also what HF
    computes when ``position_ids`` is omitted). Between calls ``cache.length <= cache.max_length``; a call with
    ``q`` new positions uses position ids up to ``max_length + q - 1`` and attends over at most
    ``max_length + q`` entries, so feed long prompts in chunks.

    Args:
        model: the rotary-position LM this cache serves (or a module wrapping one); only its rotary module and
            config are used.
        sink: leading positions kept for ever (attention sink; StreamingLLM uses 4).
        window: most recent positions kept.

    Raises:
        InputError: non-positive sizes, or a model ``find_rotary`` refuses.
    """

    def __init__(self, model: nn.Module, sink: int, window: int) -> None:
        if sink < 0 or window < 1:
            raise InputError("cache", f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
        self.rotary = find_rotary(model, max_length=sink + window)
        self.sink, self.window = sink, window
        self.table = ShiftTable(self.rotary)
        num_layers = _config_of(model).num_hidden_layers
        Cache.__init__(self, layers=[SinkWindowLayer(sink, window, self.table) for _ in range(num_layers)])
        self.side: dict[str, torch.Tensor] = {}  # per-position side tensors [B, L, ...] (extend_side)

    @property
    def max_length(self) -> int:
        """The most positions kept between calls: ``sink + window``."""
        return self.sink + self.window

    @property
    def length(self) -> int:
        """Positions currently cached (equals the next input's position id)."""
        return self.get_seq_length()

    @property
    def total_seen(self) -> int:
        """Positions ever fed through the cache (cached + evicted)."""
        return self.length + (self.layers[0].evicted if self.layers else 0)

    def current_keys(self, layer_idx: int) -> torch.Tensor | None:
        """Layer ``layer_idx``'s cached keys ``[B, H, L, Dh]`` at the positions they occupy now."""
        return self.layers[layer_idx].current_keys()

    def next_position_ids(self, batch_size: int, num_new: int = 1, device: torch.device | str | None = None):
        """Position ids ``[B, num_new]`` (long) for the next input: ``length, ..., length + num_new - 1``."""
        start = self.length
        if device is None and start > 0:
            device = self.layers[0].keys.device
        return torch.arange(start, start + num_new, device=device).expand(batch_size, num_new)  # [B, num_new]

    def extend_side(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Append ``[B, q, ...]`` per-position values to the side tensor ``name``; return it untrimmed
        (``[B, L + q, ...]``, aligned with this step's attention) and keep it trimmed as the layers keep their keys
        (the first ``sink`` and the last ``window`` positions). A model's extra per-position state (the copy head's
        keys) so lives and is evicted, copied and batch-selected with the cache."""
        held = self.side.get(name)
        full = values if held is None else torch.cat((held, values), dim=1)
        drop = full.shape[1] - self.max_length
        self.side[name] = torch.cat((full[:, : self.sink], full[:, self.sink + drop :]), dim=1) if drop > 0 else full
        return full

    def copy(self) -> SinkWindowCache:
        """An independent copy of the cached state (e.g. one streamed video, several questions)."""
        new = object.__new__(SinkWindowCache)
        new.rotary, new.sink, new.window, new.table = self.rotary, self.sink, self.window, self.table
        Cache.__init__(new, layers=[layer.copy(self.table) for layer in self.layers])
        new.side = dict(self.side)  # side tensors are replaced, never written in place: sharing them is safe
        return new

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` (streams that left a batch are dropped), side tensors included."""
        super().batch_select_indices(indices)
        self.side = {name: values[indices.to(values.device)] for name, values in self.side.items()}

    def crop(self, max_length: int) -> None:
        """HF's ``crop`` (a negative ``max_length`` drops that many of the last entries), side tensors included."""
        super().crop(max_length)
        length = self.get_seq_length()
        self.side = {name: values[:, :length] for name, values in self.side.items()}

    def __deepcopy__(self, memo: dict) -> SinkWindowCache:
        """``copy.deepcopy`` clones the cached tensors but shares the model's rotary module."""
        return self.copy()


def extend_side_memory(cache, names: tuple[str, ...], memory: tuple[torch.Tensor, ...], start: int, owner: str):
    """A model part's per-step memory with this call's steps appended, kept on ``cache``'s side tensors ``names`` (in
    the memory's order; ``memory`` may hold fewer tensors than names) and returned untrimmed (``[B, P, ...]``).

    Args:
        cache: the KV cache of the call (a :class:`SinkWindowCache`), or ``None`` (no memory: ``memory`` itself).
        names: the side tensors' names; the first one's length is checked against ``start``.
        memory: this call's ``[B, S, ...]`` tensors.
        start: cached positions before this call (the memory must hold as many).
        owner: the model part, for the error messages (``"copy"``: "the copy memory ...").

    Raises:
        InputError: ``cache`` is not a :class:`SinkWindowCache`, or its memory and its positions disagree (a cache
            filled by a model without that part, or cropped).
    """
    if cache is None:
        return memory
    if not hasattr(cache, "extend_side"):
        kind = type(cache).__name__
        raise InputError("past_key_values", f"the {owner} memory streams on a SinkWindowCache, got {kind}")
    held = cache.side.get(names[0])
    if (0 if held is None else held.shape[1]) != start:
        raise InputError(
            "past_key_values",
            f"the {owner} memory holds {0 if held is None else held.shape[1]} steps, the cache {start}: "
            f"a cache filled by a model without it, or cropped",
        )
    return tuple(cache.extend_side(name, values) for name, values in zip(names, memory, strict=False))
