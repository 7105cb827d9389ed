"""mmduplex: duplex video-to-text models (delayed-streams duplex LM over B-Flow video tokens).

The public API::

    import mmduplex

    model = mmduplex.load("demo_out/bundle")  # an inference bundle folder -> DuplexModel
    for line in model.stream("clip.mp4", ask={4.0: "what colour is the circle?"}):
        print(f"{line.start:5.1f}s  {line.text}")
    session = model.session()  # frames as they come: session.push_frame(t, frame); session.step()
    tokens = mmduplex.tokenize("clip.mp4")  # B-Flow on one video: the tokens.json figures
    encoder = mmduplex.create_encoder("efficientnet-lite0")  # a frozen image encoder by name

The names resolve lazily (a module-level ``__getattr__``): ``import mmduplex`` and ``mmduplex --help`` import no
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mmduplex.inference.commentary import Commentary
    from mmduplex.inference.loop import Question
    from mmduplex.inference.model import DuplexModel, load
    from mmduplex.inference.session import DuplexSession, StepOutput
    from mmduplex.inference.video_tokens import FrameCount, VideoTokens, tokenize
    from mmduplex.io.outputs import CommentaryLine
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder
    from mmduplex.tokenizer.encoders.factory import create_encoder

_PUBLIC = {
    "load": "mmduplex.inference.model",
    "DuplexModel": "mmduplex.inference.model",
    "DuplexSession": "mmduplex.inference.session",
    "StepOutput": "mmduplex.inference.session",
    "Commentary": "mmduplex.inference.commentary",
    "CommentaryLine": "mmduplex.io.outputs",
    "Question": "mmduplex.inference.loop",
    "tokenize": "mmduplex.inference.video_tokens",
    "VideoTokens": "mmduplex.inference.video_tokens",
    "FrameCount": "mmduplex.inference.video_tokens",
    "create_encoder": "mmduplex.tokenizer.encoders.factory",
    "FrozenImageEncoder": "mmduplex.tokenizer.encoders.base",
}
"""Public name -> the module that defines it."""

__all__ = [
    "Commentary",
    "CommentaryLine",
    "DuplexModel",
    "DuplexSession",
    "FrameCount",
    "FrozenImageEncoder",
    "Question",
    "StepOutput",
    "VideoTokens",
    "__version__",
    "create_encoder",
    "load",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'mmduplex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
