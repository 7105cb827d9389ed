"""``mmduplex tokenize VIDEO --out tokens.json``: run B-Flow on one video and report what it emitted.

The video is sampled at ``--fps``, encoded by the frozen encoder and tokenized frame by frame. Without
``--checkpoint`` the untrained default tokenizer runs (its decisions do not depend on learned weights, so the token
counts already follow motion) and no fidelity is reported; with one, the trained decoder's reconstruction gives
``fidelity`` (:func:`mmduplex.tokenizer.fidelity.fidelity`). The keys of ``tokens.json`` are listed in
``docs/DESIGN.md`` ("Command outputs").
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "Run the B-Flow video tokenizer on one video and write what it emitted per frame (tokens.json)."
DEFAULT_ENCODER = "mmduplex-tiny"
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


def _configure(loaded, args: argparse.Namespace, dim: int, grid: tuple[int, int]):
    """The tokenizer to run: the loaded one (checked against the encoder) or the untrained defaults."""
    from mmduplex.errors import CheckpointError, InputError
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

    try:
        if loaded is None:
            return BFlowTokenizer(BFlowConfig(dim=dim, grid=grid, target_rate=args.target_rate)).eval()
        cfg = loaded.config
        if (cfg.dim, tuple(cfg.grid)) != (dim, tuple(grid)):
            raise CheckpointError(
                args.checkpoint,
                f"tokenizer expects {cfg.grid[0]}x{cfg.grid[1]} patches of width {cfg.dim}, "
                f"the encoder gives {grid[0]}x{grid[1]} of width {dim}",
            )
        return loaded if args.target_rate is None else loaded.with_settings(target_rate=args.target_rate)
    except InputError as err:  # the only setting taken from the command line is the rate
        raise InputError("--target-rate", err.problem) from err


def run(args: argparse.Namespace) -> int:
    """Tokenize the video, write the JSON atomically and print a one-line summary."""
    import torch

    from mmduplex.errors import CheckpointError, InputError, VideoError
    from mmduplex.fileio import write_json_atomic
    from mmduplex.io.video import read_video
    from mmduplex.tokenizer.bflow import BFlowTokenizer
    from mmduplex.tokenizer.encoders.factory import create_encoder
    from mmduplex.tokenizer.fidelity import fidelity

    if args.fps is not None and not args.fps > 0:
        raise InputError("--fps", f"must be > 0, got {args.fps}")
    if args.target_rate is not None and not args.target_rate > 0:
        raise InputError("--target-rate", f"must be > 0, got {args.target_rate}")
    # Read the checkpoint first: a bad one fails before any decoding.
    loaded = None if args.checkpoint is None else BFlowTokenizer.from_checkpoint(args.checkpoint)
    metadata: dict[str, Any] = {} if loaded is None else loaded.metadata
    trained_on = metadata.get("encoder") or {}
    spec = args.encoder or _spec_of(trained_on) or DEFAULT_ENCODER
    fps = args.fps or metadata.get("fps") or DEFAULT_FPS
    encoder = create_encoder(spec)
    if trained_on and trained_on != encoder.fingerprint:
        raise CheckpointError(
            args.checkpoint,
            f"trained on features of encoder {trained_on}, but {spec} is {encoder.fingerprint} (pass --encoder)",
        )
    tokenizer = _configure(loaded, args, encoder.width, encoder.grid).to(encoder.device)
    clip = read_video(args.video, fps, size=encoder.image_size if encoder.resize_mode == "shortest" else None)
    if clip.frames.shape[0] == 0:
        raise VideoError(args.video, f"no frame sampled at {fps:g} fps")
    with torch.inference_mode():
        patches = encoder.encode(clip.frames).patches  # [T, P, D]
        tokenized = tokenizer.tokenize(patches, clip.timestamps)
    rates = tokenized.summary(clip.duration_s)
    report: dict[str, Any] = {
        "video": str(args.video),
        "fps": float(fps),
        "duration_s": float(clip.duration_s),
        "frames": len(tokenized.frames),
        "tokens_total": rates["tokens_total"],
        "tokens_per_second": rates["tokens_per_second"],
        "keyframes": rates["keyframes"],
        "flow_tokens": rates["flow_tokens"],
        "per_frame": rates["per_frame"],
    }
    if args.checkpoint is not None:
        report["fidelity"] = fidelity(patches.cpu(), tokenized.recon.cpu())
    report["tokens_per_second_after_first_keyframe"] = rates["tokens_per_second_after_first_keyframe"]
    report["encoder"] = spec
    report["target_rate"] = tokenizer.config.target_rate
    report["checkpoint"] = None if args.checkpoint is None else str(args.checkpoint)
    write_json_atomic(args.out, report)
    fid = f"fidelity {report['fidelity']:.3f}" if "fidelity" in report else "fidelity n/a (no --checkpoint)"
    print(
        f"{Path(args.video).name}: {report['tokens_per_second']:.2f} tokens/s "
        f"({report['tokens_per_second_after_first_keyframe']:.2f} after the first keyframe), "
        f"{report['keyframes']} keyframes, {report['flow_tokens']} flow tokens, {fid} -> {args.out}"
    )
    return 0


def _spec_of(fingerprint: dict) -> str | None:
    """The ``MODEL[:PRETRAINED]`` spec an encoder fingerprint was made from (None when unknown)."""
    model, pretrained = fingerprint.get("model"), fingerprint.get("pretrained")
    if not model or str(model).startswith("local-dir:"):  # a local folder's path is not recorded
        return None
    if str(model).startswith("hf-hub:") or not pretrained:
        return str(model)
    return f"{model}:{pretrained}"
