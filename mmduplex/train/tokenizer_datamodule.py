"""Clips of cached frozen-CLIP patch features for training the B-Flow tokenizer (a LightningDataModule).

Training draws random clips (video, start frame) from a seeded generator keyed by the epoch, so the order is the
same on every run and after resuming from a checkpoint; validation uses the first clip of every held-out video.
When the feature cache does not exist and ``synthetic_dir`` is set, :meth:`FeatureDataModule.prepare_data` builds
it on first use: it generates the synthetic commentary data set and extracts its features (so the tiny recipe runs
on a clean clone).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from mmduplex.errors import CacheError, InputError
from mmduplex.io.feature_cache import FeatureCache  # shared data layer: imports no tokenizer module

logger = logging.getLogger(__name__)


class ClipSampler(Sampler):
    """Random ``(video, start)`` clips, a pure function of ``(seed, epoch)``.

    Args:
        lengths: frames of every video.
        clip_frames: frames per clip.
        num_clips: clips per epoch.
        seed: base seed.
    """

    def __init__(self, lengths: list[int], clip_frames: int, num_clips: int, seed: int) -> None:
        self.lengths = lengths
        self.clip_frames = clip_frames
        self.num_clips = num_clips
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_clips

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        videos = rng.integers(len(self.lengths), size=self.num_clips)
        for video in videos:
            last_start = max(self.lengths[video] - self.clip_frames, 0)
            yield int(video), int(rng.integers(last_start + 1))


class ClipDataset(Dataset):
    """Items are ``(video index, start frame)`` -> ``{"patches": [T, P, D], "timestamps": [T]}``."""

    def __init__(self, cache: FeatureCache, keys: list[str], clip_frames: int) -> None:
        self.cache = cache
        self.keys = keys
        self.clip_frames = clip_frames

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        video, start = item
        record = self.cache.load(self.keys[video])
        stop = start + self.clip_frames
        return {"patches": record.patches[start:stop], "timestamps": record.timestamps[start:stop]}


def collate_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack clips, cut to the shortest one: ``patches [B, T, P, D]``, ``timestamps [B, T]``."""
    length = min(item["patches"].shape[0] for item in items)
    return {
        "patches": torch.stack([item["patches"][:length] for item in items]),
        "timestamps": torch.stack([item["timestamps"][:length] for item in items]),
    }


class FeatureDataModule(LightningDataModule):
    """Random clips of a feature cache (``mmduplex features``) for tokenizer training.

    Args:
        cache_dir: the feature cache folder.
        split_file: JSON ``{"train": [...], "heldout": [...]}`` of video keys (the synthetic set's ``split.json``
            format; ``"val"`` is accepted for ``"heldout"``). Default: ``synthetic_dir/split.json`` when that is
            set, else a seeded ``val_fraction`` split of the cache's videos.
        videos: use only these cache keys (default: all).
        val_fraction: share of the videos held out for validation when there is no split file.
        clip_frames: frames per training clip.
        batch_size: clips per batch.
        num_workers: data-loading processes.
        clips_per_epoch: training clips per epoch (default: one per training video).
        seed: seed of the clip order and of the split.
        synthetic_dir: if set and ``cache_dir`` holds no cache, generate the synthetic data set here and extract
            its features into ``cache_dir`` first.
        synthetic_videos: number of synthetic videos to generate (default: the generator's default).
        encoder: encoder spec used when building the cache.
        fps: sampling rate used when building the cache.
    """

    def __init__(
        self,
        cache_dir: str,
        split_file: str | None = None,
        videos: list[str] | None = None,
        val_fraction: float = 0.1,
        clip_frames: int = 16,
        batch_size: int = 8,
        num_workers: int = 0,
        clips_per_epoch: int | None = None,
        seed: int = 0,
        synthetic_dir: str | None = None,
        synthetic_videos: int | None = None,
        encoder: str = "efficientnet-lite0",
        fps: float = 2.0,
    ) -> None:
        super().__init__()
        if clip_frames < 1 or batch_size < 1 or num_workers < 0 or not 0 <= val_fraction < 1:
            raise InputError("data", f"bad settings {clip_frames=}, {batch_size=}, {num_workers=}, {val_fraction=}")
        self.cache_dir = cache_dir
        self.split_file = split_file
        self.videos = list(videos) if videos is not None else None
        self.val_fraction = val_fraction
        self.clip_frames = clip_frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.clips_per_epoch = clips_per_epoch
        self.seed = seed
        self.synthetic_dir = synthetic_dir
        self.synthetic_videos = synthetic_videos
        self.encoder = encoder
        self.fps = fps
        self.cache: FeatureCache | None = None
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []

    def prepare_data(self) -> None:
        """Build (or complete) the cache from the synthetic data set when ``synthetic_dir`` is set."""
        if self.synthetic_dir is None:
            return
        from mmduplex.data.synthetic import SyntheticConfig
        from mmduplex.train.synthetic_cache import prepare_synthetic_cache

        config = None if self.synthetic_videos is None else SyntheticConfig(num_videos=self.synthetic_videos)
        prepare_synthetic_cache(
            self.synthetic_dir, self.cache_dir, config, encoder=self.encoder, fps=self.fps, reuse_existing=True
        )

    def _split(self, keys: list[str]) -> tuple[list[str], list[str]]:
        split_file = self.split_file
        if split_file is None and self.synthetic_dir is not None:
            split_file = str(Path(self.synthetic_dir) / "split.json")
        if split_file is None:
            order = np.random.default_rng([self.seed]).permutation(len(keys))
            held = round(len(keys) * self.val_fraction)
            if self.val_fraction > 0 and len(keys) >= 2:
                held = min(max(held, 1), len(keys) - 1)
            return sorted(keys[i] for i in order[held:]), sorted(keys[i] for i in order[:held])
        try:
            split = json.loads(Path(split_file).read_text(encoding="utf-8"))
            train, val = list(split["train"]), list(split.get("heldout", split.get("val", [])))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheError(split_file, f"unreadable split file (need train / heldout lists): {err}") from err
        wanted = set(keys)
        return [k for k in train if k in wanted], [k for k in val if k in wanted]

    def setup(self, stage: str | None = None) -> None:
        if self.cache is not None:
            return
        self.cache = FeatureCache(self.cache_dir)
        keys = self.cache.keys()
        if self.videos is not None:
            missing = sorted(set(self.videos) - set(keys))
            if missing:
                raise CacheError(self.cache_dir, f"videos not in the cache: {missing[:5]}")
            keys = list(self.videos)
        self.train_keys, self.val_keys = self._split(sorted(keys))
        if not self.train_keys:
            raise CacheError(self.cache_dir, "no training videos (empty cache or split)")
        logger.info("feature clips: %d train / %d val videos", len(self.train_keys), len(self.val_keys))

    def feature_info(self) -> dict[str, Any]:
        """The cache's folder, encoder fingerprint, fps and per-frame patch shape ``(P, D)``."""
        self.setup()
        record = self.cache.load(self.train_keys[0])
        return {
            "cache_dir": self.cache_dir,
            "encoder": self.cache.fingerprint,
            "fps": self.cache.fps,
            "patch_shape": tuple(record.patches.shape[1:]),
        }

    def _lengths(self, keys: list[str]) -> list[int]:
        entries = self.cache.entries()
        return [int(entries[k]["frames"]) for k in keys]

    def _loader(self, keys: list[str], sampler: Any) -> DataLoader:
        return DataLoader(
            ClipDataset(self.cache, keys, self.clip_frames),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        num_clips = self.clips_per_epoch or len(self.train_keys)
        sampler = ClipSampler(self._lengths(self.train_keys), self.clip_frames, num_clips, self.seed)
        return self._loader(self.train_keys, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_keys:
            return []
        return self._loader(self.val_keys, [(i, 0) for i in range(len(self.val_keys))])

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
