"""``mmduplex demo --seeds 0 1 2``: the demo once per training seed, and the mean and spread of every figure.

Each seed is a whole :func:`~mmduplex.demo.run.run_demo` into ``DIR/seed-<N>`` with :attr:`DemoConfig.seed` ``= N``
(the data seed unchanged), so ``DIR/seed-0`` of the default recipe is what ``mmduplex demo`` makes. The data set and
its features depend on the data settings and the encoder alone, not on the training seed: the first seed makes them
and every later seed's ``data/`` and ``features/`` are hard links to its files (copies where the file system has no
hard links), the feature index rewritten to name the seed's own videos (the token stores under ``features/tokens/``
belong to a seed's tokenizer and are not shared). Every output is written atomically (a
replaced file gets a new inode, so a link never changes under another seed), and each seed folder stays a
self-contained demo folder that ``mmduplex demo --out DIR/seed-<N> --seed N`` reuses. The tokenizer, the models and
their scores are per seed.

A seed whose folder already holds its ``report.json`` (made with the same settings) is reused as it is, so a rerun
only runs the seeds still missing. After the last seed, ``DIR/seeds.json`` (:func:`aggregate`): for the main model,
each baseline and the video ablation (and the questions-while-watching figures when asked), each figure's per-seed
values, mean, sample standard deviation, min and max; the settings; the wall time. :func:`seeds_table` is the table
on the terminal (mean ± std per model).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mmduplex.demo.pages import MODEL_NAMES
from mmduplex.demo.run import DemoConfig, DemoPaths, check_reusable, run_demo
from mmduplex.errors import InputError, MMDuplexError
from mmduplex.fileio import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

SEEDS_FILE = "seeds.json"
ABLATION = "video_ablation"
TABLE_COLUMNS = (
    ("event accuracy", ("event_accuracy",), 3),
    ("1 object", ("event_accuracy_by_objects", "1"), 3),
    ("2+ objects", ("event_accuracy_by_objects", "2+"), 3),
    ("history 0", ("event_accuracy_by_history", "0"), 3),
    ("history 1+", ("event_accuracy_by_history", "1+"), 3),
    ("median latency (s)", ("median_latency_s",), 2),
    ("talk ratio", ("talk_ratio",), 2),
    ("video tokens/s", ("video_tokens_per_second",), 1),
)
FIGURES = tuple(path for _, path, _ in TABLE_COLUMNS)
"""The figures aggregated over seeds for every model (paths into a model's figures in ``report.json``): the table's."""
QA_LABELS = {
    ("lvb", "overall"): "LongVideoBench split accuracy",
    ("open_accuracy",): "open-question accuracy",
    ("median_answer_latency_s",): "median answer latency (s)",
    ("event_accuracy_with_questions",): "event accuracy with questions",
    ("event_accuracy_without_questions",): "without",
}
QA_FIGURES = tuple(QA_LABELS)
"""The questions-while-watching figures aggregated over seeds (paths into the report's ``qa``)."""


def seed_folder(out_dir: str | os.PathLike, seed: int) -> Path:
    """The folder of one seed's demo run: ``out_dir/seed-<seed>``."""
    return Path(out_dir) / f"seed-{seed}"


# ----------------------------------------------------------------------------------------------- aggregation


def spread(values: Sequence[Any]) -> dict[str, Any]:
    """``values`` (one per seed; ``None`` or NaN where a seed has no figure) and their ``n``, ``mean``, sample
    standard deviation ``std`` (``None`` under two values), ``min`` and ``max`` over the seeds that have one."""
    kept = [float(v) if _is_number(v) else None for v in values]
    present = [v for v in kept if v is not None]
    return {
        "values": kept,
        "n": len(present),
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) >= 2 else None,
        "min": min(present) if present else None,
        "max": max(present) if present else None,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def dig(figures: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    """The value at ``path`` in nested ``figures`` (``None`` where a level is missing)."""
    for key in path:
        if not isinstance(figures, Mapping):
            return None
        figures = figures.get(key)
    return figures


def spreads(sources: Sequence[Mapping[str, Any] | None], paths: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Each figure at ``paths`` spread over ``sources`` (one per seed), nested as in the report."""
    out: dict[str, Any] = {}
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = spread([dig(source, path) for source in sources])
    return out


def model_figures(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A report's figures by model: ``bflow`` (the main model), each baseline, ``video_ablation`` when run."""
    models = {"bflow": (report.get("details") or {}).get("bflow"), **(report.get("baselines") or {})}
    if report.get(ABLATION):
        models[ABLATION] = report[ABLATION]
    return {name: figures for name, figures in models.items() if figures is not None}


def aggregate(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of several seeds' reports (seed -> ``report.json``): ``models`` (by model name, each figure of
    :data:`FIGURES` as :func:`spread` gives it, values in the order of ``seeds``) and ``qa`` (:data:`QA_FIGURES`;
    ``None`` when no seed asked questions). A model or figure a seed lacks counts as missing for that seed."""
    seeds = list(reports)
    per_seed = [model_figures(reports[seed]) for seed in seeds]
    names = list(dict.fromkeys(name for figures in per_seed for name in figures))
    models = {name: spreads([figures.get(name) for figures in per_seed], FIGURES) for name in names}
    asked = [reports[seed].get("qa") for seed in seeds]
    qa = spreads(asked, QA_FIGURES) if any(asked) else None
    return {"seeds": seeds, "models": models, "qa": qa}


def stat_cell(stats: Mapping[str, Any] | None, digits: int) -> str:
    """A :func:`spread` as a table cell: ``mean ± std`` (``mean`` alone with one value, ``-`` with none)."""
    if not stats or stats.get("mean") is None:
        return "-"
    if stats.get("std") is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def seeds_table(summary: Mapping[str, Any]) -> str:
    """The aggregated figures as a markdown table: mean ± sample std over the seeds, one row per model."""
    lines = ["| model | " + " | ".join(c[0] for c in TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    labels = {**MODEL_NAMES, ABLATION: "main, another video's features"}
    for name, figures in summary["models"].items():
        cells = " | ".join(stat_cell(dig(figures, path), digits) for _, path, digits in TABLE_COLUMNS)
        lines.append(f"| {labels.get(name, name)} | {cells} |")
    return "\n".join(lines)


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """Closing lines: what was run and where, the questions' figures when asked, the wall time."""
    settings = summary["settings"]
    seeds = " ".join(str(seed) for seed in summary["seeds"])
    lines = [
        f"training seeds {seeds} (data seed {settings['data_seed']}), scored on {settings['scored_on']}: "
        "mean ± sample std over the seeds",
    ]
    if summary.get("qa"):
        parts = [f"{label} {stat_cell(dig(summary['qa'], path), 3)}" for path, label in QA_LABELS.items()]
        lines.append("questions (main model): " + ", ".join(parts))
    lines.append(f"wall time: {summary['wall_s']:.0f} s")
    return lines


# ----------------------------------------------------------------------------------------------- the seeds


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # no hard links here (or across devices): an atomic copy
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)


def share_inputs(donor: DemoPaths, paths: DemoPaths) -> int:
    """Give ``paths`` the data set and features of ``donor`` (a demo folder with the same data settings and encoder):
    each file ``paths`` lacks is hard-linked (or copied); the feature index, when ``paths`` has none, is ``donor``'s
    with every video's source moved to ``paths``'s own ``data/`` (the cache keys a video by its path, so the seed's
    own run then finds every video encoded). Files ``paths`` already has are kept. The token stores beside the
    features (``features/tokens/``, one per tokenizer, so per seed) are not shared. Returns the files linked."""
    from mmduplex.data.synthetic import MANIFEST
    from mmduplex.io.feature_cache import INDEX_NAME, FeatureCache

    shared = 0
    data = [f for f in donor.data.rglob("*") if f.is_file()]
    features = [f for f in donor.features.glob("*") if f.is_file() and f.name != INDEX_NAME]  # not tokens/
    for source_root, target_root, files in ((donor.data, paths.data, data), (donor.features, paths.features, features)):
        files = [f for f in files if not f.name.startswith(".")]  # no temporary file of a killed write
        for source in sorted(files, key=lambda f: (f.name == MANIFEST, f)):  # the manifest last
            target = target_root / source.relative_to(source_root)
            if not target.exists():
                _link_or_copy(source, target)
                shared += 1
    index = donor.features / INDEX_NAME
    if index.is_file() and not (paths.features / INDEX_NAME).exists():
        _link_or_copy(index, paths.features / INDEX_NAME)  # relocate writes it anew (atomically): the donor's stays
        FeatureCache(paths.features).relocate(donor.data, paths.data)
    return shared


def _finished_report(paths: DemoPaths) -> dict[str, Any] | None:
    """The seed's ``report.json`` when its run finished (its settings were checked by :func:`check_reusable`)."""
    try:
        report = json.loads((paths.root / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "details" in report else None


def _check_seeds(out_dir: Path, seeds: Sequence[int]) -> list[int]:
    seeds = [int(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError("--seeds", f"need distinct training seeds >= 0; got {seeds}")
    if (out_dir / "demo_config.json").is_file():
        raise InputError(out_dir, "holds a single demo run, not one folder per seed; use another --out")
    return seeds


def run_seeds(out_dir: str | os.PathLike, config: DemoConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Run the demo at every training seed into ``out_dir/seed-<N>`` (reusing finished seeds) and write the
    aggregate to ``out_dir/seeds.json``; return it.

    Raises:
        InputError: bad seeds, or a seed folder holding a run with other settings (every folder is checked before
            any seed runs).
        MMDuplexError: a seed's run failed (the message names the seed; ``seeds.json`` is not written).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    seeds = _check_seeds(out_dir, seeds)
    configs = {seed: replace(config, seed=seed) for seed in seeds}
    folders = {seed: DemoPaths(seed_folder(out_dir, seed)) for seed in seeds}
    for seed in seeds:
        check_reusable(folders[seed], configs[seed], record=False)
    reports: dict[int, dict[str, Any]] = {}
    donor: DemoPaths | None = None
    for number, seed in enumerate(seeds, 1):
        paths = folders[seed]
        report = _finished_report(paths)
        if report is not None:
            log.info("demo seeds: seed %d (%d of %d): reusing %s", seed, number, len(seeds), paths.root / "report.json")
        else:
            log.info("demo seeds: seed %d (%d of %d) into %s", seed, number, len(seeds), paths.root)
            check_reusable(paths, configs[seed])
            if donor is not None:
                shared = share_inputs(donor, paths)
                log.info("demo seeds: %d data and feature files shared with %s", shared, donor.root)
            report = _run_seed(paths, configs[seed], seed)
        reports[seed] = report
        donor = donor or paths
    summary = {
        **aggregate(reports),
        "settings": _settings(config, seeds, reports),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(out_dir / SEEDS_FILE, summary)
    return summary


def _run_seed(paths: DemoPaths, config: DemoConfig, seed: int) -> dict[str, Any]:
    try:
        return run_demo(paths.root, config)
    except MMDuplexError as err:
        raise MMDuplexError(paths.root, f"training seed {seed} failed: {err}") from err
    except Exception as err:
        log.debug("demo seeds: seed %d failed", seed, exc_info=True)
        problem = f"training seed {seed} failed: {type(err).__name__}: {err} (-v shows the traceback)"
        raise MMDuplexError(paths.root, problem) from err


def _settings(config: DemoConfig, seeds: list[int], reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    demo = json.loads(json.dumps(asdict(config)))
    demo.pop("seed")
    first = reports[seeds[0]].get("settings") or {}
    per_seed = {}
    for seed in seeds:
        report = reports[seed]
        settings = report.get("settings") or {}
        per_seed[str(seed)] = {
            "folder": seed_folder(".", seed).name,
            "wall_s": report.get("wall_s"),
            "uniform_tokens_per_frame": settings.get("uniform_tokens_per_frame"),
            "pad_bias": settings.get("pad_bias"),
        }
    return {
        "seeds": seeds,
        "data_seed": config.data_seed,
        "scored_on": config.score_split,
        "selected_on": config.selected_on,
        "heldout_videos": first.get("heldout_videos"),
        "val_videos": first.get("val_videos"),
        "train_videos": first.get("train_videos"),
        "encoder": first.get("encoder"),
        "demo": demo,
        "per_seed": per_seed,
        "statistics": "mean and sample standard deviation (n - 1) over the seeds that have the figure",
    }
