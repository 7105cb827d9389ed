"""B-Flow's learned parts: the keyframe codec (K learned queries over the patch grid, and back) and the flow
decoder (a flow token's value back to its cell's patches). Trained by
:class:`mmduplex.train.tokenizer_module.BFlowModule`; the decisions of :mod:`mmduplex.tokenizer.bflow` never
depend on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmduplex.tokenizer.base import cell_centres, cell_layout


def _gaussian_bias(centres: torch.Tensor, grid: tuple[int, int], layout: tuple[int, int]) -> torch.Tensor:
    """``[K, P]`` log-weights of a Gaussian around each cell centre (sigma = half a cell): soft spatial pooling."""
    h, w = grid
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    patch_rc = torch.stack([rows, cols], dim=-1).reshape(-1, 2)  # [P, 2]
    sigma = torch.tensor([h / layout[0], w / layout[1]]) / 2.0  # [2]
    diff = (centres[:, None, :] - patch_rc[None, :, :]) / sigma  # [K, P, 2]
    return -0.5 * (diff**2).sum(-1)


class KeyCodec(nn.Module):
    """Keyframe encoder (K learned queries attending over the patch grid) and decoder (P queries over the K tokens).

    Key tokens are attention-weighted means of normalised patch features, so they live in the encoder's token space;
    the attention logits are a content term plus a learned 2-D spatial bias initialised to soft cell pooling.
    """

    def __init__(self, dim: int, grid: tuple[int, int], num_tokens: int, hidden: int, generator: torch.Generator):
        super().__init__()
        layout = cell_layout(num_tokens, grid)
        self.register_buffer("centres", cell_centres(layout, grid), persistent=False)  # [K, 2]
        bias = _gaussian_bias(self.centres, grid, layout)  # [K, P]
        num_patches = grid[0] * grid[1]
        self.scale = 1.0 / math.sqrt(hidden)
        self.enc_bias = nn.Parameter(bias.clone())
        self.enc_query = nn.Parameter(nn.init.normal_(torch.empty(num_tokens, hidden), std=0.02, generator=generator))
        self.enc_key = nn.Linear(dim, hidden, bias=False)
        self.dec_bias = nn.Parameter(bias.t().contiguous())  # [P, K]
        self.dec_query = nn.Parameter(nn.init.normal_(torch.empty(num_patches, hidden), std=0.02, generator=generator))
        self.dec_key = nn.Linear(dim, hidden, bias=False)
        self.dec_in = nn.Linear(dim, hidden)
        self.dec_out = nn.Linear(hidden, dim)
        for layer in (self.enc_key, self.dec_key, self.dec_in):
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(dim), generator=generator)
        nn.init.zeros_(self.dec_in.bias)
        nn.init.zeros_(self.dec_out.weight)  # the decoder starts as pure attention mixing
        nn.init.zeros_(self.dec_out.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised patches ``[b, P, D]`` -> key token values ``[b, K, D]``."""
        logits = torch.einsum("kh,bph->bkp", self.enc_query, self.enc_key(x)) * self.scale + self.enc_bias
        return torch.softmax(logits, dim=-1) @ x  # [b, K, D]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Key token values ``[b, K, D]`` -> reconstructed patches ``[b, P, D]``."""
        logits = torch.einsum("ph,bkh->bpk", self.dec_query, self.dec_key(z)) * self.scale + self.dec_bias
        mix = torch.softmax(logits, dim=-1) @ z  # [b, P, D]
        return mix + self.dec_out(F.gelu(self.dec_in(mix)))


class FlowDecoder(nn.Module):
    """Flow token values ``[n, D]`` -> their regions' patches ``[n, r*r, D]`` (value + learned per-patch correction)."""

    def __init__(self, dim: int, region: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.offset = nn.Parameter(nn.init.normal_(torch.empty(region * region, hidden), std=0.02, generator=generator))
        self.out = nn.Linear(hidden, dim)
        nn.init.normal_(self.inp.weight, std=1.0 / math.sqrt(dim), generator=generator)
        nn.init.zeros_(self.inp.bias)
        nn.init.zeros_(self.out.weight)  # starts as "every patch of the region gets the token's value"
        nn.init.zeros_(self.out.bias)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.inp(values)[:, None, :] + self.offset[None])  # [n, r*r, H]
        return values[:, None, :] + self.out(hidden)  # [n, r*r, D]
