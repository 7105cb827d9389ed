"""The SmolLM2-135M projector recipe trained in bf16 on one CUDA GPU, then streamed there: the GPU path end to end.

Run from the repository root on a machine with a CUDA GPU (the recipe's backbone is the registry's offline copy
``smollm2-135m-instruct-q4_1``, prepared by ``mmduplex weights get``, which this script calls)::

    python -m benchmarks.bench_gpu_smollm2 --out gpu_out --json gpu_out/figures.json

Stages, each timed: the demo's synthetic set and its EfficientNet-Lite0 features (``recipes/demo/smollm2.yaml``'s
settings, ``--videos`` videos, 64 held out at the default 704), B-Flow trained on them, then the duplex model trained
with ``recipes/duplex/smollm2_projector_gpu.yaml`` (the frozen SmolLM2 held in bfloat16 under bf16 autocast; only
the projector, the user-stream vector and the PAD/EPAD rows and head train), exported, and streamed on the GPU: the
PAD bias tuned as the demo tunes it, then the first ``--stream-videos`` held-out videos end to end (mp4 decode ->
encoder -> B-Flow -> one LM step per 5 Hz tick, with the end-of-input flush) and scored as the demo scores it. One
video's lines are printed beside its reference events, with its per-step latencies. A step takes ~25 ms on an H200
(eager decoding of 30 layers, one token: launch-bound), so all 64 held-out videos alone would take ~3 min.

Printed and written to ``--json``: the machine and GPU, training steps/s and samples/s (after ``WARMUP_STEPS``), the
loss at the start and the end, peak GPU memory in training and in streaming, event accuracy (by objects on screen),
talk ratio, latency, RTF and the step latency of the video shown. The JSON is rewritten after every stage, so a run
cut short still leaves what it measured.

The same path runs on a CPU as a dry run (the test suite does, with the tiny encoder and LM)::

    python -m benchmarks.bench_gpu_smollm2 --out /tmp/dry --device cpu --precision 32-true --dtype float32 \\
        --videos 24 --max-steps 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback

import mmduplex.recipes
from benchmarks.bench_streaming import pct
from benchmarks.common import print_header
from mmduplex.fileio import write_json_atomic

WARMUP_STEPS = 10
"""Training steps left out of the throughput figures (CUDA context, kernel autotuning, the first batches)."""


class StepTimes(Callback):
    """The wall time at the end of every training step and its loss (kept on the device until read: no sync)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float())
        self.times.append(time.perf_counter())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="work folder (data, features, runs, bundle)")
    parser.add_argument("--json", default=None, help="figures JSON (default: OUT/figures.json)")
    parser.add_argument(
        "--demo-recipe", default="demo/smollm2_projector", help="demo recipe the data settings come from"
    )
    parser.add_argument("--recipe", default="duplex/smollm2_projector_gpu", help="duplex training recipe")
    parser.add_argument("--videos", type=int, default=704, help="synthetic videos in all")
    parser.add_argument("--heldout", type=int, default=64, help="held-out videos (streamed and scored)")
    parser.add_argument("--epochs", type=int, default=None, help="duplex training epochs (default: the recipe's)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop duplex training after this many steps")
    parser.add_argument("--max-time", default="00:00:03:00", help="stop duplex training after DD:HH:MM:SS")
    parser.add_argument("--tokenizer-steps", type=int, default=None, help="B-Flow steps (default: the demo's)")
    parser.add_argument("--device", default="cuda", help="where training and streaming run (cuda or cpu)")
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning precision of duplex training")
    parser.add_argument("--dtype", default=None, help="backbone dtype override (default: the recipe's)")
    parser.add_argument("--stream-videos", type=int, default=16, help="held-out videos streamed and scored")
    parser.add_argument("--show", type=int, default=1, help="which held-out video's lines to print (index)")
    return parser.parse_args(argv)


def gpu_info(device: str) -> dict[str, Any]:
    if not device.startswith("cuda"):
        return {"device": device}
    props = torch.cuda.get_device_properties(0)
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def peak_memory_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def training_figures(timer: StepTimes, start: float, batch_size: int) -> dict[str, Any]:
    """Steps, throughput after the warm-up steps, and the mean loss of the first and last 10 steps."""
    losses = [float(v) for v in timer.losses]
    steps = len(timer.times)
    figures: dict[str, Any] = {"steps": steps, "batch_size": batch_size}
    if steps > WARMUP_STEPS + 1:
        span = timer.times[-1] - timer.times[WARMUP_STEPS]
        measured = steps - 1 - WARMUP_STEPS
        figures["steps_per_s"] = round(measured / span, 2)
        figures["samples_per_s"] = round(measured * batch_size / span, 1)
        gaps = [b - a for a, b in zip(timer.times[WARMUP_STEPS:], timer.times[WARMUP_STEPS + 1 :], strict=False)]
        figures["step_ms_p50"] = round(1000 * statistics.median(gaps), 1)
    if timer.times:
        figures["first_step_s"] = round(timer.times[0] - start, 2)
    if losses:
        figures["loss_first10"] = round(statistics.fmean(losses[:10]), 4)
        figures["loss_last10"] = round(statistics.fmean(losses[-10:]), 4)
    return figures


def show_video(bundle: Path, dataset, video_id: str, device: str, pad_bias: float, pause_steps: int) -> dict:
    """Stream one held-out video end to end and print its lines beside its reference events; its step latencies."""
    from mmduplex.demo.stream import lines_of
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.video import iter_video

    session = DuplexSession.from_bundle(bundle, device=device)
    session.pad_bias = pad_bias
    elapsed: list[float] = []

    def timed(outputs):
        for out in outputs:
            elapsed.append(out.elapsed_s)
            yield out

    start = time.perf_counter()
    frames = iter_video(dataset.video_path(video_id), fps=session.fps, size=session.encoder.image_size)
    lines, steps, _ = lines_of(timed(session.run(frames)), pause_steps)
    wall = time.perf_counter() - start
    print(f"\n## {video_id}: reference events | model lines")
    for event in dataset.events(video_id):
        print(f"  ref {event.t:6.1f} s  {event.colour} {event.shape} {event.action}")
    for line in lines:
        print(f"  mod {line.start:6.1f} s  {line.text}")
    return {
        "video": video_id,
        "steps": steps,
        "rtf": round(wall / (steps / session.step_hz), 4),
        "step_ms_p50": round(1000 * statistics.median(elapsed), 2),
        "step_ms_p90": round(1000 * pct(elapsed, 90), 2),
        "lines": [{"t": round(line.start, 2), "text": line.text} for line in lines],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from mmduplex.demo.stages import (
        DemoConfig,
        DemoPaths,
        duplex_fit_args,
        fit_quietly,
        make_data,
        stream_and_score,
        train_tokenizer,
    )
    from mmduplex.lm.bundle import export_bundle
    from mmduplex.weights import find_entry, get_weights

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu_smollm2: no CUDA device here; for a dry run pass --device cpu --precision 32-true")
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out / "figures.json"
    base = DemoConfig.from_yaml(mmduplex.recipes.recipe_path(args.demo_recipe))
    config = dataclasses.replace(
        base,
        num_videos=args.videos,
        heldout_fraction=(args.heldout - 0.5) / args.videos,  # the synthetic split rounds up
        duplex_recipe=args.recipe,
        duplex_epochs=args.epochs or _recipe(args.recipe)["trainer"].get("max_epochs", base.duplex_epochs),
        tokenizer_steps=args.tokenizer_steps or base.tokenizer_steps,
        baselines=(),
        question_interval_s=0.0,
    )
    paths = DemoPaths(out)
    figures: dict[str, Any] = {
        "machine": {**print_header("SmolLM2 projector recipe, trained and streamed on a GPU"), **gpu_info(args.device)},
        "settings": {
            "argv": sys.argv[1:] if argv is None else argv,
            "demo": dataclasses.asdict(config),
            "backbone": _recipe(args.recipe)["model"]["init_args"]["backbone"],  # e.g. smollm2-135m-instruct-q4_1
        },
        "stage_s": {},
    }

    def stage(name: str, fn, *fn_args, **fn_kwargs):
        t0 = time.perf_counter()
        value = fn(*fn_args, **fn_kwargs)
        figures["stage_s"][name] = round(time.perf_counter() - t0, 2)
        print(f"stage {name}: {figures['stage_s'][name]} s", flush=True)
        write_json_atomic(json_path, figures)
        return value

    dataset = stage("data_and_features", make_data, config, paths)
    heldout = dataset.video_ids("heldout")
    figures["settings"]["videos"] = {"train": len(dataset.video_ids("train")), "heldout": len(heldout)}
    stage("tokenizer", train_tokenizer, config, paths)
    backbone = figures["settings"]["backbone"]
    if isinstance(backbone, str) and find_entry(backbone) is not None:
        stage("weights", get_weights, backbone)

    timer_path = "benchmarks.bench_gpu_smollm2.StepTimes"  # by name: the LightningCLI builds the callback
    fit_args = duplex_fit_args(config, paths, "bflow", 1)
    fit_args += ["--trainer.accelerator", "gpu" if args.device.startswith("cuda") else "cpu"]
    fit_args += ["--trainer.precision", args.precision, "--trainer.max_time", args.max_time]
    fit_args += [f"--trainer.callbacks+={timer_path}"]
    if args.max_steps is not None:
        fit_args += ["--trainer.max_steps", str(args.max_steps)]
    if args.dtype is not None:
        fit_args += ["--model.init_args.torch_dtype", args.dtype]
    reset_peak(args.device)
    start = time.perf_counter()
    cli = stage("train", fit_quietly, fit_args)
    timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "StepTimes")
    train = training_figures(timer, start, cli.datamodule.batch_size)
    train["peak_gpu_memory_gib"] = peak_memory_gib(args.device)
    train["precision"] = str(cli.trainer.precision)
    train["backbone_dtype"] = str(next(cli.model.model.backbone.parameters()).dtype)
    train["metrics_at_end"] = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()}
    figures["train"] = train
    checkpoint = paths.runs / "duplex-bflow" / "final.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    stage("export", export_bundle, checkpoint, paths.bundle)
    del cli
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    reset_peak(args.device)
    stream, _, stream_timings, _ = stage(
        "stream", stream_and_score, "bflow", config, paths, dataset, args.device, args.stream_videos
    )
    stream["peak_gpu_memory_gib"] = peak_memory_gib(args.device)
    stream["timings"] = stream_timings
    figures["stream"] = stream
    video_id = heldout[min(args.show, len(heldout) - 1)]
    figures["shown_video"] = stage(
        "show_video", show_video, paths.bundle, dataset, video_id, args.device, stream["pad_bias"], config.pause_steps
    )
    keys = ("event_accuracy", "event_accuracy_by_objects", "event_precision", "median_latency_s", "talk_ratio", "rtf")
    print("\n## figures")
    print(f"  train: {train}")
    print(f"  stream: { ({k: stream.get(k) for k in keys}) } peak GPU {stream['peak_gpu_memory_gib']} GiB")
    print(f"  shown video: rtf {figures['shown_video']['rtf']}, step p50 {figures['shown_video']['step_ms_p50']} ms")
    write_json_atomic(json_path, figures)
    return figures


def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load(mmduplex.recipes.recipe_path(name).read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
