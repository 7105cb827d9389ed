"""The frozen CLIP image encoder: open_clip's visual trunk turned into a per-frame patch-feature extractor.

``create_encoder(spec)`` is the one factory. ``spec`` is ``MODEL[:PRETRAINED]`` (an open_clip model name and
a pretrained tag or a local weights file, e.g. ``ViT-B-16:openai`` or ``ViT-B-16:/ckpt/open_clip_model.bin``),
an open_clip ``hf-hub:``/``local-dir:`` name, or a bare local folder in open_clip's ``local-dir`` layout
(``open_clip_config.json`` + weights). A model name without a tag is a random initialisation from a fixed
seed, so every process builds the same weights; the built-in presets ``mmduplex-tiny`` (96 px, 8 px
patches: 144 patches per frame) and ``mmduplex-micro`` (32 px: 16 patches, for very fast tests) are open_clip
model configs shipped in ``tokenizer/model_configs`` and registered with ``open_clip.add_model_config``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from mmduplex.errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
PRESETS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
INIT_SEED = 0  # random-initialised encoders are built under this seed, so their weights never vary
_SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass
class EncodedFrames:
    """Encoder output for ``T`` frames (float32, on the encoder's device)."""

    patches: torch.Tensor  # [T, P, D] patch tokens after the trunk's final LayerNorm
    pooled: torch.Tensor  # [T, E] pooled (projected) image embedding


@functools.cache
def _register_presets() -> None:
    """Make the project's model configs (``mmduplex-tiny``, ...) known to open_clip, once per process."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's info/warning chatter (it logs on the root logger) while a model is built."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "open_clip" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _weights_sha256(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module``'s state dict (name, shape, float32 bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _resolve_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split ``spec`` into open_clip's ``(model_name, pretrained)`` and the fingerprint's model/pretrained."""
    if spec.startswith(_SCHEMAS):
        schema, _, target = spec.partition(":")
        if schema == "local-dir" and not (Path(target) / "open_clip_config.json").is_file():
            raise CheckpointError(target, "not an open_clip checkpoint folder (no open_clip_config.json)")
        label = f"local-dir:{Path(target).name}" if schema == "local-dir" else spec
        return spec, None, {"model": label, "pretrained": schema}
    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_spec(f"local-dir:{path}")
    if path.is_file():
        raise CheckpointError(spec, "a weights file needs its model: use MODEL:PATH (e.g. ViT-B-16:" + spec + ")")
    model, _, pretrained = spec.partition(":")
    if not model or model.replace("/", "-") not in open_clip.list_models():
        if os.sep in spec or spec.endswith((".bin", ".pt", ".pth", ".safetensors")):
            raise CheckpointError(spec, "no such checkpoint file or folder")
        raise CheckpointError(spec, f"unknown encoder '{model}': not an open_clip model name nor a checkpoint path")
    if not pretrained:
        return model, None, {"model": model, "pretrained": None}
    if open_clip.get_pretrained_cfg(model, pretrained):
        return model, pretrained, {"model": model, "pretrained": pretrained}
    if Path(pretrained).expanduser().is_file():
        weights = str(Path(pretrained).expanduser())
        return model, weights, {"model": model, "pretrained": Path(weights).name}
    if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors", ".npz")):
        raise CheckpointError(pretrained, "no such checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(model)
    known = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none"
    raise CheckpointError(pretrained, f"no such checkpoint file, nor a pretrained tag of {model} (tags: {known})")


class FrozenCLIP(nn.Module):
    """A frozen open_clip vision transformer returning patch tokens and the pooled embedding per frame.

    Always in eval mode with gradients off; ``encode`` runs batched under ``torch.no_grad`` with bf16
    autocast on CUDA (float32 on CPU) and applies the model's own preprocessing (resize of the shorter side,
    centre crop, mean/std normalisation).

    Args:
        visual: open_clip ``VisionTransformer`` (the visual trunk of a CLIP model).
        preprocess_cfg: open_clip preprocessing config of that model (``size``, ``mean``, ``std``, ...).
        spec: the spec the encoder was created from.
        fingerprint: identity of the weights, see :func:`create_encoder`.
    """

    def __init__(self, visual: nn.Module, preprocess_cfg: dict[str, Any], spec: str, fingerprint: dict) -> None:
        super().__init__()
        self.visual = visual
        self.visual.output_tokens = True
        self.spec = spec
        self.fingerprint = dict(fingerprint)
        height, width = visual.image_size
        self.image_size = int(height)
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.resize_mode = str(preprocess_cfg.get("resize_mode", "shortest"))
        interpolation = str(preprocess_cfg.get("interpolation", "bicubic"))
        self.interpolation = interpolation if interpolation in ("bilinear", "nearest") else "bicubic"
        self.fill_value = float(preprocess_cfg.get("fill_color", 0)) / 255.0
        self.register_buffer("mean", torch.tensor(preprocess_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenCLIP:
        """Stay in eval mode whatever is asked: the encoder is frozen."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, S, S]`` float32 normalised model input."""
        size = self.image_size
        x = frames.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W] in [0, 1]
        height, width = x.shape[-2:]
        if (height, width) != (size, size):
            resize = functools.partial(F.interpolate, mode=self.interpolation)
            if self.interpolation != "nearest":
                resize = functools.partial(resize, antialias=True, align_corners=False)
            if self.resize_mode == "squash":
                x = resize(x, size=(size, size))
            elif self.resize_mode == "longest":
                scale = size / max(height, width)
                x = resize(x, size=(max(1, round(height * scale)), max(1, round(width * scale))))
                pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
                pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
                x = F.pad(x, pads, value=self.fill_value)
            else:  # "shortest": CLIP's resize of the shorter side, then a centre crop
                scale = size / min(height, width)
                x = resize(x, size=(max(size, round(height * scale)), max(size, round(width * scale))))
                top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
                x = x[..., top : top + size, left : left + size]
            x = x.clamp_(0.0, 1.0)  # [B, 3, S, S]
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, 3, S, S]`` images -> (patches ``[B, P, D]``, pooled ``[B, E]``), float32."""
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if images.device.type == "cuda" else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            pooled, tokens = self.visual(images)  # [B, E], [B, P, D]
        return tokens.float(), pooled.float()

    def encode(self, frames: torch.Tensor | np.ndarray, batch_size: int = 64) -> EncodedFrames:
        """Encode ``[T, H, W, 3]`` uint8 RGB frames in batches of ``batch_size``.

        Raises:
            InputError: wrong shape / dtype, or ``batch_size < 1``.
        """
        frames = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise InputError("frames", f"expected [T, H, W, 3] uint8, got {tuple(frames.shape)} {frames.dtype}")
        if batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {batch_size}")
        if frames.shape[0] == 0:  # no frames: empty outputs of the right widths
            empty = torch.zeros(0, device=self.device)
            return EncodedFrames(empty.view(0, self.num_patches, self.width), empty.view(0, self.embed_dim))
        patches, pooled = [], []
        for chunk in frames.split(batch_size):
            p, e = self(self.preprocess(chunk))
            patches.append(p)
            pooled.append(e)
        return EncodedFrames(torch.cat(patches), torch.cat(pooled))  # [T, P, D], [T, E]

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, image_size={self.image_size}, patches={self.num_patches}, width={self.width}"


def create_encoder(spec: str = "mmduplex-tiny", device: str | torch.device | None = None) -> FrozenCLIP:
    """Build the frozen encoder named by ``spec`` (see the module docstring for the forms it takes).

    The fingerprint is ``{"model", "pretrained", "weights_sha256", "image_size"}``: the hash covers every
    tensor of the visual trunk, so equal fingerprints mean identical encoders (and a cache made by one can be
    read for the other).

    Args:
        spec: ``MODEL[:PRETRAINED]``, ``hf-hub:ORG/REPO``, ``local-dir:DIR`` or a local open_clip folder.
        device: where to run; default CUDA when available, else CPU.

    Raises:
        CheckpointError: unknown model name, missing checkpoint, a checkpoint that does not fit the model, or
            a model without a ViT trunk (no patch tokens).
    """
    _register_presets()
    model_name, pretrained, identity = _resolve_spec(spec)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(INIT_SEED)
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device="cpu")
    except Exception as exc:  # open_clip/torch raise many types for bad checkpoints (RuntimeError, pickle, assert)
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        action = f"cannot load as {model_name}" if pretrained else f"cannot build encoder {model_name}"
        raise CheckpointError(pretrained or spec, f"{action}: {problem}") from exc
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.attn_pool is not None:
        raise CheckpointError(spec, f"{type(visual).__name__} trunk does not give one token per patch (need a ViT)")
    height, width = visual.image_size
    if height != width:
        raise CheckpointError(spec, f"non-square input size {height}x{width} is not supported")
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    fingerprint = {**identity, "weights_sha256": _weights_sha256(visual), "image_size": int(height)}
    encoder = FrozenCLIP(visual, preprocess_cfg, spec, fingerprint).to(device)
    logger.debug("encoder %s: %s", spec, fingerprint)
    return encoder
