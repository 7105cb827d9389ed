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
* **What a flow token covers** (``flow_mode``, :mod:`mmduplex.tokenizer.flow`): ``"patch"`` (the default, and what
  every bundle written before the field existed does) as above; ``"region"``: one token per connected changed
  region (hysteresis, split between separate new blobs, tiled to ``region_max``), most changed first, its value
  pooled (weighted towards what differs from the last keyframe), its position and extent embedded. The reference
  follows every changed region, emitted or not, so nothing queues behind later frames (a stop is news at once, a
  change past the caps is dropped); the stale-scene rule then measures motion against the last keyframe. With
  ``refresh_interval_s`` the still regions that differ from the last keyframe (a shape that stopped) get a token of
  kind ``still`` every interval, after the frame's changed regions. With ``flow_order: position`` the tokens chosen
  go out in raster order of their centres instead, so an object tends to keep its slot from frame to frame. With
  ``stop_tokens`` a changed region whose motion ended (under a third of it changes now) gets a ``still`` token in
  the next frame where something clearly new since the keyframe stands there: the object that came to rest; with
  ``motion_kinds`` flow tokens are marked ``start`` / ``flow`` / ``gone``; with ``split_at: peaks`` a region is split
  between the local peaks of what is new since the keyframe. All off by default (LOG 2026-12-07: none helped the
  demo on val). With ``steady_every_s`` a changed region that goes on with a motion of the previous frame and looks
  like what moved there (a steady motion) gets a token only once per that period, followed from frame to frame
  through the regions' cells; starts, changes of look and new objects get one at once, so the frame where one of
  two moving objects acts holds its token alone (pair it with ``stop_tokens``: a steady motion's end is then news).
  Off by default: the demo's model read every bucket worse from the thinner stream (LOG 2026-12-07, steady motion).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmduplex.errors import CheckpointError, InputError
from mmduplex.fileio import atomic_dir
from mmduplex.tokenizer.base import (
    FrameTokens,
    TokenEmbedder,
    TokenizedVideo,
    TokenizerState,
    VideoTokenizer,
    cell_layout,
    check_frames,
    check_video,
    upsample_cells,
)
from mmduplex.tokenizer.bflow_config import BFlowConfig
from mmduplex.tokenizer.codec import FlowDecoder, KeyCodec
from mmduplex.tokenizer.fidelity import EPS, normalize_features
from mmduplex.tokenizer.flow import POOL_FLOOR, Regions, find_regions, pool_regions

BUNDLE_KIND = "bflow-tokenizer"
MOVING_PARTS = 3
"""Region mode's ``stop_tokens`` / ``motion_kinds``: a region's motion goes on when at least ``1 / MOVING_PARTS`` of
it changed in both frames (a moving object changes about half of where it was); less, and it stopped / started."""
BUNDLE_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INIT_SEED = 0


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
    keyframe: torch.Tensor
    """``[B, P, D]`` the features of the last keyframe (normalised; region mode's pooling weights and refresh)."""
    last_refresh_t: torch.Tensor
    """``[B]`` float64 time of the last refresh (or keyframe)."""
    moved: torch.Tensor
    """``[B, R]`` long: which of the previous frame's changed regions each cell was in (1, 2, ...; 0: none), for
    region mode's ``stop_tokens`` and ``motion_kinds``."""
    motion_value: torch.Tensor
    """``[B, R, D]`` for ``steady_every_s``: the pooled value of the previous frame's changed region each cell was in
    (zeros where none); ``[B, 0, D]`` when the option is off (nothing to carry, stack or split per step)."""
    motion_sent: torch.Tensor
    """``[B, R]`` float64 for ``steady_every_s``: when the motion of the previous frame's changed region each cell was
    in last had a token (``-inf`` where none); ``[B, 0]`` when the option is off."""


@dataclass
class Steady:
    """Region mode's ``steady_every_s``, for one frame's changed regions (``m``)."""

    changed: Regions
    """Every changed region of the frame (the candidates before steady motions are held back)."""
    values: torch.Tensor
    """``[m, D]`` their pooled values."""
    last_sent: torch.Tensor
    """``[m]`` float64: when the motion each continues last had a token (``-inf``: a motion that starts)."""


@dataclass
class Decisions:
    """What one step emitted for each of ``B`` videos (raw values, before embeddings)."""

    is_key: torch.Tensor  # [B] bool
    key_values: torch.Tensor  # [num_key_frames, K, D], rows in the order of is_key.nonzero()
    flow_batch: torch.Tensor  # [n] long: video of each flow token (by video, then most changed first)
    flow_position: torch.Tensor  # [n] long: region index (patch mode) or the patch nearest the region's centre
    flow_patches: torch.Tensor  # [n, P] bool: the patches each flow token describes
    flow_embedding: torch.Tensor  # [n, D]: position (and extent) embedding of each flow token
    flow_still: torch.Tensor  # [n] bool: a refresh of a still region (region mode), not a change
    flow_values: torch.Tensor  # [n, D]
    flow_before: torch.Tensor  # [n, D]: what the tokens described at those regions before this frame
    n_tokens: torch.Tensor  # [B] long
    since_key_s: torch.Tensor  # [B] float64: seconds since the (possibly just emitted) last keyframe
    flow_motion: torch.Tensor | None = None  # [n] long with ``motion_kinds``: 0 flow, 1 start, 2 gone (still: 0)


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
        patch_region = torch.empty(h * w, dtype=torch.long).scatter_(
            0, patch_ids.reshape(-1), torch.arange(self.num_regions).repeat_interleave(r * r)
        )
        self.register_buffer("patch_region", patch_region, persistent=False)  # [P]: the region of each patch
        rows = (torch.arange(h // r, dtype=torch.float32) + 0.5) * r - 0.5
        cols = (torch.arange(w // r, dtype=torch.float32) + 0.5) * r - 0.5
        centres = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
        self.register_buffer("region_centres", centres, persistent=False)  # [R, 2]
        self.register_buffer("region_position", self.embedder.position(centres), persistent=False)  # [R, D]
        patch_rc = torch.stack(
            torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"),
            dim=-1,
        ).reshape(-1, 2)
        self.register_buffer("patch_centres", patch_rc, persistent=False)  # [P, 2]
        self.register_buffer("patch_position", self.embedder.position(patch_rc), persistent=False)  # [P, D]
        key_position = self.embedder.position(self.key_codec.centres)
        self.register_buffer("key_position", key_position, persistent=False)  # [K, D]

    # ------------------------------------------------------------------ streaming core

    def init_state(self, batch_size: int = 1) -> BFlowState:
        """A fresh state for ``batch_size`` videos (on the module's device)."""
        device = self.region_patches.device
        shape = (batch_size, self.num_patches, self.feature_dim)
        cells = self.num_regions if self.config.steady_every_s is not None else 0  # steady motions' memory
        return BFlowState(
            last_t=torch.full((batch_size,), -math.inf, dtype=torch.float64, device=device),
            started=torch.zeros(batch_size, dtype=torch.bool, device=device),
            last_key_t=torch.zeros(batch_size, dtype=torch.float64, device=device),
            bucket=torch.zeros(batch_size, dtype=torch.float64, device=device),
            reference=torch.zeros(shape, device=device),
            recon=torch.zeros(shape, device=device),
            keyframe=torch.zeros(shape, device=device),
            last_refresh_t=torch.zeros(batch_size, dtype=torch.float64, device=device),
            moved=torch.zeros(batch_size, self.num_regions, dtype=torch.long, device=device),
            motion_value=torch.zeros(batch_size, cells, self.feature_dim, device=device),
            motion_sent=torch.full((batch_size, cells), -math.inf, dtype=torch.float64, device=device),
        )

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over each region's patches: ``[B, P, ...]`` -> ``[B, R, ...]``."""
        return x if self.config.flow_region == 1 else x[:, self.region_patches].mean(dim=2)

    def _score(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch motion ``[B, P]`` -> per-region motion and flow score (beyond the camera's) ``[B, R]``."""
        region_motion = self._regions(motion[..., None])[..., 0]  # [B, R]
        if not self.config.global_motion:
            return region_motion, region_motion
        return region_motion, region_motion - region_motion.median(dim=-1, keepdim=True).values

    def _candidates(self, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor, state: BFlowState):
        """Region mode: the changed regions, then the still regions due a refresh or come to rest (ranked after them);
        which changed region each cell is in (``[B, R]`` long, 0: none; emitted or not, they bring the reference up to
        date); and each region's motion since the last keyframe (``[B, R]``, for the stale-scene rule: the reference
        follows every change, so only the keyframe still says what the tokens have described); with
        ``steady_every_s``, the frame's changed regions as found (:class:`Steady`; the steady motions not yet due are
        left out of the candidates, not out of the rest), else ``None``."""
        cfg = self.config
        cell_grid = (self.grid[0] // cfg.flow_region, self.grid[1] // cfg.flow_region)
        grow = score > cfg.region_grow * cfg.flow_threshold  # [B, R]
        since_key, new_since_key = self._score(1.0 - F.cosine_similarity(x, state.keyframe, dim=-1, eps=EPS))
        new = new_since_key > cfg.flow_threshold  # [B, R]: differs from the last keyframe
        cores = None if cfg.region_split is None else new_since_key > cfg.region_split * cfg.flow_threshold
        if cores is not None and cfg.split_at == "peaks":  # one core per local peak of what is new
            novelty = new_since_key.reshape(-1, 1, *cell_grid)
            peak = novelty == F.max_pool2d(novelty, 3, stride=1, padding=1)
            cores = cores & peak.reshape(novelty.shape[0], -1)
        changed = find_regions(score, score > cfg.flow_threshold, grow, cell_grid, cfg.region_max, cores)
        found = changed.labels(x.shape[0])  # [B, R]: which changed region each cell is in (0: none)
        steady = None
        if cfg.steady_every_s is not None:  # steady motions wait for their turn; the rest below sees every change
            steady, due = self._steady(x, changed, t, state)
            changed = changed.keep(due)
        touched = found > 0
        seeds = torch.zeros_like(touched)  # [B, R]: still cells that get a token now
        if cfg.stop_tokens:  # where a motion ended and something clearly new stands (an object, not a flicker)
            strong = new_since_key > (cfg.region_split or 1.0) * cfg.flow_threshold
            seeds = self._settled(touched, state.moved) & strong
        if cfg.refresh_interval_s is not None:
            due = state.started & (t - state.last_refresh_t >= cfg.refresh_interval_s)  # [B]
            seeds = seeds | due[:, None]
        if cfg.refresh_interval_s is None and not cfg.stop_tokens:
            return changed, found, since_key, new, steady
        still = new & ~touched
        refresh = find_regions(new_since_key, still & seeds, still, cell_grid, cfg.region_max, still=True)
        return changed.then(refresh, x.shape[0]), found, since_key, new, steady

    def _steady(
        self, x: torch.Tensor, changed: Regions, t: torch.Tensor, state: BFlowState
    ) -> tuple[Steady, torch.Tensor]:
        """``steady_every_s``: the frame's changed regions with their pooled values and when the motion each continues
        last had a token; and ``[m]`` bool, which of them get a token now (all but the steady motions whose last token
        is under ``steady_every_s`` old). A region continues a motion when at least a third of its cells were in the
        previous frame's changed regions, and is steady when its value's cosine to theirs (summed over those cells)
        is at least ``steady_similarity``."""
        cfg = self.config
        batch, cells = changed.batch, changed.cells  # [m], [m, R]
        weight = (1.0 - F.cosine_similarity(x, state.keyframe, dim=-1, eps=EPS)).clamp(min=POOL_FLOOR)  # [B, P]
        members = cells[:, self.patch_region]  # [m, P]
        values = pool_regions(x, batch, members, weight, self.patch_position, self.patch_centres)[0]  # [m, D]
        before = cells & (state.moved[batch] > 0)  # [m, R]: cells in a changed region of the previous frame too
        goes_on = MOVING_PARTS * before.sum(dim=1) >= cells.sum(dim=1)  # [m]
        was = torch.einsum("mr,mrd->md", before.to(values.dtype), state.motion_value[batch])  # [m, D]
        similar = F.cosine_similarity(values, was, dim=-1, eps=EPS) >= cfg.steady_similarity
        sent = state.motion_sent[batch]  # [m, R] float64
        last = torch.where(before, sent, torch.full_like(sent, -math.inf)).amax(dim=1)  # [m]
        last = torch.where(goes_on, last, torch.full_like(last, -math.inf))
        due = ~(goes_on & similar) | (t[batch] - last >= cfg.steady_every_s)
        return Steady(changed, values, last), due

    def _motion(self, chosen: Regions, moved: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``motion_kinds``: ``[n]`` long for the chosen regions: 2 (``gone``) where no cell differs from the last
        keyframe any more (what was there left), else 1 (``start``) where less than a third of its cells changed in
        the previous frame (a motion begins: an object starts moving or comes in, also next to one that moves on),
        else 0; still regions 0."""
        cells = chosen.cells.float()  # [n, R]
        overlap = (cells * (moved[chosen.batch] > 0).float()).sum(dim=1)  # cells changed in the frame before too
        touches_motion = MOVING_PARTS * overlap >= cells.sum(dim=1)  # a motion going on
        holds_new = (cells * new[chosen.batch].float()).sum(dim=1) > 0
        kind = torch.where(holds_new, (~touches_motion).long(), torch.full_like(chosen.batch, 2))
        return torch.where(chosen.still, torch.zeros_like(kind), kind)

    @staticmethod
    def _settled(touched: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` the cells of the previous frame's changed regions (``moved``, region labels) whose region has
        less than a third of its cells changed now: where a motion ended. A moving object changes at least about
        half of its last region (where it was); an object that stopped next to one that moves on keeps most of its
        region still, so that one counts as a stop. Regions are told apart as they were found."""
        size = torch.zeros(moved.shape[0], moved.shape[1] + 1, device=moved.device)
        size = size.scatter_add(1, moved, (moved > 0).float())  # [B, R + 1]: cells per previous region
        hit = torch.zeros_like(size).scatter_add(1, moved, (touched & (moved > 0)).float())  # ... changed now
        return (moved > 0) & (MOVING_PARTS * hit < size).gather(1, moved)

    def _advance(self, patches: torch.Tensor, t: torch.Tensor, state: BFlowState) -> tuple[Decisions, BFlowState]:
        """Decide and reconstruct one frame per video (validated ``[B, P, D]``, ``[B]`` float64)."""
        cfg = self.config
        x = normalize_features(patches)  # [B, P, D]
        t = t.to(state.last_t.device)
        started = state.started
        num_key = cfg.num_key_tokens
        region_mode = cfg.flow_mode == "region"
        with torch.no_grad():
            motion = 1.0 - F.cosine_similarity(x, state.reference, dim=-1, eps=EPS)  # [B, P]
            region_motion, score = self._score(motion)  # [B, R] each; score: motion beyond the camera's
            if region_mode:
                candidates, found, region_motion, new, steady = self._candidates(x, score, t, state)
                touched = found > 0
                n_wanted = candidates.count(x.shape[0])  # [B]
            else:
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
            if region_mode:
                chosen = candidates.take(n_flow)
                if cfg.flow_order == "position":
                    chosen = chosen.by_position((self.grid[0] // cfg.flow_region, self.grid[1] // cfg.flow_region))
                flow_batch = chosen.batch
            else:
                order = torch.argsort(-score, dim=-1, stable=True)  # [B, R] most changed first
                num_regions = order.shape[1]
                rank = torch.empty_like(order).scatter_(
                    1, order, torch.arange(num_regions, device=order.device).expand_as(order)
                )
                flow_batch, flow_region = (rank < n_flow[:, None]).nonzero(as_tuple=True)
                emit_order = torch.argsort(flow_batch * num_regions + rank[flow_batch, flow_region])
                flow_batch, flow_region = flow_batch[emit_order], flow_region[emit_order]  # by video, most changed 1st

        recon = state.recon.clone()
        reference = state.reference.clone()
        keyframe = state.keyframe
        key_index = is_key.nonzero(as_tuple=True)[0]
        key_values = x.new_zeros(0, num_key, self.feature_dim)
        if key_index.numel():
            key_values = self.key_codec.encode(x[key_index])  # [k, K, D]
            if cfg.reconstruction == "learned":
                recon[key_index] = self.key_codec.decode(key_values)
            else:
                recon[key_index] = upsample_cells(key_values, self.grid, self.key_layout, "bilinear")
            reference[key_index] = x[key_index]
            keyframe = keyframe.clone()
            keyframe[key_index] = x[key_index].detach()
        moved, motion_value, motion_sent = state.moved, state.motion_value, state.motion_sent
        if region_mode:
            flow = self._region_tokens(x, state, chosen, recon)
            emitted = chosen.cover(x.shape[0])  # [B, R]
            updated = (touched | emitted) & flows[:, None]  # [B, R]: emitted or dropped
            reference = torch.where(updated[:, self.patch_region, None], x, reference)
            moved = found * flows[:, None]
            if steady is not None:
                motion_value, motion_sent = self._motion_memory(steady, emitted, flows, t)
        else:
            flow = self._patch_tokens(x, state, flow_batch, flow_region, recon)
            if flow_batch.numel():
                ids = self.region_patches[flow_region]  # [n, r*r]
                reference[flow_batch[:, None], ids] = x[flow_batch[:, None], ids]
        last_key_t = torch.where(is_key, t, state.last_key_t)
        last_refresh_t = state.last_refresh_t
        if cfg.refresh_interval_s is not None:
            due = is_key | (flows & (t - state.last_refresh_t >= cfg.refresh_interval_s))
            last_refresh_t = torch.where(due, t, last_refresh_t)
        n_tokens = torch.where(is_key, num_key, n_flow)
        motion = self._motion(chosen, state.moved, new) if region_mode and cfg.motion_kinds else None
        decisions = Decisions(is_key, key_values, flow_batch, *flow, n_tokens, t - last_key_t, motion)
        new_state = BFlowState(
            last_t=t,
            started=torch.ones_like(started),
            last_key_t=last_key_t,
            bucket=bucket,
            reference=reference.detach(),
            recon=recon,
            keyframe=keyframe,
            last_refresh_t=last_refresh_t,
            moved=moved,
            motion_value=motion_value,
            motion_sent=motion_sent,
        )
        return decisions, new_state

    def _motion_memory(
        self, steady: Steady, emitted: torch.Tensor, flows: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``steady_every_s``: each cell's changed region's value and when its motion last had a token (now, if the
        region was emitted), for the next frame; zeros and ``-inf`` off the changed regions and on frames without
        flow tokens (a keyframe: every motion after it starts afresh)."""
        changed = steady.changed
        batch_size, num_cells = emitted.shape
        sent_now = (changed.cells & emitted[changed.batch]).any(dim=1)  # [m]
        sent = torch.where(sent_now, t[changed.batch], steady.last_sent)  # [m] float64
        region, cell = changed.cells.nonzero(as_tuple=True)
        video = changed.batch[region]
        value = steady.values.new_zeros(batch_size, num_cells, steady.values.shape[-1])
        value[video, cell] = steady.values[region]
        when = torch.full((batch_size, num_cells), -math.inf, dtype=torch.float64, device=emitted.device)
        when[video, cell] = sent[region]
        keep = flows[:, None]
        return value * keep[..., None], torch.where(keep, when, torch.full_like(when, -math.inf))

    def _patch_tokens(self, x, state, flow_batch, flow_region, recon):
        """Patch mode: the values of the chosen regions, written into ``recon`` (in place)."""
        flow_values = flow_before = x.new_zeros(0, self.feature_dim)
        ids = self.region_patches[flow_region]  # [n, r*r]
        if flow_batch.numel():
            flow_values = self._regions(x)[flow_batch, flow_region]  # [n, D]
            flow_before = self._regions(state.reference)[flow_batch, flow_region]  # [n, D]
            if self.config.reconstruction == "learned":
                recon[flow_batch[:, None], ids] = self.flow_decoder(flow_values)
            else:
                recon[flow_batch[:, None], ids] = flow_values[:, None, :].expand(-1, ids.shape[1], -1)
        members = torch.zeros(flow_region.shape[0], self.num_patches, dtype=torch.bool, device=x.device)
        members[torch.arange(flow_region.shape[0], device=x.device)[:, None], ids] = True
        still = torch.zeros_like(flow_batch, dtype=torch.bool)
        return flow_region, members, self.region_position[flow_region], still, flow_values, flow_before

    def _region_tokens(self, x, state, chosen: Regions, recon):
        """Region mode: pooled values of the chosen regions, written into ``recon`` (in place)."""
        batch = chosen.batch
        members = chosen.cells[:, self.patch_region]  # [n, P]
        weight = (1.0 - F.cosine_similarity(x, state.keyframe, dim=-1, eps=EPS)).clamp(min=POOL_FLOOR)  # [B, P]
        values, embedding, position = pool_regions(x, batch, members, weight, self.patch_position, self.patch_centres)
        before = pool_regions(state.reference, batch, members, weight, self.patch_position, self.patch_centres)[0]
        if batch.numel():
            cell_row, cell = chosen.cells.nonzero(as_tuple=True)  # every (region, cell) pair
            ids = self.region_patches[cell]  # [k, r*r]
            if self.config.reconstruction == "learned":
                decoded = self.flow_decoder(values)[cell_row]  # [k, r*r, D]
            else:
                decoded = values[cell_row, None, :].expand(-1, ids.shape[1], -1)
            recon[batch[cell_row][:, None], ids] = decoded
        return position, members, embedding, chosen.still, values, before

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
                values, embedding = decisions.flow_values[mine], decisions.flow_embedding[mine]
                still = decisions.flow_still[mine]  # each token keeps its place (changed and still may interleave)
                before = decisions.flow_before[mine]
                kinds = {"still": still}
                if decisions.flow_motion is not None:
                    motion = decisions.flow_motion[mine]
                    kinds.update(start=motion == 1, gone=motion == 2)
                    values = torch.where(kinds["gone"][:, None], before, values)  # what left, not the background
                tokens = self.embedder(values, "flow", since, embedding)
                for kind, rows in kinds.items():
                    if bool(rows.any()):
                        tokens[rows] = self.embedder(values[rows], kind, since, embedding[rows])
                tokens = self._widen(tokens, decisions.flow_values[mine] - before)
                out.append(FrameTokens(float(t[b]), "flow", tokens, decisions.flow_position[mine].cpu()))
            else:
                out.append(
                    FrameTokens(float(t[b]), "none", decisions.flow_values.new_zeros(0, self.token_dim), empty_pos)
                )
        return out

    def trace(self, patches: torch.Tensor, timestamps: torch.Tensor) -> tuple[TokenizedVideo, list[Decisions]]:
        """:meth:`tokenize` plus each frame's :class:`Decisions` (which patches each flow token describes, which are
        still-region refreshes): for benchmarks and inspection; the tokens are :meth:`tokenize`'s."""
        timestamps = check_video(patches, timestamps, self.grid, self.feature_dim)
        state = self.init_state(1)
        frames, recons, trail = [], [], []
        for i in range(patches.shape[0]):
            t = timestamps[i : i + 1].to(state.last_t.device)
            decisions, state = self._advance(patches[i : i + 1], t, state)
            frames.extend(self._frame_tokens(decisions, t))
            recons.append(state.recon)
            trail.append(decisions)
        return TokenizedVideo(frames=frames, recon=torch.cat(recons, dim=0), timestamps=timestamps), trail

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
