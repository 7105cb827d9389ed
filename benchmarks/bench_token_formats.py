"""Storage formats for the duplex token store, measured on the same tokens: safetensors shards + a JSON index (what
:mod:`mmduplex.train.token_store` writes) against LitData's optimized chunks and WebDataset tar shards.

The records are a video tokenizer's output as the store keeps it (``tokens [N, Dv]`` float32, frame ``times``,
``counts``, ``kinds``), made up at B-Flow's rates (2 fps, 64-wide tokens, a 16-token keyframe every 10 s and 0-16
flow tokens a frame) for ``--videos`` videos of ``--seconds`` each: long videos, as LiveCC's, are where reading a
window's rows instead of a whole video matters. Each format is written, then read back: size on disk, write time,
videos per CPU second in storage order (one pass), and windows per CPU second in a random order (what a shuffled
epoch reads: ``build_window`` on the demo recipe's grid, 10 s windows, one process; warm page cache). WebDataset has
no random access (tar streams: a shuffled epoch is a shuffle buffer over a sequential read): no random-order figure.
LitData and WebDataset are optional: put them on ``PYTHONPATH`` (e.g. ``pip install --no-deps --target DIR litdata
webdataset ...``); a format whose library is missing is skipped.

    python -m benchmarks.bench_token_formats [--videos 64] [--seconds 300] [--windows 2000]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Timer, print_header
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.train.token_store import TokenStore
from mmduplex.train.windows import StepGrid, VideoTokens, build_window

FIELDS = ("tokens", "times", "counts", "kinds")


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def as_video(record: dict) -> VideoTokens:
    tokens = torch.from_numpy(np.asarray(record["tokens"]))
    return VideoTokens(np.asarray(record["times"]), np.asarray(record["counts"]), lambda a, b: tokens[a:b])


class LitDataFormat:
    """LitData ``optimize`` chunks (64 MB), read by ``StreamingDataset`` index (a video's whole record at a time)."""

    name = "litdata"

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, records: dict[str, dict]) -> None:
        import litdata

        keys = sorted(records)
        litdata.optimize(
            fn=lambda key: {"key": key, **{f: records[key][f].numpy() for f in FIELDS}},
            inputs=keys,
            output_dir=str(self.root),
            chunk_bytes="64MB",
            num_workers=1,
            verbose=False,
            start_method="fork",
        )

    def open(self) -> None:
        import litdata

        self.dataset = litdata.StreamingDataset(str(self.root))
        self.position = {self.dataset[i]["key"]: i for i in range(len(self.dataset))}

    def video(self, key: str) -> VideoTokens:
        return as_video(self.dataset[self.position[key]])

    def sequential(self) -> int:
        return sum(1 for _ in self.dataset)


class WebDatasetFormat:
    """WebDataset tar shards (``.npy`` per field), read as a stream."""

    name = "webdataset"

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, records: dict[str, dict]) -> None:
        import webdataset as wds

        self.root.mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(self.root / "tokens-%05d.tar"), maxsize=64 * 2**20, verbose=0) as sink:
            for key in sorted(records):
                sink.write({"__key__": key, **{f"{f}.npy": records[key][f].numpy() for f in FIELDS}})

    def open(self) -> None:
        self.urls = [str(p) for p in sorted(self.root.glob("*.tar"))]

    def video(self, key: str) -> VideoTokens:
        raise NotImplementedError("tar shards have no random access")

    def sequential(self) -> int:
        import webdataset as wds

        count = 0
        for sample in wds.WebDataset(self.urls, shardshuffle=False):
            record = {f: np.load(io.BytesIO(sample[f"{f}.npy"])) for f in FIELDS}
            count += record["tokens"].shape[0] > -1
        return count


class _Records:
    """Stands in for a feature cache: :meth:`TokenStore._write_shard` reads only its entries' sizes."""

    def entries(self) -> dict[str, dict]:
        return defaultdict(lambda: {"bytes": 0})


class SafetensorsFormat:
    """The token store (memory-mapped shards of 256 MB; a window reads only its rows)."""

    name = "safetensors shards + index (ours)"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fingerprint = {"class_path": "made-up", "digest": "0" * 16, "token_dim": 64}

    def write(self, records: dict[str, dict]) -> None:
        store = TokenStore(self.root, self.fingerprint)
        with store._lock():  # TokenStore.update's loop without tokenizing: the records are the tokens
            store._index = {"format": "mmduplex-tokens", "version": 1, "tokenizer": self.fingerprint,
                            "features": {}, "token_dim": 64, "shards": [], "videos": {}}  # fmt: skip
            pending, size = [], 0
            for key in sorted(records):
                pending.append((key, records[key]))
                size += records[key]["tokens"].numel() * 4
                if size >= 256 * 2**20:
                    store._write_shard(pending, _Records())
                    pending, size = [], 0
            if pending:
                store._write_shard(pending, _Records())

    def open(self) -> None:
        self.store = TokenStore(self.root, self.fingerprint)

    def video(self, key: str) -> VideoTokens:
        return self.store.video(key)

    def sequential(self) -> int:
        for key in self.store:
            self.store.tokens(key)
        return len(self.store)


def made_up_records(videos: int, seconds: float, seed: int = 0) -> dict[str, dict]:
    """Token records at B-Flow's rates (module docstring)."""
    rng = np.random.default_rng(seed)
    records = {}
    for v in range(videos):
        frames = int(seconds * 2)
        counts = rng.integers(0, 17, frames)
        counts[::20] = 16  # a keyframe every 10 s
        records[f"video{v:05d}"] = {
            "tokens": torch.from_numpy(rng.standard_normal((int(counts.sum()), 64), dtype=np.float32)),
            "times": torch.arange(frames, dtype=torch.float64) / 2.0,
            "counts": torch.from_numpy(counts.astype(np.int64)),
            "kinds": torch.from_numpy((np.arange(frames) % 20 != 0).astype(np.uint8)),
        }
    return records


def measure(fmt, records: dict[str, dict], samples: list[dict], grid: StepGrid, order: list[int]) -> None:
    """Write, read in storage order, build windows in a random order; print a table row."""
    with Timer() as written:
        fmt.write(records)
    fmt.open()
    with Timer() as seq:
        count = fmt.sequential()
    random_rate = "—"
    try:
        fmt.video(samples[0]["key"])
        with Timer() as timer:
            for i in order:
                build_window(samples[i], grid, fmt.video(samples[i]["key"]))
        random_rate = f"{len(order) / timer.cpu_seconds:.1f}"
    except NotImplementedError:
        pass
    row = f"{folder_mb(fmt.root):.1f} | {written.seconds:.2f} | {count / seq.cpu_seconds:.1f} | {random_rate}"
    print(f"| {fmt.name} | {row} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64, help="videos")
    parser.add_argument("--seconds", type=float, default=300.0, help="length of each video (s)")
    parser.add_argument("--windows", type=int, default=2000, help="windows built in a random order")
    args = parser.parse_args()
    print_header("Token-store formats: safetensors shards + index vs LitData vs WebDataset")
    torch.set_num_threads(1)
    records = made_up_records(args.videos, args.seconds)
    grid = StepGrid.of(
        load_text_tokenizer("synthetic"),
        step_hz=5.0,
        delay_steps=4,
        slots_per_step=8,
        user_slots_per_step=4,
        token_dim=64,
    )  # fmt: skip  (the demo recipe's grid)
    rng = random.Random(0)
    keys = sorted(records)
    samples = [{"key": rng.choice(keys), "clip_start_s": 0.0, "clip_end_s": args.seconds, "window_s": 10.0,
                "offset_s": float(rng.randrange(int(args.seconds) - 10)), "words": [], "questions": []}
               for _ in range(args.windows)]  # fmt: skip
    order = list(range(len(samples)))
    mb = sum(r["tokens"].numel() * 4 for r in records.values()) / 2**20
    print(f"{args.videos} videos of {args.seconds:g} s: {mb:.0f} MB of tokens; {args.windows} windows of 10 s\n")
    print("| format | MB on disk | write s | videos/CPU s, storage order | windows/CPU s, random order |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt_class, library in ((SafetensorsFormat, None), (LitDataFormat, "litdata"),
                                   (WebDatasetFormat, "webdataset")):  # fmt: skip
            try:
                if library:
                    __import__(library)
            except ImportError:
                print(f"| {fmt_class.name} | not installed: skipped | | | |")
                continue
            measure(fmt_class(Path(tmp) / fmt_class.__name__), records, samples, grid, order)


if __name__ == "__main__":
    main()
