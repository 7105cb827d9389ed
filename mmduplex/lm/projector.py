"""``VideoProjector``: a step's video slots -> one LM-width embedding (each slot projected, the filled slots summed)."""

from __future__ import annotations

import torch
from torch import nn

from mmduplex.errors import InputError

__all__ = ["GatedMLP", "VideoProjector"]


class GatedMLP(nn.Module):
    """``[..., D] -> [..., H]``: ``W_out(gelu(W_a x) * W_b x)`` (a GLU of hidden width ``mid``)."""

    def __init__(self, dim: int, mid: int, out: int) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, 2 * mid)
        self.out = nn.Linear(mid, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.inp(x).chunk(2, dim=-1)
        return self.out(nn.functional.gelu(gate) * value)


class VideoProjector(nn.Module):
    """Video slots ``[B, S, K, Dv]`` -> one embedding per step ``[B, S, H]``.

    With ``layers = 0`` each slot is projected on its own (MLP to the LM width plus a learned slot embedding) and the
    unmasked slots are summed. With ``layers > 0`` the step's slots first attend to each other (a small pre-norm
    transformer encoder of width ``mlp_hidden`` over the ``K`` slots, empty slots masked out), so what one token
    holds (an object's colour) can be bound to what another holds (its shape, its position) before the sum; then each
    slot is projected to the LM width and the unmasked slots are summed. Either way an empty step embeds to zero.

    Args:
        token_dim: ``Dv``.
        hidden: ``H``, the LM width.
        slots_per_step: ``K``.
        mlp_hidden: width of the projector's hidden layer / slot encoder (``None``: ``H``).
        layers: slot-encoder layers (0: no attention between a step's slots).
        heads: attention heads of the slot encoder.
        gated: with ``layers = 0``, each slot's MLP is gated (``W_out(gelu(W_a x) * W_b x)``, a GLU) instead of
            ``W_out(gelu(W x))``. The gate's products of the token's own features (colour times shape) give the
            projected slot conjunctions that survive the sum over a step's slots: with two shapes on screen, a plain
            MLP's sum tends to hold "blue + triangle + yellow + circle", from which the LM names the acting shape's
            colour with the other one's shape (notebooks/LOG.md#2026-12-06-binding).
        slot_maps: with ``layers = 0``, each slot ``k`` has its own output layer (``W_k gelu(W x) + b_k``, the
            hidden layer shared), as Moshi gives each of a step's audio codebooks its own embedding table: the sum
            over a step's slots then keeps which features came from which slot (a token's colour stays with its
            shape) instead of pooling them in one space.
    """

    def __init__(
        self,
        token_dim: int,
        hidden: int,
        slots_per_step: int,
        mlp_hidden: int | None = None,
        layers: int = 0,
        heads: int = 4,
        gated: bool = False,
        slot_maps: bool = False,
    ) -> None:
        super().__init__()
        mid = mlp_hidden or hidden
        if layers < 0 or (layers and mid % heads):
            raise InputError("projector", f"need layers >= 0 and width % heads == 0; got {layers}, {mid}/{heads}")
        if gated and layers:
            raise InputError("projector", "a gated projector MLP needs projector_layers 0")
        if slot_maps and (layers or gated):
            raise InputError("projector", "per-slot output layers need projector_layers 0 and no gate")
        self.norm = nn.LayerNorm(token_dim)
        self.slots_per_step = slots_per_step
        self.token_dim = token_dim
        self.layers = layers
        self.slot_maps = None
        if layers == 0:
            if slot_maps:  # the shared hidden layer, then one output layer per slot
                self.mlp = nn.Sequential(nn.Linear(token_dim, mid), nn.GELU())
                self.slot_maps = nn.ModuleList(nn.Linear(mid, hidden) for _ in range(slots_per_step))
            elif gated:
                self.mlp = GatedMLP(token_dim, mid, hidden)
            else:
                self.mlp = nn.Sequential(nn.Linear(token_dim, mid), nn.GELU(), nn.Linear(mid, hidden))
            self.slot_embedding = nn.Parameter(torch.randn(slots_per_step, hidden) * 0.02)  # [K, H]
            return
        self.inp = nn.Linear(token_dim, mid)
        self.slot_embedding = nn.Parameter(torch.randn(slots_per_step, mid) * 0.02)  # [K, W]
        layer = nn.TransformerEncoderLayer(
            mid, heads, 2 * mid, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(mid), nn.Linear(mid, hidden))

    def _project(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Filled slots' normalised tokens ``[N, Dv]`` (slot index ``[N]``) -> ``[N, H]``."""
        if self.slot_maps is None:
            return self.mlp(x)
        h = self.mlp(x)  # [N, W]
        out = h.new_zeros(h.shape[0], self.slot_embedding.shape[-1])
        for k, layer in enumerate(self.slot_maps):
            rows = (slot == k).nonzero(as_tuple=True)[0]
            if rows.numel():
                out = out.index_copy(0, rows, layer(h[rows]))
        return out

    def forward(
        self, slots: torch.Tensor, mask: torch.Tensor, per_slot: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The step embeddings ``[B, S, H]``; with ``per_slot`` also the projected slots ``[B, S, K, H]`` that were
        summed (zeros where a slot is empty), for a :class:`~mmduplex.lm.readout.SlotReadout`."""
        if slots.dim() != 4 or slots.shape[-2:] != (self.slots_per_step, self.token_dim):
            raise InputError(
                "video_slots", f"expected [B, S, {self.slots_per_step}, {self.token_dim}], got {tuple(slots.shape)}"
            )
        if mask.shape != slots.shape[:-1]:
            raise InputError("video_mask", f"expected {tuple(slots.shape[:-1])}, got {tuple(mask.shape)}")
        if self.layers == 0:  # only the filled slots are projected (most are empty): the same sum, less work
            b, s, k, _ = slots.shape
            filled = mask.reshape(-1, k).nonzero(as_tuple=True)  # (step index in [B*S], slot index)
            x = self.norm(slots.reshape(-1, k, self.token_dim)[filled].to(self.slot_embedding.dtype))  # [N, Dv]
            projected = self._project(x, filled[1]) + self.slot_embedding[filled[1]]  # [N, H]
            steps = projected.new_zeros(b * s, projected.shape[-1])
            summed = steps.index_add(0, filled[0], projected).reshape(b, s, -1)  # [B, S, H]
            if not per_slot:
                return summed
            dense = projected.new_zeros(b * s * k, projected.shape[-1])
            return summed, dense.index_copy(0, filled[0] * k + filled[1], projected).reshape(b, s, k, -1)
        x = self.norm(slots.to(self.slot_embedding.dtype))
        b, s, k, _ = x.shape
        tokens = (self.inp(x) + self.slot_embedding).reshape(b * s, k, -1)  # [B*S, K, W]
        flat = mask.reshape(b * s, k)
        keep = flat.clone()
        keep[:, 0] |= ~flat.any(dim=1)  # an empty step attends to one slot (no all-masked softmax); zeroed below
        mixed = self.encoder(tokens, src_key_padding_mask=~keep)  # [B*S, K, W]
        projected = self.out(mixed).reshape(b, s, k, -1) * mask.unsqueeze(-1).to(mixed.dtype)  # [B, S, K, H]
        return (projected.sum(dim=2), projected) if per_slot else projected.sum(dim=2)  # [B, S, H]
