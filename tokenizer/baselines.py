"""Baseline video tokenizers with fixed reconstruction rules (no learned weights), in B-Flow's token space.

* :class:`UniformTokenizer` — N pooled tokens every frame (the usual video-LLM recipe, e.g. 64 tokens/frame).
* :class:`CodecTokenizer` — CoPE-like: an I-frame of pooled tokens every G frames, otherwise a fixed number of
  P-tokens for the patches the decoder currently reconstructs worst.
* :class:`FrameDropTokenizer` — LongVU-like: a frame is kept (as pooled tokens) only when it differs enough from
  the last kept one; the reconstruction holds the last kept frame.
* :class:`NoVideoTokenizer` — nothing at all: the video stream zeroed (the text-only baseline).
* :class:`VideoLLMOnlineTokenizer` — VideoLLM-online: 1 token/frame (mean pool) or 10 (mean + 3x3 pooled).

Values are normalised patch features (:func:`mmduplex.tokenizer.fidelity.normalize_features`) pooled over cells; tokens
handed downstream add the same fixed kind / time / 2-D position embeddings as B-Flow (:class:`TokenEmbedder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmduplex.errors import InputError
from mmduplex.tokenizer.base import (
    FrameTokens,
    TokenEmbedder,
    TokenizerState,
    VideoTokenizer,
    cell_centres,
    cell_layout,
    pool_cells,
    upsample_cells,
)
from mmduplex.tokenizer.fidelity import EPS, normalize_features


@dataclass
class BaselineState(TokenizerState):
    """Streaming state of the baselines (fields a baseline does not need stay unused)."""

    frame: torch.Tensor
    """``[B]`` long: frames seen so far."""
    last_key_t: torch.Tensor
    """``[B]`` float64 time of the last full (pooled) frame."""
    reference: torch.Tensor
    """``[B, P, D]`` the last kept frame (frame drop)."""
    recon: torch.Tensor
    """``[B, P, D]`` the current reconstruction."""


class PoolingTokenizer(VideoTokenizer):
    """Shared machinery: pooled "key" frames, fresh states, embeddings.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        embed_scale: RMS of the added kind/time/position embeddings (as in B-Flow).
        upsample: how pooled cells are reconstructed on the patch grid: ``"nearest"`` (each cell repeated) or
            ``"bilinear"`` (interpolated between cell centres); see :func:`mmduplex.tokenizer.base.upsample_cells`.
    """

    def __init__(self, dim: int, grid: tuple[int, int], embed_scale: float = 1.0, upsample: str = "nearest") -> None:
        super().__init__(dim, grid)
        self.embedder = TokenEmbedder(self.token_dim, embed_scale)
        self.upsample = upsample
        upsample_cells(torch.zeros(1, 1), (1, 1), (1, 1), upsample)  # checks the mode
        self._positions: dict[tuple[int, int], torch.Tensor] = {}
        self._init_args: dict[str, Any] = {"dim": self.token_dim, "grid": list(self.grid), "embed_scale": embed_scale}
        if upsample != "nearest":  # bundles of the default rule keep their description
            self._init_args["upsample"] = upsample

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments (plain values), so a bundle can describe and rebuild this tokenizer."""
        return dict(self._init_args)

    def init_state(self, batch_size: int = 1) -> BaselineState:
        shape = (batch_size, self.num_patches, self.feature_dim)
        return BaselineState(
            last_t=torch.full((batch_size,), -math.inf, dtype=torch.float64),
            frame=torch.zeros(batch_size, dtype=torch.long),
            last_key_t=torch.zeros(batch_size, dtype=torch.float64),
            reference=torch.zeros(shape),
            recon=torch.zeros(shape),
        )

    def _pooled(self, x: torch.Tensor, t: float, layout: tuple[int, int]) -> tuple[FrameTokens, torch.Tensor]:
        """A full frame as ``a x b`` pooled key tokens, and its reconstruction ``[P, D]``."""
        cells = pool_cells(x, self.grid, layout)  # [a*b, D]
        tokens = self.embedder(cells, "key", 0.0, self._cell_position(layout))
        positions = torch.full((cells.shape[0],), -1, dtype=torch.long)
        return FrameTokens(t, "key", tokens, positions), upsample_cells(cells, self.grid, layout, self.upsample)

    def _cell_position(self, layout: tuple[int, int]) -> torch.Tensor:
        """Position embeddings ``[a*b, D]`` of the cell centres of ``layout`` (computed once per layout)."""
        if layout not in self._positions:
            self._positions[layout] = self.embedder.position(cell_centres(layout, self.grid))
        return self._positions[layout]

    def _none(self, t: float) -> FrameTokens:
        return FrameTokens(t, "none", torch.zeros(0, self.token_dim), torch.zeros(0, dtype=torch.long))

    def _step(self, patches: torch.Tensor, t: torch.Tensor, state: BaselineState):
        x = normalize_features(patches)  # [B, P, D]
        out, recon = [], state.recon.clone()
        for b in range(x.shape[0]):
            frame_tokens, recon[b] = self._frame(x[b], float(t[b]), b, state)
            out.append(frame_tokens)
        state.frame = state.frame + 1
        state.last_t = t.clone()
        state.recon = recon
        return out, recon, state

    def _frame(self, x: torch.Tensor, t: float, b: int, state: BaselineState) -> tuple[FrameTokens, torch.Tensor]:
        """One video's frame ``[P, D]`` -> its tokens and reconstruction (may update ``state`` row ``b``)."""
        raise NotImplementedError


class UniformTokenizer(PoolingTokenizer):
    """``tokens_per_frame`` pooled tokens on every frame; reconstruction = nearest upsampling of the cells.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        tokens_per_frame: N; the grid is pooled into the ``a x b = N`` cells closest to its aspect.
        embed_scale: RMS of the added embeddings.
        upsample: ``"nearest"`` or ``"bilinear"`` reconstruction of pooled cells.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        tokens_per_frame: int,
        embed_scale: float = 1.0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__(dim, grid, embed_scale, upsample)
        self.layout = cell_layout(tokens_per_frame, self.grid)
        self._init_args["tokens_per_frame"] = tokens_per_frame

    def _frame(self, x, t, b, state):
        return self._pooled(x, t, self.layout)


class NoVideoTokenizer(PoolingTokenizer):
    """Emits nothing, ever: the video stream is zeroed (the text-only baseline of the demo).

    A duplex model trained on it sees only its own text stream, so it can only guess when and what to say; the gap
    between it and a model with video tokens is what the video stream is worth. Reconstruction stays zero.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
    """

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__(dim, grid)
        self._init_args.pop("embed_scale")

    def _frame(self, x, t, b, state):
        return self._none(t), state.recon[b]


class CodecTokenizer(PoolingTokenizer):
    """CoPE-like codec: every ``keyframe_interval`` frames an I-frame of ``key_tokens`` pooled tokens; in between
    exactly ``p_tokens`` P-tokens (flow kind) carrying the patches the current reconstruction matches worst.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        keyframe_interval: G, frames from one I-frame to the next.
        key_tokens: pooled tokens per I-frame.
        p_tokens: patch tokens per P-frame.
        embed_scale: RMS of the added embeddings.
        upsample: ``"nearest"`` or ``"bilinear"`` reconstruction of pooled cells.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        keyframe_interval: int,
        key_tokens: int,
        p_tokens: int,
        embed_scale: float = 1.0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__(dim, grid, embed_scale, upsample)
        if keyframe_interval < 1 or not 0 <= p_tokens <= self.num_patches:
            raise InputError(
                "config", f"need keyframe_interval >= 1 and 0 <= p_tokens <= P, got {keyframe_interval}, {p_tokens}"
            )
        self.keyframe_interval = keyframe_interval
        self.layout = cell_layout(key_tokens, self.grid)
        self.p_tokens = p_tokens
        self._init_args.update(keyframe_interval=keyframe_interval, key_tokens=key_tokens, p_tokens=p_tokens)
        h, w = self.grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.patch_position = self.embedder.position(torch.stack([rows, cols], dim=-1).reshape(-1, 2).float())  # [P, D]

    def _frame(self, x, t, b, state):
        if int(state.frame[b]) % self.keyframe_interval == 0:
            state.last_key_t[b] = t
            return self._pooled(x, t, self.layout)
        error = 1.0 - F.cosine_similarity(x, state.recon[b], dim=-1, eps=EPS)  # [P]
        chosen = torch.sort(torch.argsort(-error, stable=True)[: self.p_tokens]).values  # [p]
        recon = state.recon[b].clone()
        recon[chosen] = x[chosen]
        tokens = self.embedder(x[chosen], "flow", t - float(state.last_key_t[b]), self.patch_position[chosen])
        return FrameTokens(t, "flow", tokens, chosen), recon


class FrameDropTokenizer(PoolingTokenizer):
    """LongVU-like frame dropping: a frame is kept, as ``tokens_per_frame`` pooled tokens, only when its mean patch
    cosine to the last kept frame is below ``similarity_threshold``; the reconstruction holds the last kept frame.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        similarity_threshold: keep a frame when its similarity to the last kept one falls below this.
        tokens_per_frame: pooled tokens of a kept frame.
        embed_scale: RMS of the added embeddings.
        upsample: ``"nearest"`` or ``"bilinear"`` reconstruction of pooled cells.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        similarity_threshold: float,
        tokens_per_frame: int,
        embed_scale: float = 1.0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__(dim, grid, embed_scale, upsample)
        self.similarity_threshold = similarity_threshold
        self.layout = cell_layout(tokens_per_frame, self.grid)
        self._init_args.update(similarity_threshold=similarity_threshold, tokens_per_frame=tokens_per_frame)

    def _frame(self, x, t, b, state):
        if int(state.frame[b]) > 0:
            similarity = F.cosine_similarity(x, state.reference[b], dim=-1, eps=EPS).mean()
            if float(similarity) >= self.similarity_threshold:
                return self._none(t), state.recon[b]
        state.reference[b] = x
        return self._pooled(x, t, self.layout)


class VideoLLMOnlineTokenizer(PoolingTokenizer):
    """VideoLLM-online's frame tokens: 1 per frame (mean pool; reconstruction = broadcast) or 10 per frame
    (the mean + 3x3 pooled cells; reconstruction = upsampled cells).

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        tokens_per_frame: 1 or 10.
        embed_scale: RMS of the added embeddings.
        upsample: ``"nearest"`` or ``"bilinear"`` reconstruction of pooled cells.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        tokens_per_frame: int = 1,
        embed_scale: float = 1.0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__(dim, grid, embed_scale, upsample)
        if tokens_per_frame not in (1, 10):
            raise InputError("config", f"VideoLLM-online uses 1 or 10 tokens per frame, got {tokens_per_frame}")
        if tokens_per_frame == 10 and min(self.grid) < 3:
            raise InputError("config", f"10 tokens per frame need a grid of at least 3x3, got {self.grid}")
        self.tokens_per_frame = tokens_per_frame
        self._init_args["tokens_per_frame"] = tokens_per_frame

    def _frame(self, x, t, b, state):
        mean, recon = self._pooled(x, t, (1, 1))
        if self.tokens_per_frame == 1:
            return mean, recon
        cells, recon = self._pooled(x, t, (3, 3))
        tokens = torch.cat([mean.tokens, cells.tokens])  # [10, D]
        return FrameTokens(t, "key", tokens, torch.full((10,), -1, dtype=torch.long)), recon


class SparsePatchTokenizer(PoolingTokenizer):
    """One token per patch whose feature vector is non-zero, nothing for an all-zero patch: a rules-only tokenizer for
    precomputed sparse features, where a non-zero patch is an object and zeros are empty space (e.g. the synthetic
    set's oracle features in ``benchmarks/bench_oracle.py``, one vector per shape at the patch of its centre).

    A token's value is the patch's vector as given, not normalised (a sparse vector's zeros carry meaning, and an
    all-zero patch has no normalised form), plus B-Flow's fixed embeddings (:class:`TokenEmbedder`): the ``key`` kind
    (each frame's tokens describe the whole frame), time 0 since that key, and the patch's 2-D position. ``positions``
    holds each token's patch index (ascending); a frame whose patches are all zero is ``"none"``, with no token. The
    reconstruction is the input (nothing is lost). Streaming equals batch: ``tokenize`` runs ``step`` frame by frame.

    Args:
        dim: patch feature width D.
        grid: patch grid (h, w).
        embed_scale: RMS of the added kind/time/position embeddings (as in B-Flow).
    """

    def __init__(self, dim: int, grid: tuple[int, int], embed_scale: float = 1.0) -> None:
        super().__init__(dim, grid, embed_scale)
        h, w = self.grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([rows, cols], dim=-1).reshape(-1, 2).float()  # [P, 2] (row, col)
        self.register_buffer("patch_position", self.embedder.position(centres), persistent=False)  # [P, D]

    def _step(self, patches: torch.Tensor, t: torch.Tensor, state: BaselineState):
        x = patches.float()  # [B, P, D], as given
        out = []
        for b in range(x.shape[0]):
            chosen = torch.nonzero(x[b].ne(0).any(dim=-1)).flatten()  # [n] patch indices, ascending
            if chosen.numel() == 0:
                out.append(self._none(float(t[b])))
                continue
            tokens = self.embedder(x[b, chosen], "key", 0.0, self.patch_position[chosen])  # [n, D]
            out.append(FrameTokens(float(t[b]), "key", tokens, chosen.cpu()))
        state.frame = state.frame + 1
        state.last_t = t.clone()
        state.recon = x.clone()
        return out, x.clone(), state
