"""``tokenize``: B-Flow on one video, the figures of ``mmduplex tokenize``'s ``tokens.json`` as a :class:`VideoTokens`.

The video is sampled at ``fps``, encoded by the frozen encoder and tokenized. Without a checkpoint the untrained
default tokenizer runs (its decisions do not depend on learned weights, so the token counts already follow motion)
and no fidelity is reported; with one, the trained decoder's reconstruction gives ``fidelity``
(:func:`mmduplex.tokenizer.fidelity.fidelity`). The keys are listed in ``docs/DESIGN.md`` ("Command outputs").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mmduplex.errors import CheckpointError, InputError, VideoError

if TYPE_CHECKING:
    from mmduplex.tokenizer.bflow import BFlowTokenizer
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder

DEFAULT_ENCODER = "efficientnet-lite0"
"""The encoder when neither the call nor the checkpoint names one (real ImageNet weights)."""
DEFAULT_FPS = 2.0
"""Frames sampled per second when neither the call nor the checkpoint gives a rate."""


@dataclass(frozen=True)
class FrameCount:
    """What the tokenizer emitted for one sampled frame."""

    t: float
    """The frame's time (s)."""
    kind: str
    """``"key"``, ``"flow"`` or ``"none"``."""
    n_tokens: int


@dataclass(frozen=True)
class VideoTokens:
    """What B-Flow emitted for one video (``tokens.json``)."""

    video: str
    fps: float
    """Frames sampled per second."""
    duration_s: float
    frames: int
    """Sampled frames."""
    tokens_total: int
    tokens_per_second: float
    """``tokens_total / duration_s``."""
    keyframes: int
    flow_tokens: int
    per_frame: list[FrameCount]
    tokens_per_second_after_first_keyframe: float
    """The tokens of every frame after the first keyframe (forced keyframes included) over ``duration_s``."""
    encoder: str
    """The encoder spec."""
    target_rate: float | None
    """The token budget (tokens/s after the first keyframe); ``None``: variable rate."""
    checkpoint: str | None
    fidelity: float | None = None
    """Mean patch cosine of the trained decoder's reconstruction (``None`` without a checkpoint)."""

    def to_json(self) -> dict[str, Any]:
        """The ``tokens.json`` object (``fidelity`` only when a decoder was loaded)."""
        out: dict[str, Any] = {
            "video": self.video,
            "fps": self.fps,
            "duration_s": self.duration_s,
            "frames": self.frames,
            "tokens_total": self.tokens_total,
            "tokens_per_second": self.tokens_per_second,
            "keyframes": self.keyframes,
            "flow_tokens": self.flow_tokens,
            "per_frame": [{"t": f.t, "kind": f.kind, "n_tokens": f.n_tokens} for f in self.per_frame],
        }
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity
        out["tokens_per_second_after_first_keyframe"] = self.tokens_per_second_after_first_keyframe
        out["encoder"] = self.encoder
        out["target_rate"] = self.target_rate
        out["checkpoint"] = self.checkpoint
        return out


def tokenize(
    video: str | os.PathLike,
    target_rate: float | None = None,
    encoder: str | FrozenImageEncoder | None = None,
    fps: float | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> VideoTokens:
    """Run B-Flow on one video file.

    Args:
        video: the video file.
        target_rate: token budget in tokens/s after the first keyframe (``None``: the checkpoint's, else variable
            rate).
        encoder: the frozen encoder, by name (``MODEL[:PRETRAINED]``) or built (``None``: the checkpoint's encoder,
            else :data:`DEFAULT_ENCODER`).
        fps: frames sampled per second (``None``: the checkpoint's, else :data:`DEFAULT_FPS`).
        checkpoint: a trained tokenizer (a bundle folder or a Lightning checkpoint; ``None``: untrained defaults).

    Raises:
        InputError: ``fps`` or ``target_rate`` not > 0, or a rate that cannot afford a keyframe.
        CheckpointError: a bad checkpoint, or an encoder other than the one it was trained on.
        VideoError: a missing, corrupt or empty video.
    """
    from mmduplex.inference.commentary import frame_size
    from mmduplex.io.video import read_video
    from mmduplex.tokenizer.bflow import BFlowTokenizer
    from mmduplex.tokenizer.encoders.factory import create_encoder
    from mmduplex.tokenizer.fidelity import fidelity

    if fps is not None and not fps > 0:
        raise InputError("fps", f"must be > 0, got {fps}")
    if target_rate is not None and not target_rate > 0:
        raise InputError("target_rate", f"must be > 0, got {target_rate}")
    # Read the checkpoint first: a bad one fails before any decoding.
    loaded = None if checkpoint is None else BFlowTokenizer.from_checkpoint(checkpoint)
    metadata: dict[str, Any] = {} if loaded is None else loaded.metadata
    trained_on = metadata.get("encoder") or {}
    if encoder is None or isinstance(encoder, str):
        spec = encoder or spec_of(trained_on) or DEFAULT_ENCODER
        encoder = create_encoder(spec)
    else:
        spec = encoder.spec
    fps = float(fps or metadata.get("fps") or DEFAULT_FPS)
    if trained_on and trained_on != encoder.fingerprint:
        raise CheckpointError(
            checkpoint,
            f"trained on features of encoder {trained_on}, but {spec} is {encoder.fingerprint} (pass --encoder)",
        )
    tokenizer = _configure(loaded, checkpoint, target_rate, encoder.width, encoder.grid).to(encoder.device)
    clip = read_video(video, fps, size=frame_size(encoder))
    if clip.frames.shape[0] == 0:
        raise VideoError(video, f"no frame sampled at {fps:g} fps")
    with torch.inference_mode():
        patches = encoder.encode(clip.frames).patches  # [T, P, D]
        tokenized = tokenizer.tokenize(patches, clip.timestamps)
    rates = tokenized.summary(clip.duration_s)
    return VideoTokens(
        video=str(video),
        fps=fps,
        duration_s=float(clip.duration_s),
        frames=len(tokenized.frames),
        tokens_total=rates["tokens_total"],
        tokens_per_second=rates["tokens_per_second"],
        keyframes=rates["keyframes"],
        flow_tokens=rates["flow_tokens"],
        per_frame=[FrameCount(f["t"], f["kind"], f["n_tokens"]) for f in rates["per_frame"]],
        tokens_per_second_after_first_keyframe=rates["tokens_per_second_after_first_keyframe"],
        encoder=spec,
        target_rate=tokenizer.config.target_rate,
        checkpoint=None if checkpoint is None else str(checkpoint),
        fidelity=None if checkpoint is None else fidelity(patches.cpu(), tokenized.recon.cpu()),
    )


def _configure(
    loaded: BFlowTokenizer | None,
    checkpoint: str | os.PathLike | None,
    target_rate: float | None,
    dim: int,
    grid: tuple[int, int],
) -> BFlowTokenizer:
    """The tokenizer to run: the loaded one (checked against the encoder) or the untrained defaults."""
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

    try:
        if loaded is None:
            return BFlowTokenizer(BFlowConfig(dim=dim, grid=grid, target_rate=target_rate)).eval()
        cfg = loaded.config
        if (cfg.dim, tuple(cfg.grid)) != (dim, tuple(grid)):
            raise CheckpointError(
                checkpoint,
                f"tokenizer expects {cfg.grid[0]}x{cfg.grid[1]} patches of width {cfg.dim}, "
                f"the encoder gives {grid[0]}x{grid[1]} of width {dim}",
            )
        return loaded if target_rate is None else loaded.with_settings(target_rate=target_rate)
    except InputError as err:  # the only setting taken from the caller is the rate
        raise InputError("target_rate", err.problem) from err


def spec_of(fingerprint: dict) -> str | None:
    """The ``MODEL[:PRETRAINED]`` spec an encoder fingerprint was made from (None when unknown)."""
    model, pretrained = fingerprint.get("model"), fingerprint.get("pretrained")
    if not model or str(model).startswith("local-dir:"):  # a local folder's path is not recorded
        return None
    if str(model).startswith("hf-hub:") or not pretrained:
        return str(model)
    return f"{model}:{pretrained}"
