"""Lockstep batching (:func:`mmduplex.inference.batched.stream_features_batched`) against streaming one video at a
time (:func:`mmduplex.demo.stream.stream_features`, the demo's path): wall and CPU time for the same videos, as a
ratio in the same run, and whether every video's commentary came out the same.

Run from the repository root::

    python -m benchmarks.bench_batched_streaming                       # the tiny recipe's model (untrained)
    python -m benchmarks.bench_batched_streaming --smollm2             # also the frozen SmolLM2-135M projector model
    python -m benchmarks.bench_batched_streaming --videos 16 --seconds 20 --batch 4 8 16

Models (untrained, seeded: the figures are about cost, not what is said): ``recipes/duplex/tiny.yaml``'s shape (a
2 x 96 llama, B-Flow 12 x 12 x 64, K = 8, 5 Hz, tau 2, the bundle's default cache: 30 s window); with ``--smollm2``
also the projector recipe's model as ``benchmarks/bench_smollm2_cpu.py`` builds it (the registry's offline copy
``smollm2-135m-instruct-q4_1``, prepared once by ``mmduplex weights get``; sink 4 + window 45; ``--smollm2-videos``
videos of ``--smollm2-seconds`` s, keep them few: a step costs ~0.1 s). Videos: a random patch field drifting frame by
frame at 2 fps, a different one per video, lengths spread from 70 % to 100 % of ``--seconds`` (so streams leave a
batch at different steps). Each figure is one run; the machine may be shared: the header prints the load average, and
the CPU seconds vary less than wall seconds under load.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import yaml

from benchmarks.common import Timer, print_header

DV, GRID, FPS = 64, 12, 2.0
PAUSE_STEPS = 5


def tiny_session():
    """A session on the tiny recipe's model, untrained (seeded), no image encoder (features are pushed)."""
    from mmduplex.inference.session import DuplexSession
    from mmduplex.lm.bundle import DuplexBundle
    from mmduplex.recipes import recipe_path
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from mmduplex.train.duplex_module import DuplexModule

    recipe = yaml.safe_load(Path(recipe_path("duplex/tiny")).read_text())["model"]["init_args"]
    video = BFlowTokenizer(BFlowConfig(**recipe.pop("video_tokenizer")["init_args"]["config"]))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's note on saving the video tokenizer as a hyperparameter
        module = DuplexModule(video, **recipe)
    keys = ("step_hz", "delay_steps", "slots_per_step", "user_slots_per_step")
    config = {**{key: recipe[key] for key in keys}, "fps": FPS, "encoder": None}
    return DuplexSession(DuplexBundle(module.model.eval(), module.text_tokenizer, video.eval(), config))


def smollm2_session():
    """A session on the projector recipe's SmolLM2-135M model (untrained projector), as bench_smollm2_cpu builds it."""
    from benchmarks.bench_smollm2_cpu import duplex, load_parts, session

    text, backbone = load_parts()
    return session(text, duplex(text, backbone), None, 45)


def videos(count: int, seconds: float) -> list[tuple[str, list[float], torch.Tensor]]:
    """``count`` videos of patch features ``[T, 144, 64]`` at 2 fps, lengths from 70 % to 100 % of ``seconds``."""
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        base, drift = torch.randn(GRID * GRID, DV, generator=g), torch.randn(GRID * GRID, DV, generator=g)
        frames = max(1, round(seconds * FPS * (1.0 - 0.3 * i / max(1, count - 1))))
        patches = torch.stack([base + 0.05 * k * drift for k in range(frames)])  # [T, P, D]
        out.append((f"video{i}", [k / FPS for k in range(frames)], patches))
    return out


def compare(name: str, session, clips: list, batches: list[int]) -> None:
    from mmduplex.demo.stream import MAX_WORDS_PER_LINE, MIN_DISPLAY_S, stream_features
    from mmduplex.inference.batched import stream_features_batched

    seconds = sum(times[-1] + 1 / FPS for _, times, _ in clips)
    print(f"{name}: {len(clips)} videos, {seconds:.0f} s of video at {FPS:g} fps, {session.step_hz:g} Hz steps, "
          f"sink {session.sink} + window {session.window}, threads {torch.get_num_threads()}")  # fmt: skip
    stream_features(session, clips[0][0], clips[0][1][:2], clips[0][2][:2], PAUSE_STEPS)  # warm-up, not timed
    with Timer() as alone_timer:
        alone = [stream_features(session, vid, times, patches, PAUSE_STEPS) for vid, times, patches in clips]
    steps = sum(r.steps for r in alone)
    print(f"  one at a time: {alone_timer.seconds:7.2f} s wall ({alone_timer.cpu_seconds:7.2f} s CPU), {steps} steps, "
          f"{alone_timer.seconds / steps * 1e3:.1f} ms a step")  # fmt: skip
    for batch in batches:
        with Timer() as timer:
            together = stream_features_batched(
                session, clips, PAUSE_STEPS, batch=batch, line_words=MAX_WORDS_PER_LINE, line_display_s=MIN_DISPLAY_S
            )
        same = sum(a.words == b.words and a.lines == b.lines for a, b in zip(alone, together, strict=True))
        wall, cpu = alone_timer.seconds / timer.seconds, alone_timer.cpu_seconds / timer.cpu_seconds
        print(f"  batch {batch:<3}: {timer.seconds:7.2f} s wall ({timer.cpu_seconds:7.2f} s CPU), {wall:.2f}x faster "
              f"wall, {cpu:.2f}x CPU; same commentary: {same}/{len(clips)} videos")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="videos streamed through the tiny model")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the longest tiny-model video (s)")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8], help="streams per LM step to try")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--smollm2", action="store_true", help="also the frozen SmolLM2-135M projector model")
    parser.add_argument("--smollm2-videos", type=int, default=8, help="videos streamed through SmolLM2")
    parser.add_argument("--smollm2-seconds", type=float, default=4.0, help="longest SmolLM2 video (s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_header("Lockstep batched streaming vs one video at a time")
    compare("tiny recipe model", tiny_session(), videos(args.videos, args.seconds), args.batch)
    if args.smollm2:
        compare("SmolLM2-135M projector model", smollm2_session(), videos(args.smollm2_videos, args.smollm2_seconds),
                args.batch)  # fmt: skip


if __name__ == "__main__":
    main()
