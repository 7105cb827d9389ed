"""The stages of ``mmduplex demo`` (its settings, the folders, and stages 1-5; :mod:`mmduplex.demo.run` runs them).

Each stage reuses the previous run's output when it is complete, so re-running is cheap; every output is written
atomically, so a stage killed half-way is simply redone. Stages 4-5 run per model (:func:`model_job`), in worker
processes when ``DemoConfig.workers > 1``; :func:`quiet_frameworks` keeps every process's terminal output to the
demo's own progress lines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import mmduplex.recipes
from mmduplex.errors import InputError
from mmduplex.workers import watch_parent

log = logging.getLogger("mmduplex.demo.run")

BASELINES = ("text_only", "uniform_tokens")
QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "mmduplex", "tokenizer", "eval")
"""Loggers whose info lines the demo drops (Lightning's tips and notices, per-video and per-stage chatter)..."""
SHOWN_LOGGERS = ("mmduplex.demo.run", "mmduplex.weights")
"""...except the demo's own progress lines and the one-off preparation of pretrained weights."""


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (tuned values live in ``recipes/demo/*.yaml``)."""

    num_videos: int = 320
    """Synthetic videos in all (train + held-out)."""
    duration_s: tuple[float, float] = (10.0, 30.0)
    """Range of video durations (s)."""
    heldout_fraction: float = 0.2
    """Share of the videos held out: scored once per configuration for the report, never used to choose settings."""
    val_fraction: float = 0.0
    """Share of the videos in the val split, on which settings are chosen (0: no val split)."""
    score_split: str = "heldout"
    """Split the models are streamed and scored on: ``val`` while choosing settings, ``heldout`` for the report."""
    selected_on: str | None = None
    """The split this recipe's chosen values (learning rates, budgets, thresholds) were selected on, as the report's
    ``settings.selected_on`` says (``None``: not recorded)."""
    word_delay_s: tuple[float, float] = (0.3, 0.5)
    """Range of the reference commentary's delay from an event to its first word (s): with the model's text delay
    tau it sets when the model speaks, so the latency the demo measures is about this plus tau."""
    fps: float = 2.0
    """Frame sampling rate of the features and of the streamed video."""
    encoder: str = "efficientnet-lite0"
    """The frozen image encoder the features come from (a name for
    :func:`mmduplex.tokenizer.encoders.factory.create_encoder`; ``mmduplex-tiny`` is random, for tests)."""
    tokenizer_recipe: str = "tokenizer/lite0"
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
    model_lr: dict[str, float] = field(default_factory=dict)
    """Peak learning rate by model (``bflow`` or a baseline's name) where it differs from the duplex recipe's: each
    model trains at the best rate of its own sweep (notebooks/LOG.md)."""
    batch_size: int | None = None
    """Duplex batch size (``None``: the recipe's)."""
    tolerance_s: float = 3.0
    """An event counts as described when its colour, shape and action are said within this time after it."""
    pause_steps: int = 3
    """Silent steps that end a commentary line."""
    baselines: tuple[str, ...] = BASELINES
    """Baselines trained and scored next to the main model."""
    data_seed: int = 0
    """Seed of the synthetic data set (its videos and splits) and of the LongVideoBench split's option order."""
    seed: int = 0
    """Seed of training (initialisation, batch order): another seed retrains every model on the same data."""
    threads: int | None = None
    """torch CPU threads of each model's training and streaming process (``None``: torch's default). Tiny models run
    fastest on one thread: more threads mostly add synchronisation, and oversubscription slows them a lot."""
    workers: int = 1
    """Models (main + baselines) trained and streamed at once, each in its own process (``1``: one after the other
    in this process). Feature extraction uses every core of the machine whatever this is."""
    talk_tuning_videos: int = 4
    """Training videos on which every model's PAD bias is tuned to talk as much as the reference (0: no tuning,
    every model at PAD bias 0)."""
    talk_ratio_target: float | None = None
    """Talk ratio the PAD bias is tuned to (``None``: the reference's own words shown as the demo's lines)."""
    ablation_videos: int | None = None
    """Held-out videos the video ablation streams (the first ones; ``None``: all, ``0``: no ablation)."""
    question_interval_s: float = 0.0
    """Mean time between the user's questions in the synthetic videos (``0``: no questions, no ``qa`` figures)."""
    choice_fraction: float = 0.5
    """Share of the questions asked as multiple choice (LongVideoBench's prompt) rather than open."""
    wall_target_s: float = 600.0
    """The configuration's wall-time target (s), which the closing summary reports the run against (the demo's 10
    minutes; the SmolLM2 configurations' 60)."""

    def __post_init__(self) -> None:
        self.duration_s = tuple(float(v) for v in self.duration_s)
        self.word_delay_s = tuple(float(v) for v in self.word_delay_s)
        self.baselines = tuple(self.baselines)
        self.model_lr = {str(name): float(lr) for name, lr in dict(self.model_lr or {}).items()}
        strange = sorted(set(self.model_lr) - {"bflow", *BASELINES})
        if strange or not all(lr > 0 for lr in self.model_lr.values()):
            raise InputError("demo.model_lr", f"need positive rates of known models; got {self.model_lr}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError("demo.baselines", f"unknown baselines {sorted(unknown)}; known: {list(BASELINES)}")
        if self.num_videos < 2 or not 0 < self.heldout_fraction < 1 or not self.fps > 0 or self.workers < 1:
            problem = f"need num_videos >= 2, 0 < heldout_fraction < 1, fps > 0, workers >= 1; got {self}"
            raise InputError("demo", problem)
        if self.score_split not in ("val", "heldout") or (self.score_split == "val" and not self.val_fraction > 0):
            problem = f"must be 'heldout' or 'val' (with val_fraction > 0); got {self.score_split!r}"
            raise InputError("demo.score_split", problem)
        if not self.wall_target_s > 0:
            raise InputError("demo.wall_target_s", f"must be > 0; got {self.wall_target_s}")
        if self.selected_on not in (None, "train", "val", "heldout"):
            raise InputError("demo.selected_on", f"must be train, val, heldout or null; got {self.selected_on!r}")

    def synthetic_config(self):
        """The synthetic data set these settings make (:class:`~mmduplex.data.synthetic.SyntheticConfig`)."""
        from mmduplex.data.synthetic import SyntheticConfig

        return SyntheticConfig(
            num_videos=self.num_videos,
            duration_s=self.duration_s,
            heldout_fraction=self.heldout_fraction,
            val_fraction=self.val_fraction,
            word_delay_s=self.word_delay_s,
            question_interval_s=self.question_interval_s,
            choice_fraction=self.choice_fraction,
            seed=self.data_seed,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DemoConfig:
        """Read a demo recipe: a YAML mapping of :class:`DemoConfig` fields, checked by jsonargparse against the
        fields' types (the dataclass is the schema); an unknown key or a value of the wrong type is an error.

        Raises:
            InputError: the file is unreadable, not a mapping of known fields, or holds a value of the wrong type.
        """
        import yaml
        from jsonargparse import ArgumentError, ArgumentParser

        from mmduplex.eval.base import settings_error

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise InputError(path, f"unreadable demo recipe: {' '.join(str(err).split())}") from err
        if not isinstance(data, dict | None):
            raise InputError(path, "a demo recipe must be a mapping of DemoConfig fields")
        parser = ArgumentParser(exit_on_error=False, default_env=False)
        parser.add_class_arguments(cls)
        try:
            settings = parser.parse_object(data or {}).as_dict()
        except ArgumentError as err:
            raise settings_error(path, err) from err
        return cls(**settings)

    def to_yaml(self) -> str:
        """The settings as a YAML demo recipe (what ``mmduplex demo --print_config`` prints; :meth:`from_yaml` reads
        it back)."""
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(asdict(self))), sort_keys=False)


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
    from mmduplex.train.synthetic_cache import prepare_synthetic_cache

    synthetic = config.synthetic_config()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return prepare_synthetic_cache(  # one encoder process per core (a second thread gains the encoder little)
        paths.data, paths.features, synthetic, encoder=config.encoder, fps=config.fps, processes=cores
    )


def fit_quietly(args: list[str]):
    """Run ``mmduplex fit`` in-process on ``args`` (no progress bar, no model summary); return the LightningCLI."""
    from mmduplex.train.lightning_cli import run_cli

    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    return run_cli(["fit", *args, *quiet])


def train_tokenizer(config: DemoConfig, paths: DemoPaths) -> None:
    """Stage 3: B-Flow on the cached features; saved (with the demo's token budget) to ``tokenizer/``."""
    if (paths.tokenizer / "config.json").is_file():
        log.info("tokenizer: reusing %s", paths.tokenizer)
        return
    root = paths.runs / "tokenizer"
    shutil.rmtree(root, ignore_errors=True)
    cli = fit_quietly(
        [
            "--config", str(mmduplex.recipes.recipe_path(config.tokenizer_recipe)),
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


RATE_VIDEOS = 64
"""B-Flow's mean rate is measured on at most this many training videos (the first, sorted by id): on the demo's
set 1.52 tokens a frame over 64, 1.59 over 256 (both give the uniform baseline 2 a frame; LOG 2026-12-06-binding)."""


def bflow_tokens_per_frame(config: DemoConfig, paths: DemoPaths, dataset) -> float:
    """B-Flow's mean tokens per sampled frame over the training videos' cached features (the rate the uniform
    baseline is given; the same tokenizer as streaming, whose step API equals this batch path; at most
    :data:`RATE_VIDEOS` videos)."""
    from mmduplex.io.feature_cache import FeatureCache, video_key
    from mmduplex.tokenizer.bflow import BFlowTokenizer

    bflow = BFlowTokenizer.from_pretrained(paths.tokenizer).eval()
    cache = FeatureCache(paths.features)
    records = [cache.load(video_key(dataset.video_path(vid))) for vid in dataset.video_ids("train")[:RATE_VIDEOS]]
    with torch.inference_mode():
        videos = bflow.tokenize_many([(record.patches, record.timestamps) for record in records])
    return sum(video.tokens_total for video in videos) / max(sum(len(video.frames) for video in videos), 1)


def prepare_token_store(config: DemoConfig, paths: DemoPaths, tokens_per_frame: int) -> None:
    """Stage 3b: the main model's token store (its video tokenizer's tokens of every training and validation video,
    :mod:`mmduplex.train.token_store`) built here, one tokenizing process per core, before the models start.

    The main model's fit builds what its store lacks in its own setup, in one process and beside the baselines'
    training; on the demo's 704 videos B-Flow's region tokens take 144 s alone there, all of it on the main model's
    path, the demo's longest (notebooks/LOG.md#2026-12-07-demo-time). The store is made from the main fit's own
    model and data module (the same arguments), so the fit finds it complete.
    """
    from mmduplex.train.lightning_cli import run_cli

    if (paths.model_bundle("bflow") / "config.json").is_file():
        return  # the main model is trained: it reads no tokens again
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args = duplex_fit_args(config, paths, "bflow", tokens_per_frame)
    cli = run_cli([*args, "--data.init_args.num_workers", str(cores)], run=False)
    cli.datamodule.setup()
    cli.model.build_token_store(cli.datamodule)


def _video_tokenizer_arg(name: str, paths: DemoPaths, tokens_per_frame: int) -> dict[str, Any]:
    """The ``video_tokenizer`` (class_path + init_args) of each model the demo trains."""
    from mmduplex.tokenizer.bflow import BFlowTokenizer

    if name == "bflow":
        return {
            "class_path": "mmduplex.tokenizer.bflow.BFlowTokenizer.from_checkpoint",
            "init_args": {"path": str(paths.tokenizer)},
        }
    bflow = BFlowTokenizer.from_pretrained(paths.tokenizer)
    common = {"dim": bflow.config.dim, "grid": list(bflow.config.grid)}
    if name == "text_only":
        return {"class_path": "mmduplex.tokenizer.baselines.NoVideoTokenizer", "init_args": common}
    if name == "uniform_tokens":
        return {
            "class_path": "mmduplex.tokenizer.baselines.UniformTokenizer",
            "init_args": {**common, "tokens_per_frame": tokens_per_frame, "embed_scale": bflow.config.embed_scale},
        }
    raise InputError("demo.baselines", f"unknown model {name!r}")


def duplex_fit_args(
    config: DemoConfig, paths: DemoPaths, name: str, tokens_per_frame: int, slots_per_step: int | None = None
) -> list[str]:
    """The ``mmduplex fit`` arguments that train one duplex model (``bflow`` = the main one, or a baseline) on the
    demo's data, run folder ``paths.runs / f"duplex-{name}"``; ``slots_per_step`` overrides the recipe's video slots
    per step (``None``: the recipe's)."""
    root = paths.runs / f"duplex-{name}"
    epochs = config.duplex_epochs if name == "bflow" else (config.baseline_epochs or config.duplex_epochs)
    args = [
        "--config", str(mmduplex.recipes.recipe_path(config.duplex_recipe)),
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
    if name in config.model_lr:
        args += ["--model.init_args.lr", str(config.model_lr[name])]
    if slots_per_step is not None:
        args += ["--model.init_args.slots_per_step", str(slots_per_step)]
    return args


def train_duplex(
    config: DemoConfig, paths: DemoPaths, name: str, tokens_per_frame: int, slots_per_step: int | None = None
) -> Path:
    """Stage 4: one duplex model (``bflow`` = the main one, or a baseline) trained and exported to its bundle
    (``slots_per_step``: see :func:`duplex_fit_args`)."""
    from mmduplex.lm.bundle import export_bundle

    bundle = paths.model_bundle(name)
    if (bundle / "config.json").is_file():
        log.info("duplex %s: reusing %s", name, bundle)
        return bundle
    root = paths.runs / f"duplex-{name}"
    shutil.rmtree(root, ignore_errors=True)
    cli = fit_quietly(duplex_fit_args(config, paths, name, tokens_per_frame, slots_per_step))
    checkpoint = root / "final.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    export_bundle(checkpoint, bundle)
    return bundle


# ----------------------------------------------------------------------------------------------- streaming


def stream_and_score(
    name: str, config: DemoConfig, paths: DemoPaths, dataset, device: str = "cpu", limit: int | None = None
) -> tuple[dict[str, Any], list, dict, list]:
    """Stage 5 for one model: its PAD bias (:func:`~mmduplex.demo.stream.tune_pad_bias` on training videos, the same
    rule for every model), then every held-out video (the first ``limit`` ones, when given) streamed through it and
    scored, on ``device`` (the video encoder, B-Flow and the LM step). A model that reads no video (text only) is
    streamed at the cached frames' times without decoding or encoding the videos: the same steps and words.

    Returns:
        The model's figures, each held-out video's :class:`~mmduplex.demo.stream.VideoScore`, the stage timings and
        the streams (:class:`~mmduplex.demo.stream.StreamResult`).
    """
    from mmduplex.demo.stream import feature_pairs, rate_figures, score_videos, stream_many, tune_pad_bias
    from mmduplex.inference.commentary import open_frames
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key
    from mmduplex.tokenizer.baselines import NoVideoTokenizer

    session = DuplexSession.from_bundle(paths.model_bundle(name), device=device)
    timings = {}
    tuning = None
    if config.talk_tuning_videos > 0:
        t0 = time.perf_counter()
        ids = dataset.video_ids("train")[: config.talk_tuning_videos]
        cache = FeatureCache(paths.features)
        tuning = tune_pad_bias(session, dataset, cache, ids, config.talk_ratio_target, config.pause_steps)
        timings[f"pad_bias_{name}"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    scored = dataset.video_ids(config.score_split)[:limit]
    clips = {Path(clip.video).stem: clip for clip in dataset.clips(config.score_split)}
    lengths = [clips[vid].end_s - clips[vid].start_s for vid in scored]
    if isinstance(session.video_tokenizer, NoVideoTokenizer):  # reads no video: nothing to decode or encode
        cache = FeatureCache(paths.features)  # the frames' times (the same sampling as decoding); values unread
        records = [cache.load(video_key(dataset.video_path(vid))) for vid in scored]
        sources = [
            (vid, feature_pairs(r.timestamps.tolist(), r.patches)) for vid, r in zip(scored, records, strict=True)
        ]
    else:
        sources = [(vid, open_frames(dataset.video_path(vid), session)) for vid in scored]  # decoded when streamed
    results = stream_many(session, sources, config.pause_steps, lengths)
    figures, scores = score_videos(results, dataset, config.tolerance_s, config.score_split)
    figures.update(rate_figures(results, sum(lengths)))
    figures["pad_bias"] = session.pad_bias
    figures["pad_bias_search"] = tuning
    timings[f"stream_{name}"] = round(time.perf_counter() - t0, 2)
    return figures, scores, timings, results


def evaluate_model(
    name: str, config: DemoConfig, paths: DemoPaths, dataset, write_outputs: bool = False
) -> dict[str, Any]:
    """Stage 5 for one model (:func:`stream_and_score`): its figures; with ``write_outputs`` also each held-out
    video's ``<video>.vtt`` and page in ``paths.root``."""
    from mmduplex.demo.pages import write_pages

    figures, scores, _, _ = stream_and_score(name, config, paths, dataset)
    if write_outputs:
        write_pages(paths.root, dataset, scores, split=config.score_split)
    return figures


def run_video_ablation(config: DemoConfig, paths: DemoPaths, dataset, pad_bias: float) -> dict[str, Any]:
    """The main model (at its PAD bias) streamed with another held-out video's features
    (:func:`~mmduplex.demo.stream.video_ablation`)."""
    from mmduplex.demo.stream import video_ablation
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache

    session = DuplexSession.from_bundle(paths.model_bundle("bflow"), pad_bias=pad_bias)
    ids = dataset.video_ids(config.score_split)[: config.ablation_videos]
    cache = FeatureCache(paths.features)
    figures = video_ablation(session, dataset, cache, config.tolerance_s, config.pause_steps, ids)
    return {**figures, "pad_bias": pad_bias}


def run_questions(config: DemoConfig, paths: DemoPaths, dataset, pad_bias: float, plain: list) -> dict[str, Any]:
    """The main model (at its PAD bias) asked the held-out videos' questions while they stream
    (:func:`~mmduplex.demo.qa.ask_heldout`; ``plain``: the model's streams of the same videos without questions)."""
    from mmduplex.demo.qa import ask_heldout
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache

    session = DuplexSession.from_bundle(paths.model_bundle("bflow"), pad_bias=pad_bias)
    cache = FeatureCache(paths.features)
    figures = ask_heldout(
        session, dataset, cache, plain, config.tolerance_s, config.pause_steps, split=config.score_split
    )
    return {**figures, "pad_bias": pad_bias}


def run_lvb_split(config: DemoConfig, paths: DemoPaths, dataset) -> dict[str, Any] | None:
    """``DIR/lvb`` from the held-out videos, asked through the main bundle with ``eval longvideobench``'s defaults
    (:func:`~mmduplex.demo.qa.lvb_results`)."""
    from mmduplex.demo.qa import lvb_results

    bundle = paths.model_bundle("bflow")
    return lvb_results(dataset, bundle, paths.root, config.fps, config.data_seed, split=config.score_split)


# ----------------------------------------------------------------------------------------------- per model


def quiet_frameworks(verbose: bool = False) -> dict[str, Any]:
    """Keep the demo's terminal to its own progress lines: Python warnings go to the log (dropped unless
    ``verbose``), Lightning's info lines (tips, accelerator notices) and the per-video lines of the stages the demo
    drives are dropped, and Lightning's own console handler no longer repeats what the root handler prints. Call in
    every process the demo runs in (spawned workers inherit neither warning filters nor logging setup).

    Returns:
        What :func:`restore_frameworks` needs to put things back.
    """
    import lightning  # noqa: F401  (its import sets its loggers' levels and handler: override them after it)

    if not logging.getLogger().handlers:  # a spawned worker: the same format as the CLI
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.captureWarnings(True)
    quiet = {name: logging.WARNING for name in QUIET_LOGGERS} | {name: logging.INFO for name in SHOWN_LOGGERS}
    quiet["py.warnings"] = logging.DEBUG if verbose else logging.ERROR
    previous = {"levels": {name: logging.getLogger(name).level for name in quiet}}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    previous["propagate"] = logging.getLogger("lightning").propagate
    logging.getLogger("lightning").propagate = False  # it has its own console handler
    return previous


def restore_frameworks(previous: dict[str, Any]) -> None:
    """Undo :func:`quiet_frameworks` (logger levels back, warnings shown again)."""
    for name, level in previous["levels"].items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("lightning").propagate = previous["propagate"]
    logging.captureWarnings(False)


def model_job(
    config: DemoConfig, root: str, name: str, tokens_per_frame: int
) -> tuple[dict[str, Any], list | None, dict, list | None]:
    """Stages 4-5 for one model (``bflow`` = the main one, or a baseline): train and export it, tune its PAD bias,
    stream every held-out video through it and score the commentary. Runs in this process or in a worker process
    (picklable arguments).

    Returns:
        The model's figures, the held-out videos' scores and streams (main model only, else ``None``) and its stage
        timings.
    """
    from mmduplex.data.synthetic import SyntheticDataset

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    paths = DemoPaths(Path(root))
    t0 = time.perf_counter()
    train_duplex(config, paths, name, tokens_per_frame)
    timings = {"duplex" if name == "bflow" else f"duplex_{name}": round(time.perf_counter() - t0, 2)}
    dataset = SyntheticDataset(paths.data)
    figures, scores, stream_timings, results = stream_and_score(name, config, paths, dataset)
    timings.update(stream_timings)
    log.info("demo: %s trained and streamed in %.1f s", name, time.perf_counter() - t0)
    main = name == "bflow"
    return figures, scores if main else None, timings, results if main else None


MAIN_EXTRAS = ("video_ablation", "qa", "lvb")
"""What the main model does after its own stream (each its own job, both at once when workers allow)."""


def extra_job(config: DemoConfig, root: str, kind: str, pad_bias: float, plain: list) -> tuple[dict[str, Any], dict]:
    """One of :data:`MAIN_EXTRAS` for the trained main model at its PAD bias: the video ablation
    (:func:`run_video_ablation`), the held-out questions (:func:`run_questions`) or the LongVideoBench split
    (:func:`run_lvb_split`). Returns its figures and timing."""
    from mmduplex.data.synthetic import SyntheticDataset

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    paths = DemoPaths(Path(root))
    dataset = SyntheticDataset(paths.data)
    t0 = time.perf_counter()
    if kind == "video_ablation":
        figures = run_video_ablation(config, paths, dataset, pad_bias)
    elif kind == "qa":
        figures = run_questions(config, paths, dataset, pad_bias, plain)
    elif kind == "lvb":
        figures = run_lvb_split(config, paths, dataset)
    else:
        raise InputError("extra_job", f"unknown kind {kind!r}; known: {list(MAIN_EXTRAS)}")
    return figures, {{"qa": "questions", "lvb": "longvideobench"}.get(kind, kind): round(time.perf_counter() - t0, 2)}


def _extras(config: DemoConfig) -> list[str]:
    asking = config.question_interval_s > 0
    wanted = {"video_ablation": config.ablation_videos != 0, "qa": asking, "lvb": asking}
    return [kind for kind in MAIN_EXTRAS if wanted[kind]]


def worker_init(verbose: bool) -> None:
    """Start of a spawned model worker: frameworks quiet (unless ``verbose``) and :func:`watch_parent`."""
    quiet_frameworks(verbose)
    watch_parent()


def run_models(config: DemoConfig, paths: DemoPaths, tokens_per_frame: int) -> tuple[dict[str, dict], list, dict]:
    """Train and stream the main model and every baseline: ``config.workers`` at a time, each in its own process
    (spawned, so no thread pool or lock is inherited), or one after the other here when ``workers`` is 1. Once the
    main model has streamed, its extras (:data:`MAIN_EXTRAS`) run as jobs of their own, in parallel with each other
    and with baselines still running.

    Returns:
        Figures by model name (the main model's with its extras), the main model's per-video scores, the timings.
    """
    names = ["bflow", *config.baselines]
    root = str(paths.root)
    if config.workers == 1 or len(names) == 1:
        done = [model_job(config, root, name, tokens_per_frame) for name in names]
        main = done[0]
        extras = {kind: extra_job(config, root, kind, main[0]["pad_bias"], main[3]) for kind in _extras(config)}
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        workers = min(config.workers, len(names))
        verbose = logging.getLogger().level <= logging.DEBUG
        with ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init, initargs=(verbose,)) as pool:
            futures = [pool.submit(model_job, config, root, name, tokens_per_frame) for name in names]
            main = futures[0].result()
            pending = {
                kind: pool.submit(extra_job, config, root, kind, main[0]["pad_bias"], main[3])
                for kind in _extras(config)
            }
            done = [main, *(future.result() for future in futures[1:])]
            extras = {kind: future.result() for kind, future in pending.items()}
    figures = {name: result[0] for name, result in zip(names, done, strict=True)}
    timings = {stage: seconds for _, _, stage_times, _ in done for stage, seconds in stage_times.items()}
    for kind, (extra, extra_timings) in extras.items():
        figures["bflow"][kind] = extra
        timings.update(extra_timings)
    if "lvb" in extras:  # the report's qa holds the LongVideoBench results first
        figures["bflow"]["qa"] = {"lvb": figures["bflow"].pop("lvb"), **figures["bflow"]["qa"]}
    return figures, done[0][1], timings
