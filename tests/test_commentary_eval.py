"""Live-commentary metrics on constructed perfect / shifted / early / silent / repetitive outputs, parsers, command."""

from __future__ import annotations

import json

import pytest

from mmduplex import cli
from mmduplex.data.synthetic import Event, ShapeTrack
from mmduplex.data.transcripts import Word, livecc_record
from mmduplex.errors import AnnotationError
from mmduplex.eval.buckets import (
    accuracy_by_group,
    count_bucket,
    object_bucket,
    objects_on_screen,
    others_moving,
    shapes_seen_before,
)
from mmduplex.eval.commentary import (
    Line,
    aggregate_event_metrics,
    event_metrics,
    load_lines,
    match_events,
    speaking_s,
    timed_words,
    tokens,
    transcript_metrics,
)

EVENTS = [
    Event(2.0, "red", "square", "enters", 0),
    Event(6.0, "blue", "circle", "turns", 1),
    Event(10.0, "green", "triangle", "leaves", 2),
]


def _described(delays):
    """One 1-second line per event, starting ``delay`` after it."""
    return [
        Line(e.t + d, e.t + d + 1.0, f"{e.colour} {e.shape} {e.action}") for e, d in zip(EVENTS, delays, strict=True)
    ]


def _reference_words(delay=0.5):
    """The reference transcript: each event's three words, 1/3 s each, starting ``delay`` after it."""
    return [
        Word(line.start + i / 3, line.start + (i + 1) / 3, w)
        for line in _described([delay] * 3)
        for i, w in enumerate(line.text.split())
    ]


def test_words_spread_evenly_over_lines():
    assert timed_words([(1.0, 2.5, "Red, square!"), Line(0.0, 0.0, "hi")]) == [
        (0.0, "hi"),
        (1.0, "red"),
        (1.75, "square"),
    ]


def test_events_perfect_with_latencies():
    m = event_metrics(_described([0.5, 1.0, 2.0]), EVENTS, tolerance_s=3.0)
    assert (m["event_accuracy"], m["event_precision"], m["events"], m["lines"]) == (1.0, 1.0, 3, 3)
    assert m["median_latency_s"] == pytest.approx(1.0)
    assert m["p90_latency_s"] == pytest.approx(1.0 + 0.8 * (2.0 - 1.0))  # linear interpolation
    assert m["early_lines"] == 0


def test_events_too_late_score_zero():
    m = event_metrics(_described([3.5, 3.5, 3.5]), EVENTS, tolerance_s=3.0)
    assert (m["event_accuracy"], m["event_precision"], m["median_latency_s"]) == (0.0, 0.0, None)
    # every word must be in the window: the last word is at 3.5 + 2/3 s, so 4 s is not enough, 4.5 s is
    assert event_metrics(_described([3.5, 3.5, 3.5]), EVENTS, tolerance_s=4.0)["event_accuracy"] == 0.0
    m = event_metrics(_described([3.5, 3.5, 3.5]), EVENTS, tolerance_s=4.5)
    assert (m["event_accuracy"], m["event_precision"], m["median_latency_s"]) == (1.0, 1.0, pytest.approx(3.5))


def test_events_said_too_early():
    m = event_metrics(_described([-1.5, -1.5, 0.5]), EVENTS)
    assert (m["event_accuracy"], m["event_precision"], m["early_lines"]) == (
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
        2,
    )


def test_silent_model_scores_zero():
    m = event_metrics([], EVENTS)
    assert (m["event_accuracy"], m["event_precision"], m["lines"], m["median_latency_s"]) == (0.0, 0.0, 0, None)


def test_repetitive_model_scores_badly():
    # "red square enters" every second from t = 0 to 13: only the first event is described, few lines are right
    lines = [Line(k, k + 0.6, "red square enters") for k in range(14)]
    m = event_metrics(lines, EVENTS)
    assert m["event_accuracy"] == pytest.approx(1 / 3)
    assert m["event_precision"] == pytest.approx(4 / 14)  # lines starting at 2, 3, 4, 5 (within 3 s after t = 2)
    assert m["early_lines"] == 2  # lines at 0 and 1: said before the red square entered
    assert m["median_latency_s"] == pytest.approx(0.0)


def test_wrong_words_do_not_count():
    lines = [Line(e.t + 0.5, e.t + 1.5, f"yellow {e.shape} {e.action}") for e in EVENTS]
    m = event_metrics(lines, EVENTS)
    assert (m["event_accuracy"], m["event_precision"]) == (0.0, 0.0)


def test_aggregate_pools_events_and_lines():
    m = aggregate_event_metrics([(_described([0.5, 1.0, 2.0]), EVENTS), ([], EVENTS), ([Line(1, 2, "x")], [])])
    assert (m["events"], m["described"], m["lines"], m["precise_lines"]) == (6, 3, 4, 3)
    assert (m["event_accuracy"], m["event_precision"]) == (0.5, 0.75)
    assert m["median_latency_s"] == pytest.approx(1.0)


def test_transcript_perfect_and_shifted():
    ref = _reference_words(0.5)
    m = transcript_metrics(_described([0.5] * 3), ref, tolerance_s=3.0, window_s=10.0)
    assert (m["rougeL"], m["bleu"], m["word_recall"], m["word_precision"]) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert (m["median_latency_s"], m["early_words"], m["talk_ratio"], m["windows"]) == pytest.approx((0.0, 0, 1.0, 2))
    late = transcript_metrics(_described([1.5] * 3), ref)
    assert (late["median_latency_s"], late["p90_latency_s"], late["word_recall"]) == pytest.approx((1.0, 1.0, 1.0))
    early = transcript_metrics(_described([-0.5] * 3), ref)
    assert (early["median_latency_s"], early["early_words"], early["early_word_rate"]) == pytest.approx((-1.0, 9, 1.0))


def test_transcript_silent_and_repetitive():
    ref = _reference_words(0.5)
    silent = transcript_metrics([], ref)
    assert (silent["rougeL"], silent["bleu"], silent["word_recall"], silent["talk_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert silent["median_latency_s"] is None and silent["word_precision"] == 0.0
    rep = transcript_metrics([Line(k, k + 0.6, "red square enters") for k in range(14)], ref)
    # window [0, 10): 30 model words vs "red square enters blue circle turns": LCS 3 -> P 0.1, R 0.5, F 1/6;
    # window [10, 20): 12 model words vs "green triangle leaves": F 0
    assert rep["rougeL"] == pytest.approx((1 / 6 + 0.0) / 2, abs=1e-6)
    assert rep["word_recall"] == pytest.approx(3 / 9) and rep["word_precision"] == pytest.approx(3 / 42)
    assert rep["talk_ratio"] == pytest.approx(14 * 0.6 / 3.0)


VTT = """WEBVTT - model commentary

NOTE written by a test

1
00:00:02.500 --> 00:00:03.500 align:start
<v Model>red square</v> &amp;
enters

00:06.000 --> 00:07.250
blue circle turns
"""

SRT = """1
00:00:02,500 --> 00:00:03,500
red square enters

2
00:00:06,000 --> 00:00:07,250
blue circle turns
"""


def test_load_lines_reads_the_three_output_formats(tmp_path):
    (tmp_path / "a.vtt").write_text(VTT)
    (tmp_path / "a.srt").write_text(SRT)
    (tmp_path / "a.jsonl").write_text(
        '{"start": 2.5, "end": 3.5, "text": "red square enters"}\n\n'
        '{"start": 6.0, "end": 7.25, "text": "blue circle turns"}\n'
    )
    expected = [Line(2.5, 3.5, "red square enters"), Line(6.0, 7.25, "blue circle turns")]
    vtt = load_lines(tmp_path / "a.vtt")  # NOTE block, cue id, settings, tags and entities handled
    assert [(x.start, x.end, tokens(x.text)) for x in vtt] == [
        (2.5, 3.5, ["red", "square", "enters"]),
        (6.0, 7.25, ["blue", "circle", "turns"]),
    ]
    assert load_lines(tmp_path / "a.srt") == expected
    assert load_lines(tmp_path / "a.jsonl") == expected
    (tmp_path / "silent.vtt").write_text("WEBVTT\n\n")
    (tmp_path / "silent.jsonl").write_text("")
    assert load_lines(tmp_path / "silent.vtt") == [] and load_lines(tmp_path / "silent.jsonl") == []


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("x.vtt", "1\n00:00:01.000 --> 00:00:02.000\nhi\n", "line 1"),
        ("x.vtt", "WEBVTT\n\n00:00:03.000 --> 00:00:02.000\nhi\n", "line 3"),
        ("x.srt", "1\n00:00:01 --> 00:00:02\nhi\n", "line 2"),
        ("x.jsonl", '{"start": 1, "text": "hi"}\n', "line 1"),
        ("x.jsonl", '{"start": 1, "end": 2, "text": "hi"}\nnot json\n', "line 2"),
    ],
)
def test_malformed_outputs(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    with pytest.raises(AnnotationError, match=problem) as exc:
        load_lines(tmp_path / name)
    assert exc.value.path == str(tmp_path / name)


@pytest.fixture
def synthetic_refs(tmp_path):
    """events.jsonl and transcripts.jsonl in the synthetic set's published formats, two videos."""
    data = tmp_path / "data"
    data.mkdir()
    events = [
        {"t": e.t, "colour": e.colour, "shape": e.shape, "action": e.action, "shape_id": e.shape_id} for e in EVENTS
    ]
    (data / "events.jsonl").write_text(
        "".join(json.dumps({"video": v, "duration": 14.0, "events": events}) + "\n" for v in ("vid_000", "vid_001"))
    )
    (data / "transcripts.jsonl").write_text(
        "".join(
            json.dumps(livecc_record(f"videos/{v}.mp4", _reference_words(0.5), 0.0, 14.0)) + "\n"
            for v in ("vid_000", "vid_001")
        )
    )
    return data


def _vtt(lines):
    def clock(t):
        return f"00:00:{int(t):02d}.{round((t % 1) * 1000):03d}"

    return "WEBVTT\n\n" + "".join(f"{clock(x.start)} --> {clock(x.end)}\n{x.text}\n\n" for x in lines)


def test_command_on_synthetic_outputs(synthetic_refs, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "vid_000.vtt").write_text(_vtt(_described([0.5, 0.5, 0.5])))
    (outputs / "vid_001.vtt").write_text("WEBVTT\n\n")  # silent
    out = tmp_path / "results.json"
    argv = [
        "eval",
        "commentary",
        "--predictions",
        str(outputs),
        "--reference",
        str(synthetic_refs / "events.jsonl"),
        "--reference",
        str(synthetic_refs / "transcripts.jsonl"),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["overall"]["videos"] == 2
    assert results["overall"]["events"]["event_accuracy"] == 0.5
    assert results["overall"]["events"]["event_precision"] == 1.0
    assert results["per_video"]["vid_000"]["transcript"]["rougeL"] == pytest.approx(1.0)
    assert results["per_video"]["vid_001"]["transcript"]["talk_ratio"] == 0.0
    assert results["overall"]["transcript"]["talk_ratio"] == pytest.approx(0.5)
    assert "| **all** |" in out.with_suffix(".md").read_text()
    assert "event_accuracy" in capsys.readouterr().out


def test_command_errors_leave_no_output(synthetic_refs, tmp_path, capsys):
    (tmp_path / "unknown_video.vtt").write_text("WEBVTT\n\n")
    out = tmp_path / "results.json"
    argv = [
        "eval",
        "commentary",
        "--predictions",
        str(tmp_path / "unknown_video.vtt"),
        "--reference",
        str(synthetic_refs / "events.jsonl"),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 2
    assert "no reference for video 'unknown_video'" in capsys.readouterr().err
    (tmp_path / "vid_000.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:00.500\nx\n")
    argv[3] = str(tmp_path / "vid_000.vtt")
    assert cli.main(argv) == 2
    assert "vid_000.vtt: line 3: cue does not end" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_livecc_reference_words_are_put_back_in_video_time(tmp_path):
    from mmduplex.eval.commentary import load_references

    words = [Word(14.5, 14.8, "red"), Word(14.8, 15.1, "square")]
    path = tmp_path / "transcripts.jsonl"
    path.write_text(json.dumps(livecc_record("videos/clip_7.mp4", words, 12.0, 20.0)) + "\n")
    reference, events = load_references([path])
    assert events == {} and list(reference) == ["clip_7"]
    assert [(w.start, w.text) for w in reference["clip_7"]] == [
        (pytest.approx(14.5), "red"),
        (pytest.approx(14.8), "square"),
    ]


def test_match_events_marks_hits_misses_early_and_invented_lines():
    lines = [
        Line(2.4, 3.4, "red square enters"),  # describes event 0
        Line(5.0, 6.0, "blue circle turns"),  # 1 s before event 1: early
        Line(8.0, 9.0, "yellow square stops"),  # nothing like it happens
    ]
    match = match_events(lines, EVENTS)
    assert match.latencies[0] == pytest.approx(0.4)
    assert match.latencies[1:] == [None, None]
    assert match.line_kinds == ["hit", "early", "invented"]
    metrics = event_metrics(lines, EVENTS)
    assert (metrics["described"], metrics["precise_lines"], metrics["early_lines"]) == (1, 1, 1)


def _track(shape_id, waypoints, size=20.0):
    return ShapeTrack(shape_id, "square", size, tuple(waypoints), ((0.0, "red"),))


def test_objects_on_screen_counts_any_part_inside_the_frame():
    event = Event(5.0, "red", "square", "stops", 0)
    own = _track(0, [(0.0, 50.0, 50.0), (10.0, 50.0, 50.0)])
    partly_in = _track(1, [(0.0, -5.0, 50.0), (10.0, -5.0, 50.0)])  # centre outside, right half (5 px) inside
    outside = _track(2, [(0.0, -11.0, 50.0), (10.0, -11.0, 50.0)])  # right edge at -1 px
    gone = _track(3, [(0.0, 50.0, 50.0), (4.0, 50.0, 50.0)])  # left the video before the event
    assert objects_on_screen([own], event, 96, 96) == 1
    assert objects_on_screen([own, partly_in, outside, gone], event, 96, 96) == 2
    assert objects_on_screen([partly_in], event, 96, 96) == 2  # the event's own shape always counts
    assert [object_bucket(n) for n in (1, 2, 3)] == ["1", "2+", "2+"]
    assert accuracy_by_group([("1", True), ("1", False), ("2+", False)]) == {"1": 0.5, "2+": 0.0}


def test_history_counts_other_shapes_seen_earlier_in_the_video():
    event = Event(5.0, "red", "square", "stops", 0)
    own = _track(0, [(0.0, 50.0, 50.0), (10.0, 50.0, 50.0)])
    gone = _track(1, [(0.0, 50.0, 50.0), (2.0, 50.0, 50.0)])  # on screen, left before the event: history
    never_in = _track(2, [(0.0, -11.0, 50.0), (10.0, -11.0, 50.0)])  # right edge at -1 px all along
    later = _track(3, [(6.0, 50.0, 50.0), (9.0, 50.0, 50.0)])  # appears after the event
    entering = _track(4, [(0.0, -30.0, 50.0), (4.0, 10.0, 50.0)])  # crosses the left edge at 1.9 s
    assert shapes_seen_before([own], event, 96, 96) == 0  # its own shape is not history
    assert shapes_seen_before([own, never_in, later], event, 96, 96) == 0
    assert shapes_seen_before([own, gone, never_in, later, entering], event, 96, 96) == 2
    early = Event(1.0, "red", "square", "enters", 0)
    assert shapes_seen_before([own, gone, entering], early, 96, 96) == 1  # entering is not inside before 1.9 s
    assert [count_bucket(n) for n in (0, 1, 3)] == ["0", "1+", "1+"]


def test_others_moving_counts_other_shapes_in_motion_at_the_event():
    event = Event(5.0, "red", "square", "stops", 0)
    own = _track(0, [(0.0, 10.0, 50.0), (5.0, 50.0, 50.0), (10.0, 50.0, 50.0)])  # moving until the event: its own
    still = _track(1, [(0.0, 70.0, 20.0), (10.0, 70.0, 20.0)])
    moving = _track(2, [(0.0, 20.0, 80.0), (10.0, 80.0, 80.0)])
    stopped = _track(3, [(0.0, 20.0, 20.0), (4.0, 40.0, 20.0), (10.0, 40.0, 20.0)])  # stopped a second earlier
    outside = _track(4, [(0.0, -40.0, 50.0), (10.0, -20.0, 50.0)])  # moving, off screen
    assert others_moving([own, still, stopped], event, 96, 96) == 0
    assert others_moving([own, still, moving, stopped, outside], event, 96, 96) == 1


def test_speaking_time_is_the_union_of_spans():
    assert speaking_s([(0.0, 1.0), (0.5, 2.0), (3.0, 3.5)]) == pytest.approx(2.5)
    assert speaking_s([]) == 0.0
