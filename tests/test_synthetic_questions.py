"""Questions while watching in the synthetic set: right answers, LongVideoBench prompts, timeline, storage."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from mmduplex.data.synthetic import (
    SyntheticConfig,
    generate_dataset,
    make_question,
    plan_video,
    render_video,
    vocabulary,
)
from mmduplex.data.synthetic_questions import (
    CATEGORIES,
    KINDS,
    NUMBERS,
    PROMPT_SUFFIX,
    SyntheticQuestion,
    num_tokens,
    place_utterances,
)
from mmduplex.errors import InputError
from mmduplex.eval.longvideobench_data import PROMPT_SUFFIX as LVB_SUFFIX
from mmduplex.eval.longvideobench_data import QUESTION_CATEGORIES, Question, build_prompt
from mmduplex.lm.alignment import align_user, time_to_step
from mmduplex.lm.text import load_text_tokenizer

ASKING = SyntheticConfig(num_videos=30, question_interval_s=2.0)


@pytest.fixture(scope="module")
def asked() -> list:
    return [plan_video(ASKING, i) for i in range(ASKING.num_videos)]


def _on_screen(spec, t: float) -> list[tuple[str, str]]:
    """(colour, shape) of the shapes whose centre is inside the frame at ``t``, from the tracks (not the events)."""
    out = []
    for track in spec.shapes:
        pos = track.position(t)
        if pos is not None and 0 < pos[0] < spec.width and 0 < pos[1] < spec.height:
            out.append((track.colour_at(t), track.shape))
    return out


def test_questions_change_no_video_event_or_event_words(asked):
    silent = SyntheticConfig(num_videos=ASKING.num_videos)
    delayed = 0
    for index, spec in enumerate(asked):
        plain = plan_video(silent, index)
        assert plain.questions == () and spec.events == plain.events and spec.shapes == plain.shapes
        assert len(spec.words) == len(plain.words) + sum(len(q.answer_words) for q in spec.questions)
        answer_at = {q.answer_t: q for q in spec.questions}
        lines, starts, k = [], [], 0
        while k < len(spec.words):  # the transcript is event lines and answers, none cut by another
            question = answer_at.get(spec.words[k].start)
            if question is None:
                lines.append(" ".join(w.text for w in spec.words[k : k + 3]))
                starts.append(spec.words[k].start)
                k += 3
            else:
                assert [w.text for w in spec.words[k : k + len(question.answer_words)]] == question.answer_words
                k += len(question.answer_words)
        plain_lines = [" ".join(w.text for w in plain.words[i : i + 3]) for i in range(0, len(plain.words), 3)]
        assert lines == [e.text for e in spec.events] == plain_lines
        delayed += sum(s > e.t + ASKING.word_delay_s[1] + 1e-3 for s, e in zip(starts, spec.events, strict=True))
    assert delayed > 0  # an answer being spoken delays an event line
    spec, plain = asked[0], plan_video(silent, 0)
    assert spec.questions and np.array_equal(render_video(spec)[::5], render_video(plain)[::5])


def test_answers_are_right_from_the_tracks(asked):
    kinds = Counter()
    for spec in asked:
        for q in spec.questions:
            kinds[q.kind, bool(q.choices)] += 1
            assert q.category == CATEGORIES[q.kind] and q.category in QUESTION_CATEGORIES
            words = q.question.split()
            if q.kind in ("colour", "shape", "count"):
                for t in np.linspace(q.t, q.answer_t, 5):  # the answer holds while the user types
                    seen = _on_screen(spec, float(t))
                    if q.kind == "colour":
                        assert [c for c, s in seen if s == words[4]] == [q.answer]
                    elif q.kind == "shape":
                        assert [s for c, s in seen if c == words[4]] == [q.answer]
                    else:
                        assert NUMBERS[len(seen)] == q.answer
            elif q.kind == "action":
                colour, shape = words[3], words[4]
                done = [e for e in spec.events if e.t <= q.t and (e.colour, e.shape) == (colour, shape)]
                assert done and done[-1].action == q.answer and q.t - 6.0 <= done[-1].t
            else:
                names = {f"{e.colour} {e.shape}": e.t for e in spec.events if e.action == "enters" and e.t <= q.t}
                first, second = " ".join(words[6:8]), " ".join(words[10:12])
                assert q.answer == min((first, second), key=names.__getitem__)
    assert {kind for kind, _ in kinds} >= {"colour", "shape", "count", "action"}
    assert {choice for _, choice in kinds} == {True, False}


def test_choice_text_is_the_longvideobench_prompt(asked):
    assert PROMPT_SUFFIX == LVB_SUFFIX
    choices = [q for spec in asked for q in spec.questions if q.choices]
    assert len(choices) > 20
    letters = Counter()
    for q in choices:
        lvb = Question("x", q.question, q.choices, q.choices.index(q.answer), q.category, "L1", 15, None, None, 9.0, 0)
        assert q.text == build_prompt(lvb)
        assert q.letter == lvb.answer and q.answer_words == [*q.answer.split(), q.letter]
        assert len(q.choices) == len(set(q.choices)) == (3 if q.kind == "shape" else 4)
        letters[q.letter] += 1
    assert len(letters) == 4  # the right option is shuffled


def test_every_word_is_in_the_vocabulary_and_one_token_each(asked):
    tokenizer = load_text_tokenizer("synthetic")
    words = set(vocabulary())
    for spec in asked:
        for q in spec.questions:
            assert set(q.text.split()) <= words and set(q.answer_words) <= words and set(q.answer.split()) <= words
            assert set(" ".join(q.choices).split()) <= words
            ids = tokenizer.encode_text(q.text)
            assert len(ids) == len(q.text.split()) == num_tokens(q.kind, bool(q.choices))
            assert 0 not in ids  # id 0 is UNK
            # end_t: where the model's user stream (4 slots a step at 5 Hz, each line from a new step) has fed the
            # last token, give or take the step grid: the answer never comes before the question has arrived
            hz, slots = ASKING.question_step_hz, ASKING.question_tokens_per_step
            user = align_user([(q.t, q.text)], time_to_step(q.end_t, hz) + 2, hz, tokenizer, slots)  # [S, U]
            fed_end = (int((user != tokenizer.pad_id).any(-1).nonzero().max()) + 1) / hz
            assert fed_end - 1e-6 <= q.end_t < fed_end + 1 / hz


def test_timeline_follows_the_collision_rule(asked):
    pushed = Counter()
    for spec in asked:
        assert all(a.end <= b.start + 1e-6 for a, b in zip(spec.words, spec.words[1:], strict=False))
        assert not spec.words or spec.words[-1].end <= spec.duration_s + 1e-6
        for q, nxt in zip(spec.questions, spec.questions[1:], strict=False):
            assert nxt.t >= q.answer_t  # one question at a time
        for q in spec.questions:
            assert q.t >= 2.0 and q.answer_t >= q.end_t + ASKING.answer_delay_s - 1e-6
            pushed["answer"] += q.answer_t > q.end_t + ASKING.answer_delay_s + 1e-3
        assert all(q.answer_t in {w.start for w in spec.words} for q in spec.questions)
    assert pushed["answer"] > 0  # an event line being spoken delays an answer


def test_place_utterances_tie_goes_to_the_answer_and_nobody_is_interrupted():
    spec = plan_video(SyntheticConfig(num_videos=1), 0)
    event = spec.events[0]
    question = SyntheticQuestion(0.0, "how many shapes are on screen ?", "count", "S2O", "one", end_t=event.t + 0.2)
    words, placed = place_utterances(spec.events[:1], [0.4], [question], SyntheticConfig())
    assert [w.text for w in words] == ["one", *event.words]  # same earliest start: the answer first
    assert placed[0].answer_t == pytest.approx(event.t + 0.4)
    assert words[1].start == pytest.approx(words[0].end)  # the event line waits for the answer
    later = replace(question, end_t=event.t + 0.25)  # earliest start inside the event line: it waits for the line
    words, placed = place_utterances(spec.events[:1], [0.4], [later], SyntheticConfig())
    assert [w.text for w in words] == [*event.words, "one"]
    assert placed[0].answer_t == pytest.approx(event.t + 0.4 + 0.75)


def test_make_question_on_any_spec_and_time():
    spec = plan_video(SyntheticConfig(num_videos=1), 0)
    rng = np.random.default_rng(0)
    first = spec.events[0].t
    assert make_question(spec, first - 0.8, rng, "colour") is None  # nothing on screen yet
    count = make_question(spec, first - 0.8, rng, "count")
    assert count is not None and count.answer == "zero" and count.answer_words == ["zero"] and count.letter is None
    assert count.text == "how many shapes are on screen ?" and count.answer_t == pytest.approx(count.end_t + 0.2)
    found = Counter()
    for t in np.arange(2.0, spec.duration_s - 2.0, 0.25):
        for kind in KINDS:
            q = make_question(spec, float(t), np.random.default_rng(1), kind, choice=True)
            found[kind] += q is not None
            assert q is None or (q.kind == kind and q.answer in q.choices and q.letter in "ABCD")
    assert found["count"] and found["colour"] and found["action"]
    with pytest.raises(InputError, match="kind"):
        make_question(spec, 3.0, rng, "size")


def test_questions_config_is_validated():
    for name, value in (("question_interval_s", -1.0), ("choice_fraction", 1.5), ("question_tokens_per_step", 0)):
        with pytest.raises(InputError, match=name):
            SyntheticConfig(**{name: value})
    with pytest.raises(InputError, match="answer_delay_s"):
        SyntheticConfig(answer_delay_s=-0.1)


def test_stored_in_livecc_form_and_read_back(tmp_path):
    config = SyntheticConfig(num_videos=2, duration_s=(9.0, 10.0), question_interval_s=1.0, seed=1)
    data = generate_dataset(tmp_path / "data", config)
    records = [json.loads(line) for line in data.transcripts_path.read_text().splitlines()]
    clips = {c.meta["title"]: c for c in data.clips()}
    total = 0
    for index, record in enumerate(records):
        spec = plan_video(config, index)
        assert len(record[0]["content"]) == 2  # LiveCC's reader unpacks exactly two user items
        asked = record[0]["content"][1].get("questions", [])
        assert asked == [{"time": q.t, "text": q.text} for q in spec.questions]
        assert data.questions(spec.video_id) == list(spec.questions)
        clip = clips[spec.video_id]
        assert clip.meta.get("questions", []) == asked
        assert [w.text for w in clip.words] == [w.text for w in spec.words]
        total += len(spec.questions)
    assert total > 0
    plain = generate_dataset(tmp_path / "plain", replace(config, question_interval_s=0.0))
    assert "questions" not in plain.transcripts_path.read_text() + plain.events_path.read_text()
    assert plain.questions(plain.video_ids()[0]) == []


def test_a_stream_that_stops_for_a_question_says_only_the_past_and_the_answer(asked):
    """cut_question + stream_end_words: the question comes after the last frame, the words after the cut are its
    answer alone (events after the cut are never seen), and every event line and earlier answer is kept."""
    from mmduplex.data.synthetic_plan import plan_stream_end
    from mmduplex.data.synthetic_questions import END_MIN_S, END_QUIET_S, cut_question, stream_end_words

    found = at_end = 0
    for index, spec in enumerate(asked):
        rng = np.random.default_rng([7, index])
        cut, question = cut_question(spec, rng, fps=2.0, first_kind=index % len(KINDS), choice=index % 2 == 0)
        if question is None:
            continue
        found += 1
        assert END_MIN_S < cut <= spec.num_frames / spec.fps and abs(cut * 2.0 - round(cut * 2.0)) < 1e-9
        assert question.t == cut and bool(question.choices) == (index % 2 == 0)
        assert not any(cut - END_QUIET_S < e.t <= cut for e in spec.events)
        seen = [e for e in spec.events if e.t < cut]
        words, placed = stream_end_words(spec, [0.2] * len(spec.events), question, ASKING)
        after = [w for w in words if w.start >= cut]
        assert [w.text for w in after] == placed.answer_words
        assert after[0].start == placed.answer_t >= placed.end_t + ASKING.answer_delay_s - 1e-9
        assert [w.text for w in words if w.start < cut] == [t for e in seen for t in e.words]

        plan = plan_stream_end(ASKING, index, 2.0, np.random.default_rng([7, index]), choice=True)
        if plan is None:
            continue
        at_end += 1
        end, last, words = plan
        assert end == spec.num_frames / spec.fps and last.t == end and last.choices
        assert [w for w in words if w.start < end] == list(spec.words)  # the video's own stream, unchanged
        assert [w.text for w in words if w.start >= end] == last.answer_words
    assert found >= len(asked) // 2 and at_end >= len(asked) // 4
