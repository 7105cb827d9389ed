"""B-Flow over many videos: one video at a time (``tokenize``, what the token store did before) against groups of
videos in one step per frame (``tokenize_many``, what the token store and the demo's B-Flow rate do now), as a ratio
in the same run, and whether every video's tokens came out bit for bit the same.

Run from the repository root::

    python -m benchmarks.bench_token_store                          # generated features, the demo's B-Flow settings
    python -m benchmarks.bench_token_store --run demo_out --videos 96   # a demo run's cached features and tokenizer
    python -m benchmarks.bench_token_store --groups 1 8 16 32

Generated features (the default): ``--videos`` videos of 10-30 s at 5 fps on a 12 x 12 x 40 grid (the demo's
encoder), one to three blocks moving over a random background, tokenized by an untrained B-Flow with
``recipes/tokenizer/lite0_s8_region.yaml``'s settings (B-Flow's decisions do not depend on its weights).
``tokenize_many`` sorts the videos by length before it groups them. One thread; each figure is one pass, timed after
a warm-up pass; the header prints the machine and its load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from benchmarks.common import Timer, print_header
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tokenizer" / "lite0_s8_region.yaml"
FPS, GRID, DIM = 5.0, (12, 12), 40


def generated(videos: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``videos`` feature videos ``(patches [T, P, D], times [T])`` of moving blocks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(videos):
        frames = int(FPS * (10 + 20 * torch.rand(1, generator=g).item()))
        background = torch.randn(*GRID, DIM, generator=g)
        blocks = int(torch.randint(1, 4, (1,), generator=g))
        things = torch.randn(blocks, DIM, generator=g)
        start = torch.randint(0, 9, (blocks, 2), generator=g)
        speed = torch.randint(-1, 2, (blocks, 2), generator=g)
        video = []
        for t in range(frames):
            frame = background.clone()
            for k in range(blocks):
                row, col = ((start[k] + speed[k] * (t // 2)) % 10).tolist()  # a move every other frame
                frame[row : row + 3, col : col + 3] = things[k]
            video.append(frame.reshape(-1, DIM))
        out.append((torch.stack(video), torch.arange(frames, dtype=torch.float64) / FPS))
    return out


def from_run(run: Path, videos: int) -> tuple[BFlowTokenizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A demo run's trained tokenizer and the cached features of its first ``videos`` videos (sorted keys)."""
    from mmduplex.io.feature_cache import FeatureCache

    cache = FeatureCache(run / "features")
    records = [cache.load(key) for key in sorted(cache.keys())[:videos]]
    return BFlowTokenizer.from_pretrained(run / "tokenizer"), [(r.patches, r.timestamps) for r in records]


def tokenize_all(tokenizer: BFlowTokenizer, videos: list, group: int) -> list:
    """Every video's frames, ``group`` videos at a time (1: ``tokenize`` each)."""
    if group == 1:
        return [tokenizer.tokenize(patches, times).frames for patches, times in videos]
    return [video.frames for video in tokenizer.tokenize_many(videos, group=group)]


def same(a: list, b: list) -> bool:
    """Bit for bit the same frames (kinds, times, tokens, positions) for every video."""

    def equal(f, g) -> bool:
        same_values = torch.equal(f.tokens, g.tokens) and torch.equal(f.positions, g.positions)
        return (f.kind, f.t) == (g.kind, g.t) and same_values

    return all(len(x) == len(y) and all(map(equal, x, y)) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a demo run's folder (its features and tokenizer)")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 8, 16, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print_header("B-Flow over many videos: tokenize one at a time vs tokenize_many in groups")
    if args.run is not None:
        tokenizer, videos = from_run(args.run, args.videos)
        source = f"{args.run}/features (its tokenizer)"
    else:
        settings = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["model"]["init_args"]["config"]
        tokenizer, videos = BFlowTokenizer(BFlowConfig(**settings)), generated(args.videos)
        source = f"generated (B-Flow untrained, {RECIPE.name}'s settings)"
    tokenizer = tokenizer.eval()
    frames = sum(patches.shape[0] for patches, _ in videos)
    print(f"videos: {len(videos)} ({frames} frames), {source}")
    print("| group | wall s | CPU s | ms / frame | vs one at a time | tokens identical |")
    print("|---|---|---|---|---|---|")
    reference, base = None, None
    with torch.inference_mode():
        for group in args.groups:
            tokenize_all(tokenizer, videos[: min(len(videos), max(group, 2))], group)  # warm-up
            with Timer() as timer:
                result = tokenize_all(tokenizer, videos, group)
            if reference is None:
                reference, base = result, timer.seconds
            ratio = base / timer.seconds if timer.seconds else float("nan")
            print(
                f"| {group} | {timer.seconds:.2f} | {timer.cpu_seconds:.2f} | {1000 * timer.seconds / frames:.2f} | "
                f"{ratio:.2f}x | {same(reference, result)} |"
            )


if __name__ == "__main__":
    main()
