"""The token store: a frozen video tokenizer's tokens of every video in a feature cache, computed once, in shards.

B-Flow (and every baseline) is frozen and deterministic, so the tokens a video gets never change while the
tokenizer does not: they are computed once per tokenizer and kept beside the features, by default in
``<features>/tokens/<digest>/`` where ``digest`` names the tokenizer's fingerprint (:func:`tokenizer_fingerprint`:
its class, its settings and a SHA-256 of its weights). The feature cache itself (``index.json`` + one flat
``<key>.safetensors`` per video, written by ``mmduplex features``) is not touched.

A store folder holds::

    index.json               {"format": "mmduplex-tokens", "version": 1, "tokenizer": fingerprint,
                              "features": {"encoder", "fps"}, "token_dim", "shards": [file, ...],
                              "videos": {key: {"shard", "frames": [f0, f1], "rows": [r0, r1], "feature_bytes"}}}
    tokens-<n>-<id>.safetensors   many videos each: tokens [N, Dv] float32, times [F] float64, counts [F] int64
                                  (tokens per frame), kinds [F] uint8; metadata: the tokenizer digest

Shards are read by memory map, a window's rows at a time (:meth:`TokenStore.video`), so a store larger than RAM
streams from disk, and every data-loader worker and DDP rank opens its own handles. A store is refused with a
:class:`~mmduplex.errors.CacheError` naming the file when it was made by another tokenizer (its fingerprint), from
another encoder or fps, or when its tokens differ from what the tokenizer gives now (a code change: one stored
video is tokenized again and compared on every :meth:`TokenStore.update`). Updating adds the videos it lacks and
re-tokenizes those whose feature shard changed, under a file lock; shards and index are written atomically, the
shard first, so a killed build leaves a consistent store that the next update completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmduplex.errors import CacheError, InputError
from mmduplex.fileio import atomic_path, write_json_atomic
from mmduplex.io.feature_cache import FeatureCache
from mmduplex.tokenizer.base import TOKENIZE_GROUP
from mmduplex.train.windows import VideoTokens

log = logging.getLogger(__name__)

FORMAT = "mmduplex-tokens"
VERSION = 1
INDEX_NAME = "index.json"
KINDS = ("key", "flow", "none", "still")
"""Frame kinds as stored (``kinds`` holds the index); another kind is stored as 255."""
SHARD_MB = 256.0


def tokenizer_fingerprint(tokenizer: nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    """What identifies a frozen video tokenizer's output: class, settings, weights (SHA-256) and shapes.

    Args:
        tokenizer: the tokenizer.
        description: its ``{"class_path", "init_args"}`` (:func:`mmduplex.lm.bundle.describe_video_tokenizer`).

    Returns:
        A JSON dict with ``digest`` (16 hex digits of the SHA-256 of the rest) added.
    """
    sha = hashlib.sha256()
    for name, tensor in sorted(tokenizer.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        sha.update(data.view(torch.uint8).numpy().tobytes())
    fingerprint = {
        "class_path": str(description["class_path"]),
        "init_args": json.loads(json.dumps(description.get("init_args") or {})),
        "weights_sha256": sha.hexdigest(),
        "feature_shape": [int(tokenizer.num_patches), int(tokenizer.feature_dim)],
        "token_dim": int(tokenizer.token_dim),
    }
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return {**fingerprint, "digest": digest}


_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}
VIDEO_MEMO = 4096
OPEN_SHARDS = 256
"""Shards a process keeps mapped at once (least recently used unmapped first)."""
"""Videos whose frame times and counts a process keeps (least recently used out first; a few bytes per frame)."""


class MappedShard:
    """A safetensors file read by memory map (``numpy.memmap`` per tensor): slicing reads only the rows asked for.

    Raises:
        CacheError: the file is missing, truncated or not a token shard.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            size = path.stat().st_size
            self.metadata = header.pop("__metadata__", {}) or {}
            self.arrays = {}
            for name, info in header.items():
                begin, end = info["data_offsets"]
                shape = tuple(info["shape"])
                if 8 + length + end > size:
                    raise ValueError(f"tensor {name} ends past the end of the file")
                if 0 in shape or begin == end:
                    self.arrays[name] = np.zeros(shape, dtype=_DTYPES[info["dtype"]])
                    continue
                self.arrays[name] = np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r", offset=8 + length + begin,
                                              shape=shape)  # fmt: skip
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise CacheError(path, f"unreadable token shard ({exc}); delete its folder to rebuild the store") from exc
        missing = {"tokens", "times", "counts", "kinds"} - set(self.arrays)
        if missing:
            raise CacheError(path, f"not a token shard (no {sorted(missing)})")

    def read(self, name: str, begin: int, end: int) -> torch.Tensor:
        """Rows ``begin:end`` of tensor ``name`` (a copy)."""
        return torch.from_numpy(np.array(self.arrays[name][begin:end]))


def _describe(fingerprint: dict[str, Any]) -> str:
    return f"{fingerprint.get('class_path')} (digest {fingerprint.get('digest')})"


class _Tokenize(Dataset):
    """Groups of feature cache keys -> each video's tokens (run in data-loader workers while the store is built; a
    group is tokenized together, :meth:`~mmduplex.tokenizer.base.VideoTokenizer.tokenize_many`)."""

    def __init__(self, cache_dir: str, groups: list[list[str]], tokenizer: nn.Module) -> None:
        self.cache_dir, self.groups, self.tokenizer = cache_dir, groups, tokenizer
        self.cache: FeatureCache | None = None

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[tuple[str, dict[str, torch.Tensor]]]:
        if self.cache is None:
            self.cache = FeatureCache(self.cache_dir)
        keys = self.groups[index]
        return list(zip(keys, tokenize_videos(self.tokenizer, self.cache, keys), strict=True))


def tokenize_video(tokenizer: nn.Module, cache: FeatureCache, key: str) -> dict[str, torch.Tensor]:
    """One cached video's tokens as stored: ``tokens [N, Dv]``, ``times [F]``, ``counts [F]``, ``kinds [F]``.

    The tokenizer runs where its weights are, in its own precision (autocast off), as ``DuplexModule.video_tokens``
    runs it; the tokens come back to the CPU.
    """
    return tokenize_videos(tokenizer, cache, [key])[0]


def tokenize_videos(tokenizer: nn.Module, cache: FeatureCache, keys: list[str]) -> list[dict[str, torch.Tensor]]:
    """:func:`tokenize_video` of each of ``keys``, tokenized together (``tokenize_many``: the same tokens as one at a
    time)."""
    records = [cache.load(key) for key in keys]
    device = next(tokenizer.parameters(), torch.empty(0)).device
    videos = [(record.patches.to(device), record.timestamps) for record in records]
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        done = tokenizer.tokenize_many(videos)
    return [_stored(tokenizer, video) for video in done]


def _stored(tokenizer: nn.Module, video: Any) -> dict[str, torch.Tensor]:
    """A tokenized video as the store holds it."""
    frames = video.frames
    dim = int(tokenizer.token_dim)
    tokens = [f.tokens.detach().float().cpu().reshape(-1, dim) for f in frames]
    return {
        "tokens": torch.cat(tokens) if tokens else torch.zeros(0, dim),  # [N, Dv]
        "times": torch.tensor([float(f.t) for f in frames], dtype=torch.float64),  # [F]
        "counts": torch.tensor([t.shape[0] for t in tokens], dtype=torch.int64),  # [F]
        "kinds": torch.tensor([KINDS.index(f.kind) if f.kind in KINDS else 255 for f in frames], dtype=torch.uint8),
    }


class TokenStore:
    """A folder of token shards with an index, for one video tokenizer over one feature cache.

    Args:
        root: the store folder (created by :meth:`update` when missing).
        fingerprint: the tokenizer's (:func:`tokenizer_fingerprint`); a store made by another is refused.

    Raises:
        CacheError: the index is unreadable or was written for another tokenizer.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        self.fingerprint = dict(fingerprint)
        self._index: dict[str, Any] | None = None
        self._handles: OrderedDict[int, MappedShard] = OrderedDict()
        self._videos: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()
        if self.index_path.is_file():
            self._index = self._read_index()

    @classmethod
    def default_root(cls, features: str | os.PathLike, fingerprint: dict[str, Any]) -> Path:
        """``<features>/tokens/<digest>``: the store of this tokenizer beside a feature cache."""
        return Path(features) / "tokens" / str(fingerprint["digest"])

    # ---------------------------------------------------------------- reading

    @property
    def index(self) -> dict[str, Any]:
        if self._index is None:
            raise CacheError(self.index_path, "no token store here (index missing); it is built when training starts")
        return self._index

    def keys(self) -> list[str]:
        return list(self.index["videos"])

    def __contains__(self, key: object) -> bool:
        return key in self.index["videos"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.index["videos"])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # memory maps are per process: each worker opens its own
        state["_handles"], state["_videos"] = OrderedDict(), OrderedDict()
        return state

    def _shard(self, number: int) -> MappedShard:
        if self._pid != os.getpid():  # forked into a worker: the parent's maps are not this process's
            self._handles, self._videos, self._pid = OrderedDict(), OrderedDict(), os.getpid()
        shard = self._handles.get(number)
        if shard is None:
            shard = self._handles[number] = MappedShard(self.root / self.index["shards"][number])
            if len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(number)
        return shard

    def _entry(self, key: str) -> dict[str, Any]:
        entry = self.index["videos"].get(key)
        if entry is None:
            raise CacheError(self.index_path, f"no tokens for video '{key}' (the store was built without it)")
        return entry

    def video(self, key: str) -> VideoTokens:
        """``key``'s tokens: frame times and counts (kept for the :data:`VIDEO_MEMO` latest videos), token rows read
        on demand from the memory map."""
        entry = self._entry(key)
        shard = self._shard(int(entry["shard"]))
        (f0, f1), (r0, r1) = entry["frames"], entry["rows"]
        frames = self._videos.get(key)
        if frames is None:
            frames = self._videos[key] = (
                np.array(shard.arrays["times"][f0:f1]),
                np.array(shard.arrays["counts"][f0:f1]),
            )
            if len(self._videos) > VIDEO_MEMO:
                self._videos.popitem(last=False)
        else:
            self._videos.move_to_end(key)

        def rows(a: int, b: int) -> torch.Tensor:
            if not 0 <= a <= b <= r1 - r0:
                raise InputError(key, f"token rows {a}:{b} outside the video's {r1 - r0}")
            return shard.read("tokens", r0 + a, r0 + b)

        return VideoTokens(times=frames[0], counts=frames[1], rows=rows)

    def tokens(self, key: str) -> dict[str, torch.Tensor]:
        """``key``'s stored tensors as :func:`tokenize_video` returns them."""
        entry = self._entry(key)
        r0, r1 = entry["rows"]
        return {"tokens": self._shard(int(entry["shard"])).read("tokens", r0, r1), **self.frames(key)}

    def frames(self, key: str) -> dict[str, torch.Tensor]:
        """``key``'s per-frame tensors (``times``, ``counts``, ``kinds``), without reading its tokens."""
        entry = self._entry(key)
        shard = self._shard(int(entry["shard"]))
        f0, f1 = entry["frames"]
        return {name: shard.read(name, f0, f1) for name in ("times", "counts", "kinds")}

    # ---------------------------------------------------------------- building

    def update(
        self,
        cache: FeatureCache,
        keys: Iterable[str],
        tokenizer: nn.Module,
        num_workers: int = 0,
        shard_mb: float = SHARD_MB,
    ) -> TokenStore:
        """Tokenize the ``keys`` the store lacks (or whose feature shard changed) and check it is not stale.

        Args:
            cache: the feature cache the keys are in.
            keys: the videos the store must hold.
            tokenizer: the frozen tokenizer this store's fingerprint describes (run where its weights are).
            num_workers: data-loader processes that tokenize (0: this process).
            shard_mb: a shard is closed once its tokens reach this many MB.

        Raises:
            CacheError: the store was made from another encoder / fps, or its tokens are not what ``tokenizer``
                gives now.
        """
        identity = {"encoder": cache.fingerprint, "fps": cache.fps}
        entries = cache.entries()
        with self._lock():
            if self.index_path.is_file():
                self._index = self._read_index()
            else:
                self._index = {"format": FORMAT, "version": VERSION, "tokenizer": self.fingerprint,
                               "features": identity, "token_dim": self.fingerprint["token_dim"],
                               "shards": [], "videos": {}}  # fmt: skip
            if self._index["features"] != identity:
                raise CacheError(
                    self.index_path,
                    f"made from the features of another encoder or fps ({self._index['features']}), not from "
                    f"{cache.root} ({identity}); give the store another folder",
                )
            videos = self._index["videos"]
            todo = sorted({k for k in keys if k not in videos or videos[k].get("feature_bytes") != entries[k]["bytes"]})
            self._check_not_stale(cache, tokenizer, skip=set(todo))
            if todo:
                log.info("token store %s: tokenizing %d videos (%d stored)", self.root, len(todo), len(videos))
                self._tokenize(cache, todo, tokenizer, num_workers, shard_mb)
        return self

    def _tokenize(
        self, cache: FeatureCache, keys: list[str], tokenizer: nn.Module, num_workers: int, shard_mb: float
    ) -> None:
        if next(tokenizer.parameters(), torch.empty(0)).device.type != "cpu":
            num_workers = 0  # an accelerator's tokenizer stays in this process
        entries = cache.entries()
        by_length = sorted(keys, key=lambda k: (int(entries[k].get("frames", 0)), k))  # a loader item: similar lengths
        groups = [by_length[i : i + TOKENIZE_GROUP] for i in range(0, len(by_length), TOKENIZE_GROUP)]
        dataset = _Tokenize(str(cache.root), groups, tokenizer.eval())
        loader = DataLoader(
            dataset, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
        )  # its own generator: building the store draws nothing from the global RNG (training stays as it was)
        pending: list[tuple[str, dict[str, torch.Tensor]]] = []
        size = 0
        for group in loader:
            for key, tensors in group:
                pending.append((key, tensors))
                size += tensors["tokens"].numel() * 4
                if size >= shard_mb * 2**20:
                    self._write_shard(pending, cache)
                    pending, size = [], 0
        if pending:
            self._write_shard(pending, cache)

    def _write_shard(self, videos: list[tuple[str, dict[str, torch.Tensor]]], cache: FeatureCache) -> None:
        """One shard of ``videos`` (atomically), then the index (atomically) listing them."""
        index = self.index
        number = len(index["shards"])
        name = f"tokens-{number:05d}-{uuid.uuid4().hex[:8]}.safetensors"
        tensors = {field: torch.cat([t[field] for _, t in videos]).contiguous() for field in ("tokens", "times",
                   "counts", "kinds")}  # fmt: skip
        with atomic_path(self.root / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": f"{FORMAT}/{VERSION}", "tokenizer": self.digest})
        entries = cache.entries()
        frames = rows = 0
        for key, t in videos:
            f, r = int(t["times"].shape[0]), int(t["tokens"].shape[0])
            index["videos"][key] = {"shard": number, "frames": [frames, frames + f], "rows": [rows, rows + r],
                                    "feature_bytes": entries[key]["bytes"]}  # fmt: skip
            frames, rows = frames + f, rows + r
        index["shards"].append(name)
        write_json_atomic(self.index_path, index, indent=None)
        self._videos.clear()  # a re-tokenized video's frames moved

    @property
    def digest(self) -> str:
        return str(self.fingerprint["digest"])

    def _check_not_stale(self, cache: FeatureCache, tokenizer: nn.Module, skip: set[str]) -> None:
        """Tokenize one stored video again: its tokens must equal the stored ones (else the code changed)."""
        key = next((k for k in sorted(self.index["videos"]) if k not in skip and k in cache), None)
        if key is None:
            return
        stored, now = self.tokens(key), tokenize_video(tokenizer.eval(), cache, key)
        if any(not torch.equal(stored[name], now[name]) for name in now):
            raise CacheError(
                self.index_path,
                f"stale: video '{key}' tokenizes differently now than when the store was built by "
                f"{_describe(self.fingerprint)} (has the tokenizer's code changed?); delete {self.root} to rebuild",
            )

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive lock on the store folder (another process building the same store waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            try:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX)
            except ImportError:  # no fcntl (Windows): no lock
                pass
            yield

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(self.index_path, f"unreadable token-store index ({exc})") from exc
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise CacheError(self.index_path, f'not a token-store index (no "format": "{FORMAT}")')
        if index.get("version") != VERSION:
            version = index.get("version")
            raise CacheError(self.index_path, f"token-store format version {version} (this reads {VERSION})")
        for name, kind in (("tokenizer", dict), ("features", dict), ("shards", list), ("videos", dict)):
            if not isinstance(index.get(name), kind):
                raise CacheError(self.index_path, f"index field '{name}' is missing or malformed")
        stored = index["tokenizer"]
        if stored != self.fingerprint:
            fields = sorted(k for k in set(stored) | set(self.fingerprint) if stored.get(k) != self.fingerprint.get(k))
            raise CacheError(
                self.index_path,
                f"tokens of another video tokenizer ({', '.join(fields)} differ): the store has "
                f"{_describe(stored)}, training uses {_describe(self.fingerprint)}; give the store another folder",
            )
        return index
