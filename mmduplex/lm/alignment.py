"""The step grid: timed words, user questions and video tokens placed on one time grid of ``step_hz`` steps/s.

Text stream (the model's output, Moshi / Delayed Streams Modeling):

- every step starts as ``PAD``; a word's pieces go at its start step ``floor(start * step_hz)``, and pieces that do
  not fit (a word faster than the step rate, overlapping words, a multi-piece word) spill forward into the next
  free steps, keeping the words in order;
- ``EPAD`` goes on the step right before a word's first piece when that step is ``PAD`` (words spoken back to back
  get none: the previous word's last piece is there);
- the whole stream is shifted ``delay_steps`` (tau) steps later than the video and user streams.

Edge cases (decided here, tested in ``tests/test_alignment.py``): the stream is built directly on the delayed grid,
so a word whose delayed start step is negative (it started before the window) is dropped; a word whose pieces do
not all fit before the window's end is dropped whole (no truncated words, no dangling ``EPAD``); an empty
transcript gives an all-``PAD`` stream. :func:`text_to_words` inverts :func:`align_text` (word times recovered to
within one step when nothing spilled).

User stream (input): a question ``(t, text)`` puts its tokens ``U`` per step (``user_slots_per_step``; 1 by
default) in order from step ``floor(t * step_hz)`` on, filling a step's slots before spilling into the next step. A
question always starts in slot 0 of a step: one asked while an earlier one is still going out starts at the step after
the earlier one's last token (so every step carries tokens of one question at most, and a step that starts a question
is recognisable by its slot 0), and each line of a question (split at ``\n``) starts a new step too: a
multiple-choice option ``A. red`` then has a step to itself, so its letter and its text are summed into one step
embedding and no other option's are. Every other step or slot is user silence, written as ``PAD`` and embedded as
zero by the model. With ``U = 1`` the stream is ``[S]`` (one token per step), otherwise ``[S, U]``.

Video stream (input): :class:`VideoSlotPacker` puts each frame's tokens into ``K`` slots of the step holding the
frame's time; tokens beyond ``K`` wait in a FIFO for the following steps. Training (:func:`pack_video`) and
streaming use the same ``push`` / ``pop_step`` calls, so both place tokens identically by construction.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import torch

from mmduplex.data.transcripts import Word
from mmduplex.errors import InputError
from mmduplex.lm.text import TextTokenizer

_EPS = 1e-6  # frame and word times like k / fps land on the step they name despite float rounding


def time_to_step(t: float, step_hz: float) -> int:
    """The index of the step holding time ``t`` (s): ``floor(t * step_hz)``, robust to float rounding."""
    return math.floor(t * step_hz + _EPS)


def _check_grid(num_steps: int, step_hz: float, delay_steps: int = 0) -> None:
    if num_steps < 0 or not step_hz > 0 or delay_steps < 0:
        raise InputError(
            "alignment",
            f"need num_steps >= 0, step_hz > 0, delay_steps >= 0; got {num_steps}, {step_hz}, {delay_steps}",
        )


def align_text(
    words: Sequence[Word], num_steps: int, step_hz: float, tokenizer: TextTokenizer, delay_steps: int = 0
) -> torch.Tensor:
    """The model's text stream for a window of ``num_steps`` steps (word times relative to the window start).

    Args:
        words: timed words (any order; sorted by start time here).
        num_steps: window length ``S`` in steps.
        step_hz: steps per second.
        tokenizer: gives the word pieces and the PAD / EPAD ids.
        delay_steps: tau, how many steps the text lags the video.

    Returns:
        ``[S]`` long ids.
    """
    _check_grid(num_steps, step_hz, delay_steps)
    ids = torch.full((num_steps,), tokenizer.pad_id, dtype=torch.long)  # [S]
    cursor = 0  # first step not taken by an earlier word
    for word in sorted(words, key=lambda w: w.start):
        start = time_to_step(word.start, step_hz) + delay_steps
        if start < 0:
            continue
        pieces = tokenizer.encode_word(word.text)
        at = max(start, cursor)
        if at + len(pieces) > num_steps:
            continue
        if at > 0 and ids[at - 1] == tokenizer.pad_id:
            ids[at - 1] = tokenizer.epad_id
        ids[at : at + len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        cursor = at + len(pieces)
    return ids


def text_to_words(
    ids: Iterable[int], step_hz: float, tokenizer: TextTokenizer, delay_steps: int = 0, offset_s: float = 0.0
) -> list[Word]:
    """Invert :func:`align_text`: the words in a text stream with their (undelayed) times.

    A word starts at a word-initial piece (every id for a word-level tokenizer) or after PAD / EPAD, and ends
    before the next one. Its start is its first step's time minus the delay; its end is one step after its last
    piece (minus the delay).

    Args:
        ids: the text stream ``[S]``.
        step_hz: steps per second.
        tokenizer: the stream's tokenizer.
        delay_steps: tau the stream was made with.
        offset_s: time of step 0 (s), added to every word time.
    """
    words: list[Word] = []
    pieces: list[int] = []
    first = 0

    def close(last: int) -> None:
        text = tokenizer.decode(pieces)
        if text:
            start = offset_s + (first - delay_steps) / step_hz
            words.append(Word(start, offset_s + (last + 1 - delay_steps) / step_hz, text))
        pieces.clear()

    step = -1
    for step, token in enumerate(int(i) for i in ids):
        if token in (tokenizer.pad_id, tokenizer.epad_id):
            if pieces:
                close(step - 1)
            continue
        if pieces and tokenizer.is_word_start(token):
            close(step - 1)
        if not pieces:
            first = step
        pieces.append(token)
    if pieces:
        close(step)
    return words


def question_lines(text: str, tokenizer: TextTokenizer) -> list[list[int]]:
    """A question's token ids line by line (each line starts a new user-stream step); empty lines dropped."""
    return [ids for ids in map(tokenizer.encode_text, text.split("\n")) if ids]


def align_user(
    questions: Sequence[tuple[float, str]],
    num_steps: int,
    step_hz: float,
    tokenizer: TextTokenizer,
    slots_per_step: int = 1,
) -> torch.Tensor:
    """The user stream: each question's tokens ``U`` per step from its time on; ``PAD`` (silence) elsewhere.

    A question starts in slot 0 of step ``max(floor(t * step_hz), the step after the previous question's last
    token)`` and fills its steps' slots in order (see the module docstring); each line of a question starts a new
    step (so a multiple-choice option ``A. red`` shares its step with no other option when it fits in ``U`` slots).

    Args:
        questions: ``(time s, text)`` pairs relative to the window start (sorted by time here); a question timed
            before step 0 starts at step 0; tokens past the window's end are dropped.
        num_steps: window length ``S`` in steps.
        step_hz: steps per second.
        tokenizer: encodes the text.
        slots_per_step: ``U``, user tokens per step.

    Returns:
        ``[S]`` long ids when ``U == 1``, else ``[S, U]``.
    """
    _check_grid(num_steps, step_hz)
    if slots_per_step < 1:
        raise InputError("alignment", f"need user slots_per_step >= 1, got {slots_per_step}")
    ids = torch.full((num_steps, slots_per_step), tokenizer.pad_id, dtype=torch.long)  # [S, U]
    cursor = 0  # first step no earlier question holds
    for t, text in sorted(questions, key=lambda q: q[0]):
        for tokens in question_lines(text, tokenizer):
            at = max(time_to_step(t, step_hz), cursor)
            for i, token in enumerate(tokens):
                step = at + i // slots_per_step
                if 0 <= step < num_steps:
                    ids[step, i % slots_per_step] = token
            cursor = max(cursor, at + math.ceil(len(tokens) / slots_per_step))
    return ids[:, 0] if slots_per_step == 1 else ids


class VideoSlotPacker:
    """Places frame tokens into ``K`` slots per step; overflow waits (FIFO) for the following steps.

    Call :meth:`push` with every frame whose time has come, then :meth:`pop_step` once per step. A frame at time
    ``t`` becomes available at step ``floor((t - start_s) * step_hz)``; its tokens go out in order, at most ``K``
    per step, after every token pushed before them. When frames bring more tokens than ``K * step_hz`` per second
    the queue (and the video latency) grows: choose ``K`` above the video tokenizer's rate.

    Args:
        slots_per_step: ``K``.
        step_hz: steps per second.
        token_dim: ``Dv``, the width of a video token.
        start_s: time of step 0 (s).
    """

    def __init__(self, slots_per_step: int, step_hz: float, token_dim: int, start_s: float = 0.0) -> None:
        if slots_per_step < 1 or not step_hz > 0 or token_dim < 1:
            raise InputError(
                "VideoSlotPacker",
                f"need K >= 1, step_hz > 0, token_dim >= 1; got {slots_per_step}, {step_hz}, {token_dim}",
            )
        self.slots_per_step = int(slots_per_step)
        self.step_hz = float(step_hz)
        self.token_dim = int(token_dim)
        self.start_s = float(start_s)
        self.step = 0  # index of the step the next pop_step fills
        self._queue: deque[tuple[int, torch.Tensor]] = deque()  # (first step it may go out, tokens [n, Dv])

    @property
    def pending(self) -> int:
        """Tokens pushed but not yet popped."""
        return sum(tokens.shape[0] for _, tokens in self._queue)

    def frame_step(self, t: float) -> int:
        """The step a frame at time ``t`` belongs to."""
        return time_to_step(t - self.start_s, self.step_hz)

    def push(self, frame: object) -> None:
        """Queue one frame's tokens (a :class:`mmduplex.tokenizer.base.FrameTokens`: ``t`` and ``tokens [n, Dv]``)."""
        tokens = frame.tokens  # [n, Dv]
        if tokens.dim() != 2 or tokens.shape[1] != self.token_dim:
            raise InputError("frame tokens", f"expected [n, {self.token_dim}], got {tuple(tokens.shape)}")
        if tokens.shape[0]:
            self._queue.append((self.frame_step(float(frame.t)), tokens.detach().float().cpu()))

    def pop_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the next step's slots: ``([K, Dv] tokens, [K] bool mask)``; unused slots are zero and masked."""
        slots = torch.zeros(self.slots_per_step, self.token_dim)  # [K, Dv]
        mask = torch.zeros(self.slots_per_step, dtype=torch.bool)  # [K]
        filled = 0
        while self._queue and filled < self.slots_per_step and self._queue[0][0] <= self.step:
            ready, tokens = self._queue.popleft()
            take = min(tokens.shape[0], self.slots_per_step - filled)
            slots[filled : filled + take] = tokens[:take]
            mask[filled : filled + take] = True
            filled += take
            if take < tokens.shape[0]:
                self._queue.appendleft((ready, tokens[take:]))
        self.step += 1
        return slots, mask


def pack_video(
    frames: Sequence[object],
    num_steps: int,
    slots_per_step: int,
    step_hz: float,
    token_dim: int,
    start_s: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a video's frame tokens (sorted by time) on ``num_steps`` steps with :class:`VideoSlotPacker`.

    Returns:
        ``video_slots [S, K, Dv]`` and ``video_mask [S, K]``.
    """
    _check_grid(num_steps, step_hz)
    packer = VideoSlotPacker(slots_per_step, step_hz, token_dim, start_s)
    slots = torch.zeros(num_steps, slots_per_step, token_dim)  # [S, K, Dv]
    mask = torch.zeros(num_steps, slots_per_step, dtype=torch.bool)  # [S, K]
    upcoming = deque(frames)
    for s in range(num_steps):
        while upcoming and packer.frame_step(float(upcoming[0].t)) <= s:
            packer.push(upcoming.popleft())
        slots[s], mask[s] = packer.pop_step()
    return slots, mask
