"""The frozen image encoders' factory, and open_clip's visual trunk as a per-frame patch-feature extractor.

``create_encoder(spec)`` is the one factory. The names it takes (:data:`SPEC_FORMS`):

- ``efficientnet-lite0`` (the default: the real ImageNet encoder that works offline; ``-lite1``/``-lite2`` and the
  stride-8 cut ``efficientnet-lite0-s8`` too, optionally ``:imagenet`` or ``:PATH``), built by
  :mod:`mmduplex.tokenizer.encoders.efficientnet` from the weights registry;
- ``mmduplex-tiny`` (96 px, 8 px patches: 144 patches per frame) and ``mmduplex-micro`` (32 px: 16 patches), the
  project's random-initialised presets for tests: open_clip model configs shipped in ``model_configs/``;
- ``MODEL:TAG`` (an open_clip model and one of its pretrained tags, e.g. ``ViT-B-16:openai``) or ``MODEL:PATH`` (a
  local weights file, e.g. ``ViT-B-16:/ckpt/open_clip_model.bin``): the pretrained weights, or an error (open_clip is
  asked with ``require_pretrained``, so it never falls back to random weights);
- ``MODEL:random``: an open_clip model with random weights, asked for by name;
- ``hf-hub:ORG/REPO``, ``local-dir:DIR`` or a bare local folder in open_clip's ``local-dir`` layout
  (``open_clip_config.json`` + weights).

A bare open_clip model name (``ViT-B-16``) is an error that lists these forms: it used to mean random weights, which
a user who forgot the tag would not notice. Random weights are always built from a fixed seed (:data:`INIT_SEED`), so
every process builds the same ones; their fingerprint records ``pretrained: None`` (as it always has, so feature
caches and bundles made before ``:random`` existed still match), and :func:`spec_of_fingerprint` turns a fingerprint
back into the name that rebuilds it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from mmduplex.errors import CheckpointError
from mmduplex.tokenizer.encoders.base import EncodedFrames, FrozenImageEncoder, weights_sha256
from mmduplex.tokenizer.encoders.efficientnet import create_efficientnet, is_efficientnet_spec

__all__ = [
    "DEFAULT_ENCODER",
    "EncodedFrames",
    "FrozenCLIP",
    "FrozenImageEncoder",
    "SPEC_FORMS",
    "create_encoder",
    "spec_of_fingerprint",
]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet-lite0"
"""The encoder a command uses when none is named: real ImageNet weights, available offline."""
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
PRESETS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
"""The project's random-initialised open_clip presets (``mmduplex-micro``, ``mmduplex-tiny``): random by name."""
RANDOM = "random"
"""The tag that asks for an open_clip model with random weights (``ViT-B-32:random``)."""
INIT_SEED = 0  # random-initialised encoders are built under this seed, so their weights never vary
SPEC_FORMS = (
    "efficientnet-lite0 (real ImageNet weights, offline; also -lite1, -lite2, -lite0-s8), "
    "mmduplex-tiny / mmduplex-micro (random presets for tests), "
    "MODEL:TAG (an open_clip pretrained tag, e.g. ViT-B-16:openai), MODEL:/path/to/weights, "
    "MODEL:random (an open_clip model with random weights), hf-hub:ORG/REPO, local-dir:DIR or a local open_clip folder"
)
"""The encoder names :func:`create_encoder` takes, for help texts and error messages."""
_SCHEMAS = ("hf-hub:", "local-dir:")
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz")


@functools.cache
def _register_presets() -> None:
    """Make the project's model configs (``mmduplex-tiny``, ...) known to open_clip, once per process."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


_weights_sha256 = weights_sha256  # the name the tests and older code use


def _known_tags(model: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(model)
    return ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none"


def _resolve_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split ``spec`` into open_clip's ``(model_name, pretrained)`` and the fingerprint's model/pretrained.

    ``pretrained`` is ``RANDOM`` for random weights (a preset, or ``MODEL:random``), else a tag, a weights file or
    ``None`` for the ``hf-hub:`` / ``local-dir:`` schemas (whose weights come with the name).
    """
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
        if os.sep in spec or spec.endswith(_WEIGHT_SUFFIXES):
            raise CheckpointError(spec, "no such checkpoint file or folder")
        raise CheckpointError(spec, f"unknown encoder '{model}'; an encoder is one of: {SPEC_FORMS}")
    if pretrained == RANDOM or (not pretrained and model in PRESETS):
        return model, RANDOM, {"model": model, "pretrained": None}
    if not pretrained:
        raise CheckpointError(
            spec,
            f"an open_clip model name needs its weights: {model}:TAG (pretrained tags: {_known_tags(model)}), "
            f"{model}:/path/to/weights, or {model}:{RANDOM} for random weights (the real offline encoder: "
            f"{DEFAULT_ENCODER}; the tests' random one: mmduplex-tiny)",
        )
    if open_clip.get_pretrained_cfg(model, pretrained):
        return model, pretrained, {"model": model, "pretrained": pretrained}
    if Path(pretrained).expanduser().is_file():
        weights = str(Path(pretrained).expanduser())
        return model, weights, {"model": model, "pretrained": Path(weights).name}
    if os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
        raise CheckpointError(pretrained, "no such checkpoint file")
    raise CheckpointError(
        pretrained, f"no such checkpoint file, nor a pretrained tag of {model} (tags: {_known_tags(model)})"
    )


def spec_of_fingerprint(fingerprint: dict) -> str | None:
    """The name that rebuilds the encoder ``fingerprint`` describes (``None`` when it was a local folder).

    A random open_clip model is recorded with ``pretrained: None``; it comes back as ``MODEL:random`` (or the bare
    preset name), so a bundle or cache made when a bare name meant random weights still names its encoder.
    """
    model, pretrained = fingerprint.get("model"), fingerprint.get("pretrained")
    if not model or str(model).startswith("local-dir:"):  # a local folder's path is not recorded
        return None
    if str(model).startswith("hf-hub:"):
        return str(model)
    if pretrained:
        return f"{model}:{pretrained}"
    return str(model) if model in PRESETS else f"{model}:{RANDOM}"


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


def _random_clip(spec: str, model_name: str) -> tuple[nn.Module, dict[str, Any]]:
    """An open_clip model of ``model_name``'s config with random weights (the caller seeds), and its preprocessing.

    Built from the config with open_clip's own model classes, as its factory builds it (the same weights under the
    same seed), without the factory: asked-for random weights need no "initialized randomly" warning.
    """
    config = copy.deepcopy(open_clip.get_model_config(model_name))
    preprocess = {**dataclasses.asdict(PreprocessCfg()), **config.pop("preprocess_cfg", {})}
    custom_text = config.pop("custom_text", False)
    if "hf_model_name" in config.get("text_cfg", {}) or "multimodal_cfg" in config:
        raise CheckpointError(spec, f"{model_name} has a hub-hosted text tower: random weights need no such model")
    model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**config)
    return model, {**preprocess, "size": model.visual.image_size}


def create_encoder(spec: str = DEFAULT_ENCODER, device: str | torch.device | None = None) -> FrozenImageEncoder:
    """Build the frozen encoder named by ``spec`` (see the module docstring for the forms it takes).

    ``efficientnet-lite0`` (``-lite1``, ``-lite2``, ``-lite0-s8``; optionally ``:imagenet`` or ``:PATH``) builds the
    real ImageNet encoder of :mod:`mmduplex.tokenizer.encoders.efficientnet` from the weights registry; everything
    else is an open_clip ViT.

    The fingerprint is ``{"model", "pretrained", "weights_sha256", "image_size"}`` (``pretrained`` is ``None`` for
    random weights): the hash covers every tensor of the visual trunk, so equal fingerprints mean identical encoders
    (and a cache made by one can be read for the other).

    Args:
        spec: an encoder name (:data:`SPEC_FORMS`).
        device: where to run; default CUDA when available, else CPU.

    Raises:
        CheckpointError: unknown model name, an open_clip name without its weights (``MODEL:TAG``, ``MODEL:PATH``
            or ``MODEL:random``), missing checkpoint, a checkpoint that does not fit the model, or a model without
            a ViT trunk (no patch tokens).
    """
    if is_efficientnet_spec(spec):
        return create_efficientnet(spec, device)
    _register_presets()
    model_name, pretrained, identity = _resolve_spec(spec)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            if pretrained == RANDOM:
                model, preprocess_cfg = _random_clip(spec, model_name)
            else:
                model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu", require_pretrained=True)
                preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    except CheckpointError:
        raise
    except Exception as exc:  # open_clip/torch raise many types for bad checkpoints (RuntimeError, pickle, assert)
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        action = (
            f"cannot build encoder {model_name}" if pretrained in (None, RANDOM) else f"cannot load as {model_name}"
        )
        raise CheckpointError(spec if pretrained in (None, RANDOM) else pretrained, f"{action}: {problem}") from exc
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.attn_pool is not None:
        raise CheckpointError(spec, f"{type(visual).__name__} trunk does not give one token per patch (need a ViT)")
    height, width = visual.image_size
    if height != width:
        raise CheckpointError(spec, f"non-square input size {height}x{width} is not supported")
    fingerprint = {**identity, "weights_sha256": _weights_sha256(visual), "image_size": int(height)}
    encoder = FrozenCLIP(visual, preprocess_cfg, spec, fingerprint).to(device)
    logger.debug("encoder %s: %s", spec, fingerprint)
    return encoder
