"""B-Flow: frozen encoder patch features -> per frame keyframe tokens, motion-sized flow tokens, or nothing.

How a frame is handled (all in :meth:`BFlowTokenizer._advance`, the only place decisions happen):

* Features are normalised per patch (:func:`mmduplex.tokenizer.fidelity.normalize_features`).
* A **reference state** ``S [P, D]`` holds what the emitted tokens describe: a keyframe sets every patch to the
  frame's features, a flow token sets its region's patches to their current features. **Motion** of a patch is
  ``1 - cos(x_t, S)``, so slow drift accumulates until it is emitted; a region's motion is the mean over its
  ``flow_region x flow_region`` patches. Decisions depend only on ``S``, the thresholds and the rate controller,
  never on learned weights: an untrained tokenizer's token counts already follow motion.
* **Global (camera) motion**: a pan or shake moves every patch of a real encoder's feature map (EfficientNet-Lite0:
  1 - cos 0.1-0.35 between consecutive frames at 5 fps, against ~0.003 for a slow object), so with
  ``global_motion`` a region's **flow score** is its motion minus the median region motion of the frame: what the
  camera did to every region is not news, what moved differently (an object on a pan) is.
* **Keyframe** on the first frame; when the scene has gone stale (more than ``key_threshold`` of the regions moved
  by more than ``key_motion`` since the tokens described them) and the last keyframe is at least
  ``min_keyframe_interval_s`` old; or when it is ``max_keyframe_interval_s`` old (forced). Otherwise **flow tokens**
  for the regions whose flow score exceeds ``flow_threshold``, most changed first, at most ``max_flow_tokens`` and
  ``max_tokens_per_frame``, or nothing. Under camera motion the flow tokens follow what moves differently and the
  keyframes (at most one per ``min_keyframe_interval_s``) refresh the rest.
* **Rate control** (``target_rate`` tokens/s, ``None`` = variable rate): a token bucket accrues
  ``target_rate * dt`` per frame up to ``max(bucket_seconds * target_rate, K)``, starting empty after the first
  (free) keyframe. Flow frames spend ``min(wanted, floor(bucket))``; a wanted keyframe is emitted only when the
  bucket holds ``K`` (else the frame falls back to flow tokens); a forced keyframe waits, emitting nothing, until
  it is affordable. Tokens after the first keyframe therefore never exceed ``target_rate`` times the duration.
* The defaults are the untrained settings of ``mmduplex tokenize`` measured on EfficientNet-Lite0 features at 5 fps
  (``notebooks/LOG.md``, 2026-11-29); recipes set their own.
* **Tokens handed downstream** are the values plus fixed kind / time / position embeddings; with ``change_tokens``
  each also carries what changed at its region (``value - before``, zeros for keyframe tokens), width ``2D``.
* **Reconstruction** (causal): the last keyframe's ``K`` tokens decoded to ``[P, D]`` (:class:`KeyCodec`), then
  overwritten region by region by the flow tokens emitted since (:class:`FlowDecoder`); with ``reconstruction:
  cells`` the same tokens under the fixed rule the baselines use (cells upsampled bilinearly, regions copied).

The learned parts (key encoder/decoder, flow decoder) are trained by
:class:`mmduplex.train.tokenizer_module.BFlowModule`; inference bundles are a ``config.json`` plus ``model.safetensors``
(:meth:`BFlowTokenizer.save_pretrained`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mmduplex.errors import CheckpointError, InputError
from mmduplex.fileio import atomic_dir
from mmduplex.tokenizer.base import (
    FrameTokens,
    TokenEmbedder,
    TokenizerState,
    VideoTokenizer,
    cell_centres,
    cell_layout,
    check_frames,
    upsample_cells,
)
from mmduplex.tokenizer.fidelity import EPS, normalize_features

BUNDLE_KIND = "bflow-tokenizer"
BUNDLE_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INIT_SEED = 0
RECONSTRUCTIONS = ("learned", "cells")


@dataclass
class BFlowConfig:
    """Hyper-parameters of a B-Flow tokenizer (saved with every checkpoint and bundle)."""

    dim: int
    """Patch feature width D of the frozen encoder (the token width, or twice it with ``change_tokens``)."""
    grid: tuple[int, int]
    """Patch grid (h, w) of the encoder; P = h * w."""
    num_key_tokens: int = 16
    """K: tokens per keyframe."""
    key_threshold: float = 0.5
    """A keyframe is wanted when more than this fraction of the regions moved by more than ``key_motion``."""
    key_motion: float = 0.5
    """Motion ``1 - cos(x_t, S)`` a region needs to count towards the keyframe rule (the scene has gone stale)."""
    flow_threshold: float = 0.4
    """A region changed when its motion exceeds the frame's global motion (if compensated) by more than this."""
    global_motion: bool = True
    """Compensate global (camera) motion: a region's flow score is its motion minus the median region motion."""
    flow_region: int = 1
    """Flow regions are flow_region x flow_region patch blocks (1 = single patches); must divide the grid."""
    max_flow_tokens: int | None = 8
    """At most this many flow tokens per frame, the most changed first (None = one per region)."""
    max_tokens_per_frame: int | None = None
    """At most this many tokens in any frame (None = no cap): flow frames keep their most-changed regions; must be
    >= num_key_tokens. Tie it to what the consumer carries per frame interval (duplex slots per step x steps/frame)."""
    min_keyframe_interval_s: float = 2.0
    """A wanted (not forced) keyframe waits until the last one is this old (s); bounds keyframes to K / this tok/s."""
    max_keyframe_interval_s: float = 20.0
    """A keyframe is forced when the last one is this old (s); a duplex recipe keeps it below the model's window."""
    target_rate: float | None = None
    """Token budget in tokens/s after the first keyframe (None = variable rate, thresholds only)."""
    bucket_seconds: float = 2.0
    """Token bucket capacity in seconds of budget (at least K tokens)."""
    hidden_dim: int | None = None
    """Width of the attention / MLP layers of the learned decoders (None = D)."""
    embed_scale: float = 1.0
    """RMS of the kind/time/position embeddings added to token values handed downstream (values have RMS 1)."""
    change_tokens: bool = False
    """Hand downstream what changed, not only what is there: each token is ``[embedded value, value - before]``
    (width 2D), where ``before`` is what the tokens had described at the flow token's region (its reference
    state); keyframe tokens carry zeros in the second half. A colour change in place then differs from an object
    entering empty background, and motion from a new object. Decisions and reconstruction do not depend on it."""
    reconstruction: str = "learned"
    """``"learned"``: the trained decoders; ``"cells"``: the fixed rule every tokenizer can be judged by (key tokens
    bilinearly upsampled from their cells, flow tokens copied to their regions). Decisions do not depend on it."""

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        h, w = self.grid
        problems = []
        if self.dim < 2 or h < 1 or w < 1:
            problems.append(f"need dim >= 2 and a positive grid, got dim={self.dim}, grid={self.grid}")
        if self.num_key_tokens < 1 or self.num_key_tokens > h * w:
            problems.append(f"num_key_tokens={self.num_key_tokens} must be in [1, {h * w}]")
        if not 0.0 <= self.key_threshold <= 1.0:
            problems.append(f"key_threshold={self.key_threshold} must be a fraction in [0, 1]")
        if not 0.0 <= self.key_motion < 2.0:
            problems.append(f"key_motion={self.key_motion} must be in [0, 2)")
        if not 0.0 <= self.flow_threshold < 2.0:
            problems.append(f"flow_threshold={self.flow_threshold} must be in [0, 2)")
        if self.flow_region < 1 or h % self.flow_region or w % self.flow_region:
            problems.append(f"flow_region={self.flow_region} must divide the {h}x{w} grid")
        if self.max_flow_tokens is not None and self.max_flow_tokens < 0:
            problems.append(f"max_flow_tokens={self.max_flow_tokens} must be >= 0")
        if self.max_tokens_per_frame is not None and self.max_tokens_per_frame < self.num_key_tokens:
            problems.append(
                f"max_tokens_per_frame={self.max_tokens_per_frame} must be >= num_key_tokens={self.num_key_tokens}"
            )
        if not 0.0 <= self.min_keyframe_interval_s <= self.max_keyframe_interval_s:
            problems.append(
                f"min_keyframe_interval_s={self.min_keyframe_interval_s} must be in [0, max_keyframe_interval_s]"
            )
        if not self.max_keyframe_interval_s > 0:
            problems.append(f"max_keyframe_interval_s={self.max_keyframe_interval_s} must be > 0")
        if self.reconstruction not in RECONSTRUCTIONS:
            problems.append(f"reconstruction={self.reconstruction!r} must be one of {RECONSTRUCTIONS}")
        if not self.bucket_seconds > 0:
            problems.append(f"bucket_seconds={self.bucket_seconds} must be > 0")
        if self.target_rate is not None and not (
            self.target_rate > 0 and self.target_rate * self.max_keyframe_interval_s >= self.num_key_tokens
        ):
            problems.append(
                f"target_rate={self.target_rate} tok/s cannot afford a keyframe of {self.num_key_tokens} tokens "
                f"every {self.max_keyframe_interval_s}s (need >={self.num_key_tokens / self.max_keyframe_interval_s:g})"
            )
        if problems:
            raise InputError("config", "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BFlowConfig:
        """Build from a plain dict (a bundle's ``config.json``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("config", f"unknown B-Flow config keys {unknown}")
        return cls(**data)


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


@dataclass
class BFlowState(TokenizerState):
    """Streaming state of ``B`` videos."""

    started: torch.Tensor
    """``[B]`` bool: the first keyframe has been emitted."""
    last_key_t: torch.Tensor
    """``[B]`` float64 time of the last keyframe."""
    bucket: torch.Tensor
    """``[B]`` float64 tokens available to the rate controller."""
    reference: torch.Tensor
    """``[B, P, D]`` what the emitted tokens describe (normalised features)."""
    recon: torch.Tensor
    """``[B, P, D]`` the decoder's reconstruction from the tokens emitted so far."""


@dataclass
class Decisions:
    """What one step emitted for each of ``B`` videos (raw values, before embeddings)."""

    is_key: torch.Tensor  # [B] bool
    key_values: torch.Tensor  # [num_key_frames, K, D], rows in the order of is_key.nonzero()
    flow_batch: torch.Tensor  # [n] long: video of each flow token (by video, then most changed first)
    flow_region: torch.Tensor  # [n] long: region index
    flow_values: torch.Tensor  # [n, D]
    flow_before: torch.Tensor  # [n, D]: what the tokens described at those regions before this frame
    n_tokens: torch.Tensor  # [B] long
    since_key_s: torch.Tensor  # [B] float64: seconds since the (possibly just emitted) last keyframe


class BFlowTokenizer(VideoTokenizer):
    """The B-Flow video tokenizer (see the module docstring).

    Args:
        config: hyper-parameters (:class:`BFlowConfig`).
    """

    def __init__(self, config: BFlowConfig) -> None:
        super().__init__(config.dim, config.grid)
        if config.change_tokens:
            self.token_dim = 2 * config.dim
        self.config = config
        self.metadata: dict[str, Any] = {}
        generator = torch.Generator().manual_seed(INIT_SEED)  # identical untrained weights in every process
        hidden = config.hidden_dim or config.dim
        r = config.flow_region
        h, w = self.grid
        self.num_regions = (h // r) * (w // r)
        self.key_codec = KeyCodec(config.dim, self.grid, config.num_key_tokens, hidden, generator)
        self.key_layout = cell_layout(config.num_key_tokens, self.grid)
        self.flow_decoder = FlowDecoder(config.dim, r, hidden, generator)
        self.embedder = TokenEmbedder(config.dim, config.embed_scale)
        patch_ids = torch.arange(h * w).reshape(h // r, r, w // r, r).permute(0, 2, 1, 3).reshape(-1, r * r)
        self.register_buffer("region_patches", patch_ids, persistent=False)  # [R, r*r]
        rows = (torch.arange(h // r, dtype=torch.float32) + 0.5) * r - 0.5
        cols = (torch.arange(w // r, dtype=torch.float32) + 0.5) * r - 0.5
        centres = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
        self.register_buffer("region_centres", centres, persistent=False)  # [R, 2]
        self.register_buffer("region_position", self.embedder.position(centres), persistent=False)  # [R, D]
        key_position = self.embedder.position(self.key_codec.centres)
        self.register_buffer("key_position", key_position, persistent=False)  # [K, D]

    # ------------------------------------------------------------------ streaming core

    def init_state(self, batch_size: int = 1) -> BFlowState:
        """A fresh state for ``batch_size`` videos (on the module's device)."""
        device = self.region_patches.device
        shape = (batch_size, self.num_patches, self.feature_dim)
        return BFlowState(
            last_t=torch.full((batch_size,), -math.inf, dtype=torch.float64, device=device),
            started=torch.zeros(batch_size, dtype=torch.bool, device=device),
            last_key_t=torch.zeros(batch_size, dtype=torch.float64, device=device),
            bucket=torch.zeros(batch_size, dtype=torch.float64, device=device),
            reference=torch.zeros(shape, device=device),
            recon=torch.zeros(shape, device=device),
        )

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over each region's patches: ``[B, P, ...]`` -> ``[B, R, ...]``."""
        return x if self.config.flow_region == 1 else x[:, self.region_patches].mean(dim=2)

    def _advance(self, patches: torch.Tensor, t: torch.Tensor, state: BFlowState) -> tuple[Decisions, BFlowState]:
        """Decide and reconstruct one frame per video (validated ``[B, P, D]``, ``[B]`` float64)."""
        cfg = self.config
        x = normalize_features(patches)  # [B, P, D]
        t = t.to(state.last_t.device)
        started = state.started
        num_key = cfg.num_key_tokens
        with torch.no_grad():
            motion = 1.0 - F.cosine_similarity(x, state.reference, dim=-1, eps=EPS)  # [B, P]
            region_motion = self._regions(motion[..., None])[..., 0]  # [B, R]
            score = region_motion  # [B, R] flow score: motion beyond the camera's
            if cfg.global_motion:
                score = region_motion - region_motion.median(dim=-1, keepdim=True).values
            changed = score > cfg.flow_threshold  # [B, R]
            n_wanted = changed.sum(-1)  # [B]
            for cap in (cfg.max_flow_tokens, cfg.max_tokens_per_frame):
                if cap is not None:
                    n_wanted = n_wanted.clamp(max=cap)
            since_key = t - state.last_key_t
            stale = (region_motion > cfg.key_motion).float().mean(-1) > cfg.key_threshold
            want_key = stale & (since_key >= cfg.min_keyframe_interval_s)
            forced = started & (since_key >= cfg.max_keyframe_interval_s)
            bucket = state.bucket
            if cfg.target_rate is None:
                affordable = torch.ones_like(started)
            else:
                capacity = max(cfg.bucket_seconds * cfg.target_rate, float(num_key))
                dt = torch.where(started, t - state.last_t, torch.zeros_like(t))
                bucket = (bucket + cfg.target_rate * dt).clamp(max=capacity)
                affordable = bucket >= num_key
                n_wanted = torch.minimum(n_wanted, bucket.floor().long())
            is_key = ~started | ((want_key | forced) & affordable)
            flows = started & ~is_key & ~(forced & ~affordable)  # a forced keyframe not yet affordable: wait
            n_flow = torch.where(flows, n_wanted, torch.zeros_like(n_wanted))  # [B]
            if cfg.target_rate is not None:
                bucket = bucket - n_flow - torch.where(started & is_key, num_key, 0)
            order = torch.argsort(-score, dim=-1, stable=True)  # [B, R] most changed first
            num_regions = order.shape[1]
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(num_regions, device=order.device).expand_as(order)
            )
            flow_batch, flow_region = (rank < n_flow[:, None]).nonzero(as_tuple=True)
            emit_order = torch.argsort(flow_batch * num_regions + rank[flow_batch, flow_region])
            flow_batch, flow_region = flow_batch[emit_order], flow_region[emit_order]  # by video, most changed first

        recon = state.recon.clone()
        reference = state.reference.clone()
        key_index = is_key.nonzero(as_tuple=True)[0]
        key_values = x.new_zeros(0, num_key, self.feature_dim)
        if key_index.numel():
            key_values = self.key_codec.encode(x[key_index])  # [k, K, D]
            if cfg.reconstruction == "learned":
                recon[key_index] = self.key_codec.decode(key_values)
            else:
                recon[key_index] = upsample_cells(key_values, self.grid, self.key_layout, "bilinear")
            reference[key_index] = x[key_index]
        flow_values = flow_before = x.new_zeros(0, self.feature_dim)
        if flow_batch.numel():
            flow_values = self._regions(x)[flow_batch, flow_region]  # [n, D]
            flow_before = self._regions(state.reference)[flow_batch, flow_region]  # [n, D]
            ids = self.region_patches[flow_region]  # [n, r*r]
            if cfg.reconstruction == "learned":
                recon[flow_batch[:, None], ids] = self.flow_decoder(flow_values)
            else:
                recon[flow_batch[:, None], ids] = flow_values[:, None, :].expand(-1, ids.shape[1], -1)
            reference[flow_batch[:, None], ids] = x[flow_batch[:, None], ids]
        last_key_t = torch.where(is_key, t, state.last_key_t)
        n_tokens = torch.where(is_key, num_key, n_flow)
        decisions = Decisions(
            is_key, key_values, flow_batch, flow_region, flow_values, flow_before, n_tokens, t - last_key_t
        )
        new_state = BFlowState(
            last_t=t,
            started=torch.ones_like(started),
            last_key_t=last_key_t,
            bucket=bucket,
            reference=reference.detach(),
            recon=recon,
        )
        return decisions, new_state

    def _widen(self, tokens: torch.Tensor, change: torch.Tensor | None) -> torch.Tensor:
        """With ``change_tokens``: ``[n, D]`` tokens -> ``[n, 2D]`` with the change (zeros for ``None``)."""
        if not self.config.change_tokens:
            return tokens
        return torch.cat([tokens, torch.zeros_like(tokens) if change is None else change.to(tokens.dtype)], dim=-1)

    def _frame_tokens(self, decisions: Decisions, t: torch.Tensor) -> list[FrameTokens]:
        """Embed the raw token values of one step: one :class:`FrameTokens` per video."""
        out = []
        key_rows = {int(b): i for i, b in enumerate(decisions.is_key.nonzero(as_tuple=True)[0])}
        empty_pos = torch.zeros(0, dtype=torch.long)
        for b in range(decisions.is_key.shape[0]):
            since = float(decisions.since_key_s[b])
            if b in key_rows:
                values = decisions.key_values[key_rows[b]]  # [K, D]
                tokens = self._widen(self.embedder(values, "key", since, self.key_position), None)
                positions = torch.full((values.shape[0],), -1, dtype=torch.long)
                out.append(FrameTokens(float(t[b]), "key", tokens, positions))
                continue
            mine = decisions.flow_batch == b
            if bool(mine.any()):
                regions = decisions.flow_region[mine]
                values = decisions.flow_values[mine]
                tokens = self.embedder(values, "flow", since, self.region_position[regions])
                tokens = self._widen(tokens, values - decisions.flow_before[mine])
                out.append(FrameTokens(float(t[b]), "flow", tokens, regions.cpu()))
            else:
                out.append(
                    FrameTokens(float(t[b]), "none", decisions.flow_values.new_zeros(0, self.token_dim), empty_pos)
                )
        return out

    def _step(self, patches: torch.Tensor, t: torch.Tensor, state: BFlowState):
        decisions, state = self._advance(patches, t, state)
        return self._frame_tokens(decisions, t), state.recon, state

    def forward(self, patches: torch.Tensor, timestamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched training path over ``B`` clips: the same per-frame decisions as :meth:`step`.

        Args:
            patches: ``[B, T, P, D]`` features.
            timestamps: ``[B, T]`` strictly increasing times per clip.

        Returns:
            Reconstructions ``[B, T, P, D]`` (differentiable w.r.t. the learned parts) and tokens per frame ``[B, T]``.
        """
        if patches.dim() != 4 or timestamps.dim() != 2 or tuple(timestamps.shape) != tuple(patches.shape[:2]):
            raise InputError(
                "patches", f"expected [B, T, P, D] and [B, T], got {tuple(patches.shape)}, {tuple(timestamps.shape)}"
            )
        state = self.init_state(patches.shape[0])
        recons, counts = [], []
        for i in range(patches.shape[1]):
            t = check_frames(patches[:, i], timestamps[:, i], self.grid, self.feature_dim).to(state.last_t.device)
            if bool((t <= state.last_t).any()):
                raise InputError("timestamps", f"not increasing at frame {i}")
            decisions, state = self._advance(patches[:, i], t, state)
            recons.append(state.recon)
            counts.append(decisions.n_tokens)
        return torch.stack(recons, dim=1), torch.stack(counts, dim=1)  # [B, T, P, D], [B, T]

    def with_settings(self, **changes: Any) -> BFlowTokenizer:
        """A copy with other decision settings (e.g. ``target_rate``) and the same weights and metadata."""
        other = BFlowTokenizer(replace(self.config, **changes))
        other.load_state_dict(self.state_dict())
        other.metadata = dict(self.metadata)
        return other.to(self.region_patches.device).train(self.training)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write an inference bundle: ``config.json`` (kind, config, metadata) + ``model.safetensors``; atomic."""
        with atomic_dir(out_dir) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            meta = {
                "kind": BUNDLE_KIND,
                "format": BUNDLE_FORMAT,
                "config": asdict(self.config),
                "metadata": self.metadata,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, bundle_dir: str | os.PathLike) -> BFlowTokenizer:
        """Load a bundle written by :meth:`save_pretrained` (no pickle involved).

        Raises:
            CheckpointError: missing files, another kind of bundle, or weights that do not fit the config.
        """
        bundle_dir = Path(bundle_dir)
        config_path = bundle_dir / CONFIG_FILE
        if not config_path.is_file() or not (bundle_dir / WEIGHTS_FILE).is_file():
            raise CheckpointError(bundle_dir, f"not a B-Flow bundle (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            meta = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(config_path, f"unreadable bundle config: {err}") from err
        if not isinstance(meta, dict) or meta.get("kind") != BUNDLE_KIND:
            kind = meta.get("kind") if isinstance(meta, dict) else None
            raise CheckpointError(config_path, f"bundle of kind {kind!r}, expected {BUNDLE_KIND!r}")
        try:
            state = load_file(str(bundle_dir / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(bundle_dir / WEIGHTS_FILE, f"unreadable weights: {err}") from err
        return cls._build(bundle_dir, meta.get("config"), state, meta.get("metadata") or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> BFlowTokenizer:
        """Load a bundle folder or a Lightning checkpoint of :class:`mmduplex.train.tokenizer_module.BFlowModule`.

        Lightning checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain containers only).

        Raises:
            CheckpointError: missing/corrupt file or a checkpoint of another kind.
        """
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path)
        if not path.is_file():
            raise CheckpointError(path, "no such checkpoint file or bundle folder")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip/EOF/OS errors of every flavour
            if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
                problem = "holds pickled objects, not only tensors and plain values; refusing to unpickle it"
            else:
                problem = f"not a readable PyTorch checkpoint ({type(err).__name__})"
            raise CheckpointError(path, problem) from err
        if not isinstance(ckpt, dict) or ckpt.get("mmduplex_kind") != BUNDLE_KIND:
            kind = ckpt.get("mmduplex_kind") if isinstance(ckpt, dict) else None
            raise CheckpointError(path, f"checkpoint of kind {kind!r}, expected a B-Flow tokenizer ({BUNDLE_KIND!r})")
        prefix = "tokenizer."
        state = {k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
        return cls._build(path, ckpt.get("bflow_config"), state, ckpt.get("bflow_metadata") or {})

    @classmethod
    def _build(cls, source: Path, config: Any, state: dict[str, torch.Tensor], metadata: dict) -> BFlowTokenizer:
        if not isinstance(config, dict):
            raise CheckpointError(source, "no B-Flow config stored")
        try:
            tokenizer = cls(BFlowConfig.from_dict(config))
            tokenizer.load_state_dict(state, strict=True)
        except (InputError, RuntimeError, TypeError) as err:
            raise CheckpointError(source, f"weights do not match the stored config: {err}") from err
        tokenizer.metadata = dict(metadata)
        return tokenizer.eval()
