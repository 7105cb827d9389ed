"""Benchmark of live duplex streaming (``DuplexSession``): flat cost for hours, cache speed-up, real-time factor.

Run from the repository root::

    OMP_NUM_THREADS=2 python -m benchmarks.bench_streaming                      # trains the tiny demo model briefly
    python -m benchmarks.bench_streaming --bundle runs/duplex-tiny/bundle       # an exported bundle instead
    python -m benchmarks.bench_streaming --skip-large                           # without the 0.5B-shaped LM

Prints, with the machine:

1. demo model, a synthetic stream fed as cached features (``push_features``, looping one encoded video) for
   ``--minutes`` (60): per-step latency p50 / p95 over the minute before the 2-minute and the last mark, process RSS
   at each mark, and their ratios (targets: p95 ratio <= 1.2, memory ratio <= 1.1); the RTF of that stream;
2. at 5 minutes of that stream: one cached step vs recomputing the whole cached window (``sink + window + 1``
   positions, no cache), and vs recomputing the whole 5-minute history (target >= 20x over the window);
3. demo model end to end from a video file (decode + encode + tokenize + step): RTF (target <= 0.05);
4. a Qwen2.5-0.5B-shaped LM (random init, no download) with a ViT-B-32-shaped encoder (random init), 2 fps video,
   10 Hz steps, bf16 and int8 dynamic quantisation, over ``--large-seconds`` (60) of stream: RTF (target <= 1.0).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import torch

from benchmarks.common import QWEN_05B, print_header
from mmduplex.inference.commentary import open_frames
from mmduplex.inference.loop import StepLoop
from mmduplex.inference.session import DuplexSession
from mmduplex.lm.bundle import DuplexBundle, export_bundle, load_bundle


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def train_demo_bundle(work: Path, steps: int) -> Path:
    """The tiny recipe trained for ``steps`` steps on a small synthetic set, exported (about half a minute)."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.recipes import recipe_path
    from mmduplex.train.features import extract_features
    from mmduplex.train.lightning_cli import run_cli

    dataset = generate_dataset(work / "synthetic", SyntheticConfig(num_videos=8, duration_s=(20.0, 30.0)))
    extract_features(dataset.videos(), work / "features", encoder="mmduplex-tiny", fps=2.0)
    run_cli(["fit", "--config", str(recipe_path("duplex/tiny")), f"--data.init_args.synthetic_dir={work / 'synthetic'}",
             f"--data.init_args.features={work / 'features'}", f"--trainer.default_root_dir={work / 'run'}",
             f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
    return export_bundle(next((work / "run").rglob("last.ckpt")), work / "bundle")


def motion_video(seconds: float, fps: float, size: int) -> torch.Tensor:
    """``[T, size, size, 3]`` uint8 frames of moving shapes (synthetic, seeded)."""
    from mmduplex.data.synthetic import make_motion_video

    return torch.from_numpy(make_motion_video(round(seconds * fps), fps, speed=25.0, num_shapes=3, size=size))


def looping(features: torch.Tensor, fps: float) -> Iterator[tuple[float, torch.Tensor]]:
    """``(t, patches [P, D])`` at ``fps`` for ever, cycling through cached features ``[T, P, D]``."""
    for frame in itertools.count():
        yield frame / fps, features[frame % features.shape[0]]


@torch.inference_mode()
def long_stream(session: DuplexSession, features: torch.Tensor, minutes: float) -> dict:
    """Feed looping cached features for ``minutes``; per-step latencies and RSS around the marks; 5-min snapshot."""
    hz = session.step_hz
    marks = {round(2 * 60 * hz): "2 min", round(minutes * 60 * hz): f"{minutes:g} min"}
    snapshot_at = round(5 * 60 * hz)
    span = round(60 * hz)  # latency statistics over the minute before each mark
    total = max(marks)
    latencies, result, snapshot = [], {}, None
    started = time.perf_counter()
    for k, out in enumerate(StepLoop(session, looping(features, session.fps), end_s=total / hz, after="stop")):
        latencies.append(out.elapsed_s * 1e3)
        if k + 1 == snapshot_at:
            snapshot = session.copy()
        if k + 1 in marks:
            window = latencies[-span:]
            result[marks[k + 1]] = {
                "p50": statistics.median(window),
                "p95": pct(window, 95),
                "rss_mb": rss_mb(),
                "cache": session.cache.length,
                "pending_video": session.pending_video_tokens,
            }
            latencies = []
    compute = time.perf_counter() - started
    result["rtf"] = compute / (total / hz)
    result["snapshot"] = snapshot
    return result


@torch.inference_mode()
def recompute_speedup(session: DuplexSession, history_steps: int, repeats: int) -> dict:
    """Median ms: a cached step vs an uncached ``DuplexLM.forward`` over the window / the whole history."""
    model, k, dv = session.model, session.model.slots_per_step, session.model.token_dim

    def forward_ms(length: int) -> float:
        text = torch.full((1, length), session.pad_id)  # [1, S]
        slots, mask = torch.randn(1, length, k, dv), torch.ones(1, length, k, dtype=torch.bool)  # [1, S, K, Dv]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(text, slots, mask)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    cached = statistics.median(session.copy().step().elapsed_s * 1e3 for _ in range(repeats))
    window = session.cache.max_length + 1
    return {"cached_ms": cached, "window": window, "window_ms": forward_ms(window),
            "history": history_steps, "history_ms": forward_ms(history_steps)}  # fmt: skip


def video_rtf(session: DuplexSession, seconds: float, work: Path) -> float:
    """End-to-end RTF from an mp4 file: decode (PyAV) + encode + tokenize + step, as ``mmduplex stream`` does."""
    from mmduplex.io.video import write_video

    path = work / "motion.mp4"
    write_video(path, motion_video(seconds, 10.0, 96), fps=10.0)
    start = time.perf_counter()
    steps = sum(1 for _ in session.run(open_frames(path, session)))
    return (time.perf_counter() - start) / (steps / session.step_hz)


def large_bundle(quantize: str) -> tuple[DuplexBundle, object, int]:
    """A Qwen2.5-0.5B-shaped duplex model + ViT-B-32-shaped encoder (random init, bf16 or int8 dynamic), the
    encoder, and the LM's parameter count before quantisation."""
    from mmduplex.lm.model import DuplexLM, build_backbone
    from mmduplex.lm.text import build_word_tokenizer
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from mmduplex.tokenizer.encoders.factory import create_encoder

    encoder = create_encoder("ViT-B-32:random", device="cpu")
    text = build_word_tokenizer([f"w{i}" for i in range(QWEN_05B["vocab_size"] - 300)])
    dtype = "bfloat16" if quantize == "bf16" else "float32"
    torch.manual_seed(0)
    backbone = build_backbone(QWEN_05B, torch_dtype=dtype, attn_implementation="sdpa")
    params = sum(p.numel() for p in backbone.parameters())
    if quantize == "int8":  # the backbone's linear layers (LM head included); the duplex parts stay float32
        backbone = torch.ao.quantization.quantize_dynamic(backbone.eval(), {torch.nn.Linear}, dtype=torch.qint8)
    model = DuplexLM(backbone, text.vocab_size, text.pad_id, text.epad_id, encoder.width, slots_per_step=8).eval()
    video = BFlowTokenizer(BFlowConfig(dim=encoder.width, grid=encoder.grid, num_key_tokens=16, max_flow_tokens=16))
    config = {"step_hz": 10.0, "delay_steps": 2, "slots_per_step": 8, "fps": 2.0, "encoder": encoder.fingerprint}
    return DuplexBundle(model, text, video.eval(), config), encoder, params


@torch.inference_mode()
def large_stream(quantize: str, seconds: float, window: int, repeats: int) -> dict:
    """RTF of the 0.5B-shaped model over ``seconds`` of 2 fps video (encode + tokenize + step), then the speed-up."""
    bundle, encoder, params = large_bundle(quantize)
    session = DuplexSession(bundle, sink=4, window=window, encoder=encoder)
    frames = motion_video(seconds, 2.0, encoder.image_size)
    for _ in session.run([(0.0, frames[0])], end_s=3 / session.step_hz, flush=False):  # warm-up (oneDNN), not timed
        pass
    session.reset()
    start = time.perf_counter()
    outs = list(session.run(((k / 2.0, f) for k, f in enumerate(frames)), end_s=seconds))
    wall = time.perf_counter() - start
    steps = [o.elapsed_s * 1e3 for o in outs]
    result = {"params_m": params / 1e6, "steps": len(outs), "rtf": wall / (len(outs) / session.step_hz),
              "step_p50": statistics.median(steps), "step_p95": pct(steps, 95), "rss_mb": rss_mb(),
              "cache": session.cache.length}  # fmt: skip
    if repeats:
        result["speedup"] = recompute_speedup(session, len(outs), repeats)
    return result


def verdict(value: float, target: float, at_most: bool = True) -> str:
    """``"met"`` or ``"NOT met"`` with the target, for the printed lines."""
    ok = value <= target if at_most else value >= target
    return f"target {'<=' if at_most else '>='} {target:g}: {'met' if ok else 'NOT met'}"


def print_speedup(speed: dict) -> None:
    x_window, x_history = speed["window_ms"] / speed["cached_ms"], speed["history_ms"] / speed["cached_ms"]
    print(f"cached step {speed['cached_ms']:.3f} ms; recompute the window ({speed['window']} positions, no cache) "
          f"{speed['window_ms']:.3f} ms -> x{x_window:.1f} ({verdict(x_window, 20, at_most=False)})")  # fmt: skip
    print(
        f"recompute the whole history ({speed['history']} positions) {speed['history_ms']:.3f} ms -> x{x_history:.1f}"
    )


def demo_part(args: argparse.Namespace) -> None:
    """Parts 1-3: the demo model (long stream, recompute speed-up at 5 min, end-to-end RTF)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = load_bundle(args.bundle or train_demo_bundle(work, args.train_steps))
        session = DuplexSession(bundle, window=args.window)
        lm = bundle.model.backbone.config
        print(f"demo model: {lm.model_type} hidden={lm.hidden_size} layers={lm.num_hidden_layers}, "
              f"{sum(p.numel() for p in bundle.model.parameters()) / 1e6:.2f}M params; step_hz={bundle.step_hz:g} "
              f"fps={bundle.fps:g} K={bundle.slots_per_step}; sink={session.sink} window={session.window}")  # fmt: skip
        with torch.inference_mode():
            features = session.encoder.encode(motion_video(30.0, bundle.fps, 96)).patches.cpu()  # [T, P, D]
        stream = long_stream(session, features, args.minutes)
        print(f"\n1. long synthetic stream ({args.minutes:g} min at {bundle.step_hz:g} Hz, cached features)")
        print(f"{'mark':>8} {'step_ms_p50':>11} {'step_ms_p95':>11} {'rss_MiB':>8} {'cache':>6} {'video_q':>7}")
        marks = [m for m in stream if m.endswith("min")]
        for mark in marks:
            s = stream[mark]
            print(f"{mark:>8} {s['p50']:>11.3f} {s['p95']:>11.3f} {s['rss_mb']:>8.1f} {s['cache']:>6} "
                  f"{s['pending_video']:>7}")  # fmt: skip
        first, last = stream[marks[0]], stream[marks[-1]]
        p95_ratio, mem_ratio = last["p95"] / first["p95"], last["rss_mb"] / first["rss_mb"]
        print(f"step p95 ratio {marks[-1]} / 2 min: {p95_ratio:.3f} ({verdict(p95_ratio, 1.2)})")
        print(f"RSS ratio {marks[-1]} / 2 min: {mem_ratio:.3f} ({verdict(mem_ratio, 1.1)})")
        print(f"RTF of the feature stream (tokenizer + LM steps, no decode/encode): {stream['rtf']:.4f}")
        print(f"peak RSS of the process: {_peak_rss_mb():.1f} MiB")
        if stream["snapshot"] is not None:
            print("\n2. at 5 min of stream: one cached step vs an uncached forward")
            print_speedup(recompute_speedup(stream["snapshot"], round(5 * 60 * bundle.step_hz), args.repeats))
        rtf = video_rtf(DuplexSession(bundle, window=args.window), args.video_seconds, work)
        print(f"\n3. demo model end to end from an mp4 ({args.video_seconds:g} s; decode + encode + tokenize + step)")
        print(f"RTF {rtf:.4f} ({verdict(rtf, 0.05)})")


def large_part(args: argparse.Namespace) -> None:
    """Part 4: the 0.5B-shaped LM with a ViT-B-32-shaped encoder."""
    print(f"\n4. Qwen2.5-0.5B-shaped LM + ViT-B-32-shaped encoder, random init, 2 fps video, 10 Hz steps, "
          f"{args.large_seconds:g} s of stream, sink 4 + window {args.large_window}")  # fmt: skip
    for quantize in args.large:
        r = large_stream(quantize, args.large_seconds, args.large_window, args.large_repeats)
        print(f"{quantize:>5}: {r['params_m']:.0f}M LM params, {r['steps']} steps, step_ms p50 {r['step_p50']:.1f} "
              f"p95 {r['step_p95']:.1f}, RSS {r['rss_mb']:.0f} MiB, cache {r['cache']}, "
              f"RTF {r['rtf']:.3f} ({verdict(r['rtf'], 1.0)})")  # fmt: skip
        if "speedup" in r:
            print_speedup(r["speedup"])


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="duplex bundle (default: train the tiny recipe)")
    parser.add_argument("--train-steps", type=int, default=48, help="training steps of the default demo model")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long synthetic stream")
    parser.add_argument("--window", type=int, default=None, help="cache window of the demo model (default: bundle's)")
    parser.add_argument("--repeats", type=int, default=30, help="repeats of the speed-up measurement")
    parser.add_argument("--video-seconds", type=float, default=60.0, help="length of the end-to-end video stream")
    parser.add_argument("--large-seconds", type=float, default=60.0, help="stream length of the 0.5B-shaped model")
    parser.add_argument("--large-window", type=int, default=512, help="cache window of the 0.5B-shaped model")
    parser.add_argument("--large", nargs="*", default=["bf16", "int8"], choices=["bf16", "int8"])
    parser.add_argument("--large-repeats", type=int, default=3, help="repeats of the 0.5B model's speed-up (0: skip)")
    parser.add_argument("--skip-demo", action="store_true", help="skip the demo model (parts 1-3)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 0.5B-shaped model (part 4)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*quantiz", category=DeprecationWarning)  # torch.ao's notice
    warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)

    print_header("bench_streaming: DuplexSession (sink + window cache)")
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_demo:
        demo_part(args)
    if not args.skip_large:
        large_part(args)


if __name__ == "__main__":
    main()
