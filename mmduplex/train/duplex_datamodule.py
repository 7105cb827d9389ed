"""``DuplexDataModule``: windows of timed transcripts (LiveCC JSONL) over a feature cache, for duplex training.

A sample is one window of one clip: the video's cache key, the clip's start in the video, the window's offset and
length (seconds) and the clip's words and user questions: ``[time s from the clip start, text]`` pairs, a LiveCC
``query`` at 0 and each question a user asks mid-clip (the user text item's ``"questions"``) at its own time, so a
window cut from the middle of the clip gets it at its real offset.

The data path: when training starts, :class:`mmduplex.train.duplex_module.DuplexModule` hands over its frozen video
tokenizer and its step grid (:meth:`DuplexDataModule.prepare_tokens` on the first rank, then
:meth:`DuplexDataModule.use_step_grid` on every rank), so the stream settings still live in the model only. The
tokenizer's tokens of every video are computed once into a sharded :class:`~mmduplex.train.token_store.TokenStore`
beside the features (``tokens``), and the loaders' workers build each window's tensors
(:class:`~mmduplex.train.windows.WindowTensorDataset`): batches arrive as stacked tensors and the training step runs
only the model. Without a step grid the loaders hand over lists of window descriptions, which the module puts on its
grid itself (the in-process reference path).

By default (no ``transcripts``) it uses the synthetic commentary set, built on first use together with its feature
cache by :func:`mmduplex.train.synthetic_cache.prepare_synthetic_cache`; its ``split.json`` gives train / held-out.
With ``synthetic_end_questions`` some training videos end with one more question, typed after the last frame: the
video's last window moves to end after its answer, so its last steps carry no video
(:func:`mmduplex.data.synthetic_plan.plan_stream_end`). That is how LongVideoBench asks, and how a stream ends in
``mmduplex stream``; questions while watching never show the model steps without video.

Training order: :class:`WindowSampler` shuffles with a generator seeded by ``(seed, epoch)`` and shards over
ranks; the number of batches already trained in the current epoch is checkpointed (:meth:`state_dict`), and a
resumed run skips exactly those, so it sees the same batches as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmduplex.data.transcripts import TimedClip, load_livecc_jsonl
from mmduplex.errors import CacheError, InputError
from mmduplex.train.windows import StepGrid, WindowTensorDataset, stack_windows

log = logging.getLogger(__name__)

END_TAIL_S = 1.5
"""A video's last window ends this long (s) after the answer to its stream-end question (the text delay fits in it)."""


class WindowDataset(Dataset):
    """A list of window samples (plain dicts)."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


def collate_windows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches of window descriptions (no step grid given): the model makes the tensors."""
    return list(samples)


class WindowSampler(DistributedSampler):
    """Seeded shuffling by ``(seed, epoch)``, sharded over ranks, able to skip the batches a resumed run has seen.

    Args:
        dataset: the training windows.
        num_replicas: world size.
        rank: this process's rank.
        seed: shuffling seed.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.resume_epoch: int | None = None
        self.resume_skip = 0

    def resume(self, epoch: int, skip: int) -> None:
        """Make epoch ``epoch`` start after its first ``skip`` samples (of this rank)."""
        self.resume_epoch, self.resume_skip = int(epoch), int(skip)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_skip :]
        return iter(indices)


class BusyWindowSampler(WindowSampler):
    """:class:`WindowSampler` that draws each epoch's windows with replacement, window ``i`` with probability
    proportional to ``weights[i]`` (as many draws as there are windows; seeded by ``(seed, epoch)``, sharded over the
    ranks, resumable the same way)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, weights: list[float]) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        if len(weights) != len(dataset) or min(weights, default=1.0) <= 0:  # type: ignore[arg-type]
            raise InputError("window weights", f"need one positive weight per window; got {len(weights)} weights")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator).tolist()
        indices = drawn[self.rank : self.total_size : self.num_replicas]
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_skip :]
        return iter(indices)


def busy_share(times: Any, counts: Any, kinds: Any, start_s: float, end_s: float) -> float:
    """The share of a video's frames in ``[start_s, end_s)`` that send two or more flow tokens (keyframes aside;
    ``kinds`` as the token store writes them)."""
    from mmduplex.train.token_store import KINDS

    times, counts, kinds = (torch.as_tensor(x) for x in (times, counts, kinds))
    inside = (times >= start_s) & (times < end_s)
    busy = (kinds.long() == KINDS.index("flow")) & (counts >= 2)
    return float(busy[inside].float().mean()) if bool(inside.any()) else 0.0


def clip_windows(duration_s: float, window_s: float, stride_s: float) -> list[float]:
    """Window offsets covering ``[0, duration_s]``: every ``stride_s``, the last one ending at the clip's end."""
    if duration_s <= window_s:
        return [0.0]
    count = math.ceil((duration_s - window_s) / stride_s - 1e-9) + 1
    return sorted({round(min(k * stride_s, duration_s - window_s), 6) for k in range(count)})


class DuplexDataModule(LightningDataModule):
    """Windows of timed transcripts + a feature cache.

    Args:
        window_s: window length (s); the model makes ``round(window_s * step_hz)`` steps of it.
        features: the feature cache folder (``mmduplex features``); built here for the synthetic set.
        transcripts: LiveCC JSONL of the training clips (``None``: the synthetic set in ``synthetic_dir``).
        val_transcripts: LiveCC JSONL of the validation clips (``None``: the synthetic held-out split, or none).
        video_root: folder the transcripts' relative video paths are resolved against (default: the JSONL's).
        window_stride_s: distance between window starts (``None``: ``window_s``, no overlap).
        batch_size: windows per batch (per device).
        num_workers: data-loading processes (they build the window tensors, and the token store on first use).
        seed: seed of the window order.
        synthetic_dir: where the synthetic set lives / is generated when ``transcripts`` is ``None``.
        synthetic_videos: number of synthetic videos to generate (``None``: the generator's default).
        synthetic_question_interval_s: mean time between the user's questions in the generated synthetic videos
            (0: none).
        synthetic_end_questions: fraction of the synthetic training videos whose last window ends with a question
            typed after the last frame (module docstring), multiple choice or open by the data set's
            ``choice_fraction`` (0: none).
        encoder: encoder spec used when building the synthetic set's cache.
        fps: frame rate used when building the synthetic set's cache.
        tokens: the token store's folder (``None``: ``<features>/tokens/<tokenizer digest>``); a store made by another
            tokenizer is refused.
        token_shard_mb: size of a token-store shard (MB of tokens).
        max_train_clips: train on the first this many training clips only (in the transcripts' order; the synthetic
            set's is its video order; ``None``: all), so that a data-size study keeps the data set and its val /
            held-out split and varies only what the model trains on.
        busy_window_weight: ``w > 0``: each epoch draws its training windows with replacement, a window with
            probability proportional to ``1 + w * busy`` (``busy``: the share of its frames that send two or more
            flow tokens, from the token store: where several things change at once), as many as there are windows,
            so an epoch costs the same; 0: every window once per epoch, shuffled.
    """

    def __init__(
        self,
        window_s: float,
        features: str,
        transcripts: str | None = None,
        val_transcripts: str | None = None,
        video_root: str | None = None,
        window_stride_s: float | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        synthetic_dir: str | None = None,
        synthetic_videos: int | None = None,
        synthetic_question_interval_s: float = 0.0,
        synthetic_end_questions: float = 0.0,
        encoder: str = "efficientnet-lite0",
        fps: float = 2.0,
        tokens: str | None = None,
        token_shard_mb: float = 256.0,
        max_train_clips: int | None = None,
        busy_window_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not busy_window_weight >= 0:
            raise InputError("busy_window_weight", f"must be >= 0, got {busy_window_weight}")
        if max_train_clips is not None and max_train_clips < 1:
            raise InputError("max_train_clips", f"must be >= 1 (or null: all), got {max_train_clips}")
        if not window_s > 0 or batch_size < 1 or num_workers < 0:
            raise InputError(
                "data",
                f"need window_s > 0, batch_size >= 1, num_workers >= 0; got {window_s}, {batch_size}, {num_workers}",
            )
        if not 0.0 <= synthetic_end_questions <= 1.0:
            raise InputError("synthetic_end_questions", f"must be a fraction in [0, 1], got {synthetic_end_questions}")
        if transcripts is None and synthetic_dir is None:
            raise InputError("data", "give `transcripts` (LiveCC JSONL) or `synthetic_dir` (the synthetic set)")
        self.window_s = float(window_s)
        self.window_stride_s = float(window_stride_s or window_s)
        self.features = features
        self.transcripts = transcripts
        self.val_transcripts = val_transcripts
        self.video_root = video_root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.synthetic_dir = synthetic_dir
        self.synthetic_videos = synthetic_videos
        self.synthetic_question_interval_s = float(synthetic_question_interval_s)
        self.synthetic_end_questions = float(synthetic_end_questions)
        self.encoder = encoder
        self.fps = fps
        self.tokens = tokens
        self.token_shard_mb = float(token_shard_mb)
        self.max_train_clips = max_train_clips
        self.busy_window_weight = float(busy_window_weight)
        self.grid: StepGrid | None = None
        self.store = None
        self.cache = None
        self.train_samples: list[dict[str, Any]] = []
        self.val_samples: list[dict[str, Any]] = []
        self._resume: dict[str, int] | None = None

    def prepare_data(self) -> None:
        """Build the synthetic set and its feature cache on first use (when no ``transcripts`` are given)."""
        if self.transcripts is not None:
            return
        from mmduplex.data.synthetic import SyntheticConfig
        from mmduplex.train.synthetic_cache import prepare_synthetic_cache

        sizes = {} if self.synthetic_videos is None else {"num_videos": self.synthetic_videos}
        config = SyntheticConfig(**sizes, question_interval_s=self.synthetic_question_interval_s)
        prepare_synthetic_cache(
            self.synthetic_dir, self.features, config, encoder=self.encoder, fps=self.fps, reuse_existing=True
        )

    def _clips(self) -> tuple[list[TimedClip], list[TimedClip]]:
        if self.transcripts is not None:
            train = load_livecc_jsonl(self.transcripts, self.video_root)
            val = load_livecc_jsonl(self.val_transcripts, self.video_root) if self.val_transcripts else []
            return train, val
        from mmduplex.data.synthetic import SyntheticDataset

        dataset = SyntheticDataset(self.synthetic_dir)
        clips = load_livecc_jsonl(dataset.transcripts_path)
        by_split = {split: set(dataset.video_ids(split)) for split in ("train", "heldout")}
        stem = lambda clip: Path(clip.video).stem  # noqa: E731
        return [c for c in clips if stem(c) in by_split["train"]], [c for c in clips if stem(c) in by_split["heldout"]]

    def _samples(self, clips: list[TimedClip]) -> list[dict[str, Any]]:
        from mmduplex.train.features import video_key

        entries = self.cache.entries()
        by_source = {str(Path(e["source"]).resolve()): key for key, e in entries.items()}
        samples = []
        for clip in clips:
            key = by_source.get(str(Path(clip.video).resolve()), video_key(clip.video))
            if key not in entries:
                raise CacheError(
                    self.features, f"no features for video {clip.video} (key {key!r}); run `mmduplex features`"
                )
            end = clip.end_s if clip.end_s is not None else float(entries[key]["duration_s"])
            words = [[w.start, w.end, w.text] for w in clip.words]
            query = clip.meta.get("query")
            questions = [[0.0, str(query)]] if isinstance(query, str) and query.strip() else []
            questions += [[float(q["time"]) - clip.start_s, str(q["text"])] for q in clip.meta.get("questions", [])]
            for offset in clip_windows(end - clip.start_s, self.window_s, self.window_stride_s):
                samples.append(
                    {
                        "key": key,
                        "clip_start_s": float(clip.start_s),
                        "clip_end_s": float(end),
                        "offset_s": offset,
                        "window_s": self.window_s,
                        "words": words,
                        "questions": questions,
                    }
                )
        return samples

    def _with_stream_ends(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``samples`` with the last window of a ``synthetic_end_questions`` fraction of the synthetic videos moved to
        end ``END_TAIL_S`` after the answer to a question typed after the video's last frame (module docstring).

        The window keeps its length, so training costs the same; the windows before it still cover the video's
        commentary. Whether a video gets one and the question are drawn from ``[data seed, video index, 3]``.
        """
        if self.transcripts is not None or self.synthetic_end_questions <= 0:
            return samples
        import numpy as np

        from mmduplex.data.synthetic import SyntheticDataset
        from mmduplex.data.synthetic_plan import plan_stream_end

        dataset = SyntheticDataset(self.synthetic_dir)
        config, index = dataset.config, {vid: i for i, vid in enumerate(dataset.video_ids())}
        entries = self.cache.entries()
        last = {s["key"]: i for i, s in enumerate(samples)}  # each clip's last window
        out = list(samples)
        for key, i in last.items():
            vid = index.get(Path(str(entries[key]["source"])).stem)
            if vid is None:
                continue
            rng = np.random.default_rng([config.seed, vid, 3])
            if rng.random() >= self.synthetic_end_questions:
                continue
            found = plan_stream_end(
                config, vid, self.cache.fps, rng, choice=bool(rng.random() < config.choice_fraction)
            )
            if found is None:
                continue
            cut, question, words = found
            sample = samples[i]
            spoken = question.answer_t + len(question.answer_words) * config.word_duration_s
            start = float(sample["clip_start_s"])
            out[i] = {
                **sample,
                "offset_s": max(0.0, round(spoken + END_TAIL_S - start - self.window_s, 6)),
                "words": [[w.start - start, w.end - start, w.text] for w in words],
                "questions": [*sample["questions"], [cut - start, question.text]],
            }
        moved = sum(a is not b for a, b in zip(out, samples, strict=True))
        log.info("stream-end questions: %d of %d training videos", moved, len(last))
        return out

    def setup(self, stage: str | None = None) -> None:
        from mmduplex.train.features import FeatureCache

        if self.cache is not None:
            return
        self.cache = FeatureCache(self.features)
        train, val = self._clips()
        if self.max_train_clips is not None:
            if self.max_train_clips > len(train):
                problem = f"max_train_clips is {self.max_train_clips}, but there are only {len(train)} training clips"
                raise InputError(self.transcripts or self.synthetic_dir, problem)
            train = train[: self.max_train_clips]
        self.train_samples, self.val_samples = self._samples(train), self._samples(val)
        self.train_samples = self._with_stream_ends(self.train_samples)
        if not self.train_samples:
            raise InputError(self.transcripts or self.synthetic_dir, "no training clips")
        log.info("duplex windows: %d train / %d val", len(self.train_samples), len(self.val_samples))

    def feature_info(self) -> dict[str, Any]:
        """The cache's folder, encoder fingerprint, fps and per-frame patch shape ``(P, D)``."""
        self.setup()
        record = self.cache.load(self.train_samples[0]["key"])
        return {
            "cache_dir": self.features,
            "encoder": self.cache.fingerprint,
            "fps": self.cache.fps,
            "patch_shape": tuple(record.patches.shape[1:]),
        }

    def load_features(self, key: str):
        """One video's cached features (:class:`mmduplex.train.features.FeatureRecord`)."""
        self.setup()
        return self.cache.load(key)

    def token_store_root(self, fingerprint: dict[str, Any]) -> Path:
        """Where the token store of the tokenizer with ``fingerprint`` lives (``tokens``, or beside the features)."""
        from mmduplex.train.token_store import TokenStore

        return Path(self.tokens) if self.tokens else TokenStore.default_root(self.features, fingerprint)

    def _keys(self) -> set[str]:
        return {s["key"] for s in self.train_samples} | {s["key"] for s in self.val_samples}

    def prepare_tokens(self, tokenizer: Any, fingerprint: dict[str, Any]) -> None:
        """Bring the token store up to date for every training and validation video (first rank only)."""
        from mmduplex.train.token_store import TokenStore

        self.setup()
        store = TokenStore(self.token_store_root(fingerprint), fingerprint)
        store.update(self.cache, self._keys(), tokenizer, num_workers=self.num_workers, shard_mb=self.token_shard_mb)

    def use_step_grid(self, grid: StepGrid, fingerprint: dict[str, Any]) -> None:
        """From now on the loaders return window tensors on ``grid``, video tokens read from the token store.

        Raises:
            CacheError: the store lacks some of the videos (:meth:`prepare_tokens` was not run) or was made by
                another tokenizer.
        """
        from mmduplex.train.token_store import TokenStore

        self.setup()
        store = TokenStore(self.token_store_root(fingerprint), fingerprint)
        missing = self._keys() - set(store.keys())
        if missing:
            raise CacheError(store.index_path, f"no tokens for {len(missing)} videos, e.g. {sorted(missing)[:3]}")
        self.grid, self.store = grid, store

    def _loader(self, samples: list[dict[str, Any]], sampler: Any = None) -> DataLoader:
        if self.grid is None:
            dataset, collate = WindowDataset(samples), collate_windows
        else:
            dataset, collate = WindowTensorDataset(samples, self.grid, self.store), stack_windows
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset = WindowDataset(self.train_samples)
        if self.busy_window_weight > 0:
            weights = [1.0 + self.busy_window_weight * share for share in self.busy_shares()]
            sampler = BusyWindowSampler(dataset, num_replicas=world, rank=rank, seed=self.seed, weights=weights)
        else:
            sampler = WindowSampler(dataset, num_replicas=world, rank=rank, seed=self.seed)
        if self._resume is not None:
            sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
        return self._loader(self.train_samples, sampler)

    def busy_shares(self) -> list[float]:
        """Each training window's :func:`busy_share` (from the token store).

        Raises:
            InputError: no token store yet (:meth:`use_step_grid` was not called: the model has no described video
                tokenizer).
        """
        if self.store is None:
            raise InputError("busy_window_weight", "needs the token store (a model with a described video tokenizer)")
        videos = {key: self.store.frames(key) for key in {s["key"] for s in self.train_samples}}
        shares = []
        for sample in self.train_samples:
            video = videos[sample["key"]]
            start = float(sample["clip_start_s"]) + float(sample["offset_s"])
            shares.append(busy_share(video["times"], video["counts"], video["kinds"], start, start + self.window_s))
        return shares

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_samples) if self.val_samples else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches already trained in it (read from the trainer when the checkpoint is written)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where the checkpointed run was; the next training loader skips what it had trained."""
        if state_dict:
            # Lightning warns that a mid-epoch resume is unreliable unless the loader is stateful; this module
            # restores the position itself (WindowSampler.resume), so the warning does not apply.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            if state_dict.get("seed", self.seed) != self.seed:
                log.warning("resuming with data seed %s, the checkpoint used %s", self.seed, state_dict["seed"])
            self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
