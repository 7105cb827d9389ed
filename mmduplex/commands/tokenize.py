"""``mmduplex tokenize VIDEO --out tokens.json``: run B-Flow on one video and report what it emitted.

The command around :func:`mmduplex.tokenize` (:mod:`mmduplex.inference.video_tokens`): the video is sampled at
``--fps``, encoded by the frozen encoder (``efficientnet-lite0`` unless ``--encoder`` or the checkpoint names
another) and tokenized. Without ``--checkpoint`` the untrained default tokenizer runs and no fidelity is reported.
The keys of ``tokens.json`` are listed in ``docs/DESIGN.md`` ("Command outputs").
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Run the B-Flow video tokenizer on one video and write what it emitted per frame (tokens.json)."
DEFAULT_ENCODER = "efficientnet-lite0"
"""As :data:`mmduplex.inference.video_tokens.DEFAULT_ENCODER` (not imported here: ``--help`` imports no torch)."""
DEFAULT_FPS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mmduplex tokenize``."""
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    parser.add_argument("--out", required=True, metavar="TOKENS_JSON", help="where to write the JSON report")
    parser.add_argument(
        "--encoder",
        default=None,
        metavar="MODEL[:PRETRAINED]",
        help=f"frozen encoder (default: the checkpoint's encoder, else {DEFAULT_ENCODER})",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help=f"frames sampled per second (default: the checkpoint's, else {DEFAULT_FPS:g})",
    )
    parser.add_argument(
        "--target-rate",
        type=float,
        default=None,
        metavar="R",
        help="token budget in tokens/s after the first keyframe (default: the checkpoint's, else variable rate)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="trained tokenizer: a bundle folder or a Lightning checkpoint (default: untrained defaults)",
    )


def run(args: argparse.Namespace) -> int:
    """Tokenize the video (:func:`mmduplex.inference.video_tokens.tokenize`), write the JSON atomically and print a
    one-line summary."""
    from mmduplex.errors import InputError
    from mmduplex.fileio import write_json_atomic
    from mmduplex.inference.video_tokens import tokenize

    for flag, value in (("--fps", args.fps), ("--target-rate", args.target_rate)):
        if value is not None and not value > 0:
            raise InputError(flag, f"must be > 0, got {value}")
    try:
        tokens = tokenize(args.video, args.target_rate, args.encoder, args.fps, args.checkpoint)
    except InputError as err:  # beyond the two checked above, the library refuses only a rate
        if err.path != "target_rate":
            raise
        raise InputError("--target-rate", err.problem) from err
    report = tokens.to_json()
    write_json_atomic(args.out, report)
    fid = f"fidelity {tokens.fidelity:.3f}" if tokens.fidelity is not None else "fidelity n/a (no --checkpoint)"
    print(
        f"{Path(args.video).name}: {tokens.tokens_per_second:.2f} tokens/s "
        f"({tokens.tokens_per_second_after_first_keyframe:.2f} after the first keyframe), "
        f"{tokens.keyframes} keyframes, {tokens.flow_tokens} flow tokens, {fid} -> {args.out}"
    )
    return 0
