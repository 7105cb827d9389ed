"""Questions while watching, in ``mmduplex demo``: the held-out videos streamed with their questions, and a
synthetic LongVideoBench split asked through ``mmduplex eval longvideobench`` in model mode.

- :func:`stream_asking` streams a video's cached features through a session and types each of its questions on the
  user stream at the question's time (:meth:`~mmduplex.inference.session.DuplexSession.ask`), while the video goes on.
  It records when each question's last token was fed: the end of the step that fed it. :func:`stream_asking_many`
  does the same for many videos at once, in lockstep batches.
- :func:`score_answers`: an open question is answered when the model's words within ``tolerance_s`` after its last
  token name the right value (every word of it: ``"red"``, ``"two"``, ``"red square"``); a multiple-choice question
  asked mid-stream, when the first option letter said in that time is the right one (as the reference parser reads
  a reply). Answer latency: from the last token to the first word of the right answer (the letter for multiple
  choice).
- :func:`write_lvb_split`: for each held-out video, a multiple-choice question about what is on screen (or just
  happened) at a cut time, and the video up to that time re-rendered at the model's frame rate, in LongVideoBench's
  published layout (``lvb_val.json`` with all its fields, ``videos/``, ``subtitles/`` with empty lists: subtitles
  never hold answers). :func:`run_lvb` runs the evaluation exactly as ``mmduplex eval longvideobench --data-root
  DIR/lvb --checkpoint DIR/bundle`` does with its defaults: the prompt is typed after the last frame.
- :func:`ask_heldout` and :func:`lvb_results` give the report's ``qa`` figures (two jobs the demo runs at once).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmduplex.data.synthetic_questions import KINDS, cut_question
from mmduplex.eval.answer_parser import LETTERS
from mmduplex.eval.longvideobench_data import L1_CATEGORIES
from mmduplex.fileio import write_json_atomic

if TYPE_CHECKING:
    import torch

    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.data.synthetic_plan import VideoSpec
    from mmduplex.data.synthetic_questions import SyntheticQuestion
    from mmduplex.demo.stream import StreamResult
    from mmduplex.inference.session import DuplexSession, StepOutput
    from mmduplex.io.feature_cache import FeatureCache

LVB_TOPIC = "SYN-Synthetic-Shapes"
"""``topic_category`` of the synthetic split's records."""


@dataclass
class AskedQuestion:
    """One question typed while a video streamed, and what the model said after it."""

    question: SyntheticQuestion
    fed_s: float | None = None
    """End of the step that fed the question's last token (stream time, s); ``None`` if it was never fed."""
    words: list[tuple[float, str]] = field(default_factory=list)
    """The model's words ``(t, word)`` within the tolerance after ``fed_s``."""
    correct: bool = False
    latency_s: float | None = None


class _Asking:
    """One video's questions while it streams: after each step, the questions its loop has typed so far are marked
    fed (``fed_s``, the end of that step) once the session has no user token left to feed."""

    def __init__(self, questions: Sequence[SyntheticQuestion]) -> None:
        from mmduplex.inference.loop import Question

        self.asked = [AskedQuestion(q) for q in sorted(questions, key=lambda q: q.t)]
        self.typed = [Question(item.question.t, item.question.text) for item in self.asked]
        self._item_of = {id(question): item for question, item in zip(self.typed, self.asked, strict=True)}
        self._typing: list[AskedQuestion] = []  # asked, last token not fed yet
        self._seen = 0  # questions of loop.asked taken into typing

    def after_step(self, session: DuplexSession, loop) -> None:
        """Call after each step the loop yields (those typed since the last step were typed before this one ran)."""
        self._typing += [self._item_of[id(question)] for question, _ in loop.asked[self._seen :]]
        self._seen = len(loop.asked)
        if self._typing and session.pending_user_tokens == 0:  # every question asked so far has been fed
            for item in self._typing:
                item.fed_s = session.step_index / session.step_hz
            self._typing.clear()


def stream_asking(
    session: DuplexSession,
    times: Sequence[float],
    patches: torch.Tensor,
    questions: Sequence[SyntheticQuestion],
) -> tuple[list[StepOutput], list[AskedQuestion]]:
    """Stream cached features ``[T, P, D]`` at ``times`` (reset first) and ask ``questions`` at their times, through
    the streaming loop (:class:`~mmduplex.inference.loop.StepLoop`).

    Returns:
        Every step's output (flush included) and one :class:`AskedQuestion` per question (``fed_s`` set).
    """
    from mmduplex.demo.stream import feature_pairs
    from mmduplex.inference.loop import StepLoop, timeline

    session.reset()
    asking = _Asking(questions)
    loop = StepLoop(session, timeline(feature_pairs(times, patches), asking.typed))
    outputs: list[StepOutput] = []
    for out in loop:
        outputs.append(out)
        asking.after_step(session, loop)
    return outputs, asking.asked


def stream_asking_many(
    session: DuplexSession,
    videos: Sequence[tuple[str, Sequence[float], torch.Tensor, Sequence[SyntheticQuestion]]],
    pause_steps: int,
    **batching: Any,
) -> list[tuple[StreamResult, list[AskedQuestion]]]:
    """:func:`stream_asking` for many videos ``(video_id, times, patches [T, P, D], questions)`` at once, through
    :func:`~mmduplex.demo.stream.stream_many` (``batching``: its ``batch``), longest first: each video's commentary
    and its questions, as streaming it alone gives them."""
    from mmduplex.demo.stream import feature_pairs, stream_many
    from mmduplex.inference.loop import timeline

    askings = [_Asking(questions) for *_, questions in videos]
    sources = [(vid, timeline(feature_pairs(times, patches), asking.typed))
               for (vid, times, patches, _), asking in zip(videos, askings, strict=True)]  # fmt: skip
    results = stream_many(
        session,
        sources,
        pause_steps,
        [len(times) for _, times, *_ in videos],
        watch=lambda i, out, member, loop: askings[i].after_step(member, loop),
        **batching,
    )
    return [(result, asking.asked) for result, asking in zip(results, askings, strict=True)]


def score_answers(asked: Sequence[AskedQuestion], spoken: Sequence[tuple[float, str]], tolerance_s: float) -> None:
    """Fill each question's ``words``, ``correct`` and ``latency_s`` from the model's ``(t, word)`` said."""
    for item in asked:
        if item.fed_s is None:
            continue
        item.words = [(t, w) for t, w in spoken if item.fed_s <= t <= item.fed_s + tolerance_s]
        question = item.question
        if question.choices:
            letters = [(t, w) for t, w in item.words if len(w) == 1 and w in LETTERS]
            item.correct = bool(letters) and letters[0][1] == question.letter
            first = letters[0][0] if item.correct else None
        else:
            said = [w.lower() for _, w in item.words]
            wanted = [w.lower() for w in question.answer_words]
            item.correct = all(w in said for w in wanted)
            first = min((t for t, w in item.words if w.lower() in wanted), default=None) if item.correct else None
        if first is not None:
            item.latency_s = round(first - item.fed_s, 4)


# ----------------------------------------------------------------------------------------------- LVB split


def _render_prefix(spec: VideoSpec, cut_s: float, fps: float) -> np.ndarray:
    """The video's frames at ``k / fps`` for ``k / fps < cut_s``: ``[T, H, W, 3]`` uint8."""
    from mmduplex.data.synthetic_render import render_video

    frames = render_video(spec)  # [N, H, W, 3] at spec.fps
    count = max(1, math.floor(cut_s * fps + 1e-6))
    index = [min(round(k * spec.fps / fps), frames.shape[0] - 1) for k in range(count)]
    return frames[index]


def lvb_record(video_id: str, question: SyntheticQuestion, cut_s: float, fps: float) -> dict[str, Any]:
    """One ``lvb_val.json`` record (every published field) for ``question`` asked at the end of a ``cut_s`` clip."""
    question_line = question.text.split("\n")[0]
    return {
        "video_id": video_id,
        "question": question_line,
        "question_wo_referring_query": question_line,
        "candidates": list(question.choices),
        "correct_choice": list(question.choices).index(question.answer),
        "position": [max(0, math.floor(cut_s * fps + 1e-6) - 1)],
        "topic_category": LVB_TOPIC,
        "question_category": question.category,
        "level": "L1-Perception" if question.category in L1_CATEGORIES else "L2-Relation",
        "id": f"{video_id}_0",
        "video_path": f"{video_id}.mp4",
        "subtitle_path": f"{video_id}_en.json",
        "duration_group": 15 if cut_s <= 15 else 60,
        "starting_timestamp_for_subtitles": 0,
        "duration": round(cut_s, 3),
        "view_count": 0,
    }


def write_lvb_split(dataset: SyntheticDataset, ids: Sequence[str], root: Path, fps: float, seed: int) -> int:
    """Write the synthetic LongVideoBench split of videos ``ids`` to ``root``; returns the number of questions."""
    from mmduplex.io.video import write_video

    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "subtitles").mkdir(parents=True, exist_ok=True)
    records = []
    for i, vid in enumerate(ids):
        spec = dataset.spec(vid)
        first_kind = i % len(KINDS)  # each video tries the kinds from another one, so every kind is asked
        cut, question = cut_question(spec, np.random.default_rng([seed, i, 12]), fps, first_kind)
        if question is None:
            continue
        record = lvb_record(vid, question, cut, fps)
        write_video(root / "videos" / record["video_path"], _render_prefix(spec, cut, fps), fps=fps)
        write_json_atomic(root / "subtitles" / record["subtitle_path"], [])
        records.append(record)
    write_json_atomic(root / "lvb_val.json", records)
    return len(records)


def run_lvb(root: Path, bundle: Path, out: Path) -> dict[str, Any]:
    """``mmduplex eval longvideobench --data-root root --checkpoint bundle --out out`` (its defaults, no progress
    bar): the results it writes."""
    from mmduplex.eval.longvideobench import LongVideoBenchEval

    settings = {**LongVideoBenchEval.defaults, "data_root": str(root), "checkpoint": str(bundle)}
    task = LongVideoBenchEval.from_settings(settings)
    task.progress = False
    results = task.run()
    task.write(results, out)
    return json.loads(Path(out).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- the stage


def ask_split(
    session: DuplexSession,
    dataset: SyntheticDataset,
    cache: FeatureCache,
    split: str,
    tolerance_s: float,
    pause_steps: int,
) -> Iterator[tuple[str, StreamResult, list[AskedQuestion]]]:
    """Every video of ``split`` streamed with its questions typed at their times (:func:`stream_asking_many`), each
    question scored on the words said after it (:func:`score_answers`): ``(video id, stream, asked)`` per video."""
    from mmduplex.io.feature_cache import video_key

    ids = dataset.video_ids(split)
    records = [cache.load(video_key(dataset.video_path(vid))) for vid in ids]
    videos = [(v, r.timestamps.tolist(), r.patches, dataset.questions(v)) for v, r in zip(ids, records, strict=True)]
    for vid, (result, asked) in zip(ids, stream_asking_many(session, videos, pause_steps), strict=True):
        score_answers(asked, result.words, tolerance_s)
        yield vid, result, asked


def ask_heldout(
    session: DuplexSession,
    dataset: SyntheticDataset,
    cache: FeatureCache,
    plain: Sequence[StreamResult],
    tolerance_s: float,
    pause_steps: int,
    split: str = "heldout",
) -> dict[str, Any]:
    """The report's ``qa`` figures but ``lvb``: every video of ``split`` streamed with its questions typed at their
    times.

    Args:
        session: the main model's session (at its PAD bias).
        dataset: the synthetic set (held-out videos with questions).
        cache: its feature cache.
        plain: the same model's streams of the held-out videos without questions (the demo's own, whose event
            accuracy is the report's top-level figure): ``event_accuracy_without_questions`` and the control
            ``open_accuracy_not_asked`` (the same answer windows on these streams: how often the commentary alone
            happens to name the answer, the open-question figure's floor).
        tolerance_s: the answer window after a question's last token (s).
        pause_steps: silent steps that end a commentary line.
        split: the videos asked (``heldout`` for the report, ``val`` while choosing settings).
    """
    from mmduplex.demo.stream import score_videos

    words_without = {result.video_id: result.words for result in plain}
    with_q, asked_all, control_all = [], [], []
    for vid, result, asked in ask_split(session, dataset, cache, split, tolerance_s, pause_steps):
        with_q.append(result)
        control = [AskedQuestion(a.question, fed_s=a.fed_s) for a in asked]  # the same windows, nothing asked
        score_answers(control, words_without.get(vid, []), tolerance_s)
        asked_all += asked
        control_all += control
    figures_with, _ = score_videos(with_q, dataset, tolerance_s, split)
    figures_without, _ = score_videos(plain, dataset, tolerance_s, split)
    open_q = [a for a in asked_all if not a.question.choices]
    choice_q = [a for a in asked_all if a.question.choices]
    latencies = [a.latency_s for a in asked_all if a.latency_s is not None]
    by_kind: dict[str, list[bool]] = {}
    for a in open_q:
        by_kind.setdefault(a.question.kind, []).append(a.correct)
    return {
        "open_accuracy": _share([a.correct for a in open_q]),
        "median_answer_latency_s": statistics.median(latencies) if latencies else None,
        "event_accuracy_with_questions": figures_with["event_accuracy"],
        "event_accuracy_without_questions": figures_without["event_accuracy"],
        "open_accuracy_not_asked": _share([c.correct for c in control_all if not c.question.choices]),
        "open_questions": len(open_q),
        "open_accuracy_by_kind": {kind: _share(ok) for kind, ok in sorted(by_kind.items())},
        "choice_accuracy_mid_stream": _share([a.correct for a in choice_q]),
        "choice_questions_mid_stream": len(choice_q),
        "unfed_questions": sum(a.fed_s is None for a in asked_all),
        "event_precision_with_questions": figures_with["event_precision"],
        "rule": f"an answer counts when its words are said within {tolerance_s:g} s after the question's last token; "
        "latency runs from that token to the first answer word",
    }


def lvb_results(
    dataset: SyntheticDataset, bundle: Path, out_dir: Path, fps: float, seed: int, split: str = "heldout"
) -> dict[str, Any] | None:
    """The report's ``qa.lvb``: ``out_dir/lvb`` written from the videos of ``split`` (:func:`write_lvb_split`) and
    asked through ``bundle`` as ``eval longvideobench`` does with its defaults (``out_dir/lvb_results.json``);
    ``None`` when no such video has an answerable cut."""
    root = out_dir / "lvb"
    if not write_lvb_split(dataset, dataset.video_ids(split), root, fps, seed):
        return None
    return run_lvb(root, bundle, out_dir / "lvb_results.json")


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None
