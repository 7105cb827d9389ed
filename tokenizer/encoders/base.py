"""The frozen image encoder's common part: preprocessing, batched encoding and the weights fingerprint.

Every encoder the project builds (:class:`mmduplex.tokenizer.encoders.factory.FrozenCLIP` for open_clip vision
transformers,
:class:`mmduplex.tokenizer.encoders.efficientnet.FrozenEfficientNet` for the ImageNet EfficientNet-Lite trunks) is a
:class:`FrozenImageEncoder`: always in eval mode with gradients off, ``encode([T, H, W, 3] uint8)`` ->
:class:`EncodedFrames` (patch features ``[T, P, D]`` on a ``grid`` of patches, a pooled embedding ``[T, E]``), and a
``fingerprint`` dict whose equality means identical encoders (a feature cache made by one is valid for the other).
Subclasses implement :meth:`FrozenImageEncoder.forward` on normalised ``[B, 3, S, S]`` images.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmduplex.errors import InputError


@dataclass
class EncodedFrames:
    """Encoder output for ``T`` frames (float32, on the encoder's device)."""

    patches: torch.Tensor  # [T, P, D] patch features on the encoder's grid (row-major)
    pooled: torch.Tensor  # [T, E] pooled image embedding


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module``'s state dict (name, shape, float32 bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(array.data)
    return digest.hexdigest()


class FrozenImageEncoder(nn.Module):
    """Preprocessing and batched, gradient-free encoding shared by the project's frozen image encoders.

    Args:
        spec: the spec the encoder was created from (for :func:`mmduplex.tokenizer.encoders.factory.create_encoder`).
        fingerprint: identity of the weights (``model``, ``pretrained``, ``weights_sha256``, ``image_size``, ...).
        image_size: side ``S`` of the square model input.
        grid: ``(rows, cols)`` of the patch-feature map.
        width: ``D``, the width of a patch feature.
        embed_dim: ``E``, the width of the pooled embedding.
        mean: per-channel normalisation mean (of ``[0, 1]`` RGB).
        std: per-channel normalisation std.
        resize_mode: ``"shortest"`` (shorter side to ``S``, centre crop), ``"squash"`` or ``"longest"`` (pad).
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        fill_value: padding value in ``[0, 1]`` for ``resize_mode="longest"``.
    """

    def __init__(
        self,
        spec: str,
        fingerprint: dict,
        image_size: int,
        grid: tuple[int, int],
        width: int,
        embed_dim: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        fill_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.fingerprint = dict(fingerprint)
        self.image_size = int(image_size)
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        self.width = int(width)
        self.embed_dim = int(embed_dim)
        self.resize_mode = str(resize_mode)
        self.interpolation = interpolation if interpolation in ("bilinear", "nearest") else "bicubic"
        self.fill_value = float(fill_value)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Stay in eval mode whatever is asked: the encoder is frozen."""
        return super().train(False)

    def freeze(self) -> None:
        """Gradients off and eval mode; subclasses call it once their modules exist."""
        self.requires_grad_(False)
        self.eval()

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
            else:  # "shortest": resize the shorter side, then a centre crop
                scale = size / min(height, width)
                x = resize(x, size=(max(size, round(height * scale)), max(size, round(width * scale))))
                top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
                x = x[..., top : top + size, left : left + size]
            x = x.clamp_(0.0, 1.0)  # [B, 3, S, S]
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, 3, S, S]`` images -> (patches ``[B, P, D]``, pooled ``[B, E]``), float32."""
        raise NotImplementedError

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
