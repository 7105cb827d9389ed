"""``mmduplex demo``: the whole path on the built-in synthetic set, offline, on a CPU, in minutes.

Stages (each reuses the previous run's output when it is complete, so re-running is cheap; every output is written
atomically, so a stage killed half-way is simply redone):

1. ``data/``      the synthetic commentary set (train / held-out split), :mod:`mmduplex.data.synthetic`;
2. ``features/``  frozen ``mmduplex-tiny`` CLIP patch features of every video (both by
   :func:`mmduplex.data.synthetic_cache.prepare_synthetic_cache`);
3. ``tokenizer/`` the B-Flow tokenizer trained by ``recipes/tokenizer/tiny.yaml`` (+ the demo's overrides), saved
   with the demo's token budget;
4. ``bundle/``    the duplex model trained by ``recipes/duplex/tiny.yaml`` on B-Flow tokens, exported;
   ``baselines/<name>/bundle`` the same recipe with the video stream zeroed (``text_only``) and with uniform pooled
   tokens at B-Flow's measured token rate (``uniform_tokens``);
5. streaming: every held-out video goes through :class:`~mmduplex.streaming.DuplexSession` frame by frame, the
   commentary is written as ``<video>.vtt`` + ``<video>.html`` (main model), and scored with
   :func:`eval.commentary.aggregate_event_metrics`;
6. ``report.json`` (keys in ``docs/DESIGN.md``, every figure with its settings) and a results table on stdout.

The demo's sizes (videos, steps) are a :class:`DemoConfig`, read from ``recipes/demo/<name>.yaml`` (``default``:
the full demo; ``smoke``: the reduced run the tests use). The training recipes themselves are the shipped ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

import recipes
from mmduplex.errors import InputError
from mmduplex.fileio import write_json_atomic

log = logging.getLogger(__name__)

BASELINES = ("text_only", "uniform_tokens")


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (tuned values live in ``recipes/demo/*.yaml``)."""

    num_videos: int = 320
    """Synthetic videos in all (train + held-out)."""
    duration_s: tuple[float, float] = (10.0, 30.0)
    """Range of video durations (s)."""
    heldout_fraction: float = 0.2
    """Share of the videos held out for streaming evaluation."""
    fps: float = 2.0
    """Frame sampling rate of the features and of the streamed video."""
    encoder: str = "mmduplex-tiny"
    """The frozen CLIP (open_clip spec) the features come from."""
    tokenizer_recipe: str = "tokenizer/tiny"
    """Shipped recipe that trains B-Flow."""
    tokenizer_steps: int = 100
    """B-Flow training steps."""
    target_rate: float | None = None
    """B-Flow token budget (tokens/s) the duplex model is trained and streamed with; ``None``: variable rate."""
    duplex_recipe: str = "duplex/demo"
    """Shipped recipe that trains the duplex model."""
    duplex_epochs: int = 8
    """Duplex training epochs (main model)."""
    baseline_epochs: int | None = None
    """Duplex training epochs of the baselines (``None``: same as the main model)."""
    batch_size: int | None = None
    """Duplex batch size (``None``: the recipe's)."""
    tolerance_s: float = 3.0
    """An event counts as described when its colour, shape and action are said within this time after it."""
    pause_steps: int = 3
    """Silent steps that end a commentary line."""
    baselines: tuple[str, ...] = BASELINES
    """Baselines trained and scored next to the main model."""
    seed: int = 0
    """Seed of the data set and of training."""
    threads: int | None = None
    """torch CPU threads of each model's training and streaming process (``None``: torch's default). Tiny models run
    fastest on one thread: more threads mostly add synchronisation, and oversubscription slows them a lot."""
    workers: int = 1
    """Models (main + baselines) trained and streamed at once, each in its own process (``1``: one after the other
    in this process). Feature extraction uses every core of the machine whatever this is."""

    def __post_init__(self) -> None:
        self.duration_s = tuple(float(v) for v in self.duration_s)
        self.baselines = tuple(self.baselines)
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError("demo.baselines", f"unknown baselines {sorted(unknown)}; known: {list(BASELINES)}")
        if self.num_videos < 2 or not 0 < self.heldout_fraction < 1 or not self.fps > 0 or self.workers < 1:
            problem = f"need num_videos >= 2, 0 < heldout_fraction < 1, fps > 0, workers >= 1; got {self}"
            raise InputError("demo", problem)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DemoConfig:
        """Read a demo recipe (a YAML mapping of :class:`DemoConfig` fields); unknown keys are an error."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(path, f"unreadable demo recipe: {err}") from err
        if not isinstance(data, dict):
            raise InputError(path, "a demo recipe must be a mapping of DemoConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(path, f"unknown demo settings {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class DemoPaths:
    """Where each stage writes under the demo's output folder."""

    root: Path
    data: Path = field(init=False)
    features: Path = field(init=False)
    runs: Path = field(init=False)
    tokenizer: Path = field(init=False)
    bundle: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.data = self.root / "data"
        self.features = self.root / "features"
        self.runs = self.root / "runs"
        self.tokenizer = self.root / "tokenizer"
        self.bundle = self.root / "bundle"

    def model_bundle(self, name: str) -> Path:
        return self.bundle if name == "bflow" else self.root / "baselines" / name / "bundle"


# ----------------------------------------------------------------------------------------------- stages


def make_data(config: DemoConfig, paths: DemoPaths):
    """Stages 1-2: the synthetic set (reused when complete with the same settings) and the frozen-CLIP features of
    every video (resumable: finished videos are skipped)."""
    from mmduplex.data.synthetic import SyntheticConfig
    from mmduplex.data.synthetic_cache import prepare_synthetic_cache

    synthetic = SyntheticConfig(
        num_videos=config.num_videos,
        duration_s=config.duration_s,
        heldout_fraction=config.heldout_fraction,
        seed=config.seed,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    try:  # the encoder's convolutions use every core; the small models after it run best on config.threads
        return prepare_synthetic_cache(paths.data, paths.features, synthetic, encoder=config.encoder, fps=config.fps)
    finally:
        torch.set_num_threads(threads)


def _fit(args: list[str]):
    """Run ``mmduplex fit`` in-process on ``args`` and return the LightningCLI object."""
    from mmduplex.lightning_cli import run_cli

    return run_cli(["fit", *args])


def train_tokenizer(config: DemoConfig, paths: DemoPaths) -> None:
    """Stage 3: B-Flow on the cached features; saved (with the demo's token budget) to ``tokenizer/``."""
    if (paths.tokenizer / "config.json").is_file():
        log.info("tokenizer: reusing %s", paths.tokenizer)
        return
    root = paths.runs / "tokenizer"
    shutil.rmtree(root, ignore_errors=True)
    cli = _fit(
        [
            "--config", str(recipes.recipe_path(config.tokenizer_recipe)),
            "--seed_everything", str(config.seed),
            "--trainer.max_steps", str(config.tokenizer_steps),
            "--trainer.default_root_dir", str(root),
            "--trainer.enable_checkpointing", "false",
            "--trainer.logger", "false",
            "--data.init_args.cache_dir", str(paths.features),
            "--data.init_args.synthetic_dir", str(paths.data),
            "--data.init_args.encoder", config.encoder,
            "--data.init_args.fps", str(config.fps),
        ]
    )  # fmt: skip
    tokenizer = cli.model.tokenizer
    if config.target_rate is not None:
        tokenizer = tokenizer.with_settings(target_rate=config.target_rate)
    tokenizer.save_pretrained(paths.tokenizer)


def bflow_tokens_per_frame(config: DemoConfig, paths: DemoPaths, dataset) -> float:
    """B-Flow's mean tokens per sampled frame over the training videos' cached features (the rate the uniform
    baseline is given; the same tokenizer as streaming, whose step API equals this batch path)."""
    from mmduplex.feature_cache import FeatureCache, video_key
    from tokenizer.bflow import BFlowTokenizer

    bflow = BFlowTokenizer.from_pretrained(paths.tokenizer).eval()
    cache = FeatureCache(paths.features)
    tokens = frames = 0
    with torch.inference_mode():
        for vid in dataset.video_ids("train"):
            record = cache.load(video_key(dataset.video_path(vid)))
            tokens += bflow.tokenize(record.patches, record.timestamps).tokens_total
            frames += record.patches.shape[0]
    return tokens / max(frames, 1)


def _video_tokenizer_arg(name: str, paths: DemoPaths, tokens_per_frame: int) -> dict[str, Any]:
    """The ``video_tokenizer`` (class_path + init_args) of each model the demo trains."""
    from tokenizer.bflow import BFlowTokenizer

    if name == "bflow":
        return {
            "class_path": "tokenizer.bflow.BFlowTokenizer.from_checkpoint",
            "init_args": {"path": str(paths.tokenizer)},
        }
    bflow = BFlowTokenizer.from_pretrained(paths.tokenizer)
    common = {"dim": bflow.config.dim, "grid": list(bflow.config.grid)}
    if name == "text_only":
        return {"class_path": "tokenizer.baselines.NoVideoTokenizer", "init_args": common}
    if name == "uniform_tokens":
        return {
            "class_path": "tokenizer.baselines.UniformTokenizer",
            "init_args": {**common, "tokens_per_frame": tokens_per_frame, "embed_scale": bflow.config.embed_scale},
        }
    raise InputError("demo.baselines", f"unknown model {name!r}")


def train_duplex(config: DemoConfig, paths: DemoPaths, name: str, tokens_per_frame: int) -> Path:
    """Stage 4: one duplex model (``bflow`` = the main one, or a baseline) trained and exported to its bundle."""
    from mmduplex.bundle import export_bundle

    bundle = paths.model_bundle(name)
    if (bundle / "config.json").is_file():
        log.info("duplex %s: reusing %s", name, bundle)
        return bundle
    root = paths.runs / f"duplex-{name}"
    shutil.rmtree(root, ignore_errors=True)
    epochs = config.duplex_epochs if name == "bflow" else (config.baseline_epochs or config.duplex_epochs)
    args = [
        "--config", str(recipes.recipe_path(config.duplex_recipe)),
        "--seed_everything", str(config.seed),
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(root),
        "--trainer.logger", "false",
        "--model.init_args.video_tokenizer", json.dumps(_video_tokenizer_arg(name, paths, tokens_per_frame)),
        "--data.init_args.features", str(paths.features),
        "--data.init_args.synthetic_dir", str(paths.data),
        "--data.init_args.encoder", config.encoder,
        "--data.init_args.fps", str(config.fps),
        "--data.init_args.seed", str(config.seed),
    ]  # fmt: skip
    if config.batch_size is not None:
        args += ["--data.init_args.batch_size", str(config.batch_size)]
    cli = _fit(args)
    checkpoint = root / "final.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    export_bundle(checkpoint, bundle)
    return bundle


# ----------------------------------------------------------------------------------------------- streaming


@dataclass
class StreamResult:
    """One model's commentary of one held-out video."""

    video_id: str
    lines: list
    steps: int
    compute_s: float
    stream_s: float
    video_tokens: int
    """Tokens the video tokenizer emitted for this video (all of them, also any the slot packer had to drop)."""


def stream_video(session, video: Path, pause_steps: int) -> StreamResult:
    """Stream one video through ``session`` (reset first) frame by frame; group its words into lines."""
    from mmduplex.outputs import LineBuilder
    from mmduplex.video import iter_video

    session.reset()
    builder = LineBuilder(pause_steps=pause_steps, max_words=8, min_display_s=1.0)
    steps = 0
    start = time.perf_counter()
    frames = iter_video(video, fps=session.fps, size=session.encoder.image_size)  # as the feature cache was made
    for out in session.run(frames):
        builder.push_piece(out.t, out.word, out.word_start)
        steps += 1
    builder.flush()
    compute = time.perf_counter() - start
    tokens = session.video_tokens + session.dropped_video_tokens
    return StreamResult(video.stem, builder.lines, steps, compute, steps / session.step_hz, tokens)


def evaluate_model(name: str, config: DemoConfig, paths: DemoPaths, dataset, write_outputs: bool) -> dict[str, Any]:
    """Stage 5: stream every held-out video through the model's bundle and score the commentary."""
    from tqdm.auto import tqdm

    from eval.commentary import aggregate_event_metrics
    from mmduplex.outputs import write_html, write_vtt
    from mmduplex.streaming import DuplexSession

    bundle = paths.model_bundle(name)
    session = DuplexSession.from_bundle(bundle)
    ids = dataset.video_ids("heldout")
    results = []
    for vid in tqdm(ids, desc=f"streaming ({name})", unit="video"):
        result = stream_video(session, dataset.video_path(vid), config.pause_steps)
        results.append(result)
        if write_outputs:
            vtt = write_vtt(result.lines, paths.root / f"{vid}.vtt")
            write_html(dataset.video_path(vid), vtt, paths.root / f"{vid}.html", title=f"mmduplex demo: {vid}")
    metrics = aggregate_event_metrics(
        [(r.lines, dataset.events(r.video_id)) for r in results], tolerance_s=config.tolerance_s
    )
    compute = sum(r.compute_s for r in results)
    stream = sum(r.stream_s for r in results)
    duration = sum(clip.end_s - clip.start_s for clip in dataset.clips("heldout"))
    return {
        "event_accuracy": metrics["event_accuracy"],
        "event_precision": metrics["event_precision"],
        "median_latency_s": metrics["median_latency_s"],
        "p90_latency_s": metrics.get("p90_latency_s"),
        "events": metrics.get("events"),
        "lines": metrics.get("lines"),
        "video_tokens_per_second": sum(r.video_tokens for r in results) / duration,
        "rtf": compute / stream if stream else None,
    }


# ----------------------------------------------------------------------------------------------- the demo


def _bundle_settings(bundle: Path) -> dict[str, Any]:
    from mmduplex.bundle import read_bundle_config

    cfg = read_bundle_config(bundle)
    keys = ("step_hz", "delay_steps", "slots_per_step", "fps", "encoder", "video_tokenizer", "backbone")
    return {k: cfg.get(k) for k in keys if k in cfg}


SETTINGS_FILE = "demo_config.json"


def check_reusable(paths: DemoPaths, config: DemoConfig) -> None:
    """Stages are reused from an earlier run only if it had the same settings; otherwise refuse (never mix).

    Raises:
        InputError: ``out_dir`` holds a demo run made with other settings (names the differing fields).
    """
    wanted = json.loads(json.dumps(asdict(config)))
    marker = paths.root / SETTINGS_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError as err:
            problem = f"unreadable demo settings ({err}); delete the folder or use another --out"
            raise InputError(marker, problem) from err
        differ = sorted(k for k in set(wanted) | set(previous) if wanted.get(k) != previous.get(k))
        if differ:
            problem = f"holds a demo run with other settings ({', '.join(differ)}); use another --out or delete it"
            raise InputError(paths.root, problem)
    elif paths.root.is_dir() and any(paths.root.iterdir()):
        raise InputError(paths.root, "is not empty and holds no demo run; use another --out")
    write_json_atomic(marker, wanted)


def model_job(config: DemoConfig, root: str, name: str, tokens_per_frame: int) -> tuple[dict[str, Any], dict]:
    """Stages 4-5 for one model (``bflow`` = the main one, or a baseline): train and export it, stream every held-out
    video through it and score the commentary. Runs in this process or in a worker process (picklable arguments).

    Returns:
        The model's figures and its stage timings.
    """
    from mmduplex.data.synthetic import SyntheticDataset

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    paths = DemoPaths(Path(root))
    timings = {}
    t0 = time.perf_counter()
    train_duplex(config, paths, name, tokens_per_frame)
    timings["duplex" if name == "bflow" else f"duplex_{name}"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    figures = evaluate_model(name, config, paths, SyntheticDataset(paths.data), name == "bflow")
    timings[f"stream_{name}"] = round(time.perf_counter() - t0, 2)
    return figures, timings


def run_models(config: DemoConfig, paths: DemoPaths, tokens_per_frame: int) -> tuple[dict[str, dict], dict]:
    """Train and stream the main model and every baseline: ``config.workers`` at a time, each in its own process
    (spawned, so no thread pool or lock is inherited), or one after the other here when ``workers`` is 1."""
    names = ["bflow", *config.baselines]
    if config.workers == 1 or len(names) == 1:
        done = [model_job(config, str(paths.root), name, tokens_per_frame) for name in names]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        workers = min(config.workers, len(names))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(model_job, config, str(paths.root), name, tokens_per_frame) for name in names]
            done = [future.result() for future in futures]
    figures = {name: result[0] for name, result in zip(names, done, strict=True)}
    timings = {stage: seconds for _, stage_times in done for stage, seconds in stage_times.items()}
    return figures, timings


def run_demo(out_dir: str | os.PathLike, config: DemoConfig) -> dict[str, Any]:
    """Run every stage into ``out_dir`` and return the report (also written to ``out_dir/report.json``)."""
    start = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    paths = DemoPaths(Path(out_dir))
    check_reusable(paths, config)
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("demo: %s done in %.1f s", stage, timings[stage])
        return value

    dataset = timed("data_and_features", make_data, config, paths)
    timed("tokenizer", train_tokenizer, config, paths)
    tokens_per_frame = max(1, round(timed("bflow_rate", bflow_tokens_per_frame, config, paths, dataset)))
    t0 = time.perf_counter()
    figures, model_timings = run_models(config, paths, tokens_per_frame)
    timings.update(model_timings)
    timings["models"] = round(time.perf_counter() - t0, 2)
    main = figures.pop("bflow")
    baselines = figures

    report = {
        "event_accuracy": main["event_accuracy"],
        "event_precision": main["event_precision"],
        "median_latency_s": main["median_latency_s"],
        "video_tokens_per_second": main["video_tokens_per_second"],
        "wall_s": round(time.perf_counter() - start, 2),
        "settings": {
            "demo": json.loads(json.dumps(asdict(config))),
            "model": _bundle_settings(paths.bundle),
            "encoder": _encoder_settings(paths),
            "heldout_videos": len(dataset.video_ids("heldout")),
            "train_videos": len(dataset.video_ids("train")),
            "uniform_tokens_per_frame": tokens_per_frame,
            "torch_threads": torch.get_num_threads(),
            "workers": config.workers,
            "stage_seconds": timings,
        },
        "details": {"bflow": main},
        "baselines": baselines,
    }
    write_json_atomic(paths.root / "report.json", report)
    return report


def _encoder_settings(paths: DemoPaths) -> dict[str, Any]:
    """What the features are: the encoder's fingerprint (name, weights, input size, feature stride) and fps."""
    from mmduplex.feature_cache import FeatureCache

    cache = FeatureCache(paths.features)
    return {**cache.fingerprint, "fps": cache.fps}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def results_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: the main model and each baseline."""
    rows = [("B-Flow duplex (main)", report["details"]["bflow"])]
    rows += [(name, figures) for name, figures in report["baselines"].items()]
    head = "| model | event accuracy | event precision | median latency (s) | video tokens/s | RTF |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, f in rows:
        lines.append(
            f"| {name} | {_fmt(f['event_accuracy'])} | {_fmt(f['event_precision'])} | "
            f"{_fmt(f['median_latency_s'], 2)} | {_fmt(f['video_tokens_per_second'], 1)} | {_fmt(f.get('rtf'), 3)} |"
        )
    return "\n".join(lines)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Closing lines: wall time, and the main figures against the demo's targets."""
    main = report["details"]["bflow"]
    text_only = report["baselines"].get("text_only")
    margin = None if text_only is None else main["event_accuracy"] - text_only["event_accuracy"]
    latency = main["median_latency_s"]
    return [
        f"wall time: {report['wall_s']:.0f} s (target <= 600 s)",
        f"event accuracy {main['event_accuracy']:.3f} (target >= 0.9)"
        + ("" if margin is None else f", {margin:+.3f} over text-only (target >= +0.3)"),
        f"median latency {_fmt(latency, 2)} s (target <= 1.5 s); "
        f"video tokens/s {main['video_tokens_per_second']:.1f} (target <= 32)",
    ]
