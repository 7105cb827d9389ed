"""``mmduplex serve --checkpoint BUNDLE [--videos DIR]``: a web page where a video plays while the model comments on
it live, and a question typed into the page is answered in the same stream of lines, without pausing the video.

The app is :func:`mmduplex.serve.app.create_app` on uvicorn; it needs the ``serve`` extra (``pip install
'mmduplex[serve]'``: fastapi, uvicorn, websockets, python-multipart). It binds 127.0.0.1 unless ``--host`` says
otherwise, serves files only from under ``--videos DIR`` and keeps uploads in a temporary folder of its own.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

HELP = "Serve a web page that plays a video while the model comments on it live and answers typed questions."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mmduplex serve``."""
    parser.add_argument("--checkpoint", required=True, metavar="BUNDLE", help="duplex inference bundle folder")
    parser.add_argument("--videos", default=None, metavar="DIR", help="folder of videos the page offers")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--max-sessions", type=int, default=4, metavar="N", help="most viewers at once (default 4)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=200.0, metavar="MB", help="largest upload accepted (default 200)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument(
        "--pad-bias", type=float, default=0.0, help="added to the PAD logit: > 0 quieter, < 0 more talkative"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of each session's sampling generator")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per step (default 1: viewers run in parallel threads)"
    )


def run(args: argparse.Namespace) -> int:
    """Load the bundle and serve until interrupted."""
    from pathlib import Path

    from mmduplex.errors import InputError

    if not 0 < args.port < 65536:
        raise InputError("--port", f"must be 1-65535, got {args.port}")
    if args.threads < 1:
        raise InputError("--threads", f"must be >= 1, got {args.threads}")
    if args.videos is not None and not Path(args.videos).is_dir():
        raise InputError(args.videos, "--videos must be a folder of video files")
    try:
        import uvicorn

        from mmduplex.serve.app import ServeSettings, create_app
    except ImportError as err:
        raise InputError(
            "serve", f"needs the serve extra ({err.name} is missing): pip install 'mmduplex[serve]'"
        ) from None
    import torch

    from mmduplex.inference.model import load

    settings = ServeSettings(
        videos=None if args.videos is None else Path(args.videos),
        max_sessions=args.max_sessions,
        max_upload_mb=args.max_upload_mb,
        max_uploads=2 * args.max_sessions,
        temperature=args.temperature,
        top_k=args.top_k,
        pad_bias=args.pad_bias,
        seed=args.seed,
    )
    torch.set_num_threads(args.threads)
    model = load(args.checkpoint, device=args.device)
    app = create_app(model, settings)
    if not _is_loopback(args.host):
        log.warning("serving on %s: anyone who can reach this machine can use the model and upload files", args.host)
    log.info("mmduplex serve: http://%s:%d/ (%s)", args.host, args.port, model)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
