"""Lockstep batching: several streams through one duplex model at once, one batched LM step per tick.

Streaming many videos one after the other (the demo's PAD-bias search, scoring and ablation) runs one LM step per
video per tick; a frozen SmolLM2-135M costs about as much for one step over 8 streams as for one stream on a CPU
(``benchmarks/bench_batched_streaming.py``). :func:`stream_batched` streams ``batch`` sources at a time in lockstep:

- each source has its own :class:`~mmduplex.inference.session.DuplexSession` state (B-Flow tokenizer state, slot
  packer, user queue, previous text token, sampling generator), a copy of the template session's settings (model,
  cache size, PAD bias, temperature, seed), driven by its own :class:`~mmduplex.inference.loop.StepLoop` (the one
  streaming loop: the same frame placement, end of input and flush as
  :class:`~mmduplex.inference.commentary.Commentary`);
- every stream is at the same step index at every tick, so all their caches have the same length and position ids:
  one :class:`~mmduplex.lm.kvcache.SinkWindowCache` of batch ``B`` holds them (row ``b`` = stream ``b``), evicting
  in lockstep, and one ``DuplexLM`` call per tick serves them all;
- a stream whose loop has ended (after its flush) leaves the batch: its cache row is dropped. A stream cannot join a
  running batch (its cache would be shorter), so the sources go in cohorts of ``batch``: the next cohort starts when
  the last one has drained (:func:`stream_features_batched` puts videos of similar length together).

How a step is split: the stream's session's ``step()`` returns a pending :class:`StepOutput`; the loop yields it at
once (``StepLoop`` and ``DuplexSession.flush`` read nothing of a step's result before yielding it). The driver then
tokenizes the frames every stream pushed since its last step in one video-tokenizer step over the streams (a frame's
patch features are queued by ``push_features``; the tokenizer states of the streams are stacked for the call and
split after it: B-Flow's per-frame cost hardly grows with the batch, and its batched tokens equal a lone stream's bit
for bit), takes each stream's inputs off its queues (:meth:`DuplexSession.step_inputs`), runs the batched LM step and
finishes each stream's step (:meth:`DuplexSession.step_output`: PAD bias, sampling, clock) before the loop resumes.
Whatever reads a stream's video queue before that (``pending_video_tokens``, ``owed_steps``: the flush, the drain)
tokenizes that stream's queued frames alone first. So every decision the loop takes is the one it takes one stream at
a time, and a stream's logits differ from its single-stream logits only by the batched matmuls' rounding
(``tests/test_batched_streaming.py``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmduplex.errors import InputError
from mmduplex.inference.commentary import DEFAULT_LINE_DISPLAY_S, DEFAULT_LINE_WORDS, LineCollector
from mmduplex.inference.loop import Event, StepLoop
from mmduplex.inference.session import DuplexSession, StepOutput, check_frame
from mmduplex.io.outputs import CommentaryLine, LineBuilder
from mmduplex.lm.kvcache import SinkWindowCache

if TYPE_CHECKING:
    from mmduplex.tokenizer.base import FrameTokens
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder

__all__ = ["Program", "StreamedCommentary", "run_lockstep", "stream_batched", "stream_features_batched"]


@dataclass
class StreamedCommentary:
    """One stream's commentary from :func:`stream_batched` (what a :class:`Commentary` holds after its run)."""

    video_id: str
    lines: list[CommentaryLine]
    """Every line, the one open at the end of the stream included."""
    words: list[tuple[float, str]]
    """``(t, word)`` of every word said (pieces glued to the word they continue)."""
    steps: int
    """Steps run, the flushed ones included."""
    video_tokens: int
    """Tokens the video tokenizer emitted (also any the slot packer had to drop)."""
    compute_s: float
    """This stream's share of its cohort's wall time (by steps): the shares add up to the wall time."""
    frame_tokens: list[tuple[float, int]] = field(default_factory=list)
    """``(t, tokens)`` of every frame pushed, in time order."""


class _LockstepSession(DuplexSession):
    """One stream of a lockstep batch: a template session's settings with its own stream state; :meth:`step` takes
    the step's inputs and returns a pending output that the batch driver finishes."""

    @classmethod
    def following(cls, template: DuplexSession) -> _LockstepSession:
        """A fresh stream (reset) with ``template``'s model, tokenizers, encoder and settings."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(template))
        new._template = template
        new.reset()
        return new

    def reset(self) -> None:
        super().reset()
        self.cache = None  # the batch's cache holds this stream's row
        self.frame_tokens: list[tuple[float, int]] = []
        self.queued: list[tuple[float, torch.Tensor]] = []  # (t, patches [P, D]) pushed, not yet tokenized
        self._queued_t = self._last_frame_t
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.waiting = False
        self.started = 0.0

    @property
    def encoder(self) -> FrozenImageEncoder:
        """The template's encoder (built once, shared by every stream)."""
        return self._template.encoder

    def push_features(self, t: float, patches: torch.Tensor) -> None:  # type: ignore[override]
        """Queue one frame's patch features ``[P, D]`` for the driver's batched tokenizer step (the same checks as
        :meth:`DuplexSession.push_features`; its tokens are not known yet, so nothing is returned)."""
        self._queued_t = check_frame(t, patches, self._queued_t)
        self.queued.append((self._queued_t, patches))

    def _queue_tokens(self, t: float, tokens: FrameTokens) -> FrameTokens:
        self.frame_tokens.append((float(t), tokens.n_tokens))
        return super()._queue_tokens(t, tokens)

    @property
    def pending_video_tokens(self) -> int:
        _tokenize_queued([self])
        return super().pending_video_tokens

    def owed_steps(self) -> int:
        _tokenize_queued([self])
        return super().owed_steps()

    def step(self) -> StepOutput:
        """Return the pending output of this step; the driver tokenizes, takes the inputs and completes it."""
        if self.waiting:
            raise RuntimeError("a lockstep stream took a second step before the batch ran its first")
        self.started = time.perf_counter()
        self.waiting = True
        return StepOutput(self.step_index, (self.step_index + 1) / self.step_hz, -1, None, False, torch.empty(0), 0.0)

    def take_inputs(self) -> None:
        """This step's inputs off the queues (the driver calls it once the stream's frames are tokenized)."""
        _tokenize_queued([self])
        self.inputs = self.step_inputs()

    def finish(self, logits: torch.Tensor, pending: StepOutput) -> StepOutput:
        """Complete the pending step with its ``[V]`` logits from the batched LM step."""
        self.inputs, self.waiting = None, False
        out = self.step_output(logits, self.started)
        out.flushed = pending.flushed  # set by DuplexSession.flush on the pending output
        return out


def _stackable(state: Any) -> bool:
    """A tokenizer state whose every field is a tensor of one video (batch dim 1), so states can be stacked."""
    return dataclasses.is_dataclass(state) and all(
        isinstance(getattr(state, f.name), torch.Tensor) and getattr(state, f.name).shape[:1] == (1,)
        for f in dataclasses.fields(state)
    )


def _tokenize_queued(sessions: Sequence[_LockstepSession]) -> None:
    """Tokenize every frame the ``sessions`` have queued, in time order per stream: one video-tokenizer step over all
    the streams with a frame left at each round (their states stacked, then split), or stream by stream where a state
    cannot be stacked; each frame's tokens then go into its stream's slot queue."""
    while True:
        due = [s for s in sessions if s.queued]
        if not due:
            return
        tokenizer = due[0].video_tokenizer
        frames = [s.queued.pop(0) for s in due]
        states = [s._video_state for s in due]
        if len(due) == 1 or not all(_stackable(state) for state in states):
            for session, (t, patches), state in zip(due, frames, states, strict=True):
                times = torch.tensor([t], dtype=torch.float64)
                out, _, session._video_state = tokenizer.step(patches[None].to(session.device), times, state)
                session._queue_tokens(t, out[0])
            continue
        names = [f.name for f in dataclasses.fields(states[0])]
        stacked = type(states[0])(**{n: torch.cat([getattr(state, n) for state in states]) for n in names})
        patches = torch.stack([p for _, p in frames]).to(due[0].device)  # [B, P, D]
        times = torch.tensor([t for t, _ in frames], dtype=torch.float64)  # [B]
        out, _, new = tokenizer.step(patches, times, stacked)
        for row, (session, (t, _)) in enumerate(zip(due, frames, strict=True)):
            session._video_state = type(new)(**{n: getattr(new, n)[row : row + 1] for n in names})
            session._queue_tokens(t, out[row])


@dataclass
class _Stream:
    """A stream in a cohort: its position in the input, session, step iterator and pending step."""

    position: int
    session: _LockstepSession
    steps: Iterator[StepOutput]
    pending: StepOutput | None = None


def _keep_rows(cache: SinkWindowCache, rows: list[int]) -> None:
    """Keep only the batch rows ``rows`` of every layer of ``cache`` (streams that left the batch are dropped)."""
    cache.batch_select_indices(torch.tensor(rows, dtype=torch.long, device=cache.layers[0].keys.device))


def _batched_step(template: DuplexSession, cache: SinkWindowCache, streams: list[_Stream]) -> torch.Tensor:
    """One LM step over every stream's pending inputs; ``[B, V]`` logits (row ``b``: ``streams[b]``)."""
    device = template.device
    text, slots, mask, user = (
        torch.stack(parts).to(device) for parts in zip(*(s.session.inputs for s in streams), strict=True)
    )
    out = template.model(
        text,  # [B, 1]
        slots[:, None],  # [B, 1, K, Dv]
        mask[:, None],  # [B, 1, K]
        user[:, None],  # [B, 1, U]
        past_key_values=cache,
        position_ids=cache.next_position_ids(len(streams), 1, device),
        use_cache=True,
    )
    return out.logits[:, -1]  # [B, V]


Watch = Callable[[int, StepOutput, DuplexSession, StepLoop], None]
"""Called after every step of a stream with ``(source index, step output, the stream's session, its loop)``."""


def _run_cohort(template: DuplexSession, streams: list[_Stream], on_step: Callable[[int, StepOutput], None]) -> None:
    """Run ``streams`` in lockstep until every one has ended, ``on_step(position, out)`` after each of their steps."""
    for stream in streams:
        stream.pending = next(stream.steps, None)
    active = [s for s in streams if s.pending is not None]  # a source with no frame runs no step
    cache = SinkWindowCache(template.model, template.sink, template.window)
    index = 0
    while active:
        for stream in active:
            if stream.pending.index != index:
                raise RuntimeError(f"stream {stream.position} is at step {stream.pending.index}, the batch at {index}")
        _tokenize_queued([stream.session for stream in active])
        for stream in active:
            stream.session.take_inputs()
        logits = _batched_step(template, cache, active)  # [B, V]
        still = []
        for row, stream in enumerate(active):
            on_step(stream.position, stream.session.finish(logits[row].clone(), stream.pending))
            stream.pending = next(stream.steps, None)  # the stream goes on to its next step or ends
            if stream.pending is not None:
                still.append(row)
        if len(still) < len(active):
            if still:
                _keep_rows(cache, still)
            active = [active[row] for row in still]
        index += 1


Program = Callable[[DuplexSession], Iterable[StepOutput]]
"""One stream's steps, as a generator over the stream's own fresh (reset) session: it yields every ``session.step()``
as soon as it is taken (e.g. ``yield from StepLoop(session, events)``, then ``session.ask(text)`` and more steps). The
batch driver completes each step before the generator resumes, so a program may read the session's queues and clock
between steps, never a step's result (the word, the logits): those reach ``on_step``."""


@torch.inference_mode()
def run_lockstep(
    session: DuplexSession,
    programs: Sequence[Program],
    *,
    batch: int = 8,
    on_step: Callable[[int, StepOutput], None] | None = None,
) -> list[int]:
    """Run every program (see :data:`Program`) through ``session``'s model, ``batch`` at a time in lockstep.

    Each program gets a fresh stream with ``session``'s model and settings (``session``'s own stream state is neither
    used nor changed) and runs as it runs alone on a reset copy of ``session``, up to the batched matmuls' rounding.

    Args:
        session: the template session.
        programs: one per stream, batched in the order given.
        batch: most streams per LM step.
        on_step: called with ``(program index, step output)`` after every step of every stream.

    Returns:
        Per program, in the order given: ``(steps run, compute_s)``, ``compute_s`` its share of its cohort's wall
        time by steps (the shares add up to the wall time).

    Raises:
        InputError: ``batch < 1`` or no programs.
    """
    if batch < 1:
        raise InputError("batch", f"must be >= 1, got {batch}")
    if not programs:
        raise InputError("programs", "no streams to run")
    steps = [0] * len(programs)
    compute = [0.0] * len(programs)

    def count(position: int, out: StepOutput) -> None:
        steps[position] += 1
        if on_step is not None:
            on_step(position, out)

    for first in range(0, len(programs), batch):
        cohort = range(first, min(first + batch, len(programs)))
        streams = []
        for position in cohort:
            member = _LockstepSession.following(session)
            streams.append(_Stream(position, member, iter(programs[position](member))))
        started = time.perf_counter()
        _run_cohort(session, streams, count)
        wall, total = time.perf_counter() - started, sum(steps[p] for p in cohort)
        for position in cohort:
            compute[position] = wall * steps[position] / total if total else 0.0
    return list(zip(steps, compute, strict=True))


@torch.inference_mode()
def stream_batched(
    session: DuplexSession,
    sources: Sequence[tuple[str, Iterable[Event]]],
    pause_steps: int,
    *,
    batch: int = 8,
    line_words: int = DEFAULT_LINE_WORDS,
    line_display_s: float = DEFAULT_LINE_DISPLAY_S,
    on_step: Callable[[int, StepOutput], None] | None = None,
    watch: Watch | None = None,
) -> list[StreamedCommentary]:
    """Stream every source through ``session``'s model, ``batch`` at a time in lockstep (see the module docstring).

    Each source streams as :class:`~mmduplex.inference.commentary.Commentary` streams it through a reset ``session``
    (with ``pause_steps``, ``line_words``, ``line_display_s``): frames placed by the streaming loop, the input's end,
    the end-of-input flush, the line grouping. ``session`` gives the model and settings (cache size, PAD bias,
    temperature, top-k, seed, device, dtype); its own stream state is neither used nor changed.

    Args:
        session: the template session.
        sources: ``(video_id, events)`` per stream: ``(t, patches [P, D])`` or ``(t, frame [H, W, 3] uint8)`` pairs
            in time order, and :class:`~mmduplex.inference.loop.Question` objects. Batched in the order given.
        pause_steps: silent steps that end a line.
        batch: most streams per LM step.
        line_words: words that end a line.
        line_display_s: seconds a line stays up after its last word.
        on_step: called with ``(source index, step output)`` after every step of every stream.
        watch: called with ``(source index, step output, session, loop)`` after every step of every stream: the
            stream's own session and :class:`~mmduplex.inference.loop.StepLoop` (e.g. the questions it has typed and
            the user tokens still queued), as a caller streaming one source sees them between steps.

    Returns:
        One :class:`StreamedCommentary` per source, in the order given.

    Raises:
        InputError: ``batch < 1``, no sources, or ``pause_steps < 1``.
    """
    if batch < 1:
        raise InputError("batch", f"must be >= 1, got {batch}")
    if not sources:
        raise InputError("videos", "no videos to stream")
    if pause_steps < 1:
        raise InputError("pause_steps", f"must be >= 1, got {pause_steps}")
    members: list[DuplexSession | None] = [None] * len(sources)
    loops: list[StepLoop | None] = [None] * len(sources)
    collectors = [LineCollector(LineBuilder(pause_steps, line_words, line_display_s)) for _ in sources]

    def program(position: int) -> Program:
        def run(member: DuplexSession) -> StepLoop:
            members[position], loops[position] = member, StepLoop(member, sources[position][1])
            return loops[position]

        return run

    def step(position: int, out: StepOutput) -> None:
        collectors[position].push(out)
        if on_step is not None:
            on_step(position, out)
        if watch is not None:
            watch(position, out, members[position], loops[position])

    ran = run_lockstep(session, [program(i) for i in range(len(sources))], batch=batch, on_step=step)
    results = []
    for (video_id, _), collector, member, (_, compute_s) in zip(sources, collectors, members, ran, strict=True):
        collector.flush()
        results.append(
            StreamedCommentary(
                video_id=video_id,
                lines=collector.lines,
                words=collector.words,
                steps=collector.steps,
                video_tokens=member.video_tokens + member.dropped_video_tokens,
                compute_s=compute_s,
                frame_tokens=member.frame_tokens,
            )
        )
    return results


def stream_features_batched(
    session: DuplexSession,
    videos: Sequence[tuple[str, Sequence[float], torch.Tensor]],
    pause_steps: int,
    *,
    batch: int = 8,
    line_words: int = DEFAULT_LINE_WORDS,
    line_display_s: float = DEFAULT_LINE_DISPLAY_S,
    on_step: Callable[[int, StepOutput], None] | None = None,
) -> list[StreamedCommentary]:
    """Stream videos given as cached patch features, ``batch`` at a time in lockstep (:func:`stream_batched`).

    Videos are batched longest first (cohorts of similar length keep their batch full); the results come back in
    the order given, each what streaming that video alone through a reset ``session`` gives.

    Args:
        session: the template session (its state is neither used nor changed).
        videos: ``(video_id, times [T], patches [T, P, D])`` per video (e.g. a feature-cache record's
            ``timestamps.tolist()`` and ``patches``).
        pause_steps, batch, line_words, line_display_s: as in :func:`stream_batched`.
        on_step: called with ``(index in videos, step output)`` after every step.

    Raises:
        InputError: ``batch < 1``, no videos, or a video whose features are not ``[T, P, D]`` with ``T`` times.
    """
    if batch < 1:
        raise InputError("batch", f"must be >= 1, got {batch}")
    if not videos:
        raise InputError("videos", "no videos to stream")
    for video_id, times, patches in videos:
        if patches.dim() != 3 or patches.shape[0] != len(times):
            raise InputError(video_id, f"expected patches [T, P, D] for {len(times)} times, got {tuple(patches.shape)}")
    order = sorted(range(len(videos)), key=lambda i: len(videos[i][1]), reverse=True)  # stable: ties keep order
    sources = [(videos[i][0], zip((float(t) for t in videos[i][1]), videos[i][2], strict=True)) for i in order]
    relay = None if on_step is None else (lambda position, out: on_step(order[position], out))
    streamed = stream_batched(
        session,
        sources,
        pause_steps,
        batch=batch,
        line_words=line_words,
        line_display_s=line_display_s,
        on_step=relay,
    )
    results: list[StreamedCommentary | None] = [None] * len(videos)
    for position, result in zip(order, streamed, strict=True):
        results[position] = result
    return results
