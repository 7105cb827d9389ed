"""Window tensors built in data-loader workers: the step grid as a picklable value, one window's tensors, the collate.

:class:`StepGrid` is everything the stream settings of a :class:`~mmduplex.train.duplex_module.DuplexModule` say
about where a window's text, user and video tokens go (step rate, tau, ``K`` video slots, ``U`` user slots, token
width, the text tokenizer as JSON), so a :class:`WindowTensorDataset` can travel to worker processes and return
tensors: ``__getitem__`` builds one window from its description (:mod:`mmduplex.train.duplex_datamodule`) and the
video's frozen tokens read from a :class:`~mmduplex.train.token_store.TokenStore`, and :func:`stack_windows`
stacks them. The training step then runs only the model.

:func:`build_window` gives exactly the tensors of ``DuplexModule.window_tensors`` (the in-process reference, built
on :func:`~mmduplex.lm.alignment.align_text`, :func:`~mmduplex.lm.alignment.align_user` and
:func:`~mmduplex.lm.alignment.pack_video`), equal element for element (``tests/test_window_tensors.py``), at a
fraction of the cost:

- text and user streams are python lists filled by the same rules (word pieces from the tokenizer's cache), and
  only the window's steps become a tensor;
- the video FIFO has a closed form. Tokens leave in order, at most ``K`` per step and never before their frame's
  step ``r``: in units of slots (``step * K + slot``) token ``j`` goes to ``p_j = max(p_{j-1} + 1, r_j * K)``, i.e.
  ``p_j = j + max(0, max_{i <= j} (r_i * K - i))``, a cumulative maximum; the window keeps the tokens with
  ``start * K <= p_j < end * K``, so only those rows are read from the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmduplex.errors import InputError
from mmduplex.lm.text import TextTokenizer

_EPS = 1e-6  # as mmduplex.lm.alignment: a time like k / fps lands on the step it names despite float rounding
WORD_MEMO = 2**18
"""Distinct words whose pieces a process keeps (the memo starts over when full)."""


@dataclass(frozen=True)
class StepGrid:
    """The stream settings a window is built on (a plain value: pickles to data-loader workers)."""

    step_hz: float
    """Model steps per second."""
    delay_steps: int
    """tau: how many steps the text stream lags the video."""
    slots_per_step: int
    """``K``: video token slots per step."""
    user_slots_per_step: int
    """``U``: user-stream tokens per step (the stream is ``[S]`` when 1, else ``[S, U]``)."""
    token_dim: int
    """``Dv``: width of a video token."""
    text_tokenizer_json: str = field(repr=False)
    """The text tokenizer (:meth:`~mmduplex.lm.text.TextTokenizer.to_json`'s string)."""
    text_tokenizer_settings: dict = field(repr=False, hash=False, compare=False)
    """Its settings (PAD / EPAD ids, word level)."""

    def __post_init__(self) -> None:
        if not self.step_hz > 0 or self.delay_steps < 0 or self.slots_per_step < 1 or self.user_slots_per_step < 1:
            raise InputError("StepGrid", f"need step_hz > 0, delay_steps >= 0, K >= 1, U >= 1; got {self}")

    @classmethod
    def of(cls, tokenizer: TextTokenizer, **settings: Any) -> StepGrid:
        """A grid with ``tokenizer`` and the other fields as keywords."""
        text_json, text_settings = tokenizer.to_json()
        return cls(**settings, text_tokenizer_json=text_json, text_tokenizer_settings=text_settings)

    def steps(self, seconds: float) -> int:
        """Steps in ``seconds`` (a window's length)."""
        return round(float(seconds) * self.step_hz)

    def step_of(self, t: float) -> int:
        """:func:`mmduplex.lm.alignment.time_to_step`."""
        return math.floor(t * self.step_hz + _EPS)


@dataclass
class VideoTokens:
    """A video's frozen tokens, frame by frame, as a store keeps them."""

    times: np.ndarray
    """``[F]`` float64 frame times (s)."""
    counts: np.ndarray
    """``[F]`` int64 tokens per frame."""
    rows: Any
    """``rows(a, b)`` -> the tokens ``a:b`` of the video (``[b - a, Dv]`` float32), frames in order."""


class _Text:
    """A text tokenizer rebuilt from a grid's JSON (once per process) and the pieces of every word it has seen."""

    cache: dict[int, _Text] = {}

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.words: dict[str, list[int]] = {}

    @classmethod
    def of(cls, grid: StepGrid) -> _Text:
        key = hash((grid.text_tokenizer_json, grid.text_tokenizer_settings["pad_id"]))
        if key not in cls.cache:
            cls.cache[key] = cls(TextTokenizer.from_json(grid.text_tokenizer_json, grid.text_tokenizer_settings))
        return cls.cache[key]

    def pieces(self, word: str) -> list[int]:
        """:meth:`~mmduplex.lm.text.TextTokenizer.encode_word` (memoised: words repeat; at most :data:`WORD_MEMO`)."""
        found = self.words.get(word)
        if found is None:
            if len(self.words) >= WORD_MEMO:
                self.words.clear()
            found = self.words[word] = self.tokenizer.encode_word(word)
        return found


def text_stream(words: list, start: int, end: int, grid: StepGrid, text: _Text) -> list[int]:
    """Steps ``start:end`` of :func:`~mmduplex.lm.alignment.align_text` over ``end`` steps (same rules, as lists)."""
    pad, epad, delay, hz = text.tokenizer.pad_id, text.tokenizer.epad_id, grid.delay_steps, grid.step_hz
    ids = [pad] * end
    cursor = 0
    for s, _, word in sorted(words, key=lambda w: float(w[0])):
        at = math.floor(float(s) * hz + _EPS) + delay  # time_to_step
        if at < 0:
            continue
        if at > end:  # words are sorted: every later one starts here or later and cannot fit either
            break
        pieces = text.pieces(str(word))
        at = max(at, cursor)
        if at + len(pieces) > end:
            continue
        if at > 0 and ids[at - 1] == pad:
            ids[at - 1] = epad
        ids[at : at + len(pieces)] = pieces
        cursor = at + len(pieces)
    return ids[start:end]


def user_stream(questions: list, start: int, end: int, grid: StepGrid, text: _Text) -> torch.Tensor:
    """Steps ``start:end`` of :func:`~mmduplex.lm.alignment.align_user` over ``end`` steps: ``[S]`` or ``[S, U]``."""
    u = grid.user_slots_per_step
    ids = np.full((end - start, u), text.tokenizer.pad_id, dtype=np.int64)  # [S, U]
    cursor = 0
    for t, question in sorted(((float(t), str(q)) for t, q in questions), key=lambda q: q[0]):
        for line in question.split("\n"):
            tokens = [i for word in line.split() for i in text.pieces(word)]  # encode_text
            if not tokens:
                continue
            at = max(grid.step_of(t), cursor)
            for i, token in enumerate(tokens):
                step = at + i // u
                if start <= step < end:
                    ids[step - start, i % u] = token
            cursor = max(cursor, at + math.ceil(len(tokens) / u))
    out = torch.from_numpy(ids)
    return out[:, 0].contiguous() if u == 1 else out


def video_slots(
    video: VideoTokens, clip_start: float, clip_end: float | None, start: int, end: int, grid: StepGrid
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps ``start:end`` of :func:`~mmduplex.lm.alignment.pack_video` over the clip's frames (from its start):
    ``video_slots [S, K, Dv]`` and ``video_mask [S, K]`` (the closed form in the module docstring)."""
    k, steps = grid.slots_per_step, end - start
    slots = torch.zeros(steps * k, grid.token_dim)  # [S * K, Dv]
    mask = torch.zeros(steps * k, dtype=torch.bool)  # [S * K]
    times, counts = video.times, video.counts
    keep = times >= clip_start - 1e-6
    if clip_end is not None:
        keep &= times < float(clip_end)
    frames = np.flatnonzero(keep & (counts > 0))
    if frames.size:
        # a frame's step, as VideoSlotPacker.frame_step computes it (the same float64 operations)
        ready = np.floor((times[frames] - clip_start) * grid.step_hz + _EPS).astype(np.int64)  # [F']
        n = counts[frames]  # [F']
        ready = np.repeat(ready, n)  # [N] per token
        order = np.arange(ready.size, dtype=np.int64)
        place = order + np.maximum(np.maximum.accumulate(ready * k - order), 0)  # [N] slot index from step 0
        first, last = np.searchsorted(place, [start * k, end * k])
        if last > first:
            # the clip's token j is the video's row row[j] (a frame's tokens are a contiguous run of rows)
            begins = np.concatenate(([0], np.cumsum(counts)))[frames]  # [F'] first row of each kept frame
            row = np.repeat(begins - np.concatenate(([0], np.cumsum(n)[:-1])), n) + order  # [N]
            lo, hi = int(row[first]), int(row[last - 1]) + 1
            tokens = video.rows(lo, hi)  # [hi - lo, Dv]
            where = torch.from_numpy(place[first:last] - start * k)
            slots[where] = tokens[torch.from_numpy(row[first:last] - lo)].float()
            mask[where] = True
    return slots.view(steps, k, grid.token_dim), mask.view(steps, k)


def build_window(sample: dict[str, Any], grid: StepGrid, video: VideoTokens) -> dict[str, torch.Tensor]:
    """One window on the step grid: ``text_ids [S]``, ``user_ids [S]`` / ``[S, U]``, ``video_slots [S, K, Dv]``,
    ``video_mask [S, K]``; equal to ``DuplexModule.window_tensors(sample)`` (streams from the clip's start, cut to
    the window)."""
    text = _Text.of(grid)
    start = grid.step_of(float(sample["offset_s"]))
    end = start + grid.steps(float(sample["window_s"]))
    ids = torch.from_numpy(np.array(text_stream(sample["words"], start, end, grid, text), dtype=np.int64))  # [S]
    user = user_stream(sample.get("questions", []), start, end, grid, text)
    clip_end = sample.get("clip_end_s")
    slots, mask = video_slots(video, float(sample["clip_start_s"]), clip_end, start, end, grid)
    return {"text_ids": ids, "user_ids": user, "video_slots": slots, "video_mask": mask}


class WindowTensorDataset(Dataset):
    """Window descriptions -> window tensors, built where the dataset is read (data-loader workers).

    Args:
        samples: window descriptions (:class:`~mmduplex.train.duplex_datamodule.DuplexDataModule`'s).
        grid: the step grid.
        store: the video tokens (a :class:`~mmduplex.train.token_store.TokenStore`; it reopens its shards in each
            process).
    """

    def __init__(self, samples: list[dict[str, Any]], grid: StepGrid, store: Any) -> None:
        self.samples = samples
        self.grid = grid
        self.store = store

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        window: dict[str, Any] = build_window(sample, self.grid, self.store.video(sample["key"]))
        window["window"] = index  # which window this is (tells the ranks' shares apart)
        return window


def stack_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The collate function: ``[B, ...]`` stacks of each tensor field (in shared memory when run in a loader
    worker, so handing the batch over copies nothing), a list of the ``window`` indices."""
    if not windows:
        raise InputError("batch", "empty batch")
    in_worker = torch.utils.data.get_worker_info() is not None
    batch: dict[str, Any] = {}
    for key, first in windows[0].items():
        items = [w[key] for w in windows]
        if not isinstance(first, torch.Tensor):
            batch[key] = items
            continue
        out = None
        if in_worker:  # as torch's default_collate: the stack is written straight into shared memory
            storage = first._typed_storage()._new_shared(len(items) * first.numel(), device=first.device)
            out = first.new(storage).resize_(len(items), *first.shape)
        batch[key] = torch.stack(items, out=out)
    return batch
