"""Inference: the streaming session (one model step per tick) and the one streaming loop every caller uses.

- :mod:`~mmduplex.inference.session`: :class:`DuplexSession`, one model step per tick on a bounded KV cache;
- :mod:`~mmduplex.inference.loop`: :class:`StepLoop`, timed frames and questions in, steps out (the loop);
- :mod:`~mmduplex.inference.commentary`: :class:`Commentary`, a source streamed into commentary lines, with the
  figures of ``mmduplex stream --report``;
- :mod:`~mmduplex.inference.model`: :class:`DuplexModel`, a loaded bundle with its encoder (:func:`mmduplex.load`);
- :mod:`~mmduplex.inference.video_tokens`: :func:`tokenize`, B-Flow on one video (:func:`mmduplex.tokenize`).

Modules of the package import each other by full module path, not through these re-exports.
"""

from mmduplex.inference.commentary import Commentary, LineCollector
from mmduplex.inference.loop import Question, RealtimePacer, StepLoop, feed, timeline
from mmduplex.inference.model import DuplexModel, load
from mmduplex.inference.session import DuplexSession, StepOutput
from mmduplex.inference.video_tokens import FrameCount, VideoTokens, tokenize

__all__ = [
    "Commentary",
    "DuplexModel",
    "DuplexSession",
    "FrameCount",
    "LineCollector",
    "Question",
    "RealtimePacer",
    "StepLoop",
    "StepOutput",
    "VideoTokens",
    "feed",
    "load",
    "timeline",
    "tokenize",
]
