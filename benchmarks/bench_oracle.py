"""The oracle ceiling of the synthetic commentary demo: video tokens built from each video's spec, not its pixels.

Run from the repository root, on a demo output folder that already holds ``data/`` and ``demo_config.json`` (e.g. one
made by ``mmduplex demo --config recipes/demo/default.yaml`` with ``score_split: val``)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_oracle --base /work/runs/val_base --out /work/runs/oracle \\
        --fps 2 5 --split val --seeds 0 1 2 --jobs 2

Per ``--fps`` it writes an oracle feature cache (:class:`~mmduplex.io.feature_cache.FeatureCache` format, encoder
``oracle-spec``): on a 12 x 12 patch grid of width 16, every frame holds one vector per shape with any part inside
the frame, at the patch of its centre (the nearest free patch when two shapes share one), and zeros elsewhere; a
shape that left the frame gets one more vector, on the first frame it is gone. A vector is (:data:`LAYOUT`) the
shape's colour and shape one-hot, its centre (in [-1, 1] across the frame), its displacement since the previous
sampled frame (in units of the set's speed times the frame interval: 1 for a shape moving straight) and that
displacement's length, and flags ``appeared`` (not visible on the previous sampled frame) and ``vanished``, all times
``--value-gain`` (default :data:`VALUE_GAIN`).
:class:`~mmduplex.tokenizer.baselines.SparsePatchTokenizer` turns each non-zero patch into one token (the vector plus
B-Flow's kind / time / position embeddings at B-Flow's ``embed_scale``), so the model sees one token per shape per
frame and nothing for empty frames.

Then the demo's main model is retrained on those tokens exactly as the demo trains it (the base run's
``demo_config.json``: :func:`mmduplex.demo.stages.duplex_fit_args` with its recipe, epochs, seed and learning rate; the
training videos' transcripts with the held-out ones as validation windows, as the demo's data module takes them), its
PAD bias tuned by the demo's rule (:func:`mmduplex.demo.stream.tune_pad_bias` on the first training videos), and the
``--split`` videos streamed from the oracle cache (:func:`mmduplex.demo.stream.stream_features`) and scored by the
demo's scorer (:func:`mmduplex.demo.stream.score_videos`). The table shows the oracle models next to the base run's own
models when those were scored on the same split: the oracle's figure is what perfect perception of the frames gives
this model and recipe, so the base model's distance to it is the tokens' share of the gap, and the oracle's distance
to 1.0 the model's. A benchmark only: no product path reads the synthetic spec.

The oracle models' event accuracy varies by about 0.1 from one training seed to another (LOG 2026-12-06-oracle), far
more than the demo's B-Flow model: give several ``--seeds``; the table then adds their mean per fps.

Writes ``OUT/fps<F>/features/`` and per model ``OUT/fps<F>[-seed<S>]/`` (``runs/``, ``bundle/``; each reused when
complete), ``OUT/oracle.json`` (figures, settings, the machine) and prints the table. The base folder is only read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import print_header
from mmduplex.errors import InputError
from mmduplex.fileio import write_json_atomic

log = logging.getLogger("benchmarks.bench_oracle")

ENCODER = "oracle-spec"
ORACLE_GRID = (12, 12)
ORACLE_DIM = 16
COLOUR_SLOTS = slice(0, 4)
SHAPE_SLOTS = slice(4, 7)
X, Y, DX, DY, APPEARED, VANISHED, SPEED = 7, 8, 9, 10, 11, 12, 13
VALUE_GAIN = 2.0
"""Every vector is multiplied by this (``--value-gain``): at 2 the values outweigh B-Flow's fixed embeddings (RMS
``embed_scale``, 0.5 in the demo, spread over every dimension) about as in B-Flow's own tokens (normalised values, RMS
1). Gains 1, 2 and 4 gave results within one another's seed spread: notebooks/LOG.md#2026-12-06-oracle."""
LAYOUT = (
    "0-3 colour one-hot (red green blue yellow), 4-6 shape one-hot (square circle triangle), 7-8 centre "
    "2 x / width - 1, 2 y / height - 1, 9-10 displacement since the previous sampled frame / (speed / fps), "
    "11 appeared, 12 vanished, 13 |displacement|, 14-15 zero; all times the value gain"
)
MODEL = "oracle"
ACTION_ORDER = ("enters", "stops", "moves", "turns", "leaves")


def oracle_fingerprint(width: int, height: int, gain: float = VALUE_GAIN) -> dict[str, Any]:
    """The oracle cache's encoder fingerprint: its name, the vector layout's digest and the frame size."""
    layout = json.dumps({"grid": ORACLE_GRID, "dim": ORACLE_DIM, "layout": LAYOUT, "gain": gain})
    return {
        "model": ENCODER,
        "pretrained": None,
        "weights_sha256": hashlib.sha256(layout.encode()).hexdigest(),
        "image_size": int(max(width, height)),
        "grid": list(ORACLE_GRID),
    }


def sample_times(duration_s: float, fps: float) -> np.ndarray:
    """The frame times a video of ``duration_s`` is sampled at (``k / fps`` below the duration, as
    :mod:`mmduplex.io.video` samples files): float64 ``[T]``."""
    times = np.arange(max(0, math.ceil(duration_s * fps)) + 1, dtype=np.float64) / fps
    return times[times < duration_s]


def _visible_centre(track: Any, t: float, width: int, height: int) -> tuple[float, float] | None:
    """The shape's centre at ``t`` when any part of it is inside the frame (as the demo's object buckets count)."""
    centre = track.position(t)
    if centre is None:
        return None
    half = track.size / 2
    inside = -half < centre[0] < width + half and -half < centre[1] < height + half
    return centre if inside else None


def _free_patch(x: float, y: float, width: int, height: int, taken: set[int], grid: tuple[int, int]) -> int:
    """The patch of point ``(x, y)`` (clamped into the frame), or the nearest one not in ``taken``."""
    rows, cols = grid
    row = min(max(int(y / height * rows), 0), rows - 1)
    col = min(max(int(x / width * cols), 0), cols - 1)
    free = [p for p in range(rows * cols) if p not in taken]
    if not free:
        raise InputError("oracle", f"more shapes than the {rows}x{cols} patches")
    return min(free, key=lambda p: ((p // cols - row) ** 2 + (p % cols - col) ** 2, p))


def oracle_features(
    spec: Any,
    times: Sequence[float],
    speed: float,
    grid: tuple[int, int] = ORACLE_GRID,
    dim: int = ORACLE_DIM,
    gain: float = VALUE_GAIN,
) -> torch.Tensor:
    """The oracle features ``[T, P, D]`` of a synthetic video's spec at ``times`` (module docstring, :data:`LAYOUT`).

    Args:
        spec: the video's :class:`~mmduplex.data.synthetic.VideoSpec`.
        times: the sampled frame times (s), increasing.
        speed: the set's shape speed (px/s), the displacement's unit per second.
        grid: patch grid ``(rows, cols)``.
        dim: vector width (at least 14).
        gain: every vector is multiplied by this.
    """
    from mmduplex.data.synthetic import COLOURS, SHAPES

    if dim <= SPEED:
        raise InputError("dim", f"the oracle layout needs at least {SPEED + 1} values, got {dim}")
    colours = list(COLOURS)
    width, height = spec.width, spec.height
    out = torch.zeros(len(times), grid[0] * grid[1], dim)  # [T, P, D]
    previous: dict[int, tuple[float, float] | None] = {}
    for k, t in enumerate(times):
        t = float(t)
        dt = t - float(times[k - 1]) if k > 0 else 1.0
        taken: set[int] = set()
        for track in sorted(spec.shapes, key=lambda s: s.shape_id):
            now = _visible_centre(track, t, width, height)
            before = previous.get(track.shape_id)
            previous[track.shape_id] = now
            if now is None and before is None:
                continue
            if now is None:  # gone since the previous frame: one token where it left
                last = track.waypoints[-1][0]
                centre = track.position(min(t, last)) or before
                centre = (min(max(centre[0], 0.0), width - 1e-3), min(max(centre[1], 0.0), height - 1e-3))
            else:
                centre = now
            vector = out.new_zeros(dim)
            vector[COLOUR_SLOTS.start + colours.index(track.colour_at(t))] = 1.0
            vector[SHAPE_SLOTS.start + SHAPES.index(track.shape)] = 1.0
            vector[X] = min(max(2 * centre[0] / width - 1, -1.0), 1.0)
            vector[Y] = min(max(2 * centre[1] / height - 1, -1.0), 1.0)
            if before is not None:
                vector[DX] = (centre[0] - before[0]) / (speed * dt)
                vector[DY] = (centre[1] - before[1]) / (speed * dt)
                vector[SPEED] = math.hypot(float(vector[DX]), float(vector[DY]))
            vector[APPEARED] = float(before is None)
            vector[VANISHED] = float(now is None)
            patch = _free_patch(centre[0], centre[1], width, height, taken, grid)
            taken.add(patch)
            out[k, patch] = gain * vector
    return out


def write_oracle_cache(
    dataset: Any, out_dir: Path, fps: float, base_features: Path | None = None, gain: float = VALUE_GAIN
):
    """The oracle feature cache of every video of ``dataset`` at ``fps`` in ``out_dir`` (videos already there are
    kept). With ``base_features`` at the same fps, each video's frame count is checked against that cache's.

    Raises:
        InputError: a video's frame count differs from the base cache's (the sampling rule drifted).
    """
    from mmduplex.io.feature_cache import FeatureCache, FeatureRecord, video_key

    first = dataset.spec(dataset.video_ids()[0])
    cache = FeatureCache(out_dir, oracle_fingerprint(first.width, first.height, gain), fps, create=True)
    base = None
    if base_features is not None and (Path(base_features) / "index.json").is_file():
        base = FeatureCache(base_features)
        base = base.entries() if math.isclose(base.fps, fps) else None
    for vid in dataset.video_ids():
        path = dataset.video_path(vid)
        key = video_key(path)
        if cache.verify(key):
            continue
        spec = dataset.spec(vid)
        times = sample_times(spec.duration_s, fps)
        if base is not None and key in base and base[key]["frames"] != len(times):
            raise InputError(base_features, f"{key}: {base[key]['frames']} frames, the oracle samples {len(times)}")
        patches = oracle_features(spec, times, dataset.config.speed, gain=gain)  # [T, P, D]
        record = FeatureRecord(patches, patches.mean(dim=1), torch.from_numpy(times), spec.duration_s, str(path))
        cache.add(key, record, flush=False)
    cache.flush()
    return cache


def write_split_transcripts(dataset: Any, out_dir: Path) -> dict[str, Path]:
    """``out_dir/transcripts_<split>.jsonl`` for ``train`` and ``heldout``: the data set's own LiveCC lines of those
    videos (relative video paths, to be resolved against the data set's folder), in the data set's order."""
    from mmduplex.data.transcripts import load_livecc_jsonl

    lines = dataset.transcripts_path.read_text(encoding="utf-8").splitlines()
    clips = load_livecc_jsonl(dataset.transcripts_path)
    written = {}
    for split in ("train", "heldout"):
        ids = set(dataset.video_ids(split))
        keep = [lines[int(c.meta["line"]) - 1] for c in clips if Path(c.video).stem in ids]
        if len(keep) != len(ids):
            raise InputError(dataset.transcripts_path, f"{len(keep)} transcripts for {len(ids)} {split} videos")
        path = Path(out_dir) / f"transcripts_{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(keep) + "\n", encoding="utf-8")
        written[split] = path
    return written


def _set_arg(args: list[str], flag: str, value: str) -> None:
    if flag not in args:
        raise InputError("duplex_fit_args", f"no {flag} in the demo's fit arguments")
    args[args.index(flag) + 1] = value


def oracle_fit_args(config: Any, base: Path, root: Path, features: Path, transcripts: dict[str, Path]) -> list[str]:
    """The demo's ``mmduplex fit`` arguments of its main model (:func:`~mmduplex.demo.stages.duplex_fit_args`), on the
    oracle cache ``features`` with :class:`~mmduplex.tokenizer.baselines.SparsePatchTokenizer` tokens, run folder
    ``root/runs``."""
    from mmduplex.demo.stages import DemoPaths, duplex_fit_args
    from mmduplex.tokenizer.bflow import BFlowTokenizer

    paths = DemoPaths(root)
    paths.data, paths.features = Path(base) / "data", Path(features)
    args = duplex_fit_args(config, paths, "bflow", 1)  # the main model's epochs and learning rate
    embed_scale = BFlowTokenizer.from_pretrained(Path(base) / "tokenizer").config.embed_scale
    tokenizer = {
        "class_path": "mmduplex.tokenizer.baselines.SparsePatchTokenizer",
        "init_args": {"dim": ORACLE_DIM, "grid": list(ORACLE_GRID), "embed_scale": embed_scale},
    }
    _set_arg(args, "--model.init_args.video_tokenizer", json.dumps(tokenizer))
    _set_arg(args, "--trainer.default_root_dir", str(paths.runs / f"duplex-{MODEL}"))
    # The demo's data module reads the data set's train split and its held-out split (validation windows); an oracle
    # cache cannot be filled by its feature extraction, so the same clips come as transcripts.
    args += ["--data.init_args.transcripts", str(transcripts["train"])]
    args += ["--data.init_args.val_transcripts", str(transcripts["heldout"])]
    args += ["--data.init_args.video_root", str(Path(base) / "data")]
    return args


def train_oracle(config: Any, base: Path, root: Path, features: Path, transcripts: dict[str, Path]) -> Path:
    """Train (or reuse) the oracle duplex model under ``root`` and export it to ``root/bundle``."""
    import shutil

    from mmduplex.demo.stages import fit_quietly
    from mmduplex.lm.bundle import export_bundle

    bundle = root / "bundle"
    if (bundle / "config.json").is_file():
        log.info("oracle %s: reusing %s", root.name, bundle)
        return bundle
    run = root / "runs" / f"duplex-{MODEL}"
    shutil.rmtree(run, ignore_errors=True)
    cli = fit_quietly(oracle_fit_args(config, base, root, features, transcripts))
    checkpoint = run / "final.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    return export_bundle(checkpoint, bundle)


def score_oracle(config: Any, dataset: Any, cache: Any, bundle: Path, split: str, limit: int | None) -> dict:
    """The demo's stage 5 on oracle features: PAD bias by the demo's rule, then ``split`` streamed and scored."""
    from mmduplex.demo.stream import rate_figures, score_videos, stream_features, tune_pad_bias
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import video_key

    session = DuplexSession.from_bundle(bundle)
    tuning = None
    if config.talk_tuning_videos > 0:
        ids = dataset.video_ids("train")[: config.talk_tuning_videos]
        tuning = tune_pad_bias(session, dataset, cache, ids, config.talk_ratio_target, config.pause_steps)
    scored = dataset.video_ids(split)[:limit]
    results = []
    for vid in scored:
        record = cache.load(video_key(dataset.video_path(vid)))
        results.append(stream_features(session, vid, record.timestamps.tolist(), record.patches, config.pause_steps))
    figures, _ = score_videos(results, dataset, config.tolerance_s, split)
    streamed = {Path(clip.video).stem: clip.end_s - clip.start_s for clip in dataset.clips(split)}
    figures.update(rate_figures(results, sum(streamed[vid] for vid in scored)))
    figures.update(pad_bias=session.pad_bias, pad_bias_search=tuning, videos=len(scored))
    return figures


def oracle_job(
    base: str, out: str, fps: float, split: str, limit: int | None, gain: float = VALUE_GAIN, seed: int | None = None
) -> dict[str, Any]:
    """One fps and training seed (``None``: the base run's): oracle cache, training, PAD bias, stream and score
    (picklable arguments, for a worker process). Works in ``out/fps<F>`` (``out/fps<F>-seed<S>`` with a seed)."""
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stages import DemoConfig

    base_dir = Path(base)
    root = Path(out) / (f"fps{fps:g}" if seed is None else f"fps{fps:g}-seed{seed}")
    config = DemoConfig.from_yaml(base_dir / "demo_config.json")
    config = replace(config, fps=float(fps), seed=config.seed if seed is None else seed)
    torch.set_num_threads(config.threads or 1)
    dataset = SyntheticDataset(base_dir / "data")
    seconds = {}
    t0 = time.perf_counter()
    features = Path(out) / f"fps{fps:g}" / "features"  # one cache per fps, whatever the seed
    cache = write_oracle_cache(dataset, features, fps, base_dir / "features", gain)
    seconds["features"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    transcripts = {split: Path(out) / f"transcripts_{split}.jsonl" for split in ("train", "heldout")}
    bundle = train_oracle(config, base_dir, root, features, transcripts)
    seconds["train"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    figures = score_oracle(config, dataset, cache, bundle, split, limit)
    seconds["stream"] = round(time.perf_counter() - t0, 2)
    log.info("oracle %g fps: event accuracy %.3f (%s)", fps, figures["event_accuracy"], seconds)
    threads = torch.get_num_threads()
    return {**figures, "fps": float(fps), "seed": config.seed, "seconds": seconds, "torch_threads": threads}


# ----------------------------------------------------------------------------------------------- the table


def mean_figures(runs: list[dict]) -> dict[str, Any]:
    """The table's figures averaged over runs (seeds) of one fps, with the event accuracies' range."""

    from mmduplex.demo.seeds import spread

    def mean(values: list) -> float | None:
        return spread(values)["mean"]  # over the runs that have the figure

    out: dict[str, Any] = {"fps": runs[0]["fps"], "seeds": [r["seed"] for r in runs]}
    for key in ("event_accuracy", "event_precision", "median_latency_s", "talk_ratio", "video_tokens_per_second"):
        out[key] = mean([r.get(key) for r in runs])
    for key in ("event_accuracy_by_objects", "event_accuracy_by_history", "event_accuracy_by_action"):
        groups = sorted({g for r in runs for g in (r.get(key) or {})})
        out[key] = {g: mean([(r.get(key) or {}).get(g) for r in runs]) for g in groups}
    out["event_accuracy_range"] = [min(r["event_accuracy"] for r in runs), max(r["event_accuracy"] for r in runs)]
    return out


def reference_rows(base: Path, split: str) -> dict[str, dict]:
    """The base run's own models (``report.json``), when it scored ``split``: name -> figures."""
    path = base / "report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("settings", {}).get("scored_on") != split:
        return {}
    fps = report["settings"]["demo"]["fps"]
    rows = {"bflow": report["details"]["bflow"], **report.get("baselines", {})}
    return {name: {**figures, "fps": fps} for name, figures in rows.items()}


def _cell(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    """A markdown table of every model's event figures, by bucket and action, latency, talk ratio and token rate."""
    head = ["model", "fps", "event acc", "1 obj", "2+ obj", "hist 0", "hist 1+", *ACTION_ORDER]
    head += ["median lat (s)", "talk ratio", "video tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, f in rows.items():
        objects, history = f.get("event_accuracy_by_objects") or {}, f.get("event_accuracy_by_history") or {}
        actions = f.get("event_accuracy_by_action") or {}
        cells = [name, f"{f['fps']:g}", _cell(f["event_accuracy"]), _cell(objects.get("1")), _cell(objects.get("2+"))]
        cells += [_cell(history.get("0")), _cell(history.get("1+")), *(_cell(actions.get(a)) for a in ACTION_ORDER)]
        cells += [_cell(f.get("median_latency_s"), 2), _cell(f.get("talk_ratio"), 2)]
        cells += [_cell(f.get("video_tokens_per_second"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a demo output folder holding data/ and demo_config.json")
    parser.add_argument("--out", required=True, help="this benchmark's own output folder")
    parser.add_argument("--fps", type=float, nargs="+", default=[2.0, 5.0], help="oracle frame rates")
    parser.add_argument("--split", default="val", choices=("val", "heldout"), help="split streamed and scored")
    parser.add_argument("--limit", type=int, default=None, help="score only the split's first N videos")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each")
    parser.add_argument("--value-gain", type=float, default=VALUE_GAIN, help="every oracle vector times this")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the base's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stages import DemoConfig, quiet_frameworks

    base, out = Path(args.base), Path(args.out)
    if not (base / "demo_config.json").is_file() or not (base / "data" / "manifest.json").is_file():
        raise InputError(base, "not a demo output folder (demo_config.json and data/ needed)")
    if out.resolve() == base.resolve():
        raise InputError(out, "must not be the base folder (the base is only read)")
    machine = print_header("oracle video tokens: the demo's model on tokens from the synthetic spec")
    quiet_frameworks()
    start = time.perf_counter()
    write_split_transcripts(SyntheticDataset(base / "data"), out)
    seeds = args.seeds or [None]
    runs = [(fps, seed) for fps in args.fps for seed in seeds]
    jobs = [(str(base), str(out), fps, args.split, args.limit, args.value_gain, seed) for fps, seed in runs]
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), context, initializer=quiet_frameworks) as pool:
            done = [future.result() for future in [pool.submit(oracle_job, *job) for job in jobs]]
    else:
        done = [oracle_job(*job) for job in jobs]
    names = [f"{fps:g}" if seed is None else f"{fps:g}/seed{seed}" for fps, seed in runs]
    rows = {}
    for (fps, seed), figures in zip(runs, done, strict=True):
        rows[f"{MODEL} {fps:g} fps" + ("" if seed is None else f" seed {seed}")] = figures
    means = {}
    if len(seeds) > 1:
        by_fps = {f"{fps:g}": [f for (r, _), f in zip(runs, done, strict=True) if r == fps] for fps in args.fps}
        means = {fps: mean_figures(figures) for fps, figures in by_fps.items()}
        rows.update({f"{MODEL} {fps} fps, mean of {len(seeds)}": figures for fps, figures in means.items()})
    references = reference_rows(base, args.split)
    text = table({**rows, **{f"{name} (base)": f for name, f in references.items()}})
    print(f"\n{args.split} split, {done[0]['videos']} videos; base {base}\n")
    print(text)
    config = DemoConfig.from_yaml(base / "demo_config.json")
    result = {
        "command": "python -m benchmarks.bench_oracle " + " ".join(sys.argv[1:] if argv is None else argv),
        "split": args.split,
        "oracle": dict(zip(names, done, strict=True)),
        "mean": means,
        "base": references,
        "settings": {
            "base": str(base),
            "demo": json.loads(json.dumps(asdict(config))),
            "grid": list(ORACLE_GRID),
            "dim": ORACLE_DIM,
            "value_gain": args.value_gain,
            "seeds": [config.seed] if args.seeds is None else args.seeds,
            "layout": LAYOUT,
            "tokenizer": "mmduplex.tokenizer.baselines.SparsePatchTokenizer",
        },
        "table": text,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine,
    }
    write_json_atomic(out / "oracle.json", result)
    print(f"\nwrote {out / 'oracle.json'} in {result['wall_s']} s")
    return result


if __name__ == "__main__":
    main()
