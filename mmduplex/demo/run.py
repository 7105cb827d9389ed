"""``mmduplex demo``: the whole path on the built-in synthetic set, offline, on a CPU, in minutes.

Stages (each reuses the previous run's output when it is complete, so re-running is cheap; every output is written
atomically, so a stage killed half-way is simply redone; a folder holding a run made with other settings is refused):

1. ``data/``      the synthetic commentary set (train / held-out split, with the user's questions when
   ``question_interval_s > 0``), :mod:`mmduplex.data.synthetic`;
2. ``features/``  frozen image-encoder patch features of every video from :attr:`DemoConfig.encoder`
   (``efficientnet-lite0-s8`` in ``recipes/demo/default.yaml``, the random ``mmduplex-tiny`` in ``smoke``), one
   process per core (stages 1-2 by :func:`mmduplex.train.synthetic_cache.prepare_synthetic_cache`);
3. ``tokenizer/`` the B-Flow tokenizer trained by the shipped recipe :attr:`DemoConfig.tokenizer_recipe`
   (``recipes/tokenizer/lite0_s8_region.yaml``, region flow tokens, in the default config) with the demo's sizes,
   saved with its token budget;
   then B-Flow's tokens per frame on the training features, the rate the ``uniform_tokens`` baseline gets, and the
   main model's token store (its video tokens of every training video, one process per core:
   :func:`~mmduplex.demo.stages.prepare_token_store`);
4. ``bundle/``    the duplex model trained by the shipped recipe :attr:`DemoConfig.duplex_recipe`
   (``recipes/duplex/demo.yaml``; ``smoke``: ``recipes/duplex/tiny.yaml``) on B-Flow tokens, exported;
   ``baselines/<name>/bundle`` the same recipe with the video stream zeroed (``text_only``) and with uniform pooled
   tokens at B-Flow's tokens per frame (``uniform_tokens``); each model at its :attr:`DemoConfig.model_lr`, if any;
5. per model: its PAD bias tuned on training videos so it talks as much as the reference (the same rule for every
   model), then every held-out video streamed through :class:`~mmduplex.inference.session.DuplexSession` frame by frame
   and scored (:mod:`mmduplex.demo.stream`); the main model is also streamed with another video's features (the video
   ablation) and, with questions, asked them while watching and through a LongVideoBench-format split ``lvb/``
   (:mod:`mmduplex.demo.qa`). Stages 4-5 run per model in worker processes when ``workers > 1``
   (:mod:`mmduplex.demo.stages`);
6. ``<video>.vtt`` + ``<video>.html`` per held-out video and ``index.html`` (:mod:`mmduplex.demo.pages`),
   ``report.json`` (keys in ``docs/DESIGN.md``, every figure with its settings) and a results table on stdout.

The terminal shows one progress line per stage and the results table (:func:`~mmduplex.demo.stages.quiet_frameworks`).
The demo's sizes, encoder and recipes are a :class:`DemoConfig`, read from ``recipes/demo/<name>.yaml``
(``default``: the full demo; ``smoke``: the reduced run the tests use; ``smollm2`` (LoRA, chosen on val) /
``smollm2_projector``: the frozen SmolLM2 recipes, main model only). The training recipes themselves are the shipped
ones.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mmduplex.demo.pages import results_table, summary_lines, write_pages
from mmduplex.demo.stages import (
    BASELINES,
    DemoConfig,
    DemoPaths,
    bflow_tokens_per_frame,
    evaluate_model,
    make_data,
    model_job,
    prepare_token_store,
    quiet_frameworks,
    restore_frameworks,
    run_models,
    train_duplex,
    train_tokenizer,
)
from mmduplex.demo.stream import stream_video
from mmduplex.errors import InputError
from mmduplex.fileio import write_json_atomic

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "DemoConfig",
    "DemoPaths",
    "bflow_tokens_per_frame",
    "check_reusable",
    "evaluate_model",
    "make_data",
    "model_job",
    "results_table",
    "run_demo",
    "run_models",
    "stream_video",
    "summary_lines",
    "train_duplex",
    "train_tokenizer",
]

REPORT_FIGURES = (
    "event_accuracy",
    "event_precision",
    "median_latency_s",
    "video_tokens_per_second",
    "talk_ratio",
    "event_accuracy_by_objects",
    "event_accuracy_by_history",
    "rtf",
)
"""The main model's figures at the top of report.json (every model's are under ``details`` / ``baselines``)."""
PAD_BIAS_RULE = (
    "every model: the PAD bias whose talk ratio on the first talk_tuning_videos training videos (cached features) "
    "is closest to talk_ratio_target (null: the reference's own, shown as lines); 0 kept when within 10 %"
)


def _bundle_settings(bundle: Path) -> dict[str, Any]:
    from mmduplex.lm.bundle import read_bundle_config

    cfg = read_bundle_config(bundle)
    keys = ("step_hz", "delay_steps", "slots_per_step", "fps", "encoder", "video_tokenizer", "backbone")
    return {k: cfg.get(k) for k in keys if k in cfg}


SETTINGS_FILE = "demo_config.json"
REPORT_ONLY = frozenset({"wall_target_s"})
"""Settings that change only what the summary says, never a stage's output: a run that differs in them is reused."""


def check_reusable(paths: DemoPaths, config: DemoConfig, record: bool = True) -> None:
    """Stages are reused from an earlier run only if it had the same settings; otherwise refuse (never mix). A
    setting the earlier run's record lacks (added to :class:`DemoConfig` since) counts as its default. With
    ``record`` (the default) the settings are then written to ``out_dir/demo_config.json``; without, only checked.

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
        defaults = json.loads(json.dumps(asdict(DemoConfig())))  # a setting added since that run had its default
        differ = sorted(
            k for k in (set(wanted) | set(previous)) - REPORT_ONLY if wanted.get(k) != previous.get(k, defaults.get(k))
        )
        if differ:
            problem = f"holds a demo run with other settings ({', '.join(differ)}); use another --out or delete it"
            raise InputError(paths.root, problem)
    elif paths.root.is_dir() and any(paths.root.iterdir()):
        raise InputError(paths.root, "is not empty and holds no demo run; use another --out")
    if record:
        write_json_atomic(marker, wanted)


def run_demo(out_dir: str | os.PathLike, config: DemoConfig) -> dict[str, Any]:
    """Run every stage into ``out_dir`` and return the report (also written to ``out_dir/report.json``)."""
    previous = quiet_frameworks(logging.getLogger().level <= logging.DEBUG)
    try:
        return _run_demo(out_dir, config)
    finally:
        restore_frameworks(previous)


def _run_demo(out_dir: str | os.PathLike, config: DemoConfig) -> dict[str, Any]:
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
    timed("token_store", prepare_token_store, config, paths, tokens_per_frame)
    figures, scores, model_timings = timed("models", run_models, config, paths, tokens_per_frame)
    timings.update(model_timings)
    main = figures.pop("bflow")
    ablation = main.pop("video_ablation", None)
    qa = main.pop("qa", None)
    report = {
        **{key: main[key] for key in REPORT_FIGURES},
        "wall_s": None,
        "settings": {
            "demo": json.loads(json.dumps(asdict(config))),
            "model": _bundle_settings(paths.bundle),
            "encoder": _encoder_settings(paths),
            "heldout_videos": len(dataset.video_ids("heldout")),
            "val_videos": len(dataset.video_ids("val")),
            "train_videos": len(dataset.video_ids("train")),
            "scored_on": config.score_split,
            "selected_on": config.selected_on,
            "uniform_tokens_per_frame": tokens_per_frame,
            "pad_bias": {"bflow": main["pad_bias"], **{name: f["pad_bias"] for name, f in figures.items()}},
            "pad_bias_rule": PAD_BIAS_RULE if config.talk_tuning_videos > 0 else "none: every model at PAD bias 0",
            "torch_threads": torch.get_num_threads(),
            "workers": config.workers,
            "stage_seconds": timings,
        },
        "video_ablation": ablation,
        "qa": qa,
        "details": {"bflow": main},
        "baselines": figures,
    }
    report["wall_s"] = round(time.perf_counter() - start, 2)  # the pages (next, fast) show it
    timed("pages", write_pages, paths.root, dataset, scores, report, config.score_split)
    write_json_atomic(paths.root / "report.json", report)
    return report


def _encoder_settings(paths: DemoPaths) -> dict[str, Any]:
    """What the features are: the encoder's fingerprint (name, weights, input size, feature stride) and fps."""
    from mmduplex.io.feature_cache import FeatureCache

    cache = FeatureCache(paths.features)
    return {**cache.fingerprint, "fps": cache.fps}
