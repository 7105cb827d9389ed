"""``python -m mmduplex.demo.choices``: the content / letter counts of multiple-choice replies, from the LongVideoBench
split's files and re-streamed mid-stream (equal to the demo report's own figure)."""

from __future__ import annotations

import json

import pytest

from mmduplex.demo.choices import count_choices, main


def test_counts_separate_the_content_from_the_letter():
    options = ["red", "blue", "green", "pink"]
    counts = count_choices([
        (["red", "A"], options, 0),  # right option, its letter: correct
        (["blue", "A"], options, 0),  # wrong option, the right letter: correct, the letter is not the named one's
        (["blue", "B"], options, 0),  # wrong option, its own letter: the look-up worked, the content did not
        (["red", "blue", "C"], options, 0),  # two options named: neither counts as named
        (["one"], options, 2),  # nothing
    ])  # fmt: skip
    assert counts == {"questions": 5, "correct": 2, "letter_said": 4, "names_one": 3, "names_right": 1,
                      "named_with_letter": 3, "letter_is_named": 2}  # fmt: skip


def test_the_longvideobench_files(tmp_path, capsys):
    (tmp_path / "lvb").mkdir()
    records = [{"id": "a_0", "candidates": ["red square", "blue circle"], "correct_choice": 1},
               {"id": "b_0", "candidates": ["two", "three"], "correct_choice": 0}]  # fmt: skip
    (tmp_path / "lvb" / "lvb_val.json").write_text(json.dumps(records))
    replies = [{"id": "a_0", "response": "blue circle B"}, {"id": "b_0", "response": "three A"}]
    (tmp_path / "lvb_results.responses.jsonl").write_text("\n".join(map(json.dumps, replies)) + "\n")
    assert main([str(tmp_path)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["correct"], counts["names_right"], counts["letter_is_named"]) == (2, 1, 1)
    (tmp_path / "lvb_results.responses.jsonl").unlink()
    assert main([str(tmp_path)]) == 2
    assert "lvb_results.responses.jsonl: missing" in capsys.readouterr().err


def test_mid_stream_counts_equal_the_reports_figure(smoke_demo, capsys):
    assert main([str(smoke_demo), "--mid-stream"]) == 0
    counts = json.loads(capsys.readouterr().out)
    qa = json.loads((smoke_demo / "report.json").read_text())["qa"]
    assert counts["questions"] == qa["choice_questions_mid_stream"] > 0
    assert counts["correct"] / counts["questions"] == pytest.approx(qa["choice_accuracy_mid_stream"])
