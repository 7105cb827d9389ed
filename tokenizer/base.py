"""The surface every video tokenizer shares: frame tokens, the step/tokenize API, input checks and token embeddings.

B-Flow (:mod:`mmduplex.tokenizer.bflow`) and the baselines (:mod:`mmduplex.tokenizer.baselines`) are
:class:`VideoTokenizer`\\ s, so the duplex model, the demo and the evaluation can swap them. ``step`` is the only place
a tokenizer decides what to emit; ``tokenize`` runs ``step`` frame by frame, so streaming and batch use give the same
result by construction. Every tokenizer hands downstream tokens in the same space: the token's value (normalised CLIP
patch features, see
:mod:`mmduplex.tokenizer.fidelity`) plus fixed kind / time / 2-D position embeddings made by :class:`TokenEmbedder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmduplex.errors import InputError

KINDS = ("key", "flow", "none")
TOKENIZE_GROUP = 16
"""Videos :meth:`VideoTokenizer.tokenize_many` steps together by default: on the demo's features B-Flow runs ~3x
faster a frame in groups of 16 than one video at a time (``benchmarks/bench_token_store.py``)."""
EMBEDDED_KINDS = ("key", "flow", "still", "start", "gone")
"""Kinds of token :class:`TokenEmbedder` marks apart; ``still`` is a flow-frame token that refreshes a still region
or tells where a motion ended, ``start`` a change where nothing moved in the frame before, ``gone`` what left a region
(B-Flow's region mode); any other kind is embedded as ``flow``."""


@dataclass
class FrameTokens:
    """What a tokenizer emitted for one frame."""

    t: float
    """Frame time (s)."""
    kind: str
    """``"key"`` (a full description), ``"flow"`` (what changed) or ``"none"``."""
    tokens: torch.Tensor
    """``[n, token_dim]`` embeddings (value + kind / time / position); ``n == 0`` for ``"none"``."""
    positions: torch.Tensor
    """``[n]`` long: patch-region index for flow tokens, -1 for key tokens."""

    @property
    def n_tokens(self) -> int:
        """Number of tokens emitted for this frame."""
        return int(self.tokens.shape[0])


@dataclass
class TokenizedVideo:
    """A whole video's tokens and its causal reconstruction."""

    frames: list[FrameTokens]
    """One entry per sampled frame."""
    recon: torch.Tensor
    """``[T, P, D]`` reconstruction of every frame from the tokens emitted up to it (normalised space)."""
    timestamps: torch.Tensor
    """``[T]`` frame times (s)."""

    @property
    def n_tokens(self) -> list[int]:
        """Tokens per frame."""
        return [f.n_tokens for f in self.frames]

    @property
    def tokens_total(self) -> int:
        """All tokens, the first keyframe included."""
        return sum(self.n_tokens)

    @property
    def keyframes(self) -> int:
        """Number of keyframes."""
        return sum(f.kind == "key" for f in self.frames)

    @property
    def flow_tokens(self) -> int:
        """Number of flow tokens."""
        return sum(f.n_tokens for f in self.frames if f.kind == "flow")

    @property
    def tokens_after_first_key(self) -> int:
        """Tokens of every frame after the first ``key`` frame (forced keyframes included)."""
        first = next((i for i, f in enumerate(self.frames) if f.kind == "key"), len(self.frames))
        return sum(f.n_tokens for f in self.frames[first + 1 :])

    def summary(self, duration_s: float) -> dict[str, Any]:
        """The rate figures of ``tokens.json`` (``docs/DESIGN.md``) over a video lasting ``duration_s`` seconds."""
        if not duration_s > 0:
            raise InputError("duration_s", f"must be > 0, got {duration_s}")
        return {
            "tokens_total": self.tokens_total,
            "tokens_per_second": self.tokens_total / duration_s,
            "tokens_per_second_after_first_keyframe": self.tokens_after_first_key / duration_s,
            "keyframes": self.keyframes,
            "flow_tokens": self.flow_tokens,
            "per_frame": [{"t": float(f.t), "kind": f.kind, "n_tokens": f.n_tokens} for f in self.frames],
        }


@dataclass
class TokenizerState:
    """Streaming state shared by all tokenizers; subclasses add their own fields."""

    last_t: torch.Tensor
    """``[B]`` float64 time of the previous frame (``-inf`` before the first)."""


class VideoTokenizer(nn.Module):
    """Base class: frozen patch features ``[T, P, D]`` on an ``h x w`` grid -> per-frame tokens + reconstruction.

    Args:
        dim: patch feature width ``D`` (``feature_dim``; also ``token_dim``, the width of the tokens handed
            downstream, unless a subclass widens its tokens).
        grid: patch grid ``(h, w)``; ``P = h * w``.
    """

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if dim < 2 or len(grid) != 2 or min(grid) < 1:
            raise InputError("config", f"need dim >= 2 and a (h, w) grid, got dim={dim}, grid={grid}")
        self.feature_dim = int(dim)
        self.token_dim = int(dim)
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]

    def init_state(self, batch_size: int = 1) -> TokenizerState:
        """A fresh streaming state for ``batch_size`` independent videos."""
        raise NotImplementedError

    def _step(self, patches: torch.Tensor, t: torch.Tensor, state: Any) -> tuple[list[FrameTokens], torch.Tensor, Any]:
        raise NotImplementedError

    def step(self, patches: torch.Tensor, t: torch.Tensor, state: Any) -> tuple[list[FrameTokens], torch.Tensor, Any]:
        """Tokenize one frame of each of ``B`` videos.

        Args:
            patches: ``[B, P, D]`` patch features of the current frames.
            t: ``[B]`` their times (s), later than the previous step's.
            state: from :meth:`init_state` or the previous ``step``.

        Returns:
            One :class:`FrameTokens` per video, the reconstruction ``[B, P, D]`` and the new state.

        Raises:
            InputError: wrong shape or dimension, non-finite values, or times not increasing.
        """
        t = check_frames(patches, t, self.grid, self.feature_dim).to(state.last_t.device)  # times live with the state
        if t.shape[0] != state.last_t.shape[0]:
            raise InputError("patches", f"batch of {t.shape[0]} frames for a state of {state.last_t.shape[0]} videos")
        if bool((t <= state.last_t).any()):
            raise InputError("timestamps", f"not increasing: {t.tolist()} after {state.last_t.tolist()}")
        return self._step(patches, t, state)

    def tokenize(self, patches: torch.Tensor, timestamps: torch.Tensor) -> TokenizedVideo:
        """Tokenize a whole video ``[T, P, D]`` with times ``[T]``; equals stepping frame by frame."""
        timestamps = check_video(patches, timestamps, self.grid, self.feature_dim)
        state = self.init_state(1)
        frames: list[FrameTokens] = []
        recons = []
        for i in range(patches.shape[0]):  # inputs are checked: step's own checks are skipped, decisions are not
            out, recon, state = self._step(patches[i : i + 1], timestamps[i : i + 1], state)
            frames.extend(out)
            recons.append(recon)
        return TokenizedVideo(frames=frames, recon=torch.cat(recons, dim=0), timestamps=timestamps)  # [T, P, D]

    def tokenize_many(
        self, videos: list[tuple[torch.Tensor, torch.Tensor]], group: int = TOKENIZE_GROUP
    ) -> list[TokenizedVideo]:
        """:meth:`tokenize` of several videos ``[(patches [T_i, P, D], times [T_i]), ...]``, in the order given: the
        videos sorted by length and taken ``group`` at a time, one :meth:`step` per frame over a group (``B`` = its
        videos), which costs about what one video's step costs when the per-frame work is many small operations
        (B-Flow's). A video shorter than its group's longest goes on with its last frame repeated (at its frame
        spacing) and those steps' tokens are dropped; videos never mix in a step's decisions, so each result equals
        ``tokenize`` of that video alone (B-Flow's tokens bit for bit, its reconstruction to rounding; a test checks
        both)."""
        if group < 1:
            raise InputError("group", f"must be >= 1, got {group}")
        checked = [check_video(p, t, self.grid, self.feature_dim) for p, t in videos]
        order = sorted(range(len(videos)), key=lambda i: videos[i][0].shape[0])  # few padded steps in a group
        out: list[TokenizedVideo | None] = [None] * len(videos)
        for first in range(0, len(order), group):
            members = order[first : first + group]
            done = self._tokenize_group([videos[i][0] for i in members], [checked[i] for i in members])
            for i, video in zip(members, done, strict=True):
                out[i] = video
        return out  # type: ignore[return-value]

    def _tokenize_group(self, patches: list[torch.Tensor], times: list[torch.Tensor]) -> list[TokenizedVideo]:
        """One group of :meth:`tokenize_many` (checked times), in lockstep."""
        if len(patches) == 1:
            return [self.tokenize(patches[0], times[0])]
        lengths = [p.shape[0] for p in patches]
        steps = max(lengths)
        padded_patches, padded_times = [], []
        for p, t in zip(patches, times, strict=True):
            extra = steps - p.shape[0]
            if extra:
                gap = float(t[-1] - t[-2]) if t.shape[0] > 1 else 1.0
                later = t[-1] + gap * torch.arange(1, extra + 1, dtype=torch.float64)
                p, t = torch.cat([p, p[-1:].expand(extra, -1, -1)]), torch.cat([t, later])
            padded_patches.append(p)
            padded_times.append(t)
        stacked, stamps = torch.stack(padded_patches, dim=1), torch.stack(padded_times, dim=1)  # [T, B, P, D], [T, B]
        state = self.init_state(len(patches))
        frames: list[list[FrameTokens]] = [[] for _ in patches]
        recons: list[torch.Tensor] = []
        for i in range(steps):
            out, recon, state = self._step(stacked[i], stamps[i], state)
            for b, frame in enumerate(out):
                if i < lengths[b]:
                    frames[b].append(frame)
            recons.append(recon)
        recon = torch.stack(recons, dim=1)  # [B, T, P, D]
        return [
            TokenizedVideo(frames=frames[b], recon=recon[b, : lengths[b]], timestamps=times[b])
            for b in range(len(patches))
        ]


def _check_features(patches: Any, grid: tuple[int, int], dim: int, expected: str) -> None:
    if not isinstance(patches, torch.Tensor):
        raise InputError("patches", f"expected a tensor {expected}, got {type(patches).__name__}")
    if patches.dim() != 3:
        raise InputError("patches", f"expected {expected}, got shape {tuple(patches.shape)}")
    if patches.shape[0] == 0:
        raise InputError("patches", "empty feature tensor (no frames)")
    if not patches.is_floating_point():
        raise InputError("patches", f"expected floating point features, got {patches.dtype}")
    num_patches = grid[0] * grid[1]
    if patches.shape[1] != num_patches or patches.shape[2] != dim:
        raise InputError(
            "patches",
            f"expected P={num_patches} patches ({grid[0]}x{grid[1]}) of dim D={dim}, got shape {tuple(patches.shape)}",
        )
    if not bool(torch.isfinite(patches).all()):
        raise InputError("patches", "features contain NaN or infinite values")


def check_frames(patches: Any, t: Any, grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Validate one step's ``[B, P, D]`` features and ``[B]`` times; returns the times as float64."""
    _check_features(patches, grid, dim, "[B, P, D]")
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if t.shape[0] != patches.shape[0] or not bool(torch.isfinite(t).all()):
        raise InputError("timestamps", f"expected {patches.shape[0]} finite times, got {t.tolist()}")
    return t


def check_video(patches: Any, timestamps: Any, grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Validate a video's ``[T, P, D]`` features and ``[T]`` times; returns the times as float64."""
    _check_features(patches, grid, dim, "[T, P, D]")
    t = torch.as_tensor(timestamps, dtype=torch.float64)
    if t.dim() != 1 or t.shape[0] != patches.shape[0]:
        raise InputError("timestamps", f"expected shape [{patches.shape[0]}], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError("timestamps", "contain NaN or infinite values")
    if t.shape[0] > 1 and not bool((t[1:] > t[:-1]).all()):
        raise InputError("timestamps", "not strictly increasing")
    return t


def cell_layout(num_cells: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(a, b)`` split of ``num_cells = a * b`` cells (``a <= h``, ``b <= w``) closest to the grid's aspect."""
    h, w = grid
    pairs = [(a, num_cells // a) for a in range(1, num_cells + 1) if num_cells % a == 0]
    pairs = [(a, b) for a, b in pairs if a <= h and b <= w]
    if not pairs:
        raise InputError("config", f"{num_cells} cells do not fit a {h}x{w} patch grid")
    return min(pairs, key=lambda ab: (abs(math.log(ab[0] / ab[1]) - math.log(h / w)), ab[0]))


def cell_centres(layout: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Centres ``[a * b, 2]`` (row, col in patch units) of an ``a x b`` partition of the ``h x w`` grid, row-major."""
    a, b = layout
    h, w = grid
    rows = (torch.arange(a, dtype=torch.float32) + 0.5) * h / a - 0.5
    cols = (torch.arange(b, dtype=torch.float32) + 0.5) * w / b - 0.5
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


UPSAMPLE_MODES = ("nearest", "bilinear")


def pool_cells(x: torch.Tensor, grid: tuple[int, int], layout: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of ``[P, D]`` patches on the ``h x w`` grid into ``a x b`` cells -> ``[a*b, D]``."""
    image = x.t().reshape(1, x.shape[1], *grid)  # [1, D, h, w]
    return nn.functional.adaptive_avg_pool2d(image, layout).reshape(x.shape[1], -1).t()  # [a*b, D]


def upsample_cells(
    cells: torch.Tensor, grid: tuple[int, int], layout: tuple[int, int], mode: str = "nearest"
) -> torch.Tensor:
    """Upsampling of ``[..., a*b, D]`` cells back to the ``h x w`` grid -> ``[..., P, D]``.

    ``mode`` ``"nearest"`` repeats each cell over its patches; ``"bilinear"`` interpolates between cell centres (the
    smooth fixed rule, used to judge every tokenizer's pooled tokens alike).
    """
    if mode not in UPSAMPLE_MODES:
        raise InputError("upsample", f"unknown mode {mode!r}, expected one of {UPSAMPLE_MODES}")
    lead, dim = cells.shape[:-2], cells.shape[-1]
    image = cells.reshape(-1, *layout, dim).permute(0, 3, 1, 2)  # [n, D, a, b]
    extra = {} if mode == "nearest" else {"align_corners": False}
    out = nn.functional.interpolate(image, size=grid, mode=mode, **extra)  # [n, D, h, w]
    return out.permute(0, 2, 3, 1).reshape(*lead, grid[0] * grid[1], dim)


def sinusoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal features of scalars ``x`` ``[n]`` -> ``[n, dim]`` (RMS 1 per row)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = x.float()[:, None] * freqs[None, :]  # [n, half]
    out = torch.cat([angles.sin(), angles.cos()], dim=-1) * math.sqrt(2.0)  # [n, 2 * half]
    return nn.functional.pad(out, (0, dim - 2 * half))


class TokenEmbedder(nn.Module):
    """Fixed (untrained, deterministic) kind / time / 2-D position embeddings added to token values.

    ``token = value + scale * (kind + time + position) / sqrt(3)``; each part has RMS 1 per element, so ``scale``
    is the RMS of what is added next to a normalised feature value (RMS 1).

    Args:
        dim: token width ``D``.
        scale: size of the added embeddings relative to a normalised value.
    """

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.dim = dim
        self.scale = float(scale)
        g = torch.Generator().manual_seed(0)
        kinds = torch.randint(0, 2, (2, dim), generator=g).float() * 2 - 1  # [2, D] +-1: key, flow
        later = [torch.randint(0, 2, (1, dim), generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
        later = [k.float() * 2 - 1 for k in later]  # [1, D] each: still, start, gone (each kind added later, own seed)
        self.register_buffer("kind_embedding", torch.cat([kinds, *later]), persistent=False)  # [5, D]

    def position(self, rc: torch.Tensor) -> torch.Tensor:
        """2-D sinusoidal position of ``[n, 2]`` (row, col) patch coordinates -> ``[n, D]``."""
        half = self.dim // 2
        out = torch.cat([sinusoid(rc[:, 0], half), sinusoid(rc[:, 1], self.dim - half)], dim=-1)
        return out.to(self.kind_embedding.device)

    def forward(self, values: torch.Tensor, kind: str, since_key_s: float, position: torch.Tensor) -> torch.Tensor:
        """Embed one frame's ``[n, D]`` values: ``kind`` key/flow, seconds since its keyframe, and their position
        embeddings ``[n, D]`` (from :meth:`position`, usually precomputed)."""
        n = values.shape[0]
        if n == 0:
            return values
        kind_vec = self.kind_embedding[EMBEDDED_KINDS.index(kind) if kind in EMBEDDED_KINDS else 1]  # [D]
        time_vec = sinusoid(torch.tensor([float(since_key_s)]), self.dim)[0].to(values.device)  # [D]
        extra = (kind_vec + time_vec)[None, :] + position.to(values.device)  # [n, D]
        return values + (self.scale / math.sqrt(3.0)) * extra.to(values.dtype)
