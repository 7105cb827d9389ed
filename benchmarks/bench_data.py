"""The duplex training data path: windows per second per worker process, and its share of a SmolLM2 training step.

For the demo recipe (``recipes/duplex/demo.yaml``) and the SmolLM2 recipe (``recipes/duplex/smollm2_projector.yaml``,
the registry's ``smollm2-135m-instruct-q4_1``), on a synthetic commentary set like the demo's (10-30 s videos,
a question every ~2 s, ``mmduplex-tiny`` features of the recipes' 12 x 12 x 64 shape, each recipe's untrained
B-Flow):

1. the token store: the frozen tokenizer's tokens of every video, computed once (s, videos/s);
2. windows/s of the in-process reference (``DuplexModule.window_tensors``, what the training step did before) and of
   the workers' path (:func:`mmduplex.train.windows.build_window` reading the token store), in one process;
3. windows/s a data loader with one worker process delivers to the training process (stacked batches of the
   recipe's size, shared-memory transfer included): the figure per worker;
4. one SmolLM2 training step (fp32, projector only, the recipe's batch of 8 x 50 steps, forward + backward + AdamW)
   and the data path's share of it: the data path's CPU time per batch (the worker's plus the training process's
   receiving) over the step's time on 2 cores.

Rates are per CPU second of the process that does the work (wall-clock rates are printed too): on a machine other jobs
share, a process gets a varying fraction of a core, and a worker with a core of its own delivers the CPU-time rate.
The step runs on one thread (``--threads``; two threads spin against other jobs on a loaded 2-core machine) and its
time on 2 cores is taken as half its CPU time, perfect scaling: the share is an upper bound.

    python -m benchmarks.bench_data [--videos 32] [--windows 3000] [--steps 3] [--data DIR]

The last line: ``data: <windows/s per worker> windows/s per worker; data share <fraction>`` (the lower of the two
recipes' per-worker figures; the share of the SmolLM2 step). Targets: >= 1,000 windows/s per worker, share <= 0.05.
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
from pathlib import Path

import psutil
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader

from benchmarks.common import Timer, print_header
from mmduplex.lm.model import text_loss
from mmduplex.recipes import recipe_path
from mmduplex.train.lightning_cli import MMDuplexCLI
from mmduplex.train.token_store import tokenizer_fingerprint
from mmduplex.train.windows import WindowTensorDataset, build_window, stack_windows

RECIPES = {"demo": "duplex/demo", "smollm2": "duplex/smollm2_projector"}


def make_data(root: Path, videos: int) -> dict[str, str]:
    """A demo-like synthetic set and its ``mmduplex-tiny`` feature cache under ``root`` (reused when present)."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.train.features import extract_features

    if not (root / "features" / "index.json").is_file():
        config = SyntheticConfig(num_videos=videos, duration_s=(10.0, 30.0), question_interval_s=2.0)
        dataset = generate_dataset(root / "synthetic", config)
        extract_features(dataset.videos(), root / "features", encoder="mmduplex-tiny", fps=2.0)
    return {"synthetic_dir": str(root / "synthetic"), "features": str(root / "features")}


def load_recipe(recipe: str, data: dict[str, str]) -> tuple[LightningModule, LightningDataModule]:
    """The recipe's module and data module (nothing trained), on ``data``."""
    cli = MMDuplexCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        args=[
            "--config", str(recipe_path(recipe)),
            f"--data.init_args.synthetic_dir={data['synthetic_dir']}",
            f"--data.init_args.features={data['features']}",
            "--trainer.logger=false",
        ],
    )  # fmt: skip
    return cli.model, cli.datamodule


def windows_per_s(build, order: list[int], warm: int = 200) -> tuple[float, float]:
    """Windows per CPU second and per wall second of ``build(index)`` over ``order`` (after ``warm`` windows: word
    pieces, memory maps)."""
    for index in order[:warm]:
        build(index)
    with Timer() as timer:
        for index in order[warm:]:
            build(index)
    return (len(order) - warm) / timer.cpu_seconds, (len(order) - warm) / timer.seconds


def loader_windows_per_s(dataset: WindowTensorDataset, batch: int, windows: int) -> dict[str, float]:
    """What one worker process delivers to this process (after its first batch): windows per CPU second of the
    worker, per wall second, and this process's CPU seconds per window (receiving)."""
    order = random.Random(1).sample(range(len(dataset)), len(dataset))
    sampler = list(itertools.islice(itertools.cycle(order), windows))
    loader = DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=1, collate_fn=stack_windows, persistent_workers=True
    )  # fmt: skip  (the worker outlives the pass: its CPU time is read)
    iterator = iter(loader)
    first = next(iterator)
    worker = psutil.Process(iterator._workers[0].pid)  # the loader's worker process (a private attribute)
    before = worker.cpu_times()
    with Timer() as timer:
        count = sum(b["text_ids"].shape[0] for b in iterator)
        after = worker.cpu_times()
    assert first["video_slots"].dim() == 4
    worker_cpu = (after.user + after.system) - (before.user + before.system)
    return {"cpu": count / worker_cpu, "wall": count / timer.seconds, "receive_s": timer.cpu_seconds / count}


def _reference_tokens(module: LightningModule, datamodule: LightningDataModule):
    """``DuplexModule.video_tokens`` without a trainer: the memoised in-process tokenization of the cached features."""
    memo: dict[str, list] = {}

    def video_tokens(key: str) -> list:
        if key not in memo:
            record = datamodule.load_features(key)
            with torch.no_grad():
                frames = module.video_tokenizer.tokenize(record.patches, record.timestamps).frames
            memo[key] = [type(f)(f.t, f.kind, f.tokens.float(), f.positions) for f in frames]
        return memo[key]

    return video_tokens


def measure_recipe(name: str, data: dict[str, str], windows: int) -> dict:
    """Token store, reference and workers' windows/s of one recipe; returns the figures and its objects."""
    module, datamodule = load_recipe(RECIPES[name], data)
    datamodule.setup()
    fingerprint = tokenizer_fingerprint(module.video_tokenizer, module.video_tokenizer_spec)
    reused = (datamodule.token_store_root(fingerprint) / "index.json").is_file()
    with Timer() as build:
        datamodule.prepare_tokens(module.video_tokenizer, fingerprint)
    datamodule.use_step_grid(module.step_grid(), fingerprint)
    samples = datamodule.train_samples
    dataset = WindowTensorDataset(samples, datamodule.grid, datamodule.store)
    rng = random.Random(0)
    order = [i for _ in range(windows // len(samples) + 1) for i in rng.sample(range(len(samples)), len(samples))]
    order = order[: windows + 200]
    reference = module.window_tensors
    module.video_tokens = _reference_tokens(module, datamodule)  # tokenized once per video, as the memo did
    reference_cpu, reference_wall = windows_per_s(lambda i: reference(samples[i]), order[:600])
    path_cpu, path_wall = windows_per_s(
        lambda i: build_window(samples[i], dataset.grid, dataset.store.video(samples[i]["key"])), order
    )
    loader = loader_windows_per_s(dataset, datamodule.batch_size, windows)
    videos = len(datamodule.store)
    print(
        f"{name:<8} {videos} videos, {len(samples)} windows of {datamodule.window_s:g} s; token store "
        + (f"reused (tokenizer {fingerprint['digest']}: the same B-Flow), checked" if reused else "built")
        + f" in {build.seconds:.2f} s\n"
        f"{'':<8} windows per CPU s (per wall s): in-process reference {reference_cpu:.1f} ({reference_wall:.1f}); "
        f"workers' path in one process {path_cpu:.1f} ({path_wall:.1f}); one loader worker delivers "
        f"{loader['cpu']:.1f} ({loader['wall']:.1f}), the training process receives at "
        f"{loader['receive_s'] * 1e6:.0f} CPU us a window"
    )
    return {"module": module, "dataset": dataset, "batch": datamodule.batch_size, "grid": datamodule.grid,
            "reference_cpu": reference_cpu, "worker": loader}  # fmt: skip


def smollm2_step(recipe: dict, steps: int, threads: int) -> dict[str, float]:
    """Wall and CPU seconds of a SmolLM2 training step (mean of ``steps`` after one warm-up) on the data path's
    batches."""
    torch.set_num_threads(threads)
    module, dataset, batch = recipe["module"], recipe["dataset"], recipe["batch"]
    optimizer = module.configure_optimizers()["optimizer"]
    tok = module.text_tokenizer
    size = len(dataset)
    batches = [stack_windows([dataset[(k * batch + i) % size] for i in range(batch)]) for k in range(steps + 1)]
    module.train()
    wall = cpu = 0.0
    for step, tensors in enumerate(batches):
        with Timer() as timer:
            loss, _ = text_loss(module(tensors), tensors["text_ids"], tok.pad_id, tok.epad_id, module.loss_weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up (allocations)
            wall, cpu = wall + timer.seconds / steps, cpu + timer.cpu_seconds / steps
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32, help="synthetic videos to generate")
    parser.add_argument("--windows", type=int, default=3000, help="windows timed per measurement")
    parser.add_argument("--steps", type=int, default=3, help="SmolLM2 training steps timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the SmolLM2 step")
    parser.add_argument("--data", type=Path, default=None, help="folder for the data set (default: a temporary one)")
    args = parser.parse_args()
    print_header("Duplex training data path: windows/s per worker and the data share of a SmolLM2 step")
    torch.set_num_threads(1)  # a data worker's setting (DataLoader workers run one thread each)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp)
        with Timer() as made:
            data = make_data(root, args.videos)
        print(f"data: {args.videos} synthetic videos + mmduplex-tiny features in {made.seconds:.1f} s ({root})\n")
        results = {name: measure_recipe(name, data, args.windows) for name in RECIPES}
        step = smollm2_step(results["smollm2"], args.steps, args.threads)
    smollm2, batch = results["smollm2"], results["smollm2"]["batch"]
    two_cores = step["cpu_s"] / 2  # the step's time on 2 cores, scaling perfectly
    data_s = batch * (1 / smollm2["worker"]["cpu"] + smollm2["worker"]["receive_s"])  # CPU s of the data path a batch
    share = data_s / two_cores
    old_share = batch / smollm2["reference_cpu"] / two_cores
    print(
        f"\nsmollm2 training step (fp32, projector, batch {batch} x {smollm2['grid'].steps(10.0)} steps, "
        f"{args.threads} thread(s)): {step['wall_s']:.2f} s wall, {step['cpu_s']:.2f} CPU s; on 2 cores "
        f"{two_cores:.2f} s\n"
        f"data path a batch: {data_s * 1e3:.1f} CPU ms (worker + receiving) = {share:.4f} of the step "
        f"(the in-process reference: {old_share:.4f})"
    )
    per_worker = min(r["worker"]["cpu"] for r in results.values())
    print(f"data: {per_worker:.1f} windows/s per worker; data share {share:.4f}")


if __name__ == "__main__":
    main()
