"""The rate curve: the demo's event accuracy against video tokens per second, B-Flow at several token budgets against
uniform pooling at several tokens per frame, every point at several training seeds, the oracle as a line.

Usage::

    python -m mmduplex.demo.curve DEMO_DIR --out DIR [--budgets 2 4] [--uniform 1 2 4 16] [--seeds 0 1]
        [--jobs 2] [--oracle ORACLE_JSON]

``DEMO_DIR`` is a finished ``mmduplex demo`` folder (its data, features, B-Flow tokenizer and ``report.json``). Each
point is a duplex model trained as the demo trains its models (:func:`~mmduplex.demo.stages.train_duplex`: the demo's
recipe, epochs and learning rate for that kind of model, at the given training seed) and streamed and scored as the
demo scores them (:func:`~mmduplex.demo.stages.stream_and_score`: the same PAD-bias rule, the demo's score split), in
``DIR/<point>-seed<S>/``, whose data and features are hard links to the demo's
(:func:`~mmduplex.demo.seeds.share_inputs`):

- ``bflow``: the demo's B-Flow tokenizer as trained (variable rate: thresholds only);
- ``bflow-<B>``: the same tokenizer with its rate controller at ``B`` tokens/s (``with_settings(target_rate=B)``);
- ``uniform-<N>``: :class:`~mmduplex.tokenizer.baselines.UniformTokenizer` at ``N`` pooled tokens per frame, read
  with ``max(K, ceil(N * fps / step_hz))`` video slots per step, so the slots carry the frames' tokens as fast as
  they come (at 5 fps and 5 Hz, every frame within its own step). The recipe's ``K`` slots carry ``K * step_hz``
  tokens/s, 40 at 5 Hz: uniform 16 per frame at 5 fps sends 80, and with ``K`` slots the queue would fall ever
  further behind, measuring the slot packer and not pooling.

A point the demo itself trained (its main model; its uniform baseline at the demo's tokens per frame), at the demo's
own training seed, is read from ``report.json`` instead of trained again. Finished points (``result.json``, written
last) are reused; one made with other settings is refused.

Writes ``DIR/curve.json`` (every point's per-seed figures with the mean and spread of each; B-Flow's accuracy against
uniform's at B-Flow's own rate, interpolated on log tokens/s; the oracle's figure when ``--oracle`` names a
``benchmarks.bench_oracle`` result of the same split; the settings and the machine), ``DIR/curve.png`` when matplotlib
is installed, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mmduplex.demo.seeds import FIGURES, TABLE_COLUMNS, dig, share_inputs, spreads, stat_cell
from mmduplex.demo.stages import (
    DemoConfig,
    DemoPaths,
    quiet_frameworks,
    stream_and_score,
    train_duplex,
    worker_init,
)
from mmduplex.errors import InputError, MMDuplexError
from mmduplex.fileio import write_json_atomic

log = logging.getLogger(__name__)

CURVE_FILE = "curve.json"
RESULT_FILE = "result.json"


def point_name(kind: str, value: float | None) -> str:
    """``bflow`` (variable rate), ``bflow-<B>`` (a budget in tokens/s) or ``uniform-<N>`` (tokens per frame)."""
    if kind == "bflow":
        return "bflow" if value is None else f"bflow-{value:g}"
    if kind == "uniform":
        return f"uniform-{int(value)}"
    raise InputError("curve", f"unknown point kind {kind!r}")


def uniform_slots(per_frame: int, recipe_slots: int, fps: float, step_hz: float) -> int:
    """Video slots per step that carry ``per_frame`` tokens a frame at ``fps`` as they come (at least the recipe's)."""
    return max(recipe_slots, math.ceil(per_frame * fps / step_hz - 1e-9))


def _recipe_model_args(config: DemoConfig) -> dict[str, Any]:
    import yaml

    import mmduplex.recipes

    recipe = yaml.safe_load(mmduplex.recipes.recipe_path(config.duplex_recipe).read_text(encoding="utf-8"))
    return recipe["model"]["init_args"]


def _demo_config(demo_dir: Path) -> DemoConfig:
    if not (demo_dir / "report.json").is_file() or not (demo_dir / "tokenizer" / "config.json").is_file():
        raise InputError(demo_dir, "not a finished demo folder (report.json and tokenizer/ needed)")
    return DemoConfig.from_yaml(demo_dir / "demo_config.json")


def point_job(demo_dir: str, out_dir: str, kind: str, value: float | None, seed: int) -> dict[str, Any]:
    """Train, stream and score one point at one training seed (picklable arguments, for a worker process); reuses
    a finished one. Returns its figures (the demo's ``details`` format) with ``seconds``."""
    import torch

    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.tokenizer.bflow import BFlowTokenizer

    demo = DemoPaths(Path(demo_dir))
    config = replace(_demo_config(demo.root), seed=seed)
    paths = DemoPaths(Path(out_dir) / f"{point_name(kind, value)}-seed{seed}")
    settings = {"demo": json.loads(json.dumps(asdict(config))), "kind": kind, "value": value, "seed": seed}
    done = paths.root / RESULT_FILE
    if done.is_file():
        result = json.loads(done.read_text(encoding="utf-8"))
        if result.get("settings") != settings:
            raise InputError(paths.root, "holds a point made with other settings; use another --out")
        return result["figures"]
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    paths.root.mkdir(parents=True, exist_ok=True)
    share_inputs(demo, paths)
    tokenizer = BFlowTokenizer.from_pretrained(demo.tokenizer)
    if kind == "bflow" and value is not None:
        tokenizer = tokenizer.with_settings(target_rate=float(value))
    tokenizer.save_pretrained(paths.tokenizer)  # the uniform tokenizer takes its grid, width and scale from it
    if kind == "bflow":
        name, per_frame, slots = "bflow", 0, None
    else:
        recipe = _recipe_model_args(config)
        name, per_frame = "uniform_tokens", int(value)
        slots = uniform_slots(per_frame, int(recipe["slots_per_step"]), config.fps, float(recipe["step_hz"]))
    train_duplex(config, paths, name, per_frame, slots)
    dataset = SyntheticDataset(paths.data)
    figures, _, _, _ = stream_and_score(name, config, paths, dataset)
    figures["slots_per_step"] = slots
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(done, {"settings": settings, "figures": figures})
    log.info("curve: %s seed %d: event accuracy %.3f", paths.root.name, seed, figures["event_accuracy"])
    return figures


def _from_report(report: dict[str, Any], kind: str, value: float | None, seed: int) -> dict[str, Any] | None:
    """The demo's own model for this point and seed, when it trained one."""
    settings = report["settings"]
    if seed != settings["demo"]["seed"]:
        return None
    if kind == "bflow" and value is None and settings["demo"]["target_rate"] is None:
        return report["details"]["bflow"]
    if kind == "uniform" and value == settings.get("uniform_tokens_per_frame"):
        return report.get("baselines", {}).get("uniform_tokens")
    return None


def interpolate(points: list[tuple[float, float]], rate: float) -> float | None:
    """``points`` ``(tokens/s, accuracy)`` read at ``rate`` by linear interpolation on log tokens/s (``None`` when
    ``rate`` is outside them)."""
    points = sorted(p for p in points if p[0] > 0)
    for (r0, a0), (r1, a1) in zip(points, points[1:], strict=False):
        if r0 <= rate <= r1:
            w = 0.0 if r1 == r0 else (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return a0 + w * (a1 - a0)
    return None


def oracle_figures(path: Path, split: str, fps: float) -> dict[str, Any]:
    """The oracle's figures at ``fps`` from a ``benchmarks.bench_oracle`` result (the mean over its seeds, if any)."""
    result = json.loads(path.read_text(encoding="utf-8"))
    if result.get("split") != split:
        raise InputError(path, f"an oracle scored on {result.get('split')!r}, the demo on {split!r}")
    mean = result.get("mean", {}).get(f"{fps:g}")
    runs = [f for f in result.get("oracle", {}).values() if f.get("fps") == fps]
    if not runs:
        raise InputError(path, f"holds no oracle at {fps:g} fps")
    seeds = [r["seed"] for r in runs]
    figures = mean or runs[0]
    return {"event_accuracy": figures["event_accuracy"], "video_tokens_per_second": figures["video_tokens_per_second"],
            "seeds": seeds, "event_accuracy_values": [r["event_accuracy"] for r in runs]}  # fmt: skip


def run_curve(
    demo_dir: str | Path,
    out_dir: str | Path,
    budgets: Sequence[float] = (2.0, 4.0),
    uniform: Sequence[int] = (1, 2, 4, 16),
    seeds: Sequence[int] = (0, 1),
    jobs: int = 1,
    oracle: str | Path | None = None,
) -> dict[str, Any]:
    """Every point at every seed (``jobs`` at a time, one process each), aggregated into ``out_dir/curve.json``."""
    start = time.perf_counter()
    demo_dir, out_dir = Path(demo_dir), Path(out_dir)
    config = _demo_config(demo_dir)
    if out_dir.resolve() == demo_dir.resolve():
        raise InputError(out_dir, "must not be the demo folder (the demo is only read)")
    if not seeds or len(set(seeds)) != len(seeds) or any(b <= 0 for b in budgets) or any(n < 1 for n in uniform):
        raise InputError("curve", f"need distinct seeds, budgets > 0 and tokens per frame >= 1; got {seeds}, "
                         f"{list(budgets)}, {list(uniform)}")  # fmt: skip
    report = json.loads((demo_dir / "report.json").read_text(encoding="utf-8"))
    specs = [("bflow", None)] + [("bflow", float(b)) for b in budgets] + [("uniform", int(n)) for n in uniform]
    figures: dict[tuple[str, float | None, int], dict[str, Any]] = {}
    todo = []
    for kind, value in specs:
        for seed in seeds:
            known = _from_report(report, kind, value, seed)
            if known is not None:
                figures[kind, value, seed] = {**known, "from_demo": True}
            else:
                todo.append((str(demo_dir), str(out_dir), kind, value, int(seed)))
    log.info("curve: %d points x seeds to train, %d from the demo's report", len(todo), len(figures))
    try:
        if jobs > 1 and len(todo) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context, initializer=worker_init,
                                     initargs=(False,)) as pool:  # fmt: skip
                futures = [pool.submit(point_job, *job) for job in todo]
                results = [future.result() for future in futures]
        else:
            results = [point_job(*job) for job in todo]
    except MMDuplexError:
        raise
    except Exception as err:
        raise MMDuplexError(out_dir, f"a curve point failed: {type(err).__name__}: {err}") from err
    for job, result in zip(todo, results, strict=True):
        figures[job[2], job[3], job[4]] = result
    rows = []
    for kind, value in specs:
        runs = [figures[kind, value, seed] for seed in seeds]
        row = {"point": point_name(kind, value), "kind": kind, "value": value, "seeds": list(seeds)}
        row.update(spreads(runs, FIGURES))  # each figure's spread over the seeds, nested as in seeds.json
        row["from_demo"] = [bool(r.get("from_demo")) for r in runs]
        rows.append(row)
    acc, rate = "event_accuracy", "video_tokens_per_second"
    variable = next(r for r in rows if r["point"] == "bflow")
    uniform_curve = [(r[rate]["mean"], r[acc]["mean"]) for r in rows if r["kind"] == "uniform"]
    at_rate = interpolate(uniform_curve, variable[rate]["mean"])
    summary = {
        "split": config.score_split,
        "points": rows,
        "bflow_vs_uniform": {
            "bflow_tokens_per_second": variable[rate]["mean"],
            "bflow_event_accuracy": variable[acc]["mean"],
            "uniform_event_accuracy_at_that_rate": at_rate,
            "ratio": None if not at_rate else variable[acc]["mean"] / at_rate,
            "how": "uniform's mean accuracy interpolated linearly on log tokens/s at B-Flow's mean rate",
        },
        "oracle": oracle_figures(Path(oracle), config.score_split, config.fps) if oracle else None,
        "text_only": (report.get("baselines", {}).get("text_only") or {}).get(acc),
        "settings": {
            "demo_dir": str(demo_dir),
            "demo": json.loads(json.dumps(asdict(config))),
            "budgets": list(budgets),
            "uniform": list(uniform),
            "seeds": list(seeds),
            "statistics": "mean and sample standard deviation (n - 1) over the seeds",
        },  # fmt: skip
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "jobs": jobs},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(out_dir / CURVE_FILE, summary)
    plot(summary, out_dir / "curve.png")
    return summary


def table(summary: dict[str, Any]) -> str:
    """The curve as a markdown table: mean ± std over the seeds per point."""
    head = ["point", *(label for label, _, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["points"]:
        cells = [row["point"], *(stat_cell(dig(row, path), digits) for _, path, digits in TABLE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Event accuracy against tokens/s (log), one line per tokenizer, seed spread as error bars; the oracle and the
    text-only model as lines. ``False`` (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log.info("curve: matplotlib not installed, no %s", path.name)
        return False
    acc, rate = "event_accuracy", "video_tokens_per_second"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, style, name in (("bflow", "o-", "B-Flow (budgets, variable rate)"), ("uniform", "s--", "uniform")):
        rows = sorted((r for r in summary["points"] if r["kind"] == kind), key=lambda r: r[rate]["mean"])
        xs, ys = [r[rate]["mean"] for r in rows], [r[acc]["mean"] for r in rows]
        errs = [r[acc]["std"] or 0.0 for r in rows]
        ax.errorbar(xs, ys, yerr=errs, fmt=style, capsize=3, label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(r["point"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if summary.get("oracle"):
        o = summary["oracle"]
        ax.axhline(o[acc], color="green", linestyle="-.", label=f"oracle ({o[rate]:.1f} tokens/s)")
    if summary.get("text_only") is not None:
        ax.axhline(summary["text_only"], color="grey", linestyle=":", label="text only (0 tokens/s)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("video tokens / s (log)")
    ax.set_ylabel(f"event accuracy ({summary['split']})")
    ax.set_title(f"event accuracy vs token rate, seeds {summary['settings']['seeds']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the curve's own folder")
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.0, 4.0], help="B-Flow rate budgets (tok/s)")
    parser.add_argument("--uniform", type=int, nargs="*", default=[1, 2, 4, 16], help="uniform tokens per frame")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every point")
    parser.add_argument("--jobs", type=int, default=1, help="points trained at once, one process each")
    parser.add_argument("--oracle", type=Path, default=None, help="a benchmarks.bench_oracle oracle.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_frameworks()
    try:
        summary = run_curve(args.demo_dir, args.out, args.budgets, args.uniform, args.seeds, args.jobs, args.oracle)
    except MMDuplexError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(summary))
    vs = summary["bflow_vs_uniform"]
    if vs["ratio"] is not None:
        print(f"B-Flow {vs['bflow_event_accuracy']:.3f} at {vs['bflow_tokens_per_second']:.1f} tokens/s; uniform at "
              f"that rate {vs['uniform_event_accuracy_at_that_rate']:.3f} (x{vs['ratio']:.1f})")  # fmt: skip
    if summary["oracle"]:
        o = summary["oracle"]
        print(f"oracle {o['event_accuracy']:.3f} at {o['video_tokens_per_second']:.1f} tokens/s (seeds {o['seeds']})")
    print(f"wrote {args.out / CURVE_FILE} in {summary['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
