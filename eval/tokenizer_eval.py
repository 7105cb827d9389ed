"""Tokenizer rate vs fidelity: B-Flow at several token budgets (plus variable rate) against the baselines.

Every tokenizer runs on the same frozen-encoder patch features (a feature cache, or videos encoded into a temporary
one) and is scored on:

- ``tokens_per_second``: all tokens over all videos / their total duration (pooled over videos);
- ``tokens_per_second_after_first_keyframe``: the same without each video's first keyframe frame (the rate a
  B-Flow budget bounds);
- ``keyframes`` and ``flow_tokens``: totals over the videos;
- ``fidelity``: :func:`mmduplex.tokenizer.fidelity.fidelity` of each video (mean over its frames and patches), pooled as
the
  mean over all videos' frames (each video weighted by its frame count);
- ``cpu_ms_per_frame``: CPU time of tokenization per frame (informative only; the machine may be shared).

**Reconstruction rule** (``reconstruction``; the fidelity depends on it, the token counts do not):

- ``"fixed"`` (default, like for like): every tokenizer is judged by one causal rule applied to its own tokens, with
  no learned decoder anywhere: a pooled or key token's value is spread over its cell by bilinear interpolation
  between cell centres, a patch / region token's value is copied to its patches, and every patch keeps its last
  value until a token replaces it. B-Flow runs with ``reconstruction="cells"``, the baselines with
  ``upsample="bilinear"``.
- ``"native"``: each tokenizer as shipped: B-Flow's learned decoders (trained on the training set), the baselines'
  nearest upsampling. Not like for like (only B-Flow has a learned decoder); kept to show what the decoder adds.

The results JSON holds ``settings`` and ``rows`` (one dict per tokenizer: ``name``, ``kind`` ``"bflow"`` or
``"baseline"``, ``budget`` tokens/s or ``None``, and the figures above), ready to plot as rate vs fidelity.
``benchmarks/bench_tokenizer.py`` uses the same functions (:func:`tokenizer_suite`, :func:`rate_fidelity`).
Without ``--checkpoint`` B-Flow runs with untrained weights: its token counts are meaningful (decisions do not depend
on learned weights); under the fixed rule its key tokens are its initial encoder's soft cell pools, under the native
rule its fidelity is meaningless (the learned keyframe decoder is random); the settings say so.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm import tqdm

from mmduplex.errors import CacheError, CheckpointError, InputError, VideoError
from mmduplex.eval.base import EvalTask, markdown_table
from mmduplex.tokenizer.base import VideoTokenizer
from mmduplex.tokenizer.baselines import CodecTokenizer, FrameDropTokenizer, UniformTokenizer, VideoLLMOnlineTokenizer
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.encoders.factory import DEFAULT_ENCODER, spec_of_fingerprint
from mmduplex.tokenizer.fidelity import fidelity

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

DEFAULT_FPS = 2.0
UNTRAINED_NOTE = (
    "no --checkpoint: B-Flow runs with untrained weights; its token counts are valid, its fidelity only under the "
    "fixed reconstruction rule (the learned keyframe decoder is random)"
)
RECONSTRUCTION_RULES = {
    "fixed": "one rule for every tokenizer: cells upsampled bilinearly, patch/region tokens copied, values held",
    "native": "each tokenizer as shipped: B-Flow's learned decoders, the baselines' nearest upsampling",
}


@dataclass
class VideoFeatures:
    """One video's frozen-encoder features."""

    name: str
    patches: torch.Tensor  # [T, P, D]
    timestamps: torch.Tensor  # [T] float64 (s)
    duration_s: float


@dataclass
class TokenizerEntry:
    """One tokenizer of the comparison, with the label, kind and budget its row carries."""

    name: str
    kind: str  # "bflow" | "baseline"
    budget: float | None  # B-Flow target rate (tokens/s); None for variable rate and the baselines
    tokenizer: VideoTokenizer


def tokenizer_suite(
    bflow: BFlowTokenizer,
    fps: float,
    budgets: Sequence[float],
    uniform: Sequence[int] = (64, 16),
    reconstruction: str = "fixed",
) -> list[TokenizerEntry]:
    """B-Flow in variable-rate mode and at every budget, then the baselines on B-Flow's feature width and grid.

    Baselines: uniform ``n``/frame for each ``n`` of ``uniform``; a codec (16-token I-frame every 2 s, 4 P-tokens per
    frame in between); frame dropping (keep a frame as 16 tokens when its similarity to the last kept one is < 0.9);
    VideoLLM-online with 1 and 10 tokens per frame. ``reconstruction`` picks the rule of the module docstring.

    Raises:
        InputError: a budget B-Flow cannot afford (see :class:`mmduplex.tokenizer.bflow.BFlowConfig`), an unknown
            rule, or a baseline that does not fit the grid.
    """
    if reconstruction not in RECONSTRUCTION_RULES:
        raise InputError(
            "--reconstruction", f"unknown rule {reconstruction!r}, expected one of {list(RECONSTRUCTION_RULES)}"
        )
    fixed = reconstruction == "fixed"
    if fixed:
        bflow = bflow.with_settings(reconstruction="cells")
    upsample = "bilinear" if fixed else "nearest"
    dim, grid = bflow.feature_dim, bflow.grid
    entries = [TokenizerEntry("bflow variable", "bflow", None, bflow.with_settings(target_rate=None))]
    for budget in budgets:
        try:
            tokenizer = bflow.with_settings(target_rate=float(budget))
        except InputError as err:
            raise InputError("--budgets", err.problem) from err
        entries.append(TokenizerEntry(f"bflow {budget:g} tok/s", "bflow", float(budget), tokenizer))
    baselines: dict[str, VideoTokenizer] = {
        f"uniform {n}/frame": UniformTokenizer(dim, grid, n, upsample=upsample) for n in uniform
    }
    baselines["codec I16 every 2s + P4"] = CodecTokenizer(
        dim, grid, keyframe_interval=max(round(2 * fps), 1), key_tokens=16, p_tokens=4, upsample=upsample
    )
    baselines["framedrop sim<0.9 x16"] = FrameDropTokenizer(
        dim, grid, similarity_threshold=0.9, tokens_per_frame=16, upsample=upsample
    )
    baselines["videollm-online 1/frame"] = VideoLLMOnlineTokenizer(dim, grid, 1, upsample=upsample)
    baselines["videollm-online 10/frame"] = VideoLLMOnlineTokenizer(dim, grid, 10, upsample=upsample)
    entries += [TokenizerEntry(name, "baseline", None, tok) for name, tok in baselines.items()]
    return entries


@dataclass
class RateTally:
    """Raw counts behind one tokenizer's row; pooled over videos."""

    tokens: int = 0
    after_first_key: int = 0
    keyframes: int = 0
    flow_tokens: int = 0
    fidelity_sum: float = 0.0  # sum over frames of the per-frame fidelity
    frames: int = 0
    videos: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0

    def add(self, video: VideoFeatures, tokenizer: VideoTokenizer) -> None:
        """Tokenize ``video`` and count what came out."""
        start = time.process_time()
        with torch.inference_mode():
            out = tokenizer.tokenize(video.patches, video.timestamps)
        self.cpu_s += time.process_time() - start
        frames = int(video.patches.shape[0])
        self.tokens += out.tokens_total
        self.after_first_key += out.tokens_after_first_key
        self.keyframes += out.keyframes
        self.flow_tokens += out.flow_tokens
        self.fidelity_sum += fidelity(video.patches, out.recon) * frames
        self.frames += frames
        self.videos += 1
        self.seconds += video.duration_s

    def metrics(self) -> dict[str, Any]:
        """The row's figures (see the module docstring)."""
        return {
            "tokens_per_second": self.tokens / self.seconds,
            "tokens_per_second_after_first_keyframe": self.after_first_key / self.seconds,
            "fidelity": self.fidelity_sum / self.frames,
            "keyframes": self.keyframes,
            "flow_tokens": self.flow_tokens,
            "tokens_total": self.tokens,
            "videos": self.videos,
            "frames": self.frames,
            "duration_s": self.seconds,
            "cpu_ms_per_frame": 1000.0 * self.cpu_s / self.frames,
        }


def rate_fidelity(
    entries: Sequence[TokenizerEntry], videos: Iterable[VideoFeatures], progress: bool = False, total: int | None = None
) -> list[dict[str, Any]]:
    """Run every tokenizer on every video (each video is visited once) and return one row per tokenizer.

    Raises:
        InputError: no video, a video of zero duration, or features that do not fit a tokenizer.
    """
    tallies = [RateTally() for _ in entries]
    for video in tqdm(videos, total=total, desc="tokenizer eval", unit="video", disable=not progress):
        if not video.duration_s > 0:
            raise InputError(video.name, f"duration must be > 0 s, got {video.duration_s}")
        for entry, tally in zip(entries, tallies, strict=True):
            tally.add(video, entry.tokenizer)
    if not tallies or tallies[0].videos == 0:
        raise InputError("videos", "no video to evaluate the tokenizers on")
    return [
        {"name": e.name, "kind": e.kind, "budget": e.budget, **t.metrics()}
        for e, t in zip(entries, tallies, strict=True)
    ]


def cached_videos(cache: Any) -> Iterator[VideoFeatures]:
    """The videos of a :class:`mmduplex.train.features.FeatureCache`, loaded one at a time (float32)."""
    for key in cache:
        record = cache.load(key)
        yield VideoFeatures(key, record.patches, record.timestamps, record.duration_s)


class TokenizerEval(EvalTask):
    """Tokens/s vs fidelity of B-Flow (variable rate and each budget) and the baselines on cached features.

    Args:
        features: a feature cache folder (``mmduplex features``); or None with ``videos``.
        videos: video files, encoded with ``encoder`` at ``fps`` into a temporary cache; or None with ``features``.
        checkpoint: a trained B-Flow bundle or Lightning checkpoint; None = untrained defaults (see the module).
        budgets: B-Flow target rates (tokens/s) evaluated besides the variable-rate mode.
        encoder: encoder name for ``videos`` (default: the checkpoint's encoder, else ``efficientnet-lite0``).
        fps: sampling rate for ``videos`` (default: the checkpoint's, else 2).
        reconstruction: ``"fixed"`` (one rule for all, default) or ``"native"`` (see the module docstring).
        progress: show a progress bar over videos.
    """

    name = "tokenizer"
    defaults = {
        "features": None,
        "videos": None,
        "checkpoint": None,
        "budgets": [8.0, 16.0, 32.0, 64.0],
        "encoder": None,
        "fps": None,
        "reconstruction": "fixed",
    }

    def __init__(
        self,
        features: str | os.PathLike | None = None,
        videos: Sequence[str | os.PathLike] | None = None,
        checkpoint: str | os.PathLike | None = None,
        budgets: Sequence[float] = (),
        encoder: str | None = None,
        fps: float | None = None,
        reconstruction: str = "fixed",
        progress: bool = True,
    ) -> None:
        if (features is None) == (not videos):
            raise InputError("--features/--videos", "give exactly one: a feature cache folder or video files")
        if features is not None and (encoder is not None or fps is not None):
            raise InputError("--encoder/--fps", "only for --videos (a feature cache already fixes both)")
        if fps is not None and not fps > 0:
            raise InputError("--fps", f"must be > 0, got {fps}")
        if reconstruction not in RECONSTRUCTION_RULES:
            raise InputError(
                "--reconstruction", f"expected one of {list(RECONSTRUCTION_RULES)}, got {reconstruction!r}"
            )
        bad = [b for b in budgets if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0)]
        if bad:
            raise InputError("--budgets", f"token budgets must be finite and > 0 tokens/s, got {bad}")
        self.features = None if features is None else Path(features)
        self.videos = [Path(v) for v in videos or ()]
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.budgets = [float(b) for b in budgets]
        self.encoder = encoder
        self.fps = fps
        self.reconstruction = reconstruction
        self.progress = progress
        self._resolved: dict[str, Any] = {}  # what the run found: encoder fingerprint, fps, dim, grid

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "features": None if self.features is None else str(self.features),
            "videos": [str(v) for v in self.videos],
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "trained": self.checkpoint is not None,
            "note": None if self.checkpoint is not None else UNTRAINED_NOTE,
            "budgets": self.budgets,
            "encoder": self.encoder,
            "fps": self.fps,
            **self._resolved,
            "reconstruction": self.reconstruction,
            "reconstruction_rule": RECONSTRUCTION_RULES[self.reconstruction],
            "fidelity": "mmduplex.tokenizer.fidelity.fidelity per video, mean over all videos' frames",
            "tokens_per_second": "tokens over all videos / their total duration",
        }

    def _load_bflow(self, fingerprint: dict, dim: int, grid: tuple[int, int]) -> BFlowTokenizer:
        """The checkpoint's tokenizer (checked against the features) or the untrained defaults."""
        if self.checkpoint is None:
            return BFlowTokenizer(BFlowConfig(dim=dim, grid=grid)).eval()
        bflow = BFlowTokenizer.from_checkpoint(self.checkpoint)
        if (bflow.config.dim, tuple(bflow.config.grid)) != (dim, tuple(grid)):
            raise CheckpointError(
                self.checkpoint,
                f"tokenizer expects {bflow.config.grid[0]}x{bflow.config.grid[1]} patches of width "
                f"{bflow.config.dim}, the features are {grid[0]}x{grid[1]} of width {dim}",
            )
        trained_on = bflow.metadata.get("encoder")
        if trained_on and trained_on != fingerprint:
            raise CheckpointError(
                self.checkpoint, f"trained on features of encoder {trained_on}, the features come from {fingerprint}"
            )
        return bflow

    def _evaluate_cache(self, root: Path) -> list[dict[str, Any]]:
        from mmduplex.train.features import FeatureCache

        cache = FeatureCache(root)
        if len(cache) == 0:
            raise CacheError(cache.index_path, "the feature cache holds no video")
        first = cache.load(cache.keys()[0])
        dim = int(first.patches.shape[2])
        grid = _grid_of(cache.fingerprint, int(first.patches.shape[1]), cache.index_path)
        self._resolved = {"encoder_fingerprint": cache.fingerprint, "cache_fps": cache.fps, "dim": dim, "grid": grid}
        bflow = self._load_bflow(cache.fingerprint, dim, grid)
        entries = tokenizer_suite(bflow, cache.fps, self.budgets, reconstruction=self.reconstruction)
        return rate_fidelity(entries, cached_videos(cache), self.progress, total=len(cache))

    def run(self) -> dict[str, Any]:
        if self.features is not None:
            rows = self._evaluate_cache(self.features)
        else:
            from mmduplex.train.features import extract_features

            missing = [v for v in self.videos if not v.is_file()]
            if missing:
                raise VideoError(missing[0], "video file not found")
            trained = {} if self.checkpoint is None else BFlowTokenizer.from_checkpoint(self.checkpoint).metadata
            fps = float(self.fps or trained.get("fps") or DEFAULT_FPS)
            encoder = self.encoder or spec_of_fingerprint(trained.get("encoder") or {}) or DEFAULT_ENCODER
            with tempfile.TemporaryDirectory(prefix="mmduplex-tokenizer-eval-") as tmp:
                report = extract_features(self.videos, tmp, encoder=encoder, fps=fps)
                if report.failed:
                    path, problem = next(iter(report.failed.items()))
                    raise VideoError(path, problem)
                rows = self._evaluate_cache(Path(tmp))
            self._resolved.pop("cache_fps", None)
            self._resolved.update(fps_used=fps, encoder=encoder)  # named, else the checkpoint's, else the default
        return {"rows": rows, "settings": self.settings}

    def markdown(self, results: Mapping[str, Any]) -> str:
        settings = results["settings"]
        source = settings["features"] or f"{len(settings['videos'])} videos"
        parts = ["# Tokenizer rate vs fidelity\n", f"features: {source}\n"]
        if settings.get("reconstruction_rule"):
            parts.append(f"reconstruction ({settings['reconstruction']}): {settings['reconstruction_rule']}\n")
        if settings.get("note"):
            parts.append(f"**note**: {settings['note']}\n")
        columns = ["tokens_per_second", "tokens_per_second_after_first_keyframe", "keyframes", "flow_tokens"]
        columns += ["fidelity", "cpu_ms_per_frame"]
        headers = ["tokenizer", "kind", "budget", "tok/s", "tok/s after 1st key", "keyframes", "flow tokens"]
        headers += ["fidelity", "cpu ms/frame"]
        rows = [[r["name"], r["kind"], r["budget"], *(r[c] for c in columns)] for r in results["rows"]]
        return "\n".join(parts) + "\n" + markdown_table(headers, rows)

    @classmethod
    def add_arguments(cls, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--features", type=str | None, metavar="DIR", help="feature cache folder (mmduplex features)")
        add(
            "--videos",
            nargs="+",
            action="extend",
            type=str,
            metavar="VIDEO",
            help="videos to encode instead (repeatable; adds to the --config list)",
        )
        add(
            "--checkpoint",
            type=str | None,
            metavar="CKPT",
            help="trained B-Flow bundle or checkpoint (default: untrained)",
        )
        add(
            "--budgets",
            nargs="+",
            type=float,
            metavar="R",
            help="B-Flow token budgets in tokens/s (variable rate is always evaluated too)",
        )
        add(
            "--encoder",
            type=str | None,
            metavar="NAME",
            help=f"encoder for --videos (default: the checkpoint's, else {DEFAULT_ENCODER}; mmduplex-tiny is random)",
        )
        add(
            "--fps",
            type=float | None,
            help=f"sampling rate for --videos (default: the checkpoint's, else {DEFAULT_FPS:g})",
        )
        add(
            "--reconstruction",
            type=Literal[tuple(RECONSTRUCTION_RULES)],
            help="fidelity rule: fixed = one rule for every tokenizer, native = each as shipped",
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TokenizerEval:
        return cls(
            settings["features"],
            settings["videos"],
            settings["checkpoint"],
            settings["budgets"] or (),
            settings["encoder"],
            settings["fps"],
            settings.get("reconstruction") or "fixed",
        )


def _grid_of(fingerprint: dict, num_patches: int, index_path: Path) -> tuple[int, int]:
    """The patch grid of a cache: the fingerprint's ``grid`` if recorded, else the square of ``num_patches``."""
    grid = fingerprint.get("grid")
    if isinstance(grid, (list, tuple)) and len(grid) == 2 and grid[0] * grid[1] == num_patches:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CacheError(index_path, f"{num_patches} patches per frame and no grid recorded in the encoder fingerprint")
    return side, side
