"""The synthetic commentary data set on disk: coloured shapes on a muted background, and a 3-word line per event.

The project's embedded default data set (the CPU demo trains on it). The world, its events and the planner are in
:mod:`mmduplex.data.synthetic_plan`, drawing in :mod:`mmduplex.data.synthetic_render`; this module writes and reads
the data set, and re-exports the public names of both, so ``from mmduplex.data.synthetic import SyntheticConfig,
plan_video, render_video, make_motion_video, ...`` keeps working.

Layout written by :func:`generate_dataset` (atomically: a temporary folder renamed at the end)::

    DIR/manifest.json        config + generator version (its presence marks a complete data set)
    DIR/videos/<id>.mp4      the rendered videos
    DIR/transcripts.jsonl    LiveCC format, one line per video, video paths relative to DIR
    DIR/events.jsonl         {"video", "duration", "events": [{"t", "colour", "shape", "action", "shape_id"}],
                              "questions": [{"t", "text", "kind", "category", "answer", "choices", "end_t",
                              "answer_t"}]}  (the "questions" key only when the video has questions)
    DIR/split.json           {"train": [...], "val": [...], "heldout": [...]} video ids

Questions (``question_interval_s > 0``) are stored as LiveCC would carry them: the user text item of a record gets
``"questions": [{"time", "text"}]`` (video time) and the answers are words of the assistant's ``text_stream``; their
kind, answer and options are in ``events.jsonl`` (:meth:`SyntheticDataset.questions`).

Everything is a pure function of the config: the same seed gives identical frames and byte-identical JSON.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mmduplex.data.synthetic_plan import (
    ACTIONS,
    COLOURS,
    DEFAULT_SHADING,
    SHAPES,
    Event,
    ShapeTrack,
    SyntheticConfig,
    SyntheticQuestion,
    VideoSpec,
    make_question,
    plan_video,
    video_id,
    vocabulary,
)
from mmduplex.data.synthetic_questions import KINDS
from mmduplex.data.synthetic_render import make_motion_video, render_video
from mmduplex.data.transcripts import TimedClip, livecc_record, load_livecc_jsonl
from mmduplex.errors import AnnotationError, InputError
from mmduplex.fileio import atomic_dir

__all__ = [
    "ACTIONS",
    "COLOURS",
    "DEFAULT_SHADING",
    "GENERATOR_VERSION",
    "MANIFEST",
    "SHAPES",
    "SPLITS",
    "Event",
    "ShapeTrack",
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticQuestion",
    "VideoSpec",
    "generate_dataset",
    "load_events",
    "make_motion_video",
    "load_questions",
    "make_question",
    "plan_video",
    "render_video",
    "video_id",
    "vocabulary",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "heldout")


def _split(config: SyntheticConfig) -> dict[str, list[str]]:
    """Held-out videos first in a seeded order, then val, the rest train: a val split never moves held-out videos."""
    order = np.random.default_rng([config.seed]).permutation(config.num_videos)
    held = round(config.num_videos * config.heldout_fraction)
    if config.heldout_fraction > 0 and config.num_videos >= 2:
        held = min(max(held, 1), config.num_videos - 1)
    val = round(config.num_videos * config.val_fraction)
    if config.val_fraction > 0:
        val = min(max(val, 1), config.num_videos - held - 1)
    if val < 0 or held + val >= config.num_videos:
        raise InputError(
            "val_fraction", f"no training videos left: {config.num_videos} videos, {held} held out, {val} val"
        )
    return {
        "train": sorted(video_id(int(i)) for i in order[held + val :]),
        "val": sorted(video_id(int(i)) for i in order[held : held + val]),
        "heldout": sorted(video_id(int(i)) for i in order[:held]),
    }


def _render_videos(folder: str, config: SyntheticConfig, indices: list[int]) -> None:
    """Render and write the videos ``indices`` of the data set ``config`` into ``folder`` (one process's share)."""
    from mmduplex.io.video import write_video

    for index in indices:
        spec = plan_video(config, index)
        write_video(Path(folder) / f"videos/{spec.video_id}.mp4", render_video(spec), spec.fps)


def _write_dataset(folder: Path, config: SyntheticConfig, processes: int = 1) -> None:
    indices = list(range(config.num_videos))
    shares = [share for share in (indices[i::processes] for i in range(max(1, processes))) if share]
    if len(shares) > 1:  # every video is a pure function of (config, index): the files do not depend on the split
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from mmduplex.workers import watch_parent

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(shares), mp_context=context, initializer=watch_parent) as pool:
            for future in [pool.submit(_render_videos, str(folder), config, share) for share in shares]:
                future.result()
    else:
        _render_videos(str(folder), config, indices)
    transcripts, events = [], []
    for index in indices:
        spec = plan_video(config, index)
        relpath = f"videos/{spec.video_id}.mp4"
        duration = round(spec.duration_s, 6)
        asked = [(q.t, q.text) for q in spec.questions]
        record = livecc_record(relpath, list(spec.words), 0.0, duration, title=spec.video_id, questions=asked)
        transcripts.append(json.dumps(record))
        entry = {"video": spec.video_id, "duration": duration, "events": [asdict(e) for e in spec.events]}
        if spec.questions:
            entry["questions"] = [q.to_json() for q in spec.questions]
        events.append(json.dumps(entry))
    (folder / "transcripts.jsonl").write_text("\n".join(transcripts) + "\n", encoding="utf-8")
    (folder / "events.jsonl").write_text("\n".join(events) + "\n", encoding="utf-8")
    (folder / "split.json").write_text(json.dumps(_split(config), indent=2) + "\n", encoding="utf-8")
    manifest = {
        "format": "mmduplex-synthetic-commentary",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_json(),
        "videos": [video_id(i) for i in range(config.num_videos)],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks complete


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnnotationError(path, "not found: not a synthetic data set (run generate_dataset first)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "mmduplex-synthetic-commentary":
        raise AnnotationError(path, "not a synthetic commentary data set manifest")
    return manifest


def _is_complete(root: Path, config: SyntheticConfig) -> bool:
    """True when ``root`` holds a finished data set made by this generator version from ``config``."""
    try:
        manifest = _read_manifest(root)
    except AnnotationError:
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("config") != config.to_json():
        return False
    files = ["transcripts.jsonl", "events.jsonl", "split.json"] + [f"videos/{v}.mp4" for v in manifest["videos"]]
    return all((root / f).is_file() for f in files)


def generate_dataset(
    out_dir: str | os.PathLike, config: SyntheticConfig | None = None, processes: int = 1
) -> SyntheticDataset:
    """Make the synthetic data set in ``out_dir`` (or reuse it when it is already complete with the same config).

    The data set is written into a temporary folder beside ``out_dir`` and renamed over it at the end, so a killed
    run never leaves a folder that looks complete.

    Args:
        out_dir: the data set folder.
        config: the data set settings (default: :class:`SyntheticConfig` defaults).
        processes: videos are rendered and encoded by this many spawned processes (the files are the same whatever
            it is; 104 demo-sized videos: 14.6 s with 1, 7.5 s with 2 on this project's 2-core machine).

    Raises:
        InputError: ``out_dir`` exists, is not empty and is not a synthetic data set (it is never overwritten).
    """
    config = config if config is not None else SyntheticConfig()
    root = Path(out_dir)
    if _is_complete(root, config):
        log.info("synthetic data set %s is complete, reusing it", root)
        return SyntheticDataset(root)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / MANIFEST).is_file())):
        raise InputError(root, "exists and is not a synthetic data set (no manifest.json); refusing to replace it")
    log.info("generating %d synthetic videos in %s", config.num_videos, root)
    with atomic_dir(root) as tmp:
        _write_dataset(tmp, config, processes)
    return SyntheticDataset(root)


def load_events(path: str | os.PathLike) -> dict[str, list[Event]]:
    """Read ``events.jsonl``: video id -> its events in time order.

    Raises:
        AnnotationError: the file is missing or a line is malformed (the message names the line).
    """
    return _load_events_and_questions(path)[0]


def load_questions(path: str | os.PathLike) -> dict[str, list[SyntheticQuestion]]:
    """Read the questions of ``events.jsonl``: video id -> its questions in time order (empty lists without).

    Raises:
        AnnotationError: the file is missing or a line is malformed (the message names the line).
    """
    return _load_events_and_questions(path)[1]


def _question(q: dict[str, Any]) -> SyntheticQuestion:
    choices = tuple(str(c) for c in q["choices"])
    question = SyntheticQuestion(
        float(q["t"]), str(q["text"]), str(q["kind"]), str(q["category"]), str(q["answer"]), choices,
        float(q["end_t"]), float(q["answer_t"]),
    )  # fmt: skip
    if question.kind not in KINDS or (choices and question.answer not in choices):
        raise ValueError(f"bad question {q!r} (kind must be one of {KINDS}, the answer one of the choices)")
    return question


def _load_events_and_questions(
    path: str | os.PathLike,
) -> tuple[dict[str, list[Event]], dict[str, list[SyntheticQuestion]]]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    out: dict[str, list[Event]] = {}
    asked: dict[str, list[SyntheticQuestion]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            events = [
                Event(float(e["t"]), str(e["colour"]), str(e["shape"]), str(e["action"]), int(e["shape_id"]))
                for e in record["events"]
            ]
            out[str(record["video"])] = events
            asked[str(record["video"])] = [_question(q) for q in record.get("questions", [])]
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"line {lineno}: malformed JSON ({exc.msg})") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(path, f"line {lineno}: bad event record ({type(exc).__name__}: {exc})") from exc
        for event in events:
            if event.colour not in COLOURS or event.shape not in SHAPES or event.action not in ACTIONS:
                raise AnnotationError(path, f"line {lineno}: unknown event words {event.words}")
    return out, asked


class SyntheticDataset:
    """A generated synthetic commentary data set on disk (see the module docstring for its layout).

    Args:
        root: the data set folder (made by :func:`generate_dataset`).

    Raises:
        AnnotationError: ``root`` has no valid manifest or split.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        manifest = _read_manifest(self.root)
        try:
            self.config = SyntheticConfig(**manifest["config"])
            self._ids: list[str] = list(manifest["videos"])
        except (KeyError, TypeError) as exc:
            raise AnnotationError(self.root / MANIFEST, f"bad manifest ({exc}); regenerate the data set") from exc
        split_path = self.root / "split.json"
        try:
            self.split: dict[str, list[str]] = json.loads(split_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AnnotationError(split_path, f"cannot read the split ({exc})") from exc
        self._events: dict[str, list[Event]] | None = None
        self._questions: dict[str, list[SyntheticQuestion]] | None = None

    @property
    def transcripts_path(self) -> Path:
        """The LiveCC-format transcripts (one line per video)."""
        return self.root / "transcripts.jsonl"

    @property
    def events_path(self) -> Path:
        """The per-video event lists."""
        return self.root / "events.jsonl"

    def video_ids(self, split: str | None = None) -> list[str]:
        """Video ids of ``split`` (``"train"``, ``"val"`` or ``"heldout"``; ``None`` for all), sorted. A data set
        written before val splits existed has an empty val split."""
        if split is None:
            return list(self._ids)
        if split not in SPLITS:
            raise InputError("split", f"must be one of {SPLITS} or None, got {split!r}")
        return list(self.split.get(split, []))

    def videos(self, split: str | None = None) -> list[Path]:
        """Video files of ``split`` (``"train"``, ``"heldout"`` or ``None`` for all), sorted by id."""
        return [self.video_path(v) for v in self.video_ids(split)]

    def video_path(self, video_id: str) -> Path:
        """The mp4 of one video."""
        return self.root / "videos" / f"{video_id}.mp4"

    def events(self, video_id: str) -> list[Event]:
        """The events of one video, in time order."""
        if self._events is None:
            self._events = load_events(self.events_path)
        if video_id not in self._events:
            raise InputError(video_id, f"no such video in {self.events_path}")
        return self._events[video_id]

    def questions(self, video_id: str) -> list[SyntheticQuestion]:
        """The questions asked in one video (kind, answer, options, times), in time order; ``[]`` without."""
        if self._questions is None:
            self._events, self._questions = _load_events_and_questions(self.events_path)
        if video_id not in self._questions:
            raise InputError(video_id, f"no such video in {self.events_path}")
        return self._questions[video_id]

    def clips(self, split: str | None = None) -> list[TimedClip]:
        """The transcripts of ``split`` as :class:`TimedClip` (video paths absolute under ``root``)."""
        keep = {os.fspath(p) for p in self.videos(split)}
        return [c for c in load_livecc_jsonl(self.transcripts_path, root=self.root) if c.video in keep]

    def spec(self, video_id: str) -> VideoSpec:
        """The render spec of one video (re-planned from the config; ``render_video`` of it gives its frames)."""
        if video_id not in self._ids:
            raise InputError(video_id, f"no such video in {self.root}")
        return plan_video(self.config, self._ids.index(video_id))
