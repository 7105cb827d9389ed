"""The frozen image encoders' factory, and open_clip's visual trunk as a per-frame patch-feature extractor.

``create_encoder(spec)`` is the one factory. ``efficientnet-lite0`` (the real ImageNet encoder that works
offline, the demo's default; ``-lite1``/``-lite2`` too) is built by :mod:`mmduplex.tokenizer.encoders.efficientnet`. Any
other ``spec`` is ``MODEL[:PRETRAINED]`` (an open_clip model name and a pretrained tag or a local weights file, e.g.
``ViT-B-16:openai`` or ``ViT-B-16:/ckpt/open_clip_model.bin``), an open_clip ``hf-hub:``/``local-dir:`` name, or a
bare local folder in open_clip's ``local-dir`` layout (``open_clip_config.json`` + weights). A model name without a
tag is a random initialisation from a fixed seed, so every process builds the same weights; the built-in presets
``mmduplex-tiny`` (96 px, 8 px patches: 144 patches per frame) and ``mmduplex-micro`` (32 px: 16 patches, for very
fast tests) are open_clip model configs shipped in ``tokenizer/model_configs`` and registered with
``open_clip.add_model_config``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from mmduplex.errors import CheckpointError
from mmduplex.tokenizer.encoders.base import EncodedFrames, FrozenImageEncoder, weights_sha256
from mmduplex.tokenizer.encoders.efficientnet import create_efficientnet, is_efficientnet_spec

__all__ = ["EncodedFrames", "FrozenCLIP", "FrozenImageEncoder", "create_encoder"]

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
PRESETS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
INIT_SEED = 0  # random-initialised encoders are built under this seed, so their weights never vary
_SCHEMAS = ("hf-hub:", "local-dir:")


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


_weights_sha256 = weights_sha256  # the name the tests and older code use


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


class FrozenCLIP(FrozenImageEncoder):
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
        width = int(visual.conv1.out_channels)
        super().__init__(
            spec,
            fingerprint,
            image_size=int(visual.image_size[0]),
            grid=tuple(int(g) for g in visual.grid_size),
            width=width,
            embed_dim=int(visual.proj.shape[1]) if visual.proj is not None else width,
            mean=tuple(preprocess_cfg["mean"]),
            std=tuple(preprocess_cfg["std"]),
            resize_mode=str(preprocess_cfg.get("resize_mode", "shortest")),
            interpolation=str(preprocess_cfg.get("interpolation", "bicubic")),
            fill_value=float(preprocess_cfg.get("fill_color", 0)) / 255.0,
        )
        self.visual = visual
        self.visual.output_tokens = True
        self.freeze()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, 3, S, S]`` images -> (patches ``[B, P, D]``, pooled ``[B, E]``), float32."""
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if images.device.type == "cuda" else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            pooled, tokens = self.visual(images)  # [B, E], [B, P, D]
        return tokens.float(), pooled.float()


def create_encoder(spec: str = "mmduplex-tiny", device: str | torch.device | None = None) -> FrozenImageEncoder:
    """Build the frozen encoder named by ``spec`` (see the module docstring for the forms it takes).

    ``efficientnet-lite0`` (``-lite1``, ``-lite2``; optionally ``:imagenet`` or ``:PATH``) builds the real ImageNet
    encoder of :mod:`mmduplex.tokenizer.encoders.efficientnet` from the weights registry; everything else is an
    open_clip ViT.

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
    if is_efficientnet_spec(spec):
        return create_efficientnet(spec, device)
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
