"""Questions while watching in the demo (:mod:`mmduplex.demo.qa`): answer scoring, asking mid-stream, and the
synthetic LongVideoBench split asked through ``eval longvideobench`` in model mode."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_torch_thread

from mmduplex.data.synthetic_questions import END_QUIET_S, SyntheticQuestion
from mmduplex.demo.qa import AskedQuestion, run_lvb, score_answers, stream_asking, write_lvb_split
from mmduplex.demo.stream import lines_of
from mmduplex.inference.session import StepOutput


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _out(index: int, word: str | None, hz: float = 5.0) -> StepOutput:
    return StepOutput(index, (index + 1) / hz, 0, word, word is not None, torch.zeros(1), 0.0)


def _question(answer: str, choices: tuple[str, ...] = ()) -> SyntheticQuestion:
    return SyntheticQuestion(t=1.0, text="what colour is the square ?", kind="colour", category="S2A", answer=answer,
                             choices=choices)  # fmt: skip


def test_answers_count_only_within_the_tolerance_after_the_last_token():
    said = [None] * 30
    said[6], said[12], said[13], said[20], said[25] = "red", "blue", "square", "B", "A"  # at 1.4, 2.6, 2.8, 4.2, 5.2 s
    words = lines_of([_out(k, w) for k, w in enumerate(said)], pause_steps=3)[2]
    asked = [
        AskedQuestion(_question("blue"), fed_s=2.0),  # said 0.6 s after its last token
        AskedQuestion(_question("red"), fed_s=2.0),  # "red" came before the question ended: not an answer
        AskedQuestion(_question("blue square"), fed_s=2.0),  # every answer word must be said
        AskedQuestion(_question("red", choices=("red", "blue")), fed_s=2.0),  # choice A: only B said in time
        AskedQuestion(_question("red", choices=("red", "blue")), fed_s=3.0),  # A at 5.2 s, but B came first
        AskedQuestion(_question("blue"), fed_s=None),  # never fed: not answered
        AskedQuestion(_question("red", choices=("blue", "red")), fed_s=3.0),  # choice B: the first letter said
    ]
    score_answers(asked, words, tolerance_s=3.0)
    assert [a.correct for a in asked] == [True, False, True, False, False, False, True]
    assert asked[0].latency_s == pytest.approx(0.6) and asked[2].latency_s == pytest.approx(0.6)
    assert asked[6].latency_s == pytest.approx(1.2) and asked[1].latency_s is None and asked[4].latency_s is None
    assert [w for _, w in asked[0].words] == ["blue", "square", "B"]


def test_a_question_changes_only_what_comes_after_it(tiny_bundle, duplex_data):
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key

    dataset = SyntheticDataset(duplex_data["synthetic_dir"])
    vid = dataset.video_ids("heldout")[0]
    record = FeatureCache(duplex_data["features"]).load(video_key(dataset.video_path(vid)))
    session = DuplexSession.from_bundle(tiny_bundle)
    question = SyntheticQuestion(t=4.0, text="how many shapes are on screen ?", kind="count", category="S2O",
                                 answer="one")  # fmt: skip
    times = record.timestamps.tolist()
    plain, none_asked = stream_asking(session, times, record.patches, [])
    asking, asked = stream_asking(session, times, record.patches, [question])
    assert none_asked == [] and len(plain) == len(asking)
    first = round(question.t * session.step_hz)  # the step that feeds the first token
    for before, after in zip(plain[:first], asking[:first], strict=True):
        assert torch.equal(before.logits, after.logits)
    assert not torch.equal(plain[first].logits, asking[first].logits)
    # 7 words at the bundle's user slots per step: the last one is fed ceil(7 / U) steps after the first
    steps = -(-7 // session.user_slots_per_step)
    assert asked[0].fed_s == pytest.approx((first + steps) / session.step_hz)


def test_lvb_split_is_published_layout_and_runs_in_model_mode(tiny_bundle, duplex_data, tmp_path):
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.eval.longvideobench import build_prompt, load_annotations
    from mmduplex.io.video import probe_video
    from mmduplex.lm.text import UNK_TOKEN, load_text_tokenizer

    dataset = SyntheticDataset(duplex_data["synthetic_dir"])
    ids = dataset.video_ids()
    root = tmp_path / "lvb"
    count = write_lvb_split(dataset, ids, root, fps=2.0, seed=0)
    assert count >= len(ids) - 1  # 20-30 s videos: a quiet cut with an answerable question nearly always exists
    records = json.loads((root / "lvb_val.json").read_text())
    questions = load_annotations(root / "lvb_val.json")  # the published loader's checks pass
    words = load_text_tokenizer("synthetic")
    unknown = words.tokenizer.token_to_id(UNK_TOKEN)
    for record, question in zip(records, questions, strict=True):
        assert 8.0 < record["duration"] <= 60.0 and record["duration_group"] == (15 if record["duration"] <= 15 else 60)
        assert json.loads((root / "subtitles" / record["subtitle_path"]).read_text()) == []
        assert record["level"] == ("L2-Relation" if record["question_category"] == "E3E" else "L1-Perception")
        info = probe_video(root / "videos" / record["video_path"])
        assert info.num_frames == int(record["duration"] * 2.0 + 1e-6)  # every frame before the cut, at 2 fps
        events = dataset.events(record["video_id"])
        assert not any(record["duration"] - END_QUIET_S < e.t <= record["duration"] for e in events)
        assert unknown not in words.encode_text(build_prompt(question))  # the model can read every word
    assert len({r["question_category"] for r in records}) >= 2
    results = run_lvb(root, tiny_bundle, tmp_path / "r.json")
    assert results["n"] == count and results["settings"]["frame_fps"] == 2.0
    assert results["settings"]["missing_responses"] == 0
