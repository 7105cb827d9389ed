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

Batched (:meth:`DuplexResponder.answer_batch`): each question is one stream, the video (as patch features,
:meth:`DuplexResponder.features`: each frame encoded as ``push_frame`` encodes it) streamed as ``prepare_video``
streams it, then the prompt and the reply steps as ``answer`` runs them; ``batch`` such streams run at once through
one LM step per tick (:func:`~mmduplex.inference.batched.run_lockstep`). Each reply is what ``prepare_video`` then
``answer`` give, up to the batched matmuls' rounding; a video with several questions is streamed once per question.

Likelihood (:meth:`DuplexResponder.letter_logprobs`): the log-softmax of the raw logits (no PAD bias, no
temperature) of that first reply step, read at each letter's token id. A letter the text tokenizer cannot spell as
one known token (several pieces, or the unknown token of a word-level vocabulary) gets ``-inf``: the model cannot
answer it in one token. A model whose vocabulary has none of the letters therefore always scores ``-inf`` for all,
and the harness then picks the first letter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from mmduplex.errors import InputError
from mmduplex.eval.longvideobench_data import Subtitle, interleave
from mmduplex.inference.loop import Question, StepLoop, feed, feed_steps, spoken_words
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

    def _loop(
        self, session: DuplexSession, frames: torch.Tensor, timestamps: Sequence[float], subtitles: Sequence[Subtitle]
    ) -> StepLoop:
        """The streaming loop of one video: frames (``[T, H, W, 3]`` pixels or ``[T, P, D]`` features) and subtitles
        in the reference's interleaved order, drained at the end."""
        events = [
            (float(timestamps[item]), frames[item]) if isinstance(item, int) else Question(item.mid, item.text)
            for item in interleave(timestamps, subtitles)
        ]
        return StepLoop(
            session, events, after="drain", hold_s=0.0, max_gap_steps=self.max_gap_steps, late_questions="wait"
        )

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
        loop = self._loop(session, frames, timestamps, subtitles)
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

    # ------------------------------------------------------------------ many questions at once

    @torch.inference_mode()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[T, P, D]`` patch features of ``frames`` [T, H, W, 3] uint8, each frame encoded as ``push_frame`` does
        (for :meth:`answer_batch`: a batch holds features, not pixels)."""
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise InputError("frames", f"expected [T, H, W, 3] uint8, got {tuple(frames.shape)} {frames.dtype}")
        encoder = self._session.encoder
        if not len(frames):
            return torch.zeros(0, encoder.grid[0] * encoder.grid[1], encoder.width)  # no frame: nothing is pushed
        return torch.stack([encoder.encode(frame[None]).patches[0] for frame in frames])

    def answer_batch(
        self,
        videos: Sequence[tuple[Sequence[float], torch.Tensor, Sequence[Subtitle], Sequence[str]]],
        batch: int = 8,
    ) -> list[list[str]]:
        """Every prompt of every video answered, ``batch`` questions at a time in lockstep (module docstring).

        Args:
            videos: ``(timestamps, features [T, P, D] from :meth:`features`, subtitles, prompts)`` per video.
            batch: most questions streamed at once.

        Returns:
            Per video, the reply to each of its prompts (what ``answer(prepare_video(...), prompt)`` gives).
        """
        from mmduplex.inference.batched import run_lockstep

        for timestamps, patches, _, _ in videos:
            if patches.dim() != 3 or patches.shape[0] != len(timestamps):
                shape = tuple(patches.shape)
                raise InputError("features", f"expected [T, P, D] with T = {len(timestamps)}, got {shape}")
        asked = [(v, p) for v, (_, _, _, prompts) in enumerate(videos) for p in range(len(prompts))]
        first_step = [0] * len(asked)  # the step that feeds each prompt's last token: its reply's first step
        outputs: list[list[StepOutput]] = [[] for _ in asked]

        def program(k: int):
            v, p = asked[k]
            timestamps, patches, subtitles, prompts = videos[v]

            def run(session: DuplexSession) -> Iterator[StepOutput]:
                loop = self._loop(session, patches, timestamps, subtitles)
                yield from loop
                if p == 0:
                    self.skipped_steps += loop.skipped_steps
                yield from feed_steps(session, prompts[p])
                first_step[k] = session.step_index - 1  # the lockstep driver has run the step when this resumes
                for _ in range(self.max_answer_steps - 1):
                    yield session.step()

            return run

        def keep(k: int, out: StepOutput) -> None:
            outputs[k].append(replace(out, logits=out.logits[:0]))  # the [V] logits of every step are not kept

        run_lockstep(self._session, [program(k) for k in range(len(asked))], batch=batch, on_step=keep)
        replies: list[list[str]] = [[""] * len(prompts) for _, _, _, prompts in videos]
        for k, (v, p) in enumerate(asked):
            reply = [out for out in outputs[k] if out.index >= first_step[k]]
            replies[v][p] = " ".join(word for _, word in spoken_words(reply))
        return replies

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
