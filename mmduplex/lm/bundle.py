"""Inference bundles of the duplex model: ``export_bundle`` (Lightning checkpoint -> folder) and ``load_bundle``.

A bundle folder holds::

    config.json                  {"kind": "mmduplex-duplex", "format_version": 1, step_hz, delay_steps, slots,
                                  user_slots_per_step (absent = 1), user_scale / text_scale (absent = 1),
                                  projector_hidden / _layers / _heads / _gated (absent: null, 0, 4, false),
                                  copy_dim (absent = 0: no copy head), copy_mode (absent = "add"),
                                  readout_dim / _heads (absent = 0, 4: no slot readout),
                                  encoder, fps,
                                  backbone config, video tokenizer description, text tokenizer settings, ...}
    model.safetensors            the DuplexLM weights (backbone incl. LoRA adapters, projector, stream embeddings)
    video_tokenizer.safetensors  the frozen video tokenizer's weights
    text_tokenizer/              tokenizer.json + text_tokenizer.json

so ``mmduplex stream`` / ``mmduplex eval`` need no other flags. Loading reads JSON and safetensors only (no pickle,
no network: the backbone is rebuilt from its stored config); a bundle of another kind is refused with a
:class:`~mmduplex.errors.CheckpointError`. Checkpoints are read with ``torch.load(weights_only=True)``.

A pretrained LM kept frozen (``finetune: projector`` or ``lora`` on a registry name, hub id or folder) is not saved:
checkpoints and bundles hold the trained parameters only and the config's ``frozen_backbone`` names the LM
(``source``: its registry name / hub id / folder, ``keys`` and ``sha256``: its frozen tensors and their digest,
:func:`frozen_sha256`), so a run takes megabytes, not the LM's gigabytes. Loading rebuilds the LM from ``source`` and
refuses it when its digest differs (other weights under the same name).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from mmduplex.errors import CheckpointError
from mmduplex.fileio import atomic_dir, write_json_atomic
from mmduplex.lm.model import DuplexLM, LoraSettings, apply_lora, build_backbone
from mmduplex.lm.text import TextTokenizer

log = logging.getLogger(__name__)

DUPLEX_KIND = "mmduplex-duplex"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
VIDEO_TOKENIZER_FILE = "video_tokenizer.safetensors"
TEXT_TOKENIZER_DIR = "text_tokenizer"
_TOKENIZER_PACKAGE = "mmduplex.tokenizer."  # bundles may only name video tokenizer classes of this package
_OLD_TOKENIZER_PACKAGE = "tokenizer."  # its import path before it installed under mmduplex (bundles written then)


def current_class_path(class_path: str) -> str:
    """``class_path`` as it imports today: a bundle written before the package move names ``tokenizer.bflow.X``."""
    return "mmduplex." + class_path if class_path.startswith(_OLD_TOKENIZER_PACKAGE) else class_path


@dataclass
class DuplexBundle:
    """A loaded inference bundle."""

    model: DuplexLM
    """The duplex LM (eval mode)."""
    text_tokenizer: TextTokenizer
    """Text tokenizer with PAD / EPAD."""
    video_tokenizer: nn.Module
    """The frozen video tokenizer (eval mode)."""
    config: dict[str, Any]
    """The bundle's ``config.json``."""

    @property
    def step_hz(self) -> float:
        return float(self.config["step_hz"])

    @property
    def delay_steps(self) -> int:
        return int(self.config["delay_steps"])

    @property
    def slots_per_step(self) -> int:
        return int(self.config["slots_per_step"])

    @property
    def user_slots_per_step(self) -> int:
        """``U``, user-stream tokens per step (1 for bundles written before the setting existed)."""
        return int(self.config.get("user_slots_per_step", 1))

    @property
    def encoder(self) -> dict | None:
        """The feature encoder's fingerprint (``model``, ``pretrained``, ``weights_sha256``, ``image_size``)."""
        return self.config.get("encoder")

    @property
    def encoder_spec(self) -> str | None:
        """The encoder's name for :func:`mmduplex.tokenizer.encoders.factory.create_encoder` (``MODEL:random`` for a
        random open_clip model, whatever name the bundle was made with)."""
        from mmduplex.tokenizer.encoders.factory import spec_of_fingerprint

        return spec_of_fingerprint(self.encoder) if self.encoder else None

    @property
    def fps(self) -> float | None:
        return None if self.config.get("fps") is None else float(self.config["fps"])


# ---------------------------------------------------------------------- video tokenizer description


def describe_video_tokenizer(tokenizer: nn.Module, given: Any = None) -> dict[str, Any] | None:
    """A JSON description ``{"class_path", "init_args"}`` that rebuilds ``tokenizer`` (weights aside).

    Taken from, in order: a dataclass ``config`` attribute (B-Flow), an ``init_args()`` method, or the
    ``class_path`` / ``init_args`` the CLI was given (``given``) when it names the tokenizer's own class.

    Returns:
        The description, or ``None`` (with a warning) when none of these is available; export then fails.
    """
    cls = type(tokenizer)
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    config = getattr(tokenizer, "config", None)
    if is_dataclass(config) and not isinstance(config, type):
        return {"class_path": class_path, "init_args": {"config": json.loads(json.dumps(asdict(config)))}}
    if callable(getattr(tokenizer, "init_args", None)):
        return {"class_path": class_path, "init_args": json.loads(json.dumps(tokenizer.init_args()))}
    if isinstance(given, dict) and given.get("class_path") == class_path:
        return {"class_path": class_path, "init_args": json.loads(json.dumps(given.get("init_args") or {}))}
    log.warning(
        "cannot describe video tokenizer %s for an inference bundle (no `config` dataclass, no `init_args()`, not "
        "configured by class_path): training works, export will fail",
        class_path,
    )
    return None


def build_video_tokenizer(spec: Any, source: str | os.PathLike = "bundle") -> nn.Module:
    """Instantiate a video tokenizer from :func:`describe_video_tokenizer`'s description.

    Raises:
        CheckpointError: no description, a class outside the ``tokenizer`` package, or bad init args.
    """
    from jsonargparse import ArgumentParser

    from mmduplex.tokenizer.base import VideoTokenizer

    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise CheckpointError(source, "no usable video tokenizer description (class_path, init_args)")
    class_path = current_class_path(spec["class_path"])
    module_name, _, class_name = class_path.rpartition(".")
    if not class_path.startswith(_TOKENIZER_PACKAGE):
        raise CheckpointError(source, f"video tokenizer class {spec['class_path']!r} is not in the tokenizer package")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(source, f"unknown video tokenizer class {spec['class_path']!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, VideoTokenizer)):
        raise CheckpointError(source, f"{spec['class_path']!r} is not a VideoTokenizer")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "tokenizer", fail_untyped=False)
    try:
        cfg = parser.parse_object({"tokenizer": spec.get("init_args") or {}})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        return instantiate(cfg).tokenizer
    except Exception as exc:  # jsonargparse's ArgumentError or the class's own InputError
        raise CheckpointError(source, f"cannot build video tokenizer {spec['class_path']}: {exc}") from exc


# ---------------------------------------------------------------------- building from a config


def build_duplex_model(config: dict[str, Any], attn_implementation: str | None = None) -> DuplexLM:
    """A :class:`DuplexLM` shaped by a bundle / checkpoint config: randomly initialised (no network), or around its
    frozen pretrained LM rebuilt from ``frozen_backbone.source``."""
    frozen = config.get("frozen_backbone")
    backbone = build_backbone(
        str(frozen["source"]) if frozen else dict(config["backbone"]),
        torch_dtype=config.get("torch_dtype"),
        attn_implementation=attn_implementation,
    )
    if config.get("finetune") == "lora":
        apply_lora(backbone, LoraSettings(**config["lora"]))
    return DuplexLM(
        backbone,
        vocab_size=int(config["vocab_size"]),
        pad_id=int(config["pad_id"]),
        epad_id=int(config["epad_id"]),
        token_dim=int(config["token_dim"]),
        slots_per_step=int(config["slots_per_step"]),
        projector_hidden=config.get("projector_hidden"),
        projector_layers=int(config.get("projector_layers", 0)),
        projector_heads=int(config.get("projector_heads", 4)),
        projector_gated=bool(config.get("projector_gated", False)),
        projector_slot_maps=bool(config.get("projector_slot_maps", False)),
        user_slots_per_step=int(config.get("user_slots_per_step", 1)),
        user_scale=float(config.get("user_scale", 1.0)),
        text_scale=float(config.get("text_scale", 1.0)),
        copy_dim=int(config.get("copy_dim", 0)),
        copy_mode=str(config.get("copy_mode", "add")),
        readout_dim=int(config.get("readout_dim", 0)),
        readout_heads=int(config.get("readout_heads", 4)),
    )


def _merge_lora(model: nn.Module) -> None:
    """Fold LoRA adapters into their base weights (inference: no adapter matmuls per step)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: a LoRA bundle would have failed to build already
        return
    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()


def frozen_keys(model: DuplexLM) -> list[str]:
    """The backbone's state-dict keys (``backbone.``...) that do not train (tied weights under each of their names)."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return [key for key in model.state_dict() if key.startswith("backbone.") and key not in trainable]


def frozen_sha256(state: dict[str, torch.Tensor], keys: list[str]) -> str:
    """SHA-256 over ``keys`` of ``state`` (sorted; each name, dtype, shape and bytes): a frozen LM's identity."""
    sha = hashlib.sha256()
    for key in sorted(keys):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        sha.update(f"{key}:{tensor.dtype}:{tuple(state[key].shape)};".encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _load_trained(model: DuplexLM, trained: dict[str, torch.Tensor], frozen: dict[str, Any], source: Any) -> None:
    """Load the trained parameters into ``model``, whose frozen LM was rebuilt from its ``source``, and check that LM
    is the one the weights were trained with.

    Raises:
        CheckpointError: keys that do not fit, or a frozen LM with another digest.
    """
    full = model.state_dict()
    missing = sorted(set(full) - set(trained))
    unexpected = sorted(set(trained) - set(full))
    if unexpected or len(missing) != int(frozen["keys"]) or any(not k.startswith("backbone.") for k in missing):
        raise CheckpointError(
            source, f"trained weights do not fit the model: unexpected {unexpected[:3]}, {len(missing)} keys missing "
            f"(the frozen LM has {frozen['keys']}), e.g. {[k for k in missing if not k.startswith('backbone.')][:3]}"
        )  # fmt: skip
    digest = frozen_sha256(full, missing)
    if digest != frozen["sha256"]:
        raise CheckpointError(
            source,
            f"the frozen LM {frozen['source']!r} loaded here has other weights (sha256 {digest[:12]}) than the one "
            f"these weights were trained with ({str(frozen['sha256'])[:12]})",
        )
    model.load_state_dict(trained, strict=False)


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint as plain containers and tensors (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds anything but plain values and tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip / pickle / unsafe-global errors of every flavour
        raise CheckpointError(path, f"not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"not a Lightning checkpoint (a {type(ckpt).__name__})")
    return ckpt


def export_bundle(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the inference bundle of a Lightning checkpoint (atomically).

    A duplex checkpoint (:class:`mmduplex.train.duplex_module.DuplexModule`) gives a duplex bundle; a B-Flow tokenizer
    checkpoint gives a tokenizer bundle (:meth:`mmduplex.tokenizer.bflow.BFlowTokenizer.save_pretrained`).

    Raises:
        CheckpointError: unreadable checkpoint, another kind, or weights that do not fit the stored config.
    """
    ckpt = read_checkpoint(checkpoint)
    kind = ckpt.get("mmduplex_kind")
    if kind == "bflow-tokenizer":
        from mmduplex.tokenizer.bflow import BFlowTokenizer

        return BFlowTokenizer.from_checkpoint(checkpoint).save_pretrained(out_dir)
    if kind != DUPLEX_KIND:
        raise CheckpointError(checkpoint, f"checkpoint of kind {kind!r}, expected a duplex model ({DUPLEX_KIND!r})")
    config = dict(ckpt.get("duplex_config") or {})
    state = ckpt.get("state_dict") or {}
    if not config or not state:
        raise CheckpointError(checkpoint, "the checkpoint holds no duplex config or no weights")
    tokenizer_json = config.pop("text_tokenizer_json")
    text_tokenizer = TextTokenizer.from_json(tokenizer_json, config["text_tokenizer"])
    if config.get("video_tokenizer") is None:
        raise CheckpointError(checkpoint, "the video tokenizer was not described at training time; cannot export it")
    model = build_duplex_model(config)
    video_tokenizer = build_video_tokenizer(config["video_tokenizer"], checkpoint)
    frozen = config.get("frozen_backbone")
    try:
        if frozen:
            _load_trained(model, _sub_state(state, "model."), frozen, checkpoint)
        else:
            model.load_state_dict(_sub_state(state, "model."), strict=True)
        video_tokenizer.load_state_dict(_sub_state(state, "video_tokenizer."), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(checkpoint, f"weights do not match the stored config: {str(exc)[:300]}") from exc
    config = {"kind": DUPLEX_KIND, "format_version": FORMAT_VERSION, **config}
    with atomic_dir(out_dir) as tmp:
        if frozen:  # the trained parameters only: the frozen LM is rebuilt from its source when the bundle loads
            skip = set(model.state_dict()) - set(_sub_state(state, "model."))
            trained = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in skip}
            save_file(trained, str(tmp / MODEL_FILE))
        else:
            save_model(model, str(tmp / MODEL_FILE))
        tokenizer_state = {k: v.detach().cpu().contiguous() for k, v in video_tokenizer.state_dict().items()}
        save_file(tokenizer_state, str(tmp / VIDEO_TOKENIZER_FILE))
        text_tokenizer.save(tmp / TEXT_TOKENIZER_DIR)
        write_json_atomic(tmp / CONFIG_FILE, config)
    log.info("wrote duplex bundle %s", out_dir)
    return Path(out_dir)


def read_bundle_config(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a duplex bundle, checked for kind and format version.

    Raises:
        CheckpointError: no folder, no or malformed ``config.json``, another kind, or an unknown format version.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise CheckpointError(bundle_dir, "no such bundle folder")
    path = bundle_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(bundle_dir, f"not an inference bundle ({CONFIG_FILE} missing)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(path, f"malformed JSON ({exc})") from exc
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind != DUPLEX_KIND:
        raise CheckpointError(path, f"bundle of kind {kind!r}, expected a duplex model bundle ({DUPLEX_KIND!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    return config


def load_bundle(
    bundle_dir: str | os.PathLike, device: str | torch.device = "cpu", attn_implementation: str | None = None
) -> DuplexBundle:
    """Load a duplex inference bundle (JSON + safetensors only, no network).

    Args:
        bundle_dir: the folder written by :func:`export_bundle`.
        device: where to put the model and video tokenizer.
        attn_implementation: backbone attention (``None``: flash-attn 2 on CUDA when installed, else sdpa).

    Raises:
        CheckpointError: a missing folder or file, a bundle of another kind, or weights that do not fit.
    """
    bundle_dir = Path(bundle_dir)
    config = read_bundle_config(bundle_dir)
    text_tokenizer = TextTokenizer.load(bundle_dir / TEXT_TOKENIZER_DIR)
    model = build_duplex_model(config, attn_implementation)
    video_tokenizer = build_video_tokenizer(config.get("video_tokenizer"), bundle_dir / CONFIG_FILE)
    for file in (MODEL_FILE, VIDEO_TOKENIZER_FILE):
        if not (bundle_dir / file).is_file():
            raise CheckpointError(bundle_dir / file, "missing from the bundle")
    try:
        if config.get("frozen_backbone"):
            _load_trained(model, load_file(str(bundle_dir / MODEL_FILE)), config["frozen_backbone"], bundle_dir)
        else:
            load_model(model, str(bundle_dir / MODEL_FILE), strict=True)
        video_tokenizer.load_state_dict(load_file(str(bundle_dir / VIDEO_TOKENIZER_FILE)), strict=True)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' own errors for corrupt files, RuntimeError for mismatched keys
        raise CheckpointError(bundle_dir, f"weights do not fit the bundle config ({str(exc)[:300]})") from exc
    _merge_lora(model)
    model.to(device).eval()
    video_tokenizer.to(device).eval().requires_grad_(False)
    return DuplexBundle(model=model, text_tokenizer=text_tokenizer, video_tokenizer=video_tokenizer, config=config)
