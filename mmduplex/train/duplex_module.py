"""``DuplexModule``: Lightning training of the duplex model on windows of timed transcripts + cached video features.

The constructor is the schema (``mmduplex fit --config recipes/duplex/<name>.yaml``). The frozen video tokenizer
(B-Flow or a baseline, injected by ``class_path``) turns cached patch features into frame tokens; it is frozen and
deterministic, so when training starts (:meth:`DuplexModule.setup`) its tokens of every video are computed once into
a token store beside the features, and the module hands its step grid (:class:`~mmduplex.train.windows.StepGrid`)
to :class:`mmduplex.train.duplex_datamodule.DuplexDataModule`, whose loader workers build the window tensors: the
training step runs only the model. A batch that arrives as a list of window descriptions (a loader without the grid)
is put on the step grid here (:meth:`DuplexModule.collate`, the in-process reference the workers' tensors equal).

Everything :func:`mmduplex.lm.bundle.export_bundle` needs (text tokenizer files, backbone config, video tokenizer
description, encoder fingerprint and fps, stream settings) is stored in the checkpoint as plain JSON values, so the
checkpoint loads with ``torch.load(weights_only=True)``. A pretrained LM that stays frozen (``projector`` / ``lora``
on a registry name, hub id or folder) is not saved: the checkpoint holds the trained parameters and the LM's identity
(``duplex_config.frozen_backbone``), and loading it rebuilds the LM from that identity.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn

from mmduplex.data.transcripts import Word
from mmduplex.errors import CacheError, CheckpointError, InputError
from mmduplex.lm.alignment import align_text, align_user, pack_video, time_to_step
from mmduplex.lm.bundle import DUPLEX_KIND, describe_video_tokenizer, frozen_keys, frozen_sha256
from mmduplex.lm.copy_head import copy_targets
from mmduplex.lm.model import DuplexLM, LoraSettings, LossWeights, apply_lora, build_backbone, text_loss
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.schedules import warmup_cosine_schedule
from mmduplex.train.windows import StepGrid

log = logging.getLogger(__name__)

FINETUNE_MODES = ("projector", "lora", "full")
STREAM_SINK = 4
"""Attention-sink positions of the streaming cache recorded in bundles (StreamingLLM's value)."""


class DuplexModule(LightningModule):
    """Trains :class:`mmduplex.lm.model.DuplexLM` with the weighted text-stream loss.

    Args:
        video_tokenizer: the frozen video tokenizer (B-Flow or a baseline); its ``token_dim`` sets the video width.
        backbone: a Hugging Face causal LM: hub id or local folder (pretrained weights), or a config dict with
            ``model_type`` (random init, vocabulary = the text tokenizer's; e.g. a tiny ``llama``).
        step_hz: model steps per second.
        delay_steps: tau, how many steps the text stream lags the video.
        slots_per_step: K, video token slots per step.
        lr: peak learning rate (AdamW).
        text_tokenizer: ``"synthetic"`` (word vocabulary of the synthetic set), a saved tokenizer folder, or a
            Hugging Face tokenizer; ``None`` uses the backbone's (``backbone`` must then be a hub id or folder).
        finetune: what trains besides the new parts (projector, user vector, PAD/EPAD rows and head):
            ``projector`` nothing else (LM frozen), ``lora`` LoRA adapters, ``full`` the whole LM (an LM trained from
            scratch needs ``full``).
        lora: LoRA settings (required for ``finetune: lora``).
        torch_dtype: backbone parameter dtype (``"bfloat16"``, ``"float32"``; ``None``: the default).
        attn_implementation: ``sdpa`` / ``eager`` / ``flash_attention_2``; ``None``: flash-attn 2 when installed and
            on CUDA, else sdpa.
        gradient_checkpointing: recompute backbone activations in the backward pass (saves memory).
        projector_hidden: hidden width of the video projector MLP (``None``: the LM width).
        projector_layers: attention layers between a step's video slots before they are summed (0: none).
        projector_gated: a gated (GLU) slot MLP, whose products bind a token's features before the sum
            (:class:`~mmduplex.lm.model.VideoProjector`).
        projector_slot_maps: one output layer per video slot (Moshi's per-codebook tables), so the step's sum keeps
            which features came from which slot (:class:`~mmduplex.lm.projector.VideoProjector`'s ``slot_maps``).
        projector_heads: attention heads of those layers.
        pad_weight: loss weight of PAD targets (Moshi: 0.5).
        epad_weight: loss weight of EPAD targets.
        silence_weight: weight of the extra speak/silent (P(PAD)) binary cross-entropy term.
        weight_decay: AdamW weight decay on matrices (not on biases, norms and vectors).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        decay_steps: cosine decay steps after warm-up (``None``: constant after warm-up).
        min_lr_ratio: final learning rate of the cosine as a fraction of ``lr``.
        memo_videos: in-process path only (batches of window descriptions, :meth:`collate`): at most this many
            videos' tokens are memoised (``None``: all). The data module's loaders read them from the token store.
        memo_windows: in-process path only: at most this many windows' tensors are memoised (least recently used out
            first; 0: none); a window's tensors are the same every epoch (the tokenizer is frozen). The loaders'
            workers build windows ~8x faster than this path does (``benchmarks/bench_data.py``).
        user_slots_per_step: U, user-stream (question) tokens per step (1: one token per step).
        user_scale: fixed factor on the user stream's step embedding (:class:`~mmduplex.lm.model.DuplexLM`).
        text_scale: fixed factor on the model's own text token embedding (:class:`~mmduplex.lm.model.DuplexLM`).
        copy_dim: width of the copy head's queries and keys, a pointer into the user stream that raises the logits of
            the words typed where it points (a multiple-choice letter after the option's name;
            :mod:`mmduplex.lm.copy_head`); 0: none.
        copy_mode: ``"add"`` (a gated bonus on the logits) or ``"mix"`` (a pointer-generator mixture of
            probabilities, whatever the LM's logit scale: pretrained LMs).
        copy_loss_weight: weight of a ``mix`` copy head's supervision (its pointer on the word to say where that word
            was typed, its gate on whether it was) added to the text loss; 0: none.
        readout_dim: per-head width of the slot readout, an attention from the final hidden state into the separate
            video slots of the steps held (:mod:`mmduplex.lm.readout`); 0: none.
        readout_heads: the slot readout's attention heads.
    """

    def __init__(
        self,
        video_tokenizer: nn.Module,
        backbone: str | dict,
        step_hz: float,
        delay_steps: int,
        slots_per_step: int,
        lr: float,
        text_tokenizer: str | None = None,
        finetune: Literal["projector", "lora", "full"] = "full",
        lora: LoraSettings | None = None,
        torch_dtype: str | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        projector_hidden: int | None = None,
        projector_layers: int = 0,
        projector_heads: int = 4,
        projector_gated: bool = False,
        projector_slot_maps: bool = False,
        pad_weight: float = 1.0,
        epad_weight: float = 1.0,
        silence_weight: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        decay_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        memo_videos: int | None = None,
        memo_windows: int = 0,
        user_slots_per_step: int = 1,
        user_scale: float = 1.0,
        text_scale: float = 1.0,
        copy_dim: int = 0,
        copy_mode: str = "add",
        copy_loss_weight: float = 0.0,
        readout_dim: int = 0,
        readout_heads: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        given_tokenizer = self.hparams.pop("video_tokenizer", None)  # a class_path dict under the CLI, else the module
        if isinstance(self.hparams.get("lora"), LoraSettings):
            self.hparams["lora"] = asdict(self.hparams["lora"])  # checkpoints hold plain values only
        if finetune not in FINETUNE_MODES:
            raise InputError("finetune", f"expected one of {FINETUNE_MODES}, got {finetune!r}")
        if memo_windows < 0:
            raise InputError("memo_windows", f"must be >= 0 (0: none), got {memo_windows}")
        if finetune == "lora" and lora is None:
            raise InputError("lora", "finetune: lora needs LoRA settings (r, alpha)")
        if not step_hz > 0 or delay_steps < 0 or slots_per_step < 1 or user_slots_per_step < 1:
            raise InputError(
                "model",
                "need step_hz > 0, delay_steps >= 0, K >= 1, U >= 1; got "
                f"{step_hz}, {delay_steps}, {slots_per_step}, {user_slots_per_step}",
            )
        if text_tokenizer is None:
            if not isinstance(backbone, str):
                raise InputError("text_tokenizer", "required when the backbone is built from a config dict")
            text_tokenizer = backbone
        self.text_tokenizer = load_text_tokenizer(text_tokenizer)
        self.video_tokenizer = video_tokenizer
        self.video_tokenizer_spec = describe_video_tokenizer(video_tokenizer, given_tokenizer)
        self.video_tokenizer.requires_grad_(False).eval()
        lm = build_backbone(
            backbone,
            vocab_size=None if isinstance(backbone, str) else self.text_tokenizer.vocab_size,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
        )
        if finetune == "lora":
            apply_lora(lm, LoraSettings(**lora) if isinstance(lora, dict) else lora)
        self.model = DuplexLM(
            lm,
            vocab_size=self.text_tokenizer.vocab_size,
            pad_id=self.text_tokenizer.pad_id,
            epad_id=self.text_tokenizer.epad_id,
            token_dim=int(video_tokenizer.token_dim),
            slots_per_step=slots_per_step,
            projector_hidden=projector_hidden,
            projector_layers=projector_layers,
            projector_heads=projector_heads,
            projector_gated=projector_gated,
            projector_slot_maps=projector_slot_maps,
            user_slots_per_step=user_slots_per_step,
            user_scale=user_scale,
            text_scale=text_scale,
            copy_dim=copy_dim,
            copy_mode=copy_mode,
            readout_dim=readout_dim,
            readout_heads=readout_heads,
        )
        if copy_loss_weight > 0 and (self.model.copy_head is None or copy_mode != "mix"):
            raise InputError("copy_loss_weight", "supervises a mix copy head (copy_dim > 0, copy_mode: mix)")
        if self.model.copy_head is not None:
            self.model.copy_head.set_targets(copy_targets(self.text_tokenizer))
        self._set_trainable(finetune)
        if gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.loss_weights = LossWeights(pad=pad_weight, epad=epad_weight, silence=silence_weight)
        self.feature_meta: dict[str, Any] = {}
        self._memo: OrderedDict[str, list] = OrderedDict()
        self._windows: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._frozen: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup

    def _set_trainable(self, finetune: str) -> None:
        backbone = self.model.backbone
        if finetune == "full":
            backbone.requires_grad_(True)
        else:
            backbone.requires_grad_(False)
            if finetune == "lora":
                for name, param in backbone.named_parameters():
                    if "lora_" in name:
                        param.requires_grad_(True)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info("duplex model: %s fine-tuning, %d of %d parameters trainable", finetune, trainable, total)

    def train(self, mode: bool = True) -> DuplexModule:
        """Switch train/eval mode; the frozen video tokenizer always stays in eval mode."""
        super().train(mode)
        self.video_tokenizer.eval()
        return self

    def _check_features(self, info: dict[str, Any]) -> None:
        expected = (int(self.video_tokenizer.num_patches), int(self.video_tokenizer.feature_dim))
        if tuple(info["patch_shape"]) != expected:
            raise CacheError(
                info["cache_dir"],
                f"features are [P, D] = {list(info['patch_shape'])} but the video tokenizer expects {list(expected)}",
            )

    def step_grid(self) -> StepGrid:
        """The stream settings a window is built on (a picklable value for the data-loader workers)."""
        hp = self.hparams
        return StepGrid.of(
            self.text_tokenizer,
            step_hz=float(hp.step_hz),
            delay_steps=int(hp.delay_steps),
            slots_per_step=int(hp.slots_per_step),
            user_slots_per_step=int(self.model.user_slots_per_step),
            token_dim=int(self.model.token_dim),
        )

    def setup(self, stage: str) -> None:
        """Hand the data module the step grid and the token store of the video tokenizer (built on the first rank
        while the others wait), so its loader workers build the window tensors."""
        trainer = self.trainer
        data = getattr(trainer, "datamodule", None)
        if data is None or not hasattr(data, "use_step_grid"):
            return
        if self.video_tokenizer_spec is None:
            log.warning("video tokenizer not described: its tokens are not stored, windows are built in the step")
            return
        self._check_features(data.feature_info())
        if trainer.is_global_zero:
            self.build_token_store(data)
        trainer.strategy.barrier("mmduplex-token-store")
        data.use_step_grid(self.step_grid(), self.token_fingerprint())

    def token_fingerprint(self) -> dict[str, Any]:
        """What identifies the frozen video tokenizer's tokens (the token store's key)."""
        from mmduplex.train.token_store import tokenizer_fingerprint

        return tokenizer_fingerprint(self.video_tokenizer, self.video_tokenizer_spec)

    def build_token_store(self, data: Any) -> None:
        """Bring ``data``'s token store of this model's video tokenizer up to date (what :meth:`setup` does on the
        first rank; ``mmduplex demo`` calls it before the models start, with one tokenizing process per core)."""
        data.prepare_tokens(self.video_tokenizer, self.token_fingerprint())

    def on_fit_start(self) -> None:
        """Check the feature cache fits the video tokenizer and record its encoder fingerprint and fps."""
        info = self.trainer.datamodule.feature_info()
        self._check_features(info)
        self.feature_meta = {"encoder": dict(info["encoder"]), "fps": float(info["fps"])}
        window_s = getattr(self.trainer.datamodule, "window_s", None)
        if window_s is not None:
            self.feature_meta["train_window_steps"] = round(float(window_s) * self.hparams.step_hz)

    # ------------------------------------------------------------------ batches on the step grid

    def video_tokens(self, key: str) -> list:
        """The video tokenizer's frame tokens for a whole cached video (memoised; CPU tensors)."""
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        record = self.trainer.datamodule.load_features(key)
        device = next(self.video_tokenizer.parameters(), torch.empty(0)).device
        # The frozen tokenizer runs in its own precision, as it streams, also inside bf16-mixed training's autocast
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            video = self.video_tokenizer.tokenize(record.patches.to(device), record.timestamps)
        frames = [type(f)(f.t, f.kind, f.tokens.detach().float().cpu(), f.positions.cpu()) for f in video.frames]
        self._memo[key] = frames
        if self.hparams.memo_videos is not None and len(self._memo) > self.hparams.memo_videos:
            self._memo.popitem(last=False)
        return frames

    def window_tensors(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One window of a clip on the step grid: ``text_ids [S]``, ``user_ids [S]`` (``[S, U]`` with ``U > 1`` user
        slots per step), ``video_slots [S, K, Dv]``, ``video_mask [S, K]``.

        The streams are built from the clip's start (so text spill and video FIFO state match a stream that
        started there) and then cut to the window, which may run past the clip's end (no video there).
        """
        hz, tok = self.hparams.step_hz, self.text_tokenizer
        start = time_to_step(float(sample["offset_s"]), hz)
        steps = round(float(sample["window_s"]) * hz)
        end = start + steps
        words = [Word(float(s), float(e), str(w)) for s, e, w in sample["words"]]
        text = align_text(words, end, hz, tok, self.hparams.delay_steps)[start:end]  # [S]
        questions = [(float(t), str(q)) for t, q in sample.get("questions", [])]
        user = align_user(questions, end, hz, tok, self.model.user_slots_per_step)[start:end]  # [S] or [S, U]
        clip_start, clip_end = float(sample["clip_start_s"]), sample.get("clip_end_s")
        frames = [
            f
            for f in self.video_tokens(sample["key"])
            if f.t >= clip_start - 1e-6 and (clip_end is None or f.t < float(clip_end))
        ]
        slots, mask = pack_video(frames, end, self.hparams.slots_per_step, hz, self.model.token_dim, clip_start)
        return {"text_ids": text, "user_ids": user, "video_slots": slots[start:end], "video_mask": mask[start:end]}

    def _window(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """:meth:`window_tensors`, memoised by the sample's content (``memo_windows``)."""
        limit = int(self.hparams.get("memo_windows", 0))
        if limit <= 0:
            return self.window_tensors(sample)
        key = json.dumps(sample, sort_keys=True)
        if key in self._windows:
            self._windows.move_to_end(key)
            return self._windows[key]
        window = self._windows[key] = self.window_tensors(sample)
        if len(self._windows) > limit:
            self._windows.popitem(last=False)
        return window

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A batch of window samples -> stacked ``[B, S, ...]`` tensors on the module's device.

        Batches arrive as lists of window descriptions (no tensors, so Lightning's device transfer leaves them
        alone); the tensors are made here, from the memoised video tokens, directly on the right device.
        """
        if not batch:
            raise InputError("batch", "empty batch")
        windows = [self._window(sample) for sample in batch]
        return {key: torch.stack([w[key] for w in windows]).to(self.device) for key in windows[0]}

    # ------------------------------------------------------------------ steps

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced logits ``[B, S, V]`` of a collated batch."""
        return self.model(batch["text_ids"], batch["video_slots"], batch["video_mask"], batch["user_ids"]).logits

    def _step(self, batch: dict[str, torch.Tensor] | list[dict[str, Any]], stage: str) -> torch.Tensor:
        tensors = batch if isinstance(batch, dict) else self.collate(batch)
        # The LM head only where a step's prediction has a target (all steps but the window's last): the same loss
        copy_weight = float(self.hparams.get("copy_loss_weight", 0.0))
        out = self.model(
            tensors["text_ids"], tensors["video_slots"], tensors["video_mask"], tensors["user_ids"], targets_only=True,
            copy_labels=tensors["text_ids"][:, 1:] if copy_weight > 0 else None,
        )  # fmt: skip
        loss, stats = text_loss(
            out.logits, tensors["text_ids"], self.text_tokenizer.pad_id, self.text_tokenizer.epad_id, self.loss_weights
        )  # logits [B, S - 1, V]
        if out.copy_loss is not None:
            stats["copy_loss"] = out.copy_loss.detach()
            loss = loss + copy_weight * out.copy_loss
        size = tensors["text_ids"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        for name, value in stats.items():
            self.log(f"{stage}/{name}", value, batch_size=size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor] | list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor] | list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        scheduler = warmup_cosine_schedule(optimizer, hp.warmup_steps, hp.decay_steps, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def duplex_config(self) -> dict[str, Any]:
        """Everything an inference bundle needs besides the weights, as plain JSON values."""
        hp = self.hparams
        tokenizer_json, tokenizer_settings = self.text_tokenizer.to_json()
        backbone_config = self.model.backbone.config.to_dict()
        backbone_config.pop("transformers_version", None)
        dtype = backbone_config.get("dtype", backbone_config.get("torch_dtype"))
        return {
            "step_hz": float(hp.step_hz),
            "delay_steps": int(hp.delay_steps),
            "slots_per_step": int(hp.slots_per_step),
            "user_slots_per_step": int(self.model.user_slots_per_step),
            "user_scale": float(self.model.user_scale),
            "text_scale": float(self.model.text_scale),
            "copy_dim": int(hp.get("copy_dim", 0)),
            "copy_mode": str(hp.get("copy_mode", "add")),
            "readout_dim": int(hp.get("readout_dim", 0)),
            "readout_heads": int(hp.get("readout_heads", 4)),
            "token_dim": int(self.model.token_dim),
            "projector_hidden": hp.projector_hidden,
            "projector_layers": int(hp.get("projector_layers", 0)),
            "projector_heads": int(hp.get("projector_heads", 4)),
            "projector_gated": bool(hp.get("projector_gated", False)),
            "projector_slot_maps": bool(hp.get("projector_slot_maps", False)),
            "vocab_size": int(self.text_tokenizer.vocab_size),
            "pad_id": int(self.text_tokenizer.pad_id),
            "epad_id": int(self.text_tokenizer.epad_id),
            "finetune": hp.finetune,
            "lora": hp.lora,
            "backbone": backbone_config,
            "backbone_source": hp.backbone if isinstance(hp.backbone, str) else None,
            "torch_dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
            "text_tokenizer": tokenizer_settings,
            "text_tokenizer_json": tokenizer_json,
            "video_tokenizer": self.video_tokenizer_spec,
            "encoder": self.feature_meta.get("encoder"),
            "fps": self.feature_meta.get("fps"),
            "loss": asdict(self.loss_weights),
            "streaming": self.streaming_settings(),
        }

    def streaming_settings(self) -> dict[str, int] | None:
        """The streaming cache a bundle starts with: an attention sink plus a window that keeps every position within
        the range the model was trained on (``sink + window + 1`` = the training window's steps). Measured on the
        demo: held-out event accuracy 0.568 with the trained range vs 0.516 with a 3x longer window (notebooks/LOG.md).
        """
        steps = self.feature_meta.get("train_window_steps")
        if not steps or steps < STREAM_SINK + 2:
            return None
        return {"sink": STREAM_SINK, "window": int(steps) - STREAM_SINK - 1}

    def frozen_backbone(self) -> dict[str, Any] | None:
        """The identity of a pretrained LM that does not train (``source``: registry name, hub id or folder;
        ``keys``, ``sha256``: its frozen tensors and their digest), or ``None`` when the LM's weights must be saved
        (``finetune: full``, or an LM built from a config dict)."""
        hp = self.hparams
        if hp.finetune == "full" or not isinstance(hp.backbone, str):
            return None
        if self._frozen is None:
            keys = frozen_keys(self.model)
            digest = frozen_sha256(self.model.state_dict(), keys)
            self._frozen = {"source": hp.backbone, "keys": len(keys), "sha256": digest}
        return self._frozen

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Mark the checkpoint and store the duplex config; leave a frozen pretrained LM's weights out."""
        checkpoint["mmduplex_kind"] = DUPLEX_KIND
        config = self.duplex_config()
        frozen = self.frozen_backbone()
        if frozen is not None:
            config["frozen_backbone"] = dict(frozen)
            drop = {f"model.{key}" for key in frozen_keys(self.model)}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in drop}
        checkpoint["duplex_config"] = config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the feature and stream settings; put this module's frozen LM (rebuilt from the checkpoint's
        identity) back into a slim checkpoint's weights, after checking it is the same LM.

        Raises:
            CheckpointError: the checkpoint was trained with another frozen LM.
        """
        config = checkpoint.get("duplex_config") or {}
        saved = config.get("frozen_backbone")
        if saved is not None:
            mine = self.frozen_backbone() or {}
            if (mine.get("source"), mine.get("sha256"), mine.get("keys")) != (
                saved["source"],
                saved["sha256"],
                saved["keys"],
            ):
                raise CheckpointError(
                    str(saved["source"]),
                    f"the checkpoint was trained around frozen LM {saved['source']!r} (sha256 {saved['sha256'][:12]}) "
                    f"but this module holds {mine.get('source')!r} (sha256 {str(mine.get('sha256'))[:12]})",
                )
            state = self.model.state_dict()
            checkpoint["state_dict"].update({f"model.{key}": state[key] for key in frozen_keys(self.model)})
        if config.get("encoder") is not None:
            self.feature_meta = {"encoder": config["encoder"], "fps": config["fps"]}
        streaming = config.get("streaming") or {}
        if streaming.get("window"):
            self.feature_meta["train_window_steps"] = int(streaming["sink"]) + int(streaming["window"]) + 1
