"""The extraction job that fills a feature cache (``mmduplex features``): frozen-encoder features of many videos.

Videos are decoded in DataLoader workers (:class:`VideoFrames`), encoded by the frozen image encoder in batches and
written one shard per video into a :class:`~mmduplex.io.feature_cache.FeatureCache`; a run resumes where a killed one
stopped. With ``devices`` set, the same work runs as Lightning's predict loop (:class:`FeatureExtractor` +
:class:`ShardWriter`). The cache itself (format, reading, atomic writes) is :mod:`mmduplex.io.feature_cache`; its public
names are re-exported here, so ``from mmduplex.train.features import FeatureCache`` keeps working.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from mmduplex.errors import InputError, MMDuplexError
from mmduplex.io.feature_cache import (
    FORMAT,
    INDEX_NAME,
    SHARD_SUFFIX,
    VERSION,
    FeatureCache,
    FeatureRecord,
    video_key,
)
from mmduplex.io.video import read_video
from mmduplex.tokenizer.encoders.factory import DEFAULT_ENCODER, FrozenImageEncoder, create_encoder

__all__ = [
    "FORMAT",
    "INDEX_FLUSH_S",
    "INDEX_NAME",
    "SHARD_SUFFIX",
    "VERSION",
    "ExtractReport",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureRecord",
    "ShardWriter",
    "VideoFrames",
    "extract_features",
    "video_key",
]

logger = logging.getLogger(__name__)

INDEX_FLUSH_S = 10.0  # extract_features rewrites the index at most this often (lost entries are re-adopted)


@dataclass
class ExtractReport:
    """What an :func:`extract_features` run did."""

    out_dir: str
    encoded: list[str] = field(default_factory=list)  # keys encoded by this run
    skipped: list[str] = field(default_factory=list)  # keys already done (or adopted from a killed run)
    failed: dict[str, str] = field(default_factory=dict)  # video path -> problem
    frames: int = 0  # frames encoded by this run
    seconds: float = 0.0  # wall time of the run

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: counts, throughput and the cache folder."""
        return (
            f"features: {len(self.encoded)} encoded, {len(self.skipped)} skipped (done), {len(self.failed)} failed; "
            f"{self.frames} frames in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s) -> {self.out_dir}"
        )


class VideoFrames(Dataset):
    """One item per video: its frames sampled at ``fps`` (decoded in DataLoader workers), or the problem.

    Items are dicts with ``key``, ``path`` and either ``frames`` ``[T, S, S, 3]`` uint8, ``timestamps`` ``[T]``,
    ``duration_s``, ``source`` or ``error`` (a message), so one bad video never stops the others.

    Args:
        jobs: ``(video path, cache key)`` pairs.
        fps: sampling rate.
        size: resize the shorter side and centre-crop to ``size`` while decoding (``None``: keep the size).
    """

    def __init__(self, jobs: list[tuple[str, str]], fps: float, size: int | None) -> None:
        self.jobs, self.fps, self.size = list(jobs), fps, size

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, key = self.jobs[index]
        try:
            clip = read_video(path, self.fps, size=self.size)
        except MMDuplexError as exc:
            return {"key": key, "path": path, "error": exc.problem}
        except Exception as exc:  # a decoder failure that video.py did not anticipate: report, keep going
            return {"key": key, "path": path, "error": f"cannot decode ({type(exc).__name__}: {exc})"}
        if clip.frames.shape[0] == 0:
            return {"key": key, "path": path, "error": f"no frames sampled at {self.fps:g} fps"}
        return {
            "key": key, "path": path, "frames": clip.frames, "timestamps": clip.timestamps,
            "duration_s": clip.duration_s, "source": path,
        }  # fmt: skip


def _plan(cache: FeatureCache, videos: Iterable[str | os.PathLike], report: ExtractReport) -> list[tuple[str, str]]:
    """Choose each video's key, skip finished ones (adopting orphan shards), return ``(path, key)`` to encode.

    A video keeps the key it already has in the index; a new one gets its stem, or stem + path hash when the
    stem is shared by another video of this run or taken by another source in the index.
    """
    sources = list(dict.fromkeys(str(Path(v).resolve()) for v in videos))
    owners = {key: entry["source"] for key, entry in cache.entries().items()}
    by_source = {source: key for key, source in owners.items()}
    stems = Counter(video_key(source) for source in sources)
    jobs, taken = [], set()
    for source in sources:
        key = by_source.get(source)
        if key is None:
            key = video_key(source)
            if stems[key] > 1 or key in owners or key in taken:
                key = video_key(source, hashed=True)
        taken.add(key)
        if cache.verify(key):
            report.skipped.append(key)
        elif cache.adopt(key, source):
            logger.info("adopted %s from an interrupted run", cache.shard_path(key))
            report.skipped.append(key)
        else:
            jobs.append((source, key))
    return jobs


def _decode_size(encoder: FrozenImageEncoder) -> int | None:
    """Resize while decoding when that equals the encoder's own preprocessing (shorter side + centre crop)."""
    return encoder.image_size if encoder.resize_mode == "shortest" else None


def _check_args(fps: float, workers: int, batch_size: int) -> None:
    checks = (("fps", fps, fps > 0), ("workers", workers, workers >= 1), ("batch_size", batch_size, batch_size >= 1))
    for name, value, ok in checks:
        if not ok:
            raise InputError(name, f"must be positive, got {value}")


def extract_features(
    videos: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    encoder: str | FrozenImageEncoder = DEFAULT_ENCODER,
    fps: float = 2.0,
    workers: int = 1,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    devices: int | None = None,
    accelerator: str = "auto",
    processes: int = 1,
) -> ExtractReport:
    """Encode every video into the cache at ``out_dir``; resumable, a bad video is reported and skipped.

    Args:
        videos: video files.
        out_dir: the cache folder (created if needed).
        encoder: an encoder spec for :func:`mmduplex.tokenizer.encoders.factory.create_encoder`, or a built encoder.
        fps: frames sampled per second of video.
        workers: decoding processes (``1``: decode in this process); the encoder runs in the main process.
        batch_size: frames per encoder forward pass.
        device: the encoder's device (default CUDA if available) on the single-process path.
        devices: if set, run Lightning's predict loop on this many devices (DDP when > 1; each rank writes its
            shards, rank 0 merges the index after a barrier).
        accelerator: Lightning accelerator for ``devices`` (``"auto"``, ``"cpu"``, ``"gpu"``).
        processes: CPU encoder processes (spawned, one torch thread each, every one decoding and encoding its share
            of the videos and writing their shards; this process indexes them). A small convolutional encoder gains
            little from a second intra-op thread but nearly 2x from a second process on 2 cores. ``1``: encode here.

    Returns:
        the report (keys encoded / skipped, failed videos, frames and wall time).

    Raises:
        CacheError: ``out_dir`` holds a cache made by another encoder or at another fps.
        CheckpointError: the encoder cannot be built.
    """
    _check_args(fps, workers, batch_size)
    if processes < 1:
        raise InputError("processes", f"must be positive, got {processes}")
    start = time.perf_counter()
    if processes > 1 and devices is None:
        spec = encoder.spec if isinstance(encoder, FrozenImageEncoder) else encoder
        report = _extract_processes(videos, out_dir, spec, fps, batch_size, processes)
    elif devices is not None:
        spec = encoder.spec if isinstance(encoder, FrozenImageEncoder) else encoder
        report = _extract_lightning(videos, out_dir, spec, fps, workers, batch_size, devices, accelerator)
    else:
        model = encoder if isinstance(encoder, FrozenImageEncoder) else create_encoder(encoder, device)
        report = _extract_local(videos, out_dir, model, fps, workers, batch_size)
    report.seconds = time.perf_counter() - start
    return report


def _loader(dataset: VideoFrames, workers: int) -> DataLoader:
    """One video per item, decoded ahead in ``workers`` processes (none when ``workers == 1``)."""
    return DataLoader(dataset, batch_size=None, num_workers=workers if workers > 1 else 0)


def _extract_local(
    videos: Iterable[str | os.PathLike], out_dir: str | os.PathLike, encoder: FrozenImageEncoder, fps: float,
    workers: int, batch_size: int,
) -> ExtractReport:  # fmt: skip
    cache = FeatureCache(out_dir, encoder.fingerprint, fps, create=True)
    report = ExtractReport(out_dir=str(out_dir))
    jobs = _plan(cache, videos, report)
    last_flush = time.monotonic()
    try:
        for item in _loader(VideoFrames(jobs, fps, _decode_size(encoder)), workers):
            if "error" in item:
                logger.warning("skipping %s: %s", item["path"], item["error"])
                report.failed[item["path"]] = item["error"]
                continue
            out = encoder.encode(item["frames"], batch_size)  # [T, P, D], [T, E]
            record = FeatureRecord(out.patches, out.pooled, item["timestamps"], item["duration_s"], item["source"])
            flush = time.monotonic() - last_flush > INDEX_FLUSH_S
            cache.add(item["key"], record, flush=flush)
            last_flush = time.monotonic() if flush else last_flush
            report.encoded.append(item["key"])
            report.frames += int(out.patches.shape[0])
            logger.info(
                "encoded %s: %d frames -> %s", item["path"], out.patches.shape[0], cache.shard_path(item["key"])
            )
    finally:
        cache.flush()
    return report


def _encode_share(
    spec: str, out_dir: str, fps: float, jobs: list[tuple[str, str]], batch_size: int
) -> tuple[list[tuple[str, str, int]], dict[str, str]]:
    """One encoder process: decode and encode ``jobs`` (``(path, key)``), write their shards; return
    ``(key, source, frames)`` per shard written and ``path -> problem`` per video that failed."""
    torch.set_num_threads(1)
    encoder = create_encoder(spec, device="cpu")
    cache = FeatureCache(out_dir, encoder.fingerprint, fps, create=True)  # only shards are written here
    frames = VideoFrames(jobs, fps, _decode_size(encoder))
    written, failed = [], {}
    for index in range(len(frames)):
        item = frames[index]
        if "error" in item:
            failed[item["path"]] = item["error"]
            continue
        out = encoder.encode(item["frames"], batch_size)  # [T, P, D], [T, E]
        record = FeatureRecord(out.patches, out.pooled, item["timestamps"], item["duration_s"], item["source"])
        cache.write_shard(item["key"], record)
        written.append((item["key"], item["source"], int(out.patches.shape[0])))
    return written, failed


def _extract_processes(
    videos: Iterable[str | os.PathLike], out_dir: str | os.PathLike, spec: str, fps: float, batch_size: int,
    processes: int,
) -> ExtractReport:  # fmt: skip
    """Split the videos to encode over ``processes`` spawned encoder processes; index their shards here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    fingerprint = create_encoder(spec, device="cpu").fingerprint
    cache = FeatureCache(out_dir, fingerprint, fps, create=True)
    report = ExtractReport(out_dir=str(out_dir))
    jobs = _plan(cache, videos, report)
    shares = [share for share in (jobs[i::processes] for i in range(processes)) if share]
    if shares:
        context = multiprocessing.get_context("spawn")
        from mmduplex.workers import watch_parent

        with ProcessPoolExecutor(max_workers=len(shares), mp_context=context, initializer=watch_parent) as pool:
            futures = [pool.submit(_encode_share, spec, str(out_dir), fps, share, batch_size) for share in shares]
            for future in futures:
                written, failed = future.result()
                for key, source, count in written:
                    if cache.adopt(key, source):
                        report.encoded.append(key)
                        report.frames += count
                    else:
                        report.failed[source] = f"shard {cache.shard_path(key)} was not written completely"
                for path, problem in failed.items():
                    logger.warning("skipping %s: %s", path, problem)
                    report.failed[path] = problem
    cache.flush()
    return report


class FeatureExtractor(LightningModule):
    """Lightning predict-loop wrapper around the frozen encoder: one video per step -> its features.

    Args:
        encoder: encoder spec for :func:`mmduplex.tokenizer.encoders.factory.create_encoder` (built on CPU, moved by
        Lightning). batch_size: frames per encoder forward pass.
    """

    def __init__(self, encoder: str = DEFAULT_ENCODER, batch_size: int = 64) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, device="cpu")
        self.batch_size = batch_size

    def predict_step(self, item: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if "error" in item:
            return item
        out = self.encoder.encode(item["frames"], self.batch_size)  # [T, P, D], [T, E]
        meta = {name: item[name] for name in ("key", "path", "timestamps", "duration_s", "source")}
        return {**meta, "patches": out.patches.cpu(), "pooled": out.pooled.cpu()}


class ShardWriter(BasePredictionWriter):
    """Writes each predicted video's shard on its rank; rank 0 indexes all ranks' shards at the end.

    Args:
        cache: the cache to write into (rank 0 alone writes its index).
    """

    def __init__(self, cache: FeatureCache) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache
        self.encoded: list[tuple[str, str, int]] = []  # (key, source, frames) written by this rank
        self.failed: dict[str, str] = {}

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: dict[str, Any], batch_indices: Any,
        batch: Any, batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if "error" in prediction:
            logger.warning("skipping %s: %s", prediction["path"], prediction["error"])
            self.failed[prediction["path"]] = prediction["error"]
            return
        record = FeatureRecord(
            prediction["patches"], prediction["pooled"], prediction["timestamps"].cpu(),
            float(prediction["duration_s"]), prediction["source"],
        )  # fmt: skip
        self.cache.write_shard(prediction["key"], record)
        self.encoded.append((prediction["key"], prediction["source"], int(record.patches.shape[0])))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather every rank's results; rank 0 adopts all new shards into the index; then a barrier."""
        mine = (self.encoded, self.failed)
        gathered = [mine]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
        self.encoded = [item for encoded, _ in gathered for item in encoded]
        self.failed = {path: problem for _, failed in gathered for path, problem in failed.items()}
        if trainer.is_global_zero:
            for key, source, _ in self.encoded:
                if not self.cache.adopt(key, source):
                    self.failed[source] = f"shard {self.cache.shard_path(key)} was not written completely"
            self.cache.flush()
        trainer.strategy.barrier("mmduplex-features-index")


def _extract_lightning(
    videos: Iterable[str | os.PathLike], out_dir: str | os.PathLike, spec: str, fps: float, workers: int,
    batch_size: int, devices: int, accelerator: str,
) -> ExtractReport:  # fmt: skip
    module = FeatureExtractor(spec, batch_size)
    cache = FeatureCache(out_dir, module.encoder.fingerprint, fps, create=True)
    report = ExtractReport(out_dir=str(out_dir))
    jobs = _plan(cache, videos, report)
    writer = ShardWriter(cache)
    trainer = Trainer(
        accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        callbacks=[writer], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(out_dir),
    )  # fmt: skip
    if jobs:
        loader = _loader(VideoFrames(jobs, fps, _decode_size(module.encoder)), workers)
        with warnings.catch_warnings():  # one video per step: there are no batch indices to infer
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    elif trainer.is_global_zero:
        cache.flush()  # nothing to encode; record adopted shards
    report.encoded = [key for key, _, _ in writer.encoded]
    report.frames = sum(frames for _, _, frames in writer.encoded)
    report.failed = dict(writer.failed)
    return report
