"""``DuplexSession``: live duplex inference, one model step per tick on a bounded KV cache (Moshi's step API).

The clock: step ``k`` covers stream time ``[k / step_hz, (k + 1) / step_hz)``. Per tick the session

1. takes the video tokens that arrived for this step (frames go through the bundle's frozen encoder and the video
   tokenizer's streaming ``step`` as they are pushed, then into the same :class:`~mmduplex.lm.alignment.VideoSlotPacker`
   training uses),
2. takes the next user-stream tokens (a question asked with :meth:`DuplexSession.ask`, up to the bundle's
   ``user_slots_per_step`` tokens per step, PAD = an empty slot or silence; each question starts in slot 0 of a step
   after the previous one's tokens, the same rule as :func:`~mmduplex.lm.alignment.align_user`),
3. runs :class:`~mmduplex.lm.model.DuplexLM` on that one position (``S = 1``), its own previous text token as the text
   input, on a :class:`~mmduplex.lm.kvcache.SinkWindowCache`,
4. samples the next text token (greedy at temperature 0; temperature, top-k and a PAD bias otherwise). It becomes
   the next step's text input and is returned: a word piece, or ``None`` for PAD / EPAD.

The video never waits for the text: a step always runs on whatever video has arrived, and a frame pushed late goes
out at the next step. The text lags the video by tau steps, so when the input ends the model still owes the words
for its last tau steps: :meth:`DuplexSession.flush` runs those steps with no new video (tau, plus the backlog the
video and user queues still hold, plus the line being spoken until the first PAD, at most
:data:`FLUSH_MAX_LINE_S` seconds more); :meth:`DuplexSession.run` calls it when its frames run out.

The token sampled by step ``k`` occupies the text stream's step ``k + 1``; it is shown at
``t = (k + 1) / step_hz``, the end of step ``k`` (all of that step's frames have arrived by then), so word times are
what a viewer experiences and include the text delay tau.

Memory is bounded: the cache keeps ``sink + window`` positions (attention sink + sliding window, contiguous
re-rotated positions, StreamingVLM), the packer's and the user queue's backlogs are capped, and the session keeps
no per-step history. For a stream that fits in the cache, the logits equal ``DuplexLM.forward`` over the whole
window, teacher-forced with the same text tokens and packed video; past the window, they equal a cache-free
recomputation over exactly the sink + window entries at contiguous positions (both tested in
``tests/test_streaming.py``, the reference in ``tests/bounded_reference.py``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mmduplex.errors import CheckpointError, InputError
from mmduplex.inference.loop import StepLoop
from mmduplex.lm.alignment import VideoSlotPacker, question_lines, time_to_step
from mmduplex.lm.bundle import DuplexBundle, load_bundle
from mmduplex.lm.kvcache import SinkWindowCache

if TYPE_CHECKING:
    from mmduplex.lm.model import DuplexLM
    from mmduplex.tokenizer.base import FrameTokens
    from mmduplex.tokenizer.encoders.base import FrozenImageEncoder

log = logging.getLogger(__name__)

DEFAULT_SINK = 4
"""Attention-sink positions when the bundle names none (StreamingLLM's value)."""
DEFAULT_WINDOW_S = 30.0
"""Sliding-window span in seconds of steps when the bundle names none (capped by the LM's position range)."""
MAX_VIDEO_BACKLOG_S = 10.0
"""Video tokens waiting for free slots are capped at this many seconds of slots; a frame beyond it is dropped."""
MAX_PENDING_USER_TOKENS = 4096
"""User-stream tokens that may wait to be fed (``user_slots_per_step`` per step); asking more is an error."""
FLUSH_MAX_LINE_S = 3.0
"""A bound, not a tuned value: after the steps still owed at the end of input, :meth:`DuplexSession.flush` lets the
line being spoken finish (until the first PAD) for at most this many seconds of steps."""


@dataclass
class StepOutput:
    """What one :meth:`DuplexSession.step` produced."""

    index: int
    """The step that ran (``k``; it covered ``[k / step_hz, (k + 1) / step_hz)``)."""
    t: float
    """When the token is shown (s): ``(k + 1) / step_hz``, the start of the text-stream step it occupies."""
    token_id: int
    """The sampled text token (the next step's text input)."""
    word: str | None
    """The decoded word piece, ``None`` for PAD / EPAD."""
    word_start: bool
    """Whether the piece begins a new word (always for a word-level tokenizer); ``False`` for PAD / EPAD."""
    logits: torch.Tensor
    """``[V]`` float32 raw logits of this step (before PAD bias / temperature); they predicted ``token_id``."""
    elapsed_s: float
    """Wall-clock seconds the step took (slot packing, LM step, sampling)."""
    flushed: bool = False
    """Whether the step ran after the end of the input (:meth:`DuplexSession.flush`): it carries no new video."""


_CONVERTED: weakref.WeakKeyDictionary[DuplexLM, dict[torch.dtype, DuplexLM]] = weakref.WeakKeyDictionary()


def model_in_dtype(model: DuplexLM, torch_dtype: str | None) -> DuplexLM:
    """``model`` with its backbone's parameters (the LM, head included) in ``torch_dtype``.

    The model itself when its backbone already is in that dtype (or ``torch_dtype`` is ``None``); otherwise a
    converted copy, made once per model and dtype and shared by the sessions that ask for it (the bundle's model is
    left as it is). The new parts (video projector, PAD / EPAD rows and head) keep their own dtype; the logits stay
    float32.

    Raises:
        InputError: ``torch_dtype`` names no floating-point torch dtype.
    """
    from mmduplex.lm.model import parse_dtype

    dtype = parse_dtype(torch_dtype)
    if dtype is None:
        return model
    if not dtype.is_floating_point:
        raise InputError("torch_dtype", f"not a floating-point torch dtype: {torch_dtype!r}")
    if next(model.backbone.parameters()).dtype == dtype:
        return model
    copies = _CONVERTED.setdefault(model, {})
    if dtype not in copies:
        converted = copy.deepcopy(model)
        for param in converted.backbone.parameters():  # tied weights stay tied; buffers (RoPE's inv_freq) stay as
            param.data = param.data.to(dtype)  # they are, as when the LM is loaded in that dtype
        copies[dtype] = converted.eval()
    return copies[dtype]


def stream_settings(bundle: DuplexBundle, sink: int | None, window: int | None) -> tuple[int, int]:
    """The cache's ``(sink, window)``: the arguments, else the bundle's ``config["streaming"]``, else defaults.

    The defaults are :data:`DEFAULT_SINK` and :data:`DEFAULT_WINDOW_S` seconds of steps, the window capped so that
    ``sink + window + 1`` positions stay within the backbone's ``max_position_embeddings``.
    """
    stored = bundle.config.get("streaming") or {}
    sink = int(sink if sink is not None else stored.get("sink", DEFAULT_SINK))
    if window is None and stored.get("window") is not None:
        window = int(stored["window"])
    if window is None:
        window = max(1, round(DEFAULT_WINDOW_S * bundle.step_hz))
        limit = getattr(bundle.model.backbone.config, "max_position_embeddings", None)
        if limit is not None:
            window = max(1, min(window, int(limit) - sink - 1))
    if sink < 0 or window < 1:
        raise InputError("sink/window", f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
    return sink, int(window)


class DuplexSession:
    """A live duplex session over one video stream (see the module docstring).

    Args:
        bundle: a loaded inference bundle (:func:`mmduplex.lm.bundle.load_bundle`).
        sink: attention-sink positions the cache keeps for ever (``None``: the bundle's, else :data:`DEFAULT_SINK`).
        window: most recent positions the cache keeps (``None``: the bundle's, else :data:`DEFAULT_WINDOW_S` seconds
            of steps). Per-step cost and memory are set by ``sink + window``, whatever the stream's length.
        temperature: sampling temperature; 0 is greedy (argmax).
        top_k: sample among the ``top_k`` most likely tokens only (``None``: all); ignored when greedy.
        pad_bias: added to the PAD logit before sampling: > 0 makes the model quieter, < 0 more talkative.
        seed: seed of the sampling generator.
        encoder: the frozen image encoder for :meth:`push_frame` (``None``: built from the bundle's encoder spec on
            first use and checked against the bundle's encoder fingerprint).
        device: where the LM step runs (``None``: where the bundle's model is).
        torch_dtype: the LM's weight dtype for the steps (``None``: the bundle's, as trained). ``"bfloat16"`` on a
            float32 bundle runs a bfloat16 copy of the LM (:func:`model_in_dtype`): on a CPU with AVX-512 BF16 a
            SmolLM2-135M step costs less, with logits within bfloat16's rounding of float32's
            (``benchmarks/bench_smollm2_cpu.py``).

    Raises:
        InputError: bad sampling settings or cache sizes, or a backbone the bounded cache cannot serve.
    """

    def __init__(
        self,
        bundle: DuplexBundle,
        *,
        sink: int | None = None,
        window: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        pad_bias: float = 0.0,
        seed: int = 0,
        encoder: FrozenImageEncoder | None = None,
        device: str | torch.device | None = None,
        torch_dtype: str | None = None,
    ) -> None:
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InputError("temperature", f"must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise InputError("top_k", f"must be >= 1 or None, got {top_k}")
        if not math.isfinite(pad_bias):
            raise InputError("pad_bias", f"must be finite, got {pad_bias}")
        self.bundle = bundle
        self.model = model_in_dtype(bundle.model, torch_dtype).eval()
        self.video_tokenizer = bundle.video_tokenizer.eval()
        self.text_tokenizer = bundle.text_tokenizer
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        if next(self.model.parameters()).device != self.device:
            self.model.to(self.device)
            self.video_tokenizer.to(self.device)
        self.step_hz = bundle.step_hz
        self.fps = bundle.fps
        self.sink, self.window = stream_settings(bundle, sink, window)
        self.temperature, self.top_k, self.pad_bias, self.seed = float(temperature), top_k, float(pad_bias), seed
        self._encoder = encoder
        if encoder is not None:
            check_encoder(bundle, encoder)
        self.pad_id, self.epad_id = self.text_tokenizer.pad_id, self.text_tokenizer.epad_id
        self.max_video_backlog = self.model.slots_per_step * max(1, math.ceil(MAX_VIDEO_BACKLOG_S * self.step_hz))
        self.reset()  # builds the cache: an unsupported backbone is refused here, not at step 0

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> DuplexSession:
        """Load the bundle folder at ``path`` (:func:`~mmduplex.lm.bundle.load_bundle`) and open a session on it."""
        return cls(load_bundle(path, device=device), device=device, **kwargs)

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the stream: empty cache, packer, user queue and tokenizer state; back to step 0."""
        self.cache = SinkWindowCache(self.model, self.sink, self.window)
        self._packer = VideoSlotPacker(self.model.slots_per_step, self.step_hz, self.model.token_dim)
        self._video_state = self.video_tokenizer.init_state(1)
        self._user: deque[tuple[int, tuple[int, ...]]] = deque()  # per question: (first step it may go out, tokens)
        self._text_in = self.pad_id  # the text stream starts silent
        self._last_frame_t = -math.inf
        self._generator = torch.Generator().manual_seed(self.seed)
        self.step_index = 0
        self.frames_pushed = 0
        self.video_tokens = 0
        self.dropped_video_tokens = 0

    def copy(self) -> DuplexSession:
        """An independent copy of the whole stream state (cache included); model, tokenizers and encoder are shared.

        Ask several questions about one streamed video: stream once, then ``copy()`` per question.
        """
        new = copy.copy(self)
        new.cache = self.cache.copy()
        new._packer = copy.deepcopy(self._packer)
        new._video_state = copy.deepcopy(self._video_state)
        new._user = deque(self._user)
        new._generator = torch.Generator().set_state(self._generator.get_state())
        return new

    @property
    def time(self) -> float:
        """Stream time (s) at which the next step starts."""
        return self.step_index / self.step_hz

    @property
    def pending_video_tokens(self) -> int:
        """Video tokens pushed but not yet fed to the model."""
        return self._packer.pending

    @property
    def pending_user_tokens(self) -> int:
        """User-stream tokens queued but not yet fed to the model."""
        return sum(len(tokens) for _, tokens in self._user)

    # ------------------------------------------------------------------ inputs

    @property
    def encoder(self) -> FrozenImageEncoder:
        """The frozen image encoder (built from the bundle's encoder spec on first use)."""
        if self._encoder is None:
            from mmduplex.tokenizer.encoders.factory import create_encoder

            spec = self.bundle.encoder_spec
            if spec is None:
                raise CheckpointError("bundle", "the bundle records no encoder; pass encoder= or push features")
            encoder = create_encoder(spec, device=self.device)
            check_encoder(self.bundle, encoder)
            self._encoder = encoder
        return self._encoder

    @torch.inference_mode()
    def push_frame(self, t: float, frame: torch.Tensor) -> FrameTokens:
        """Encode a ``[H, W, 3]`` uint8 RGB frame shown at stream time ``t`` (s) and queue its video tokens.

        Returns:
            The video tokenizer's :class:`~mmduplex.tokenizer.base.FrameTokens` for the frame.
        """
        frame = torch.as_tensor(frame)
        if frame.dim() != 3 or frame.shape[-1] != 3 or frame.dtype != torch.uint8:
            raise InputError("frame", f"expected [H, W, 3] uint8, got {tuple(frame.shape)} {frame.dtype}")
        patches = self.encoder.encode(frame[None]).patches[0]  # [P, D]
        return self.push_features(t, patches)

    @torch.inference_mode()
    def push_features(self, t: float, patches: torch.Tensor) -> FrameTokens:
        """Queue the video tokens of one frame given as patch features ``[P, D]`` (cached features, benchmarks).

        Frame times must increase. A frame whose step has already run goes out at the next step (the video never
        waits); when more tokens wait than :data:`MAX_VIDEO_BACKLOG_S` seconds of slots hold, the frame's tokens are
        dropped (logged), so the backlog stays bounded.

        Returns:
            The video tokenizer's :class:`~mmduplex.tokenizer.base.FrameTokens` for the frame.
        """
        t = check_frame(t, patches, self._last_frame_t)
        times = torch.tensor([t], dtype=torch.float64)  # [1]
        frames, _, self._video_state = self.video_tokenizer.step(
            patches[None].to(self.device), times, self._video_state
        )  # patches [1, P, D]
        return self._queue_tokens(t, frames[0])

    def _queue_tokens(self, t: float, tokens: FrameTokens) -> FrameTokens:
        """The second half of :meth:`push_features`: the frame's tokens (tokenized at ``t``) into the slot queue."""
        self._last_frame_t = t
        self.frames_pushed += 1
        if self._packer.pending + tokens.n_tokens > self.max_video_backlog:
            self.dropped_video_tokens += tokens.n_tokens
            log.warning("video backlog full at t=%.2f s: dropped a frame's %d tokens", t, tokens.n_tokens)
        else:
            self._packer.push(tokens)
            self.video_tokens += tokens.n_tokens
        return tokens

    def ask(self, text: str, t: float | None = None) -> int:
        """Queue a user question on the user stream, ``user_slots_per_step`` tokens per step from step
        ``floor(t * step_hz)``.

        Args:
            text: the question (whitespace-separated words; each line starts a new step, as in
                :func:`~mmduplex.lm.alignment.align_user`).
            t: stream time (s) it is typed at; ``None`` or a time already past: from the next step. Questions go
                out in the order they are asked, each from slot 0 of the step after the previous one's last token.

        Returns:
            The number of tokens queued.
        """
        lines = question_lines(text, self.text_tokenizer)
        count = sum(len(tokens) for tokens in lines)
        if not count:
            raise InputError("question", "empty question")
        if self.pending_user_tokens + count > MAX_PENDING_USER_TOKENS:
            raise InputError("question", f"more than {MAX_PENDING_USER_TOKENS} user tokens would be waiting")
        ready = self.step_index if t is None else max(self.step_index, time_to_step(float(t), self.step_hz))
        self._user.extend((ready, tuple(tokens)) for tokens in lines)
        return count

    # ------------------------------------------------------------------ stepping

    @property
    def user_slots_per_step(self) -> int:
        """``U``, user-stream tokens fed per step (the model's setting)."""
        return self.model.user_slots_per_step

    def _user_tokens(self) -> torch.Tensor:
        """This step's user slots ``[U]``: the due question's next tokens (at most ``U``), PAD in the rest."""
        u = self.user_slots_per_step
        slots = torch.full((u,), self.pad_id, dtype=torch.long)  # [U]
        if self._user and self._user[0][0] <= self.step_index:
            ready, tokens = self._user.popleft()
            slots[: min(u, len(tokens))] = torch.tensor(tokens[:u], dtype=torch.long)
            if len(tokens) > u:
                self._user.appendleft((ready, tokens[u:]))
        return slots

    def _sample(self, logits: torch.Tensor) -> int:
        scores = logits.detach().float().cpu().clone()  # [V]
        scores[self.pad_id] += self.pad_bias
        if self.temperature == 0:
            return int(scores.argmax())
        scores = scores / self.temperature
        if self.top_k is not None and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    @torch.inference_mode()
    def step(self) -> StepOutput:
        """Run one tick: this step's video slots + user tokens + the previous text token -> the next text token."""
        start = time.perf_counter()
        text, slots, mask, user = self.step_inputs()
        out = self.model(
            text[None].to(self.device),  # [1, 1]
            slots[None, None].to(self.device),  # [1, 1, K, Dv]
            mask[None, None].to(self.device),  # [1, 1, K]
            user[None, None].to(self.device),  # [1, 1, U]
            past_key_values=self.cache,
            position_ids=self.cache.next_position_ids(1, 1, self.device),
            use_cache=True,
        )
        return self.step_output(out.logits[0, -1], start)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first half of :meth:`step`: this step's model inputs, taken off the queues (no batch dim).

        Returns:
            ``text [1]`` (the previous text token), ``slots [K, Dv]``, ``mask [K]``, ``user [U]``.
        """
        slots, mask = self._packer.pop_step()  # [K, Dv], [K]
        return torch.tensor([self._text_in]), slots, mask, self._user_tokens()

    def step_output(self, logits: torch.Tensor, start: float) -> StepOutput:
        """The second half of :meth:`step`: sample from this step's ``[V]`` logits, advance the clock, describe it
        (``start``: the step's ``time.perf_counter()`` at its start)."""
        token = self._sample(logits)
        index = self.step_index
        self._text_in = token
        self.step_index += 1
        silent = token in (self.pad_id, self.epad_id)
        word = None if silent else (self.text_tokenizer.decode([token]) or None)
        return StepOutput(
            index=index,
            t=(index + 1) / self.step_hz,
            token_id=token,
            word=word,
            word_start=word is not None and self.text_tokenizer.is_word_start(token),
            logits=logits,
            elapsed_s=time.perf_counter() - start,
        )

    def run(
        self,
        frames: Iterable[tuple[float, torch.Tensor]],
        end_s: float | None = None,
        wait: Callable[[float], None] | None = None,
        flush: bool = True,
    ) -> Iterator[StepOutput]:
        """Drive the session over a stream of ``(t, frame [H, W, 3] uint8)`` (or ``(t, patches [P, D])``) pairs;
        yield every step's output: the streaming loop, :class:`~mmduplex.inference.loop.StepLoop`.

        Each frame is pushed before the step that contains it runs; a step runs as soon as a later frame arrives
        (or the stream ends). The input ends at ``end_s`` or after the last frame's display period
        (``1 / fps``), whichever comes first; then :meth:`flush` runs the steps the model still owes (the text
        lags the video by tau), unless ``flush`` is false.

        Args:
            frames: frames in increasing time order (e.g. :func:`mmduplex.io.video.iter_video`).
            end_s: stop at this stream time (s) at the latest; frames at or after it are not read.
            wait: called with a stream time before each event at that time (a frame arriving at ``t``, step ``k``
                due at ``(k + 1) / step_hz``), in time order; real-time pacing sleeps until then.
            flush: run :meth:`flush` at the end of the input (``False``: stop at the input's last step, e.g. to go
                on pushing frames or asking questions on the same session).
        """
        return iter(StepLoop(self, frames, end_s=end_s, wait=wait, after="flush" if flush else "stop"))

    def owed_steps(self) -> int:
        """Steps the model still owes at the end of the input (no new video coming).

        The video tokens and the user tokens already due still wait for their steps, and the text stream lags by
        ``delay_steps`` (tau): ``max(steps to feed the video backlog, steps to feed the due questions) + tau``, a
        question of ``n`` tokens needing ``ceil(n / user_slots_per_step)`` steps.
        """
        video = math.ceil(self._packer.pending / self.model.slots_per_step)
        u = self.user_slots_per_step
        user = sum(math.ceil(len(tokens) / u) for ready, tokens in self._user if ready <= self.step_index)
        return max(video, user) + int(self.bundle.delay_steps)

    def flush(
        self, wait: Callable[[float], None] | None = None, max_line_steps: int | None = None
    ) -> Iterator[StepOutput]:
        """End of input: run the steps still owed, with no new video, and yield them (``flushed=True``).

        Runs :meth:`owed_steps` steps, then, while the model is still speaking (its last token was not PAD; EPAD
        announces a word), more steps until the first PAD, at most ``max_line_steps``. The clock goes on: the
        flushed words carry times after the last frame, within its step plus tau (plus the line's finish).
        Frames pushed afterwards start a new stretch of input; nothing is reset.

        Args:
            wait: as in :meth:`run` (real-time pacing of the flushed steps).
            max_line_steps: most steps run after the owed ones to let the line finish (``None``:
                :data:`FLUSH_MAX_LINE_S` seconds of steps; 0: stop right after the owed steps).
        """
        if max_line_steps is None:
            max_line_steps = math.ceil(FLUSH_MAX_LINE_S * self.step_hz)
        if max_line_steps < 0:
            raise InputError("max_line_steps", f"must be >= 0, got {max_line_steps}")
        owed = self.owed_steps()
        finishing = self.step_index + owed + max_line_steps
        stop = self.step_index + owed
        while self.step_index < stop or (self._text_in != self.pad_id and self.step_index < finishing):
            if wait is not None:
                wait((self.step_index + 1) / self.step_hz)
            out = self.step()
            out.flushed = True
            yield out


def check_frame(t: float, patches: torch.Tensor, last_t: float) -> float:
    """A pushed frame's time as a float, after checking it comes after ``last_t`` and its features are ``[P, D]``."""
    t = float(t)
    if not t > last_t:
        raise InputError("t", f"frame times must increase: {t} after {last_t}")
    if patches.dim() != 2:
        raise InputError("patches", f"expected [P, D], got {tuple(patches.shape)}")
    return t


def check_encoder(bundle: DuplexBundle, encoder: FrozenImageEncoder) -> None:
    """Refuse an encoder other than the one the bundle was trained on (by fingerprint).

    Raises:
        CheckpointError: the fingerprints differ.
    """
    trained_on = bundle.encoder
    if trained_on and dict(trained_on) != dict(encoder.fingerprint):
        raise CheckpointError("encoder", f"the bundle was trained on encoder {trained_on}, got {encoder.fingerprint}")
