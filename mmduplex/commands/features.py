"""``mmduplex features VIDEOS... --out DIR``: frozen image-encoder features of many videos into a resumable cache.

Without ``--encoder`` the features are the real ImageNet EfficientNet-Lite0's (offline, from the weights registry);
a random encoder only when named as one (``mmduplex-tiny``, ``MODEL:random``).
"""

from __future__ import annotations

import argparse
import sys

HELP = "Extract frozen image-encoder patch features of videos into safetensors shards + index (resumable)."
DEFAULT_ENCODER = "efficientnet-lite0"  # = mmduplex.tokenizer.encoders.factory.DEFAULT_ENCODER (not imported: torch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mmduplex features``."""
    parser.add_argument("videos", nargs="+", metavar="VIDEOS", help="video files to encode")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder (index.json + <key>.safetensors)")
    parser.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        metavar="NAME",
        help="efficientnet-lite0 (default: real ImageNet weights, offline), mmduplex-tiny (random, for tests), "
        "an open_clip MODEL:TAG or MODEL:/path/to/weights, MODEL:random, or a local open_clip folder",
    )
    parser.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video (default: 2)")
    parser.add_argument(
        "--workers", type=int, default=1, help="decoding processes feeding the encoder (default: 1, in-process)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward pass (default: 64)")
    parser.add_argument("--device", default=None, help="encoder device, e.g. cpu or cuda:0 (default: cuda if present)")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="run Lightning's predict loop on N devices (DDP when N > 1, e.g. one process per GPU)",
    )
    parser.add_argument(
        "--accelerator", default="auto", help="Lightning accelerator for --devices: auto, cpu or gpu (default: auto)"
    )


def run(args: argparse.Namespace) -> int:
    """Encode the videos; print a one-line summary; exit status 1 if any video failed (the rest are encoded)."""
    from lightning.pytorch.utilities import rank_zero_only

    from mmduplex.train.features import extract_features

    report = extract_features(
        args.videos,
        args.out,
        encoder=args.encoder,
        fps=args.fps,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        devices=args.devices,
        accelerator=args.accelerator,
    )
    if rank_zero_only.rank != 0:  # DDP worker ranks: rank 0 reports
        return 0
    print(report.summary())
    for path, problem in report.failed.items():
        print(f"mmduplex: error: {path}: {problem}", file=sys.stderr)
    return 1 if report.failed else 0
