"""LongVideoBench: loading the published files, the reference frame / subtitle protocol, exact scoring, the command."""

from __future__ import annotations

import json

import pytest
import torch

from mmduplex import cli
from mmduplex.errors import AnnotationError, InputError
from mmduplex.eval.longvideobench import (
    PROMPT_SUFFIX,
    QUESTION_CATEGORIES,
    LongVideoBenchEval,
    Subtitle,
    build_prompt,
    interleave,
    load_annotations,
    load_predictions,
    load_subtitles,
    sample_frame_indices,
    score,
    select_subtitles,
)

# (id, category, level, duration_group, correct_choice, number of options, response or None)
QUESTIONS = [
    ("v1_0", "S2E", "L1-Perception", 15, 1, 4, "B"),  # right
    ("v1_1", "T3O", "L2-Relation", 15, 0, 4, "The best answer is C"),  # wrong
    ("v2_0", "S2E", "L1-Perception", 60, 2, 5, "Best answer: C"),  # right (the B of "Best" is stripped)
    ("v2_1", "TOS", "L2-Relation", 60, 1, 4, "Based on the video, C"),  # right: parses as the B of "Based"
    ("v3_0", "E3E", "L2-Relation", 600, 3, 4, "i think it is d"),  # no letter -> wrong
    ("v3_1", "S2E", "L1-Perception", 600, 0, 4, None),  # no prediction -> wrong, listed
    ("v4_0", "O2E", "L1-Perception", 3600, 4, 5, "(E)"),  # right
    ("v4_1", "TOS", "L2-Relation", 3600, 2, 4, "D. A book"),  # wrong
]


def _record(qid, category, level, group, choice, n_options, duration=20.0, start=0.0):
    video = qid.split("_")[0]
    return {
        "video_id": video,
        "question": f"What happens in {qid}?",
        "question_wo_referring_query": "What happens?",
        "candidates": [f"option {k} of {qid}" for k in range(n_options)],
        "correct_choice": choice,
        "position": [1, 2, 3],
        "topic_category": "NP-News-Programs",
        "question_category": category,
        "level": level,
        "id": qid,
        "video_path": f"{video}.mp4",
        "subtitle_path": f"{video}_en.json",
        "duration_group": group,
        "starting_timestamp_for_subtitles": start,
        "duration": duration,
        "view_count": 1,
    }


@pytest.fixture
def lvb(tmp_path):
    """A data root with lvb_val.json and a predictions JSONL (no videos: predictions mode needs none)."""
    root = tmp_path / "LongVideoBench"
    root.mkdir()
    records = [_record(*q[:6]) for q in QUESTIONS]
    (root / "lvb_val.json").write_text(json.dumps(records))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": q[0], "response": q[6]}) + "\n" for q in QUESTIONS if q[6] is not None))
    return root, preds


def test_exact_scores_on_predictions(lvb):
    root, preds = lvb
    questions = load_annotations(root / "lvb_val.json")
    results = score(questions, load_predictions(preds))
    assert results["n"] == 8
    assert results["overall"] == pytest.approx(4 / 8)
    assert results["by_duration_group"] == pytest.approx({"15": 0.5, "60": 1.0, "600": 0.0, "3600": 0.5})
    cats = results["by_question_category"]
    assert set(cats) == set(QUESTION_CATEGORIES) and len(cats) == 17
    assert cats["S2E"] == pytest.approx(2 / 3)
    assert {k: cats[k] for k in ("T3O", "TOS", "E3E", "O2E")} == pytest.approx(
        {"T3O": 0.0, "TOS": 0.5, "E3E": 0.0, "O2E": 1.0}
    )
    assert all(cats[k] is None for k in QUESTION_CATEGORIES if k not in ("S2E", "T3O", "TOS", "E3E", "O2E"))
    assert results["by_level"] == pytest.approx({"L1-Perception": 3 / 4, "L2-Relation": 1 / 4})
    assert results["no_letter"] == 1 and results["no_letter_ids"] == ["v3_0"]
    assert results["missing"] == [{"id": "v3_1", "reason": "no prediction"}]
    assert results["counts"]["by_duration_group"] == {"15": 2, "60": 2, "600": 2, "3600": 2}
    assert results["counts"]["by_question_category"]["SSS"] == 0


def test_accuracy_is_micro_not_macro(tmp_path):
    # 3 questions answered A (right), 1 answered A (wrong, truth B): micro 3/4, a macro average would give 1/2
    records = [_record(f"v{k}_0", "S2E", "L1-Perception", 15, 0 if k < 3 else 1, 4) for k in range(4)]
    (tmp_path / "lvb_val.json").write_text(json.dumps(records))
    questions = load_annotations(tmp_path / "lvb_val.json")
    assert score(questions, {q.id: "A" for q in questions})["overall"] == pytest.approx(0.75)


def test_command_writes_json_and_markdown(lvb, tmp_path, capsys):
    root, preds = lvb
    out = tmp_path / "out" / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(root), "--predictions", str(preds), "--out", str(out)]
    assert cli.main([*argv, "--frames", "16", "--no-subtitles"]) == 0
    results = json.loads(out.read_text())
    for key in ("overall", "n", "by_duration_group", "by_question_category", "by_level", "no_letter", "settings"):
        assert key in results
    assert results["overall"] == pytest.approx(0.5)
    settings = results["settings"]
    assert settings["frames"] == 16 and settings["subtitles"] is False and settings["mode"] == "predictions"
    assert settings["missing_responses"] == 1 and settings["data_root"] == str(root)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| overall | n | no letter | no response |" in md and "| S2E | 0.667 | 3 |" in md
    assert "0.500" in capsys.readouterr().out


def test_config_file_and_flag_precedence(lvb, tmp_path):
    root, preds = lvb
    config = tmp_path / "lvb.yaml"
    config.write_text(f"data_root: {root}\nframes: 64\nsubtitles: true\npredictions: {tmp_path / 'nope.jsonl'}\n")
    out = tmp_path / "results.json"
    argv = ["eval", "longvideobench", "--config", str(config), "--predictions", str(preds), "--out", str(out)]
    assert cli.main(argv) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["frames"], settings["subtitles"], settings["predictions"]) == (64, True, str(preds))


def test_config_errors(tmp_path, capsys):
    """A recipe value is checked by the flag's type, as a command-line value is; one line on stderr, exit 2."""
    config = tmp_path / "bad.yaml"
    config.write_text("frames: many\n")
    assert cli.main(["eval", "longvideobench", "--config", str(config), "--print_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mmduplex: error: eval longvideobench: frames: invalid value 'many'", err
    assert cli.main(["eval", "longvideobench", "--frames", "many", "--print_config"]) == 2
    assert "frames: invalid value 'many'" in capsys.readouterr().err
    config.write_text("frame: 16\n")
    assert cli.main(["eval", "longvideobench", "--config", str(config), "--print_config"]) == 2
    assert "unknown setting 'frame'" in capsys.readouterr().err
    config.write_text("subtitles: perhaps\n")
    assert cli.main(["eval", "longvideobench", "--config", str(config), "--print_config"]) == 2
    assert "not boolean: perhaps" in capsys.readouterr().err
    config.write_text("scoring: loudest\n")
    assert cli.main(["eval", "longvideobench", "--config", str(config), "--print_config"]) == 2
    assert "scoring: invalid value 'loudest'" in capsys.readouterr().err
    assert cli.main(["eval", "longvideobench", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_print_config_resolves_defaults_recipe_and_flags_in_order(tmp_path, capsys):
    """``--print_config`` prints the settings as YAML (a file ``--config`` reads back); a flag after ``--config``
    overrides it."""
    import yaml

    config = tmp_path / "lvb.yaml"
    config.write_text("data-root: /data/lvb\nframes: 64\nsubtitles: true\n")
    argv = ["eval", "longvideobench", "--config", str(config), "--frames", "16", "--no-subtitles", "--print_config"]
    assert cli.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data_root"] == "/data/lvb" and printed["frames"] == 16 and printed["subtitles"] is False
    assert printed["annotations"] == "lvb_val.json"  # a default
    config.write_text(yaml.safe_dump(printed))
    assert cli.main(["eval", "longvideobench", "--config", str(config), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda r: r[2].pop("correct_choice"), "record 2 (id 'v2_0'): no 'correct_choice'"),
        (lambda r: r[1].update(correct_choice=4), "'correct_choice' must be an index"),
        (lambda r: r[0].update(question_category="XYZ"), "unknown question_category 'XYZ'"),
        (lambda r: r[3].update(duration_group=30), "'duration_group' must be one of"),
        (lambda r: r[4].update(id="v1_0"), "record 4: duplicate id 'v1_0'"),
        (lambda r: r[5].update(candidates="abc"), "'candidates' must be a list"),
    ],
)
def test_malformed_annotations_fail_cleanly(lvb, tmp_path, capsys, mutate, problem):
    root, preds = lvb
    records = json.loads((root / "lvb_val.json").read_text())
    mutate(records)
    (root / "lvb_val.json").write_text(json.dumps(records))
    out = tmp_path / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(root), "--predictions", str(preds), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmduplex: error: ") and str(root / "lvb_val.json") in err and problem in err
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_unknown_prediction_ids_and_bad_lines_are_errors(lvb, tmp_path, capsys):
    root, preds = lvb
    out = tmp_path / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(root), "--predictions", str(preds), "--out", str(out)]
    preds.write_text(preds.read_text() + json.dumps({"id": "zz_9", "response": "A"}) + "\n")
    assert cli.main(argv) == 2
    assert "1 id(s) not in lvb_val.json: 'zz_9'" in capsys.readouterr().err
    preds.write_text('{"id": "v1_0", "response": 3}\n')
    assert cli.main(argv) == 2
    assert "line 1: 'response' must be a string" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["eval", "longvideobench", "--data-root", str(root), "--out", str(out)]) == 2
    assert "--predictions: required" in capsys.readouterr().err


def test_frame_indices_match_reference_formula():
    # n = min(max_frames, int(duration)); indices int(int(duration * fps) / n) * i; timestamps index / fps
    assert sample_frame_indices(10.5, 30.0, 4) == ([0, 78, 156, 234], [0.0, 2.6, 5.2, 7.8])
    indices, times = sample_frame_indices(10.5, 30.0, 64)  # capped at 1 fps: 10 frames, step int(315 / 10) = 31
    assert indices == [31 * i for i in range(10)] and times == pytest.approx([31 * i / 30 for i in range(10)])
    assert sample_frame_indices(7.9, 25.0, 64)[0] == [28 * i for i in range(7)]  # int(197.5) = 197 -> step 28
    with pytest.raises(InputError):
        sample_frame_indices(0.5, 30.0, 16)


def _subtitle_files(tmp_path):
    seconds = [
        {"timestamp": [100.25, 101.25], "text": "one"},  # [0.25, 1.25]: 1 s, no frame strictly inside -> dropped
        {"timestamp": [101.75, 102.25], "text": "two"},  # short: widened to [1.5, 2.5] around 2.0 -> kept
        {"timestamp": [104.0, 105.0], "text": "three"},  # frame at 4.0 is on the edge, not inside -> dropped
        {"timestamp": [105.5, None], "text": "four"},  # until the end of the video (8.0) -> mid 6.75, kept
    ]
    clock = [
        {"start": "00:01:40.250", "end": "00:01:41.250", "line": "one"},
        {"start": "00:01:41.750", "end": "00:01:42.250", "line": "two"},
        {"start": "00:01:44.000", "end": "00:01:45.000", "line": "three"},
        {"start": "00:01:45.500", "end": "00:01:48.000", "line": "four"},
    ]
    (tmp_path / "a_en.json").write_text(json.dumps(seconds))
    (tmp_path / "b_en.json").write_text(json.dumps(clock))
    return tmp_path / "a_en.json", tmp_path / "b_en.json"


def test_subtitles_both_shapes_and_selection(tmp_path):
    for path in _subtitle_files(tmp_path):
        subs = load_subtitles(path, starting_timestamp=100.0, duration=8.0)
        assert subs == [
            Subtitle(0.25, 1.25, "one"),
            Subtitle(1.75, 2.25, "two"),
            Subtitle(4.0, 5.0, "three"),
            Subtitle(5.5, 8.0, "four"),
        ]
        _, frame_times = sample_frame_indices(8.0, 10.0, 4)
        assert frame_times == [0.0, 2.0, 4.0, 6.0]
        # frame 1 (t = 2.0) is at the mid-time of "two": frames at or before the mid come first
        assert interleave(frame_times, subs) == [0, 1, subs[1], 2, 3, subs[3]]
        assert [s.text for s in select_subtitles(frame_times, subs)] == ["two", "four"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{}", "expected a JSON list"),
        ('[{"timestamp": [1.0, 2.0]}]', "entry 0: subtitle text must be a string"),
        ('[{"text": "x"}]', "entry 0: expected"),
        ('[{"start": "1:2", "end": "00:00:01.000", "line": "x"}]', "entry 0: 'start'/'end' must be"),
        ("[1, ", "malformed JSON"),
    ],
)
def test_malformed_subtitles(tmp_path, content, problem):
    path = tmp_path / "x_en.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=problem) as exc:
        load_subtitles(path, 0.0, 10.0)
    assert exc.value.path == str(path)


def test_prompt_layout(lvb):
    question = load_annotations(lvb[0] / "lvb_val.json")[0]
    assert build_prompt(question).split("\n") == [
        "What happens in v1_0?",
        *(f"{letter}. option {k} of v1_0" for k, letter in enumerate("ABCD")),
        PROMPT_SUFFIX,
    ]


# ------------------------------------------------------------------------------------------- model mode (fake model)


class TableResponder:
    """Answers from a lookup table keyed by the question text; records what it was shown."""

    def __init__(self, answers, logprobs):
        self.answers, self.logprobs, self.videos = answers, logprobs, []

    def prepare_video(self, frames, timestamps, subtitles):
        grey = frames.float().mean(dim=(1, 2, 3)).tolist()  # [T] mean grey level of each frame
        self.videos.append((tuple(frames.shape), list(timestamps), [s.text for s in subtitles], grey))
        return {"video": len(self.videos)}

    def answer(self, state, prompt):
        return self.answers[prompt.split("\n")[0]]

    def letter_logprobs(self, state, prompt, letters):
        return {letter: self.logprobs[prompt.split("\n")[0]].get(letter, -10.0) for letter in letters}


@pytest.fixture
def lvb_videos(tmp_path):
    """Two tiny videos (8 s and 12 s at 10 fps), one subtitle file, one missing video, one missing subtitle file."""
    from mmduplex.io.video import write_video

    root = tmp_path / "lvb"
    (root / "videos").mkdir(parents=True)
    (root / "subtitles").mkdir()
    # frame k has grey level 2k; 16 px wide frames make decord 0.6 fail (PyAV fallback), 32 px ones it decodes
    for name, seconds, size in (("va", 8, 16), ("vb", 12, 32)):
        frames = torch.arange(seconds * 10, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, size, size, 3) * 2
        write_video(root / "videos" / f"{name}.mp4", frames.contiguous(), fps=10)
    a_subs, _ = _subtitle_files(tmp_path)
    (root / "subtitles" / "va_en.json").write_text(a_subs.read_text())
    records = [
        _record("va_0", "S2E", "L1-Perception", 15, 1, 4, duration=8.0, start=100.0),
        _record("va_1", "TOS", "L2-Relation", 15, 2, 4, duration=8.0, start=100.0),
        _record("vb_0", "E3E", "L2-Relation", 15, 0, 5, duration=12.0),  # subtitle file missing
        _record("vc_0", "O2E", "L1-Perception", 15, 0, 4, duration=9.0),  # video missing
    ]
    (root / "lvb_val.json").write_text(json.dumps(records))
    return root


@pytest.mark.parametrize("scoring", ["generation", "likelihood"])
def test_model_mode_with_table_responder(lvb_videos, tmp_path, scoring):
    answers = {"What happens in va_0?": "B", "What happens in va_1?": "A", "What happens in vb_0?": "So A"}
    logprobs = {q: {answers[q][-1]: -0.1} for q in answers}
    responder = TableResponder(answers, logprobs)
    responses = tmp_path / "responses.jsonl"
    task = LongVideoBenchEval(
        lvb_videos,
        responder=responder,
        frames=4,
        subtitles=True,
        scoring=scoring,
        responses_out=responses,
        progress=False,
    )
    results = task.evaluate(tmp_path / "results.json")
    # one prepare_video per available video; reference frames and kept subtitles
    (shape_a, times_a, subs_a, grey_a), (shape_b, times_b, subs_b, grey_b) = responder.videos
    assert (shape_a, subs_a, shape_b, subs_b) == ((4, 16, 16, 3), ["two", "four"], (4, 32, 32, 3), [])
    assert times_a == pytest.approx([0.0, 2.0, 4.0, 6.0]) and times_b == pytest.approx([0.0, 3.0, 6.0, 9.0])
    # the frames decoded are the ones at the reference indices (grey level 2 * index, up to compression)
    assert grey_a == pytest.approx([0, 40, 80, 120], abs=4) and grey_b == pytest.approx([0, 60, 120, 180], abs=4)
    assert results["overall"] == pytest.approx(2 / 4)  # va_0 right, va_1 wrong, vb_0 right, vc_0 missing
    assert results["by_question_category"]["E3E"] == 1.0 and results["by_question_category"]["O2E"] == 0.0
    reasons = {m["id"]: m["reason"] for m in results["missing"]}
    assert reasons["vc_0"].startswith("video missing") and reasons["vb_0"].startswith("subtitles missing")
    settings = results["settings"]
    assert (settings["missing_videos"], settings["missing_subtitles"], settings["missing_responses"]) == (1, 1, 1)
    assert settings["scoring"] == scoring and settings["mode"] == "model"
    # the responses rescore to the same figures in predictions mode
    rescored = LongVideoBenchEval(lvb_videos, predictions=responses).run()
    assert rescored["overall"] == results["overall"] and rescored["by_level"] == results["by_level"]
