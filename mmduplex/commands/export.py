"""``mmduplex export CKPT --out BUNDLE``: a trained Lightning checkpoint -> an inference bundle folder."""

from __future__ import annotations

import argparse
import logging

HELP = "Turn a trained checkpoint (duplex model or B-Flow tokenizer) into an inference bundle folder."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mmduplex export``."""
    parser.add_argument("checkpoint", metavar="CKPT", help="Lightning checkpoint (.ckpt) written by `mmduplex fit`")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (replaced atomically)")


def run(args: argparse.Namespace) -> int:
    """Export the checkpoint; a duplex checkpoint gives a duplex bundle, a B-Flow one a tokenizer bundle."""
    from mmduplex.lm.bundle import export_bundle

    out = export_bundle(args.checkpoint, args.out)
    log.info("bundle written to %s", out)
    return 0
