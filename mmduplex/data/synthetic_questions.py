"""Questions while watching: what a user asks about the synthetic world, and the timeline of commentary and answers.

A question is asked at time ``t`` about what is on screen then or happened shortly before (the model remembers about
9 s); it arrives on the user stream ``question_tokens_per_step`` tokens a step at ``question_step_hz`` (one token
per word with the synthetic tokenizer; each line starts a new step, as the model's user stream does) and ends at
``end_t``. Five kinds, each mapped to a LongVideoBench ``question_category``:

========  =====================================================  ===============  ========================
kind      text (open form)                                       answer           category
========  =====================================================  ===============  ========================
colour    ``what colour is the square ?``                        ``red``          S2A (scene -> attribute)
shape     ``what shape is the red one ?``                        ``circle``       S2O (scene -> object)
count     ``how many shapes are on screen ?``                    ``two``          S2O (scene -> object)
action    ``what did the red square just do ?``                  ``enters``       O2E (object -> event)
order     ``which came in first , the red square or the blue     ``red square``   E3E (event before event)
          circle ?``
========  =====================================================  ===============  ========================

Punctuation is written as separate words (``?``, ``,``) so the word-level vocabulary holds it. A multiple-choice
question is the LongVideoBench prompt exactly (``mmduplex.eval.longvideobench_data.build_prompt``): the question line,
one ``A. option`` line per option, then ``Answer with the option's letter from the given choices directly.``; its answer
is the right option's words, then its letter (``red A``; the reference parser reads the letter). Naming what was
seen first makes the choice a look-up, the option whose line holds the word just said: a model without a copy head
did not learn it either way (notebooks/LOG.md, 2026-11-29 night and 2026-11-30); the copy head
(:mod:`mmduplex.lm.copy_head`) makes it one attention (notebooks/LOG.md#2026-12-07-copy-head).
"On screen" follows the events: a shape is on screen from its ``enters`` to its ``leaves`` event.
A question is only asked when its answer is *steady*: the same from ``STEADY_BEFORE_S`` before ``t`` until its
answer is due (``end_t + answer_delay_s``), so the scene cannot change while the user types.

Collision rule (commentary and answers share the model's one text stream). Every utterance has an earliest start:
an event line ``event.t + word delay``, an answer ``end_t + answer_delay_s``. Utterances are placed in order of
earliest start (an answer first when they tie), each at ``max(earliest start, end of the previous utterance)``:
nobody interrupts a line being spoken, so an answer may delay an event line and an event line may delay an answer.
Words last ``word_duration_s`` each. Questions come one at a time: the next is asked an exponential gap (mean
``question_interval_s``) after the previous answer has been spoken, never before ``FIRST_QUESTION_S``; a question
whose placement would push any word past the end of the video is not asked (and none after it).
Questions draw from their own random stream, so a config with questions has the same videos, events and event
word texts as the same config without them (only word times may move, by the collision rule).

A question may also come after the stream stops (LongVideoBench's setting: the whole prompt after the last frame):
:func:`cut_question` picks the stop (a frame time, or the video's end) with no event in the ``END_QUIET_S`` before it
and asks about the events before it only; :func:`stream_end_words` places its answer after the commentary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mmduplex.data.synthetic_world import ACTIONS, COLOURS, SHAPES, Event, SyntheticConfig, VideoSpec
from mmduplex.data.transcripts import Word
from mmduplex.errors import InputError

KINDS: tuple[str, ...] = ("colour", "shape", "count", "action", "order")
CATEGORIES: dict[str, str] = {"colour": "S2A", "shape": "S2O", "count": "S2O", "action": "O2E", "order": "E3E"}
"""LongVideoBench ``question_category`` of each kind."""
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."
"""LongVideoBench's instruction line (a copy of ``mmduplex.eval.longvideobench_data.PROMPT_SUFFIX``; a test keeps them
equal)."""
LETTERS = "ABCD"
"""Option letters (at most 4 options are offered)."""
NUMBERS: tuple[str, ...] = (
    *("zero", "one", "two", "three", "four", "five", "six"),
    *("seven", "eight", "nine", "ten", "eleven", "twelve"),
)
STEADY_BEFORE_S = 0.5
"""The answer must already hold this long (s) before the question is asked (the model has seen it)."""
ACTION_WINDOW_S = 6.0
"""An action question asks about an event at most this long (s) before the question."""
ORDER_WINDOW_S = 8.0
"""An order question asks about two entries at most this long (s) before the question."""
FIRST_QUESTION_S = 2.0
"""No question is asked before this time (s)."""
END_MIN_S = 8.0
"""A stream stops for a question after it (:func:`cut_question`) no earlier than this (s): LongVideoBench's shortest
duration group is (8, 15] s."""
END_QUIET_S = 2.0
"""No event in the last seconds before a stream stops for a question: its commentary line would still be spoken
while the question is typed."""
_OPTIONS = {"colour": (4, 1), "shape": (3, 1), "count": (4, 1), "action": (4, 1), "order": (4, 2)}
"""Options of a multiple-choice question of each kind, and words per option."""
_TEMPLATES = {
    "colour": "what colour is the {} ?",
    "shape": "what shape is the {} one ?",
    "count": "how many shapes are on screen ?",
    "action": "what did the {} just do ?",
    "order": "which came in first , the {} or the {} ?",
}


def question_words() -> list[str]:
    """Every word a question, an option line or an answer can add to the world's words, without duplicates."""
    words = [w for kind in KINDS for w in _TEMPLATES[kind].split() if w != "{}"]
    words += [*NUMBERS, *(f"{letter}." for letter in LETTERS), *LETTERS, *PROMPT_SUFFIX.split()]
    return list(dict.fromkeys(words))


def vocabulary() -> list[str]:
    """Every word the synthetic transcripts and questions can use: colours, shapes, actions, then question words."""
    world = [*COLOURS, *SHAPES, *ACTIONS]
    return world + [w for w in question_words() if w not in world]


@dataclass(frozen=True)
class SyntheticQuestion:
    """One question a user types while watching, with its answer.

    Attributes:
        t: video time (s) the user starts typing.
        text: what the user types (words separated by single spaces / newlines, all in :func:`vocabulary`).
        kind: ``"colour"``, ``"shape"``, ``"count"``, ``"action"`` or ``"order"``.
        category: its LongVideoBench ``question_category`` (:data:`CATEGORIES`).
        answer: the right value as words (``"red"``, ``"two"``, ``"red square"``).
        choices: the option texts in letter order (one equals ``answer``); ``()`` for an open question.
        end_t: when its last token has arrived: ``t`` plus :func:`typing_s` of its text.
        answer_t: start of the first answer word in the transcript.
    """

    t: float
    text: str
    kind: str
    category: str
    answer: str
    choices: tuple[str, ...] = ()
    end_t: float = 0.0
    answer_t: float = 0.0

    @property
    def letter(self) -> str | None:
        """The right option's letter for a multiple-choice question, ``None`` for an open one."""
        return LETTERS[self.choices.index(self.answer)] if self.choices else None

    @property
    def answer_words(self) -> list[str]:
        """The words the model says: the answer's words, then the right option's letter (multiple choice)."""
        return [*self.answer.split(), self.letter] if self.choices else self.answer.split()

    @property
    def question(self) -> str:
        """The question line alone (the first line of ``text``)."""
        return self.text.split("\n")[0]

    def to_json(self) -> dict:
        """The question as plain JSON values (for the data set's events file)."""
        return {
            "t": self.t,
            "text": self.text,
            "kind": self.kind,
            "category": self.category,
            "answer": self.answer,
            "choices": list(self.choices),
            "end_t": self.end_t,
            "answer_t": self.answer_t,
        }


# --------------------------------------------------------------------------------------------- the world at time t


def _live(events: tuple[Event, ...], t: float) -> dict[int, tuple[str, str]]:
    """Shapes on screen at ``t`` (by the events up to and including ``t``): shape id -> (colour, shape)."""
    live: dict[int, tuple[str, str]] = {}
    for e in events:
        if e.t > t:
            break
        if e.action == "leaves":
            live.pop(e.shape_id, None)
        else:
            live[e.shape_id] = (e.colour, e.shape)
    return live


def _steady(events: tuple[Event, ...], value, lo: float, hi: float):
    """``value(t)`` if it is the same (and not ``None``) at every event-state in ``[lo, hi]``, else ``None``."""
    times = [lo, hi, *(e.t for e in events if lo <= e.t <= hi)]
    values = {value(t) for t in times}
    return next(iter(values)) if len(values) == 1 else None


def _unique(live: dict[int, tuple[str, str]], index: int, value: str) -> list[int]:
    return [sid for sid, pair in live.items() if pair[index] == value]


def _recent_names(events: tuple[Event, ...], lo: float, hi: float) -> list[tuple[str, str]]:
    """Names of the shapes on screen or with an event in ``[lo, hi]`` (one per shape, last name)."""
    names = dict(_live(events, lo))
    names.update({e.shape_id: (e.colour, e.shape) for e in events if lo <= e.t <= hi})
    return list(names.values())


def _open_question(events: tuple[Event, ...], t: float, hi: float, kind: str, rng: np.random.Generator):
    """``(question line, answer, option pool)`` of one answerable question of ``kind`` at ``t``, or ``None``."""
    live = _live(events, t)
    lo = t - STEADY_BEFORE_S
    found = []
    if kind in ("colour", "shape"):  # the attribute asked about, of the one shape on screen with the other one
        known, asked, pool = (1, 0, list(COLOURS)) if kind == "colour" else (0, 1, list(SHAPES))
        for name in sorted({pair[known] for pair in live.values()}):

            def value(tau: float, name: str = name) -> str | None:
                now = _live(events, tau)
                ids = _unique(now, known, name)
                return now[ids[0]][asked] if len(ids) == 1 else None

            if (answer := _steady(events, value, lo, hi)) is not None:
                found.append((_TEMPLATES[kind].format(name), answer, pool))
    elif kind == "count":
        count = _steady(events, lambda tau: len(_live(events, tau)), lo, hi)
        if count is not None and count < len(NUMBERS):
            first = max(0, count - len(LETTERS) + 1)
            found.append((_TEMPLATES[kind], NUMBERS[count], list(NUMBERS[first : first + len(LETTERS)])))
    elif kind == "action":
        names = _recent_names(events, t - ACTION_WINDOW_S, hi)
        last: dict[int, Event] = {e.shape_id: e for e in events if e.t <= hi}
        for e in last.values():
            if t - ACTION_WINDOW_S <= e.t <= lo and names.count((e.colour, e.shape)) == 1:
                found.append((_TEMPLATES[kind].format(f"{e.colour} {e.shape}"), e.action, list(ACTIONS)))
    elif kind == "order":
        names = _recent_names(events, t - ORDER_WINDOW_S, hi)
        entries = [e for e in events if e.action == "enters" and t - ORDER_WINDOW_S <= e.t <= lo]
        entries = [e for e in entries if _keeps_name(events, e, hi)]
        pairs = [(a, b) for i, a in enumerate(entries) for b in entries[i + 1 :] if a.t < b.t]
        for a, b in pairs:
            name_a, name_b = f"{a.colour} {a.shape}", f"{b.colour} {b.shape}"
            if name_a == name_b or names.count((a.colour, a.shape)) != 1 or names.count((b.colour, b.shape)) != 1:
                continue
            mention = [name_a, name_b] if rng.random() < 0.5 else [name_b, name_a]
            pool = [f"{c} {s}" for s in SHAPES for c in COLOURS]
            found.append((_TEMPLATES[kind].format(*mention), name_a, pool))
    else:
        raise InputError("kind", f"must be one of {KINDS} or None, got {kind!r}")
    return found[rng.integers(len(found))] if found else None


def _keeps_name(events: tuple[Event, ...], entry: Event, hi: float) -> bool:
    """True when the entered shape did not turn between its entry and ``hi`` (its entry name still holds)."""
    return not any(e.shape_id == entry.shape_id and e.action == "turns" and entry.t <= e.t <= hi for e in events)


def _options(answer: str, pool: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    """The answer and up to 3 other values of ``pool``, shuffled."""
    others = [v for v in pool if v != answer]
    picked = [others[i] for i in sorted(rng.choice(len(others), min(len(others), len(LETTERS) - 1), replace=False))]
    options = [answer, *picked]
    return tuple(options[i] for i in rng.permutation(len(options)))


def num_tokens(kind: str, choice: bool) -> int:
    """Words (= synthetic tokens) of every question of ``kind``: fixed by the templates and the option counts."""
    fill = {"colour": ["x"], "shape": ["x"], "count": [], "action": ["x y"], "order": ["x y", "x y"]}[kind]
    count = len(_TEMPLATES[kind].format(*fill).split())
    if choice:
        options, width = _OPTIONS[kind]
        count += options * (1 + width) + len(PROMPT_SUFFIX.split())
    return count


def typing_s(text: str, config: SyntheticConfig) -> float:
    """How long ``text`` takes to arrive on the user stream: each line ``ceil(words / tokens per step)`` steps."""
    steps = sum(math.ceil(len(line.split()) / config.question_tokens_per_step) for line in text.split("\n"))
    return steps / config.question_step_hz


def _typing_bound_s(kind: str, choice: bool, config: SyntheticConfig) -> float:
    """:func:`typing_s` of any question of ``kind`` (the templates and option counts fix its line lengths)."""
    fill = {"colour": ["x"], "shape": ["x"], "count": [], "action": ["x y"], "order": ["x y", "x y"]}[kind]
    lines = [_TEMPLATES[kind].format(*fill)]
    if choice:
        options, width = _OPTIONS[kind]
        lines += [" ".join(["X."] + ["x"] * width)] * options + [PROMPT_SUFFIX]
    return typing_s("\n".join(lines), config)


def prompt_text(question: str, choices: tuple[str, ...]) -> str:
    """The LongVideoBench multiple-choice prompt: the question, ``A. option`` lines, the instruction."""
    return "\n".join([question, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), PROMPT_SUFFIX])


def make_question(
    spec: VideoSpec,
    t: float,
    rng: np.random.Generator,
    kind: str | None = None,
    choice: bool = False,
    config: SyntheticConfig | None = None,
) -> SyntheticQuestion | None:
    """A question about ``spec``'s video asked at ``t``, or ``None`` when none of ``kind`` is answerable then.

    Args:
        spec: a planned video (its events say what is on screen when).
        t: the time (s) the user starts typing.
        rng: draws the kind (when ``None``), the shape asked about and the option order.
        kind: one of :data:`KINDS`; ``None`` tries them in a random order and returns the first answerable.
        choice: ask it as multiple choice (LongVideoBench prompt, answered by the letter).
        config: gives the typing rate and ``answer_delay_s`` (default: :class:`SyntheticConfig`'s).

    Returns:
        The question with ``end_t`` from its token count and ``answer_t = end_t + answer_delay_s`` (the earliest
        start; :func:`place_utterances` may delay it), or ``None``.

    Raises:
        InputError: unknown ``kind``.
    """
    config = config if config is not None else SyntheticConfig()
    kinds = [KINDS[i] for i in rng.permutation(len(KINDS))] if kind is None else [kind]
    for name in kinds:
        if name not in KINDS:
            raise InputError("kind", f"must be one of {KINDS} or None, got {name!r}")
        due = t + _typing_bound_s(name, choice, config) + config.answer_delay_s
        found = _open_question(spec.events, t, due, name, rng)
        if found is None:
            continue
        line, answer, pool = found
        choices = _options(answer, pool, rng) if choice else ()
        text = prompt_text(line, choices) if choice else line
        end_t = round(t + typing_s(text, config), 3)
        answer_t = round(end_t + config.answer_delay_s, 3)
        return SyntheticQuestion(t, text, name, CATEGORIES[name], answer, choices, end_t, answer_t)
    return None


# ------------------------------------------------------------------------------------------------- the timeline


def place_utterances(
    events: tuple[Event, ...], delays: list[float], questions: list[SyntheticQuestion], config: SyntheticConfig
) -> tuple[list[Word], list[SyntheticQuestion]]:
    """Words of the event lines and answers by the collision rule (module docstring), and the questions with
    their placed ``answer_t``.

    Args:
        events: the video's events, in time order.
        delays: each event's word delay (s).
        questions: the questions (``answer_t`` is ignored; the earliest start is ``end_t + answer_delay_s``).
        config: gives ``word_duration_s`` and ``answer_delay_s``.
    """
    lines = [(e.t + d, 1, k, e.words) for k, (e, d) in enumerate(zip(events, delays, strict=True))]
    lines += [(q.end_t + config.answer_delay_s, 0, k, q.answer_words) for k, q in enumerate(questions)]
    words: list[Word] = []
    placed = list(questions)
    cursor = -math.inf
    for earliest, is_event, k, texts in sorted(lines, key=lambda line: line[:3]):
        start = earliest if earliest >= cursor - 1e-9 else cursor
        if not is_event:
            placed[k] = replace(questions[k], answer_t=round(start, 3))
        for i, text in enumerate(texts):
            t0 = start + i * config.word_duration_s
            words.append(Word(round(t0, 3), round(t0 + config.word_duration_s, 3), text))
        cursor = start + len(texts) * config.word_duration_s
    return words, placed


def plan_questions(
    spec: VideoSpec, delays: list[float], config: SyntheticConfig, rng: np.random.Generator
) -> tuple[list[Word], list[SyntheticQuestion]]:
    """The questions of one planned video and the transcript words (event lines and answers) that go with them.

    Args:
        spec: the planned video (events and shapes; its ``words`` / ``questions`` are ignored).
        delays: each event's word delay (s), drawn by the commentary's own random stream.
        config: the data set settings (no questions when ``question_interval_s`` is 0).
        rng: the questions' own random stream.
    """
    words, questions = place_utterances(spec.events, delays, [], config)
    if config.question_interval_s <= 0:
        return words, questions
    t = FIRST_QUESTION_S + rng.exponential(config.question_interval_s)
    while t < spec.duration_s:
        t = round(t, 3)
        choice = bool(rng.random() < config.choice_fraction)
        asked = [sum(q.kind == kind for q in questions) for kind in KINDS]
        kinds = sorted(KINDS, key=lambda kind: (asked[KINDS.index(kind)], rng.random()))  # rarer kinds first
        question = next((q for kind in kinds if (q := make_question(spec, t, rng, kind, choice, config))), None)
        if question is None:
            t += STEADY_BEFORE_S
            continue
        trial_words, trial = place_utterances(spec.events, delays, [*questions, question], config)
        if trial_words and max(w.end for w in trial_words) > spec.duration_s + 1e-6:
            break
        words, questions = trial_words, trial
        spoken = questions[-1].answer_t + len(question.answer_words) * config.word_duration_s
        t = spoken + rng.exponential(config.question_interval_s)
    return words, questions


# ------------------------------------------------------------------------------- questions after the stream stops


def cut_question(
    spec: VideoSpec,
    rng: np.random.Generator,
    fps: float,
    first_kind: int = 0,
    choice: bool = True,
    at_end: bool = False,
) -> tuple[float | None, SyntheticQuestion | None]:
    """A time the video stops and a question typed then (``(None, None)`` when none is answerable): LongVideoBench's
    setting, where the whole question comes after the last frame.

    The cut is a frame time ``k / fps`` in ``(END_MIN_S, duration]`` (with ``at_end``: the video's end) with no
    event in the ``END_QUIET_S`` before it; the kinds are tried in turn from ``KINDS[first_kind]`` on (so a caller
    can spread them). Only the events before the cut count: the stream shows nothing after it.
    """
    duration = spec.num_frames / spec.fps
    event_times = [e.t for e in spec.events]
    first = math.floor(END_MIN_S * fps) + 1
    candidates = [duration] if at_end else [k / fps for k in range(first, math.floor(duration * fps + 1e-6) + 1)]
    cuts = [c for c in candidates if c > END_MIN_S and not any(c - END_QUIET_S < t <= c for t in event_times)]
    for cut in rng.permutation(cuts).tolist() if cuts else []:
        seen = replace(spec, events=tuple(e for e in spec.events if e.t < cut))
        for j in range(len(KINDS)):
            kind = KINDS[(first_kind + j) % len(KINDS)]
            question = make_question(seen, float(cut), rng, kind=kind, choice=choice)
            if question is not None:
                return float(cut), question
    return None, None


def stream_end_words(
    spec: VideoSpec,
    delays: list[float],
    question: SyntheticQuestion,
    config: SyntheticConfig,
    asked: tuple[SyntheticQuestion, ...] = (),
) -> tuple[list[Word], SyntheticQuestion]:
    """The words of a stream that stops at ``question.t`` (the question typed after its last frame): the event lines
    of the events before it, the answers to the questions ``asked`` before it and its answer, by the collision rule;
    and the question with its placed ``answer_t``.

    The words may run past the video's end: the stream has stopped, the model still answers.
    """
    seen = tuple(e for e in spec.events if e.t < question.t)
    earlier = [q for q in asked if q.t < question.t]
    words, placed = place_utterances(seen, delays[: len(seen)], [*earlier, question], config)
    return words, placed[-1]
