"""The frozen-CLIP feature cache: ``DIR/index.json`` + one ``DIR/<key>.safetensors`` shard per video.

A shard holds ``patches`` ``[T, P, D]`` float16, ``pooled`` ``[T, E]`` float16 and ``timestamps`` ``[T]`` float64,
and its safetensors metadata repeats the encoder fingerprint, fps, source and duration, so an index can be
rebuilt from the shards alone. The index records the format version, the encoder fingerprint, the fps and one
entry per video (file, source, frames, duration, size in bytes). One cache holds one encoder at one fps: opening
it for another is refused. Shards and index are written atomically (temporary file + rename), the shard first,
so a run killed at any point leaves only complete files; a re-run skips finished videos and adopts shards whose
index update was lost.

This is shared data below both components: it imports neither the tokenizer nor the duplex model, so both (and
their data modules) read caches through it. The extraction job that fills a cache is :mod:`mmduplex.train.features`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmduplex.errors import CacheError, InputError
from mmduplex.fileio import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "mmduplex-features"
VERSION = 1
INDEX_NAME = "index.json"
SHARD_SUFFIX = ".safetensors"
_KEY = re.compile(r"[A-Za-z0-9_-]([A-Za-z0-9._-]*[A-Za-z0-9_-])?")  # what video_key produces


@dataclass
class FeatureRecord:
    """The cached features of one video."""

    patches: torch.Tensor  # [T, P, D] patch tokens
    pooled: torch.Tensor  # [T, E] pooled embeddings
    timestamps: torch.Tensor  # [T] float64 frame times (s)
    duration_s: float  # duration of the source video (s)
    source: str  # the source video's path

    def check(self) -> None:
        """Raise :class:`InputError` unless the tensors are ``[T, P, D]``, ``[T, E]``, ``[T]`` with one ``T``."""
        shapes = f"patches {tuple(self.patches.shape)}, pooled {tuple(self.pooled.shape)}, "
        shapes += f"timestamps {tuple(self.timestamps.shape)}"
        if self.patches.ndim != 3 or self.pooled.ndim != 2 or self.timestamps.ndim != 1:
            raise InputError(self.source, f"expected [T, P, D], [T, E], [T]; got {shapes}")
        if not self.patches.shape[0] == self.pooled.shape[0] == self.timestamps.shape[0]:
            raise InputError(self.source, f"frame counts differ: {shapes}")


def video_key(path: str | os.PathLike, hashed: bool = False) -> str:
    """The cache key of a video: its file stem with unsafe characters replaced by ``_``.

    Args:
        path: the video file.
        hashed: append ``-`` and 8 hex digits of the SHA-1 of the absolute path (used on a stem collision).
    """
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._") or "video"
    if hashed:
        key += "-" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
    return key


def _describe(fingerprint: dict) -> str:
    name, sha = str(fingerprint.get("model")), str(fingerprint.get("weights_sha256"))
    name += f":{fingerprint['pretrained']}" if fingerprint.get("pretrained") else ""
    return f"{name} (weights {sha[:12]}, {fingerprint.get('image_size')} px)"


class FeatureCache:
    """A folder of per-video feature shards with an index, for one encoder at one fps.

    Args:
        root: the cache folder.
        fingerprint: the encoder's fingerprint; an existing cache made by another encoder is refused.
        fps: the sampling rate; an existing cache made at another rate is refused.
        create: create the cache (and its index) if ``root`` has none; also removes temporary files left by a
            killed run. Needs ``fingerprint`` and ``fps``.

    Raises:
        CacheError: no cache at ``root`` (and not ``create``), an unreadable index, or a fingerprint / fps that
            differs from the index's (the message names the field).
    """

    def __init__(
        self, root: str | os.PathLike, fingerprint: dict | None = None, fps: float | None = None, create: bool = False
    ) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        if self.index_path.is_file():
            self._index = self._read_index()
            self._check_identity(fingerprint, fps)
        elif not create:
            raise CacheError(self.index_path, "no feature cache here (index missing); run `mmduplex features` first")
        elif fingerprint is None or fps is None:
            raise InputError(self.root, "creating a feature cache needs the encoder fingerprint and the fps")
        else:
            self._index = {"format": FORMAT, "version": VERSION, "encoder": dict(fingerprint), "fps": float(fps)}
            self._index["videos"] = {}
            self.flush()
        if create:
            self._remove_temp_files()

    @property
    def fingerprint(self) -> dict:
        return dict(self._index["encoder"])

    @property
    def fps(self) -> float:
        return float(self._index["fps"])

    def keys(self) -> list[str]:
        return list(self._index["videos"])

    def entries(self) -> dict[str, dict[str, Any]]:
        """Index entries by key: ``file``, ``source``, ``frames``, ``duration_s``, ``bytes``."""
        return {key: dict(entry) for key, entry in self._index["videos"].items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._index["videos"]

    def __len__(self) -> int:
        return len(self._index["videos"])

    def shard_path(self, key: str) -> Path:
        return self.root / f"{key}{SHARD_SUFFIX}"

    def load(self, key: str, dtype: torch.dtype = torch.float32) -> FeatureRecord:
        """Read one video's features (``patches`` / ``pooled`` converted to ``dtype``).

        Raises:
            CacheError: ``key`` is not in the index, or its shard is missing, truncated or corrupt.
        """
        if key not in self:
            raise CacheError(self.index_path, f"no video '{key}' in this cache")
        path = self.shard_path(key)
        try:
            with safe_open(str(path), framework="pt") as shard:
                tensors = {name: shard.get_tensor(name) for name in ("patches", "pooled", "timestamps")}
                meta = shard.metadata() or {}
            record = FeatureRecord(
                tensors["patches"].to(dtype), tensors["pooled"].to(dtype), tensors["timestamps"].double(),
                float(meta["duration_s"]), meta["source"],
            )  # fmt: skip
            record.check()
        except Exception as exc:  # safetensors' own error type, missing tensors/metadata, bad shapes
            raise CacheError(path, f"corrupt or truncated shard ({exc})") from exc
        frames = self._index["videos"][key]["frames"]
        if record.patches.shape[0] != frames:
            raise CacheError(path, f"holds {record.patches.shape[0]} frames, the index says {frames}")
        return record

    def write_shard(self, key: str, record: FeatureRecord) -> int:
        """Write ``key``'s shard atomically (the index is not touched) and return its size in bytes."""
        if not _KEY.fullmatch(key):
            raise InputError(key, "not a valid cache key (letters, digits, '.', '_', '-'; see video_key)")
        record.check()
        patches, pooled = record.patches.detach().cpu().half(), record.pooled.detach().cpu().half()
        if not (torch.isfinite(patches).all() and torch.isfinite(pooled).all()):
            raise InputError(record.source, "features are not finite in float16 (overflow or NaN)")
        tensors = {"patches": patches.contiguous(), "pooled": pooled.contiguous()}
        tensors["timestamps"] = record.timestamps.detach().cpu().double().contiguous()
        meta = {
            "format": f"{FORMAT}/{VERSION}",
            "encoder": json.dumps(self.fingerprint, sort_keys=True),
            "fps": repr(self.fps),
            "source": str(record.source),
            "duration_s": repr(float(record.duration_s)),
        }
        path = self.shard_path(key)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path.stat().st_size

    def add(self, key: str, record: FeatureRecord, flush: bool = True) -> None:
        """Store one video's features: the shard atomically, then (with ``flush``) the index atomically."""
        size = self.write_shard(key, record)
        self._set_entry(key, record.source, int(record.patches.shape[0]), float(record.duration_s), size)
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write the index atomically."""
        write_json_atomic(self.index_path, self._index)

    def verify(self, key: str) -> bool:
        """True if ``key`` is indexed and its shard exists with the indexed size and a readable header."""
        entry = self._index["videos"].get(key)
        path = self.shard_path(key)
        if entry is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        header = self._read_header(path)
        return header is not None and header[1] == entry["frames"]

    def adopt(self, key: str, source: str) -> bool:
        """Index an existing shard written by an interrupted run if its metadata matches this cache and
        ``source``; return whether it was adopted (the index is written on the next :meth:`flush`)."""
        path = self.shard_path(key)
        header = self._read_header(path) if path.is_file() else None
        if header is None:
            return False
        meta, frames = header
        try:
            matches = (
                meta.get("format") == f"{FORMAT}/{VERSION}"
                and json.loads(meta.get("encoder", "null")) == self.fingerprint
                and math.isclose(float(meta.get("fps", "nan")), self.fps)
                and meta.get("source") == source
            )
            duration = float(meta["duration_s"]) if matches else 0.0
        except (ValueError, KeyError):
            return False
        if matches:
            self._set_entry(key, source, frames, duration, path.stat().st_size)
        return matches

    def relocate(self, old_root: str | os.PathLike, new_root: str | os.PathLike) -> int:
        """Point every video whose indexed source lies under ``old_root`` at the same relative path under
        ``new_root`` (the videos copied or linked to another folder, e.g. a demo seed's own ``data/``), so a run on the
        new paths finds them encoded; the shards are left as they are. Writes the index; returns the entries moved."""
        old, new = Path(old_root).resolve(), Path(new_root).resolve()
        moved = 0
        for entry in self._index["videos"].values():
            source = Path(entry["source"])
            if source.is_relative_to(old):
                entry["source"] = str(new / source.relative_to(old))
                moved += 1
        self.flush()
        return moved

    @classmethod
    def rebuild(cls, root: str | os.PathLike) -> FeatureCache:
        """Recreate a lost or damaged index from the shards in ``root`` (all must share one encoder and fps).

        Raises:
            CacheError: no readable shard, or shards made by different encoders / at different rates.
        """
        root = Path(root)
        found: list[tuple[Path, dict[str, str]]] = []
        for path in sorted(root.glob(f"*{SHARD_SUFFIX}")):
            header = cls._read_header(path)
            if header is None or header[0].get("format") != f"{FORMAT}/{VERSION}":
                logger.warning("%s: not a readable feature shard, left out of the rebuilt index", path)
                continue
            found.append((path, header[0]))
        if not found:
            raise CacheError(root, "no readable feature shards to rebuild an index from")
        first = found[0][1]
        for path, meta in found:
            if meta["encoder"] != first["encoder"] or meta["fps"] != first["fps"]:
                raise CacheError(path, f"made by another encoder or fps than {found[0][0].name}; cannot merge")
        index = {"format": FORMAT, "version": VERSION, "encoder": json.loads(first["encoder"])}
        write_json_atomic(root / INDEX_NAME, {**index, "fps": float(first["fps"]), "videos": {}})
        cache = cls(root)
        for path, meta in found:
            cache.adopt(path.name[: -len(SHARD_SUFFIX)], meta["source"])
        cache.flush()
        return cache

    # -- internals -------------------------------------------------------------------------------------------

    def _set_entry(self, key: str, source: str, frames: int, duration_s: float, size: int) -> None:
        entry = {"file": f"{key}{SHARD_SUFFIX}", "source": source, "frames": frames, "duration_s": duration_s}
        self._index["videos"][key] = {**entry, "bytes": size}

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(self.index_path, f"unreadable feature index ({exc})") from exc
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise CacheError(self.index_path, f'not a feature-cache index (no "format": "{FORMAT}")')
        if not isinstance(index.get("version"), int) or index["version"] > VERSION:
            raise CacheError(self.index_path, f"index format version {index.get('version')} (this reads {VERSION})")
        for name, kind in (("encoder", dict), ("fps", (int, float)), ("videos", dict)):
            if not isinstance(index.get(name), kind):
                raise CacheError(self.index_path, f"index field '{name}' is missing or malformed")
        return index

    def _check_identity(self, fingerprint: dict | None, fps: float | None) -> None:
        cached = self._index["encoder"]
        if fingerprint is not None and dict(fingerprint) != cached:
            fields = sorted(k for k in set(cached) | set(fingerprint) if cached.get(k) != fingerprint.get(k))
            raise CacheError(
                self.index_path,
                f"made by another encoder ({', '.join(fields)} differ): cache has {_describe(cached)}, "
                f"requested {_describe(fingerprint)}; use another --out folder",
            )
        if fps is not None and not math.isclose(float(fps), float(self._index["fps"])):
            raise CacheError(
                self.index_path, f"made at fps {self._index['fps']:g}, requested fps {fps:g}; use another --out folder"
            )

    @staticmethod
    def _read_header(path: Path) -> tuple[dict[str, str], int] | None:
        """(metadata, frames) from a shard's header, or ``None`` if it is not a complete shard."""
        try:
            with safe_open(str(path), framework="pt") as shard:
                meta = shard.metadata() or {}
                shapes = {name: shard.get_slice(name).get_shape() for name in shard.keys()}  # noqa: SIM118
        except Exception:  # safetensors raises its own error type for truncated / garbage files
            return None
        if not {"patches", "pooled", "timestamps"} <= set(shapes):
            return None
        return meta, int(shapes["patches"][0])

    def _remove_temp_files(self) -> None:
        """Delete temporary files a killed run left behind (``.<name>.<random>.tmp``)."""
        for tmp in self.root.glob(".*.tmp"):
            if tmp.name.startswith((f".{INDEX_NAME}.",)) or SHARD_SUFFIX + "." in tmp.name:
                logger.debug("removing leftover temporary file %s", tmp)
                tmp.unlink(missing_ok=True)
