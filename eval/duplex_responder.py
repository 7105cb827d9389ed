"""A :class:`~mmduplex.eval.longvideobench_model.Responder` backed by a duplex inference bundle (LongVideoBench model
mode).

The video is streamed through a :class:`~mmduplex.inference.session.DuplexSession` once; every question is then asked
on a ``copy()`` of that session, so the prepared state is never modified.

Streaming a video (:meth:`DuplexResponder.prepare_video`, through the streaming loop
:class:`~mmduplex.inference.loop.StepLoop`): the sampled frames and the kept subtitles are taken in the
reference's interleaved order (:func:`~mmduplex.eval.longvideobench_data.interleave`); frames are pushed at their
timestamps and subtitles typed on the user stream at their mid-times (``ask(text, t)``). Steps between events run
with whatever video has arrived (usually none). Sparse frames of a long video would leave long runs of empty steps; with
``max_gap_steps`` set, at most that many steps run from one event to the next (more while queued subtitle tokens still
need steps to go out): the rest are skipped by shifting all later stream times back, so every gap between events is
kept up to that length. After the last event the session steps until the last frame's step has run and the video
and subtitle backlogs are empty.

Asking (:meth:`DuplexResponder.answer`): the prompt is typed on the user stream from the next step, as many tokens
per step as the bundle has user slots (``user_slots_per_step``, one by default); the token sampled by the step that
feeds the prompt's last token is the model's first reply token. Stepping goes on (no video) for ``max_answer_steps``
reply steps, and the reply is every word said in them, silences skipped: a duplex model may finish a commentary line
before it answers, so its first line is not always the answer (the reference parser then reads the first letter).
Word pieces are joined (a piece that does not start a word is glued to the previous one).

Likelihood (:meth:`DuplexResponder.letter_logprobs`): the log-softmax of the raw logits (no PAD bias, no
temperature) of that first reply step, read at each letter's token id. A letter the text tokenizer cannot spell as
one known token (several pieces, or the unknown token of a word-level vocabulary) gets ``-inf``: the model cannot
answer it in one token. A model whose vocabulary has none of the letters therefore always scores ``-inf`` for all,
and the harness then picks the first letter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmduplex.errors import InputError
from mmduplex.eval.longvideobench_data import Subtitle, interleave
from mmduplex.inference.loop import Question, StepLoop, feed, spoken_words
from mmduplex.inference.session import DuplexSession, StepOutput
from mmduplex.lm.text import UNK_TOKEN


class DuplexResponder:
    """LongVideoBench's model interface over a duplex bundle (see the module docstring).

    Args:
        bundle_path: the inference bundle folder (``mmduplex export``).
        max_answer_steps: reply steps run after the prompt has been typed (>= 1); the reply is every word in them.
        max_gap_steps: most empty steps run between consecutive frames / subtitles (>= 1); ``None``: the video's
            real timing, every step runs.
        temperature: sampling temperature of answers; 0 is greedy.
        sink: attention-sink positions of the session cache (``None``: the bundle's).
        window: sliding-window positions of the session cache (``None``: the bundle's).
        device: where the model runs.

    Raises:
        CheckpointError: the bundle cannot be loaded.
        InputError: bad step limits or sampling settings.
    """

    def __init__(
        self,
        bundle_path: str | os.PathLike,
        *,
        max_answer_steps: int,
        max_gap_steps: int | None = None,
        temperature: float = 0.0,
        sink: int | None = None,
        window: int | None = None,
        device: str = "cpu",
    ) -> None:
        if isinstance(max_answer_steps, bool) or not isinstance(max_answer_steps, int) or max_answer_steps < 1:
            raise InputError("max_answer_steps", f"must be a positive integer, got {max_answer_steps!r}")
        if max_gap_steps is not None and (
            isinstance(max_gap_steps, bool) or not isinstance(max_gap_steps, int) or max_gap_steps < 1
        ):
            raise InputError("max_gap_steps", f"must be a positive integer or None, got {max_gap_steps!r}")
        self.bundle_path = Path(bundle_path)
        self.max_answer_steps = max_answer_steps
        self.max_gap_steps = max_gap_steps
        self.temperature = float(temperature)
        # loads (and checks) the bundle once; every video starts from a reset copy of this session
        self._session = DuplexSession.from_bundle(
            bundle_path, device=device, temperature=temperature, sink=sink, window=window
        )
        self.step_hz = self._session.step_hz
        self.fps = self._session.bundle.fps
        """The frame rate the bundle was trained at (``None`` if it records none): model mode's default rate."""
        self.skipped_steps = 0
        """Empty steps skipped by ``max_gap_steps`` over all videos prepared so far."""

    @property
    def settings(self) -> dict:
        """The responder's settings, as JSON values (for the results' ``settings``)."""
        rule = (
            "none: every step between events runs (real video timing)"
            if self.max_gap_steps is None
            else f"at most {self.max_gap_steps} empty steps between consecutive frames/subtitles (more while "
            "subtitle tokens are still queued); longer gaps are skipped"
        )
        return {
            "checkpoint": str(self.bundle_path),
            "step_hz": self.step_hz,
            "max_answer_steps": self.max_answer_steps,
            "max_gap_steps": self.max_gap_steps,
            "temperature": self.temperature,
            "skipped_steps_rule": rule,
            "letters_not_one_token": "-inf log-probability (several pieces or the unknown word)",
        }

    # ------------------------------------------------------------------ streaming a video

    def prepare_video(
        self, frames: torch.Tensor, timestamps: Sequence[float], subtitles: Sequence[Subtitle]
    ) -> DuplexSession:
        """Stream ``frames`` [T, H, W, 3] uint8 at ``timestamps`` (s) and ``subtitles`` at their mid-times.

        Returns:
            The session after the video (the state the questions are asked on; never modified by them).
        """
        if frames.dim() != 4 or frames.shape[0] != len(timestamps):
            raise InputError("frames", f"expected [T, H, W, 3] with T = {len(timestamps)}, got {tuple(frames.shape)}")
        session = self._session.copy()
        session.reset()
        events = [
            (float(timestamps[item]), frames[item]) if isinstance(item, int) else Question(item.mid, item.text)
            for item in interleave(timestamps, subtitles)
        ]
        loop = StepLoop(
            session, events, after="drain", hold_s=0.0, max_gap_steps=self.max_gap_steps, late_questions="wait"
        )
        for _ in loop:
            pass
        self.skipped_steps += loop.skipped_steps
        return session

    # ------------------------------------------------------------------ questions

    def _ask(self, state: DuplexSession, prompt: str) -> tuple[DuplexSession, StepOutput]:
        """A copy of ``state`` with ``prompt`` typed in; the output of the step that fed its last token."""
        if not isinstance(state, DuplexSession):
            raise InputError("state", f"expected the DuplexSession from prepare_video, got {type(state).__name__}")
        session = state.copy()
        return session, feed(session, prompt)

    def answer(self, state: DuplexSession, prompt: str) -> str:
        """The model's spoken reply to ``prompt`` typed after the video: every word of its ``max_answer_steps`` reply
        steps (``""`` if it stays silent)."""
        session, out = self._ask(state, prompt)
        outputs = [out] + [session.step() for _ in range(self.max_answer_steps - 1)]
        return " ".join(word for _, word in spoken_words(outputs))

    def letter_logprobs(self, state: DuplexSession, prompt: str, letters: Sequence[str]) -> dict[str, float]:
        """Log-probability of each letter as the first reply token after ``prompt`` (``-inf``: not one token)."""
        _, out = self._ask(state, prompt)
        logprobs = torch.log_softmax(out.logits.detach().double().cpu(), dim=-1)  # [V]
        text = self._session.text_tokenizer
        unknown = text.tokenizer.token_to_id(UNK_TOKEN) if text.word_level else None
        result = {}
        for letter in letters:
            ids = text.encode_word(letter)
            single = len(ids) == 1 and ids[0] != unknown and ids[0] < logprobs.numel()
            result[letter] = float(logprobs[ids[0]]) if single else -math.inf
        return result
