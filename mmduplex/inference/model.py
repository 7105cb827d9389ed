"""``DuplexModel``: a loaded inference bundle with its frozen image encoder, what :func:`mmduplex.load` returns.

::

    model = DuplexModel.load("demo_out/bundle")
    for line in model.stream("clip.mp4", ask={4.0: "what colour is the circle?"}):
        print(f"{line.start:5.1f}s  {line.text}")
    session = model.session(temperature=0.7)  # frames as they come: session.push_frame(t, frame); session.step()

:meth:`DuplexModel.stream` runs the one streaming loop (:class:`~mmduplex.inference.commentary.Commentary` over
:class:`~mmduplex.inference.loop.StepLoop`), as ``mmduplex stream``, the demo and the evaluations do;
:meth:`DuplexModel.session` opens a :class:`~mmduplex.inference.session.DuplexSession` to step by hand (moshi's
``LMGen.step``). Every stream and session shares the model's weights and encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmduplex.inference.commentary import (
    DEFAULT_LINE_DISPLAY_S,
    DEFAULT_LINE_PAUSE_S,
    DEFAULT_LINE_WORDS,
    Commentary,
    Source,
)
from mmduplex.inference.loop import Ask
from mmduplex.inference.session import DuplexSession, check_encoder
from mmduplex.lm.bundle import DuplexBundle, load_bundle

if TYPE_CHECKING:
    from mmduplex.lm.model import DuplexLM
    from mmduplex.lm.text import TextTokenizer
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder


class DuplexModel:
    """A duplex model ready to stream: the bundle (LM, video and text tokenizers, settings) and its frozen encoder.

    Args:
        bundle: a loaded inference bundle (:func:`mmduplex.lm.bundle.load_bundle`).
        encoder: the frozen image encoder the bundle was trained on (``None``: built from the bundle's encoder spec,
            when it records one; a bundle without one can stream patch features only).
        path: the bundle folder it was loaded from, if any.

    Raises:
        CheckpointError: the encoder is not the one the bundle was trained on.
    """

    def __init__(
        self, bundle: DuplexBundle, encoder: FrozenImageEncoder | None = None, path: str | os.PathLike | None = None
    ) -> None:
        self.bundle = bundle
        self.device = next(bundle.model.parameters()).device
        if encoder is None and bundle.encoder_spec is not None:
            from mmduplex.tokenizer.encoders.factory import create_encoder

            encoder = create_encoder(bundle.encoder_spec, device=self.device)
        if encoder is not None:
            check_encoder(bundle, encoder)
        self.encoder = encoder
        self.path = None if path is None else Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> DuplexModel:
        """Load the inference bundle folder at ``path`` (written by ``mmduplex export`` or the demo, before or after
        the package move) and build its encoder.

        Raises:
            CheckpointError: a missing or broken bundle, a bundle of another kind, or an encoder that cannot be built.
        """
        return cls(load_bundle(path, device=device), path=path)

    @property
    def model(self) -> DuplexLM:
        """The duplex LM."""
        return self.bundle.model

    @property
    def video_tokenizer(self) -> torch.nn.Module:
        """The frozen video tokenizer (B-Flow, or the baseline the model was trained on)."""
        return self.bundle.video_tokenizer

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """The text tokenizer with PAD / EPAD."""
        return self.bundle.text_tokenizer

    @property
    def step_hz(self) -> float:
        """Model steps per second of stream."""
        return self.bundle.step_hz

    @property
    def fps(self) -> float | None:
        """Frames per second the model was trained on (video sources are decoded at this rate)."""
        return self.bundle.fps

    def session(
        self,
        *,
        sink: int | None = None,
        window: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        pad_bias: float = 0.0,
        seed: int = 0,
    ) -> DuplexSession:
        """A new live session on this model (see :class:`~mmduplex.inference.session.DuplexSession` for the
        arguments): push frames and questions as they come and ``step()`` once per tick."""
        return DuplexSession(
            self.bundle,
            sink=sink,
            window=window,
            temperature=temperature,
            top_k=top_k,
            pad_bias=pad_bias,
            seed=seed,
            encoder=self.encoder,
            device=self.device,
        )

    def stream(
        self,
        source: Source,
        ask: Ask = None,
        realtime: bool = False,
        *,
        max_seconds: float | None = None,
        line_pause_s: float = DEFAULT_LINE_PAUSE_S,
        line_words: int = DEFAULT_LINE_WORDS,
        line_display_s: float = DEFAULT_LINE_DISPLAY_S,
        **sampling: Any,
    ) -> Commentary:
        """Stream ``source`` through a new session; iterate the result to get commentary lines as they are produced.

        Args:
            source: a video file, ``"-"`` (stdin), a URL, or ``(t, frame)`` / ``(t, patches)`` pairs in time order.
            ask: questions ``{t: text}`` (``t`` in seconds of stream, or ``"end"``: typed after the last frame).
            realtime: pace the input at wall-clock speed.
            max_seconds: read at most this many seconds of input.
            line_pause_s: seconds of silence that end a line.
            line_words: words that end a line.
            line_display_s: seconds a line stays up after its last word.
            **sampling: :meth:`session` arguments (``temperature``, ``top_k``, ``pad_bias``, ``seed``, ``sink``,
                ``window``).

        Returns:
            A :class:`~mmduplex.inference.commentary.Commentary`: iterate it for the lines (the last ones come when
            the input ends); afterwards ``.lines``, ``.words`` and ``.report()`` hold the whole stream.
        """
        return Commentary(
            self.session(**sampling),
            source,
            ask=ask,
            end_s=max_seconds,
            realtime=realtime,
            line_pause_s=line_pause_s,
            line_words=line_words,
            line_display_s=line_display_s,
        )

    def __repr__(self) -> str:
        where = f"{self.path}, " if self.path is not None else ""
        encoder = self.bundle.encoder_spec or "none (features only)"
        return f"DuplexModel({where}step_hz={self.step_hz:g}, fps={self.fps}, encoder={encoder})"


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> DuplexModel:
    """Load a duplex inference bundle folder with its encoder: :meth:`DuplexModel.load`."""
    return DuplexModel.load(path, device=device)
