"""Lightning training of the B-Flow tokenizer's learned parts on cached frozen-CLIP patch features.

The module runs the tokenizer's batched path (the same per-frame decisions as streaming) over clips and minimises
``1 - cos(R_t, x_t)`` between each frame's causal reconstruction and its normalised features (plus an optional
MSE term). Token selections are not differentiable; the key encoder/decoder and the flow decoder learn.
Checkpoints carry ``mmduplex_kind``, the tokenizer config and the feature cache's encoder fingerprint / fps, so
:meth:`mmduplex.tokenizer.bflow.BFlowTokenizer.from_checkpoint` can load them without unpickling objects.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from mmduplex.errors import CacheError
from mmduplex.schedules import warmup_cosine_schedule
from mmduplex.tokenizer.bflow import BUNDLE_KIND, BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.fidelity import EPS, normalize_features


class BFlowModule(LightningModule):
    """Trains a :class:`~mmduplex.tokenizer.bflow.BFlowTokenizer` to reconstruct frozen patch features from its tokens.

    Args:
        config: the tokenizer's hyper-parameters (``dim`` and ``grid`` must match the feature cache).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases, spatial attention biases and offsets).
        warmup_steps: linear learning-rate warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        mse_weight: weight of an MSE term (on normalised features) added to the cosine loss.
    """

    def __init__(
        self,
        config: BFlowConfig,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        mse_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):  # restored from a checkpoint's plain hyper-parameters
            config = BFlowConfig.from_dict(config)
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = asdict(config)  # plain values: checkpoints load with weights_only=True
        self.tokenizer = BFlowTokenizer(config)
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.mse_weight = mse_weight

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        patches, timestamps = batch["patches"], batch["timestamps"]  # [B, T, P, D], [B, T]
        recon, counts = self.tokenizer(patches, timestamps)  # [B, T, P, D], [B, T]
        target = normalize_features(patches)
        cosine = F.cosine_similarity(recon.float(), target, dim=-1, eps=EPS)  # [B, T, P]
        loss = (1.0 - cosine).mean()
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(recon.float(), target)
        batch_size = patches.shape[0]
        span = (timestamps[:, -1] - timestamps[:, 0]).clamp(min=EPS)  # [B]
        rate = (counts[:, 1:].sum(-1) / span).mean()  # tokens/s after each clip's first keyframe
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log(f"{stage}/fidelity", cosine.mean(), batch_size=batch_size)
        self.log(f"{stage}/tokens_per_second", rate.float(), batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.tokenizer.named_parameters():
            if param.requires_grad:
                (no_decay if name.endswith(("bias", "offset")) else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        scheduler = warmup_cosine_schedule(optimizer, self.warmup_steps, total - self.warmup_steps, self.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        """Check the feature cache fits the tokenizer and record its encoder fingerprint / fps in the metadata."""
        datamodule = getattr(self.trainer, "datamodule", None)
        describe = getattr(datamodule, "feature_info", None)
        if describe is None:
            return
        info = describe()
        cfg = self.tokenizer.config
        expected = (cfg.grid[0] * cfg.grid[1], cfg.dim)
        if tuple(info["patch_shape"]) != expected:
            raise CacheError(
                info["cache_dir"],
                f"features are [P, D] = {list(info['patch_shape'])} but the tokenizer expects {list(expected)} "
                f"(grid {list(cfg.grid)}, dim {cfg.dim}): set model.config.dim / grid to the cache's encoder",
            )
        self.tokenizer.metadata = {"encoder": info["encoder"], "fps": info["fps"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mmduplex_kind"] = BUNDLE_KIND
        checkpoint["bflow_config"] = asdict(self.tokenizer.config)
        checkpoint["bflow_metadata"] = dict(self.tokenizer.metadata)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer.metadata = dict(checkpoint.get("bflow_metadata") or {})
