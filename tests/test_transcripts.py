"""Transcript loaders: LiveCC JSONL and moshi-finetune alignments, on hand-written samples, valid and broken."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest

from mmduplex.data.livecc_index import LiveCCIndex, read_seek_line, write_livecc_jsonl
from mmduplex.data.transcripts import (
    OVERLAP_TOLERANCE_S,
    Word,
    iter_livecc_jsonl,
    livecc_record,
    load_livecc_jsonl,
    load_moshi_alignments,
)
from mmduplex.errors import AnnotationError
from mmduplex.fileio import read_last_line

GOOD = [
    {
        "role": "user",
        "content": [
            {"type": "video", "video": "clips/a.mp4", "video_start": 12.0, "video_end": 20.0},
            {
                "type": "text",
                "text": "what happens?",
                "previous": "earlier",
                "title": "A title",
                "category": "Sports",
            },
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "text_stream", "text_stream": [[12.31, 12.52, "the"], [12.52, 12.9, "ball"]]}],
    },
]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _stream(record: list) -> list:
    return record[1]["content"][0]["text_stream"]


def test_livecc_words_relative_to_clip_start_with_meta(tmp_path):
    path = _write_jsonl(tmp_path / "cc.jsonl", [GOOD, "", GOOD])
    clips = load_livecc_jsonl(path)
    assert len(clips) == 2
    clip = clips[0]
    assert clip.video == os.fspath(tmp_path / "clips" / "a.mp4")
    assert (clip.start_s, clip.end_s) == (12.0, 20.0)
    assert [w.text for w in clip.words] == ["the", "ball"]
    assert clip.words[0].start == pytest.approx(0.31) and clip.words[1].end == pytest.approx(0.9)
    assert clip.meta["title"] == "A title" and clip.meta["previous"] == "earlier"
    assert clip.meta["query"] == "what happens?" and clip.meta["category"] == "Sports"
    assert [c.meta["line"] for c in clips] == [1, 3]  # blank lines skipped, line numbers kept


def test_livecc_video_paths_resolved_against_root(tmp_path):
    record = copy.deepcopy(GOOD)
    path = _write_jsonl(tmp_path / "cc.jsonl", [record])
    assert load_livecc_jsonl(path, root="/data/x")[0].video == os.fspath(Path("/data/x/clips/a.mp4"))
    record[0]["content"][0]["video"] = "/abs/v.mp4"
    _write_jsonl(path, [record])
    assert load_livecc_jsonl(path, root="/data/x")[0].video == "/abs/v.mp4"


def test_livecc_record_round_trip(tmp_path):
    words = [Word(1.0, 1.3, "red"), Word(1.3, 1.6, "square"), Word(1.6, 1.9, "enters")]
    path = _write_jsonl(tmp_path / "t.jsonl", [livecc_record("v.mp4", words, 0.0, 5.0, title="t")])
    clip = load_livecc_jsonl(path)[0]
    assert clip.words == words and clip.end_s == 5.0 and clip.meta["title"] == "t"


def test_livecc_record_carries_questions_in_its_text_item(tmp_path):
    words = [Word(3.0, 3.25, "red")]
    record = livecc_record("v.mp4", words, 0.0, 5.0, questions=[(2.5, "what colour is the square ?")])
    user = record[0]["content"]
    assert len(user) == 2  # LiveCC's reader unpacks exactly (video item, text item)
    video_item, text_item = user
    assert video_item["type"] == "video" and text_item["type"] == "text" and text_item["text"] == ""
    assert text_item["questions"] == [{"time": 2.5, "text": "what colour is the square ?"}]
    assert "questions" not in livecc_record("v.mp4", words, 0.0, 5.0)[0]["content"][1]  # none: no key at all
    clip = load_livecc_jsonl(_write_jsonl(tmp_path / "q.jsonl", [record]))[0]
    assert clip.meta["questions"] == [{"time": 2.5, "text": "what colour is the square ?"}]
    assert "query" not in clip.meta  # the empty prompt is no query


def test_small_overlap_is_clipped(tmp_path):
    record = copy.deepcopy(GOOD)
    _stream(record)[0][1] = 12.52 + OVERLAP_TOLERANCE_S / 2  # "the" runs into "ball"
    clip = load_livecc_jsonl(_write_jsonl(tmp_path / "cc.jsonl", [record]))[0]
    assert clip.words[0].end == pytest.approx(clip.words[1].start)


def _set(stream_index: int, slot: int, value):
    def edit(record):
        _stream(record)[stream_index][slot] = value

    return edit


def _edit_video(key: str, value):
    def edit(record):
        if value is None:
            del record[0]["content"][0][key]
        else:
            record[0]["content"][0][key] = value

    return edit


def _ask(questions):
    def edit(record):
        record[0]["content"][1]["questions"] = questions

    return edit


BROKEN = {
    "missing assistant turn": (lambda r: r.pop(1), "missing the 'assistant' turn"),
    "no video item": (lambda r: r[0]["content"].pop(0), "has no {'type': 'video'} item"),
    "missing video key": (_edit_video("video", None), "missing key 'video'"),
    "missing text_stream": (lambda r: r[1]["content"][0].pop("text_stream"), "missing key 'text_stream'"),
    "content not a list": (lambda r: r[0].__setitem__("content", "x"), "'content' must be a list"),
    "time as string": (_set(0, 0, "12.31"), "expected a finite number"),
    "word not a string": (_set(0, 2, 7), "word must be a string"),
    "entry not a triple": (lambda r: _stream(r).__setitem__(0, [12.3, "the"]), "expected [start, end, word]"),
    "negative time": (lambda r: (_edit_video("video_start", 0.0)(r), _set(0, 0, -0.2)(r)), "negative time"),
    "end before start": (_set(1, 1, 12.4), "end 12.4 < start 12.52"),
    "unsorted": (lambda r: _stream(r).reverse(), "start times not sorted"),
    "big overlap": (_set(0, 1, 12.52 + OVERLAP_TOLERANCE_S + 0.1), "of overlap is allowed"),
    "before video_start": (_set(0, 0, 11.0), "out of range [12.0, 20.0]"),
    "after video_end": (_set(1, 1, 20.5), "out of range [12.0, 20.0]"),
    "video_end before start": (_edit_video("video_end", 5.0), "bad clip range"),
    "turn not an object": (lambda r: r.__setitem__(1, "assistant"), "expected a list of conversation turns"),
    "questions not a list": (_ask({"time": 13.0, "text": "why ?"}), "'questions' must be a list"),
    "question not an object": (_ask(["13.0", "why ?"]), "questions[0]: expected an object"),
    "question time missing": (_ask([{"text": "why ?"}]), "questions[0] time: expected a finite number"),
    "question time infinite": (_ask([{"time": float("inf"), "text": "why ?"}]), "expected a finite number"),
    "question before the clip": (_ask([{"time": 11.0, "text": "why ?"}]), "before video_start 12.0"),
    "question without text": (_ask([{"time": 13.0, "text": " "}]), "questions[0]: 'text' must be a non-empty"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_livecc_errors_name_file_and_line(tmp_path, case):
    edit, message = BROKEN[case]
    record = copy.deepcopy(GOOD)
    edit(record)
    path = _write_jsonl(tmp_path / "cc.jsonl", [GOOD, record])
    with pytest.raises(AnnotationError) as info:
        load_livecc_jsonl(path)
    assert info.value.path == os.fspath(path)
    assert info.value.problem.startswith("line 2") and message in info.value.problem, info.value.problem


def test_livecc_malformed_json_empty_and_missing_files(tmp_path):
    path = _write_jsonl(tmp_path / "cc.jsonl", [GOOD, '[{"role": "user",'])
    with pytest.raises(AnnotationError, match="line 2: malformed JSON"):
        load_livecc_jsonl(path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(AnnotationError, match="empty file"):
        load_livecc_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(AnnotationError, match="file not found"):
        load_livecc_jsonl(tmp_path / "nope.jsonl")


def _moshi_set(tmp_path: Path, alignments: dict[str, list], durations: dict[str, float]) -> Path:
    for name, rows in alignments.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"alignments": rows}))
    return _write_jsonl(
        tmp_path / "manifest.jsonl", [{"path": f"{n}.wav", "duration": d} for n, d in durations.items()]
    )


DIALOGUE = [
    ["hello", [0.1, 0.4], "SPEAKER_MAIN"],
    ["hi", [0.3, 0.5], "SPEAKER_OTHER"],  # speakers may talk over each other
    ["there", [0.45, 0.8], "SPEAKER_MAIN"],
    ["friend", [0.9, 1.2], "SPEAKER_MAIN"],
]


def test_moshi_manifest_speakers_and_filter(tmp_path):
    manifest = _moshi_set(tmp_path, {"a": DIALOGUE, "b": DIALOGUE[:1]}, {"a": 2.0, "b": 1.0})
    clips = load_moshi_alignments(manifest)
    assert [c.video for c in clips] == [os.fspath(tmp_path / "a.wav"), os.fspath(tmp_path / "b.wav")]
    a = clips[0]
    assert a.end_s == 2.0 and [w.text for w in a.words] == ["hello", "hi", "there", "friend"]
    assert a.meta["speakers"] == ["SPEAKER_MAIN", "SPEAKER_OTHER", "SPEAKER_MAIN", "SPEAKER_MAIN"]
    assert a.words[0].end == pytest.approx(0.4)  # overlap with the other speaker is not clipped
    assert a.meta["alignments"] == os.fspath(tmp_path / "a.json")
    main = load_moshi_alignments(manifest, speaker="SPEAKER_MAIN")[0]
    assert [w.text for w in main.words] == ["hello", "there", "friend"]
    assert main.words[0].end == pytest.approx(0.4)
    single = load_moshi_alignments(tmp_path / "a.json")[0]
    assert single.video is None and single.end_s is None and len(single.words) == 4


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["x", [0.1, 0.2], "S"], ["y", [0.05, 0.3], "S"]], "alignments[1]: start times not sorted"),
        ([["x", [0.1, 2.5], "S"]], "out of range [0.0, 2.0]"),
        ([["x", [-0.1, 0.2], "S"]], "negative time"),
        ([["x", 0.1, "S"]], "expected [start, end]"),
        ([["x", [0.1, 0.2], 3]], "speaker must be a string"),
        ([["x", [0.1, 1.0], "S"], ["y", [0.2, 1.2], "S"]], "of overlap is allowed"),
    ],
)
def test_moshi_alignment_errors_name_the_json(tmp_path, rows, message):
    manifest = _moshi_set(tmp_path, {"a": rows}, {"a": 2.0})
    with pytest.raises(AnnotationError) as info:
        load_moshi_alignments(manifest)
    assert info.value.path == os.fspath(tmp_path / "a.json")
    assert message in info.value.problem, info.value.problem


def test_moshi_manifest_errors(tmp_path):
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"path": "a.wav"}])
    with pytest.raises(AnnotationError, match="line 1: missing key 'duration'"):
        load_moshi_alignments(manifest)
    _write_jsonl(manifest, [{"path": "a.wav", "duration": 1.0}])
    with pytest.raises(AnnotationError, match="file not found") as info:
        load_moshi_alignments(manifest)
    assert info.value.path == os.fspath(tmp_path / "a.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="malformed JSON"):
        load_moshi_alignments(manifest)
    (tmp_path / "a.json").write_text(json.dumps({"words": []}))
    with pytest.raises(AnnotationError, match="key 'alignments'"):
        load_moshi_alignments(manifest)


# ------------------------------------------------------------------------------------ LiveCC as published


def _with_seeks(path: Path, records: list, trailing: bytes = b"") -> list[int]:
    """A file laid out as LiveCC's to_conversation.py writes it: records, then the offsets line (no newline)."""
    body, offsets = b"", []
    for record in records:
        offsets.append(len(body))
        body += json.dumps(record).encode() + b"\n"
    path.write_bytes(body + json.dumps(offsets).encode() + trailing)
    return offsets


def _livecc_readlastline(path: Path) -> bytes:
    """LiveCC's own ``readlastline`` (data/lmm_dataset.py), re-expressed: step back from the end to a newline."""
    with open(path, "rb") as f:
        f.seek(-2, 2)
        while f.read(1) != b"\n":
            f.seek(-2, 1)
        return f.readline()


def _word_record(words: list[str], start: float = 12.0) -> list:
    record = copy.deepcopy(GOOD)
    record[1]["content"][0]["text_stream"] = [[start + 0.2 * i, start + 0.2 * i + 0.2, w] for i, w in enumerate(words)]
    return record


def test_published_seek_line_is_skipped_and_indexes_the_records(tmp_path):
    path = tmp_path / "live_whisperx_with_seeks.jsonl"
    records = [_word_record(["the", "ball"]), _word_record(["goal"], 13.0), _word_record(["a", "save"], 14.0)]
    offsets = _with_seeks(path, records)
    assert json.loads(_livecc_readlastline(path)) == offsets  # the file is what LiveCC's dataset reads
    clips = load_livecc_jsonl(path)
    assert [[w.text for w in c.words] for c in clips] == [["the", "ball"], ["goal"], ["a", "save"]]
    assert read_seek_line(path)[1] == offsets
    index = LiveCCIndex(path)
    assert index.has_seek_line and len(index) == 3 and index.offsets == offsets
    assert [w.text for w in index[2].words] == ["a", "save"] and index[2].meta["offset"] == offsets[2]
    assert [w.text for w in index[-3].words] == ["the", "ball"]
    assert [c.words for c in index] == [c.words for c in clips]
    with pytest.raises(IndexError):
        index[3]


@pytest.mark.parametrize("trailing", [b"", b"\n", b"\r\n\n  \n"])
def test_seek_line_with_or_without_trailing_newlines(tmp_path, trailing):
    path = tmp_path / "cc.jsonl"
    offsets = _with_seeks(path, [GOOD, GOOD], trailing)
    assert read_seek_line(path)[1] == offsets
    assert len(load_livecc_jsonl(path)) == 2


def test_index_without_seek_line_scans_line_starts(tmp_path):
    path = _write_jsonl(tmp_path / "cc.jsonl", [GOOD, "", _word_record(["goal"])])
    assert read_seek_line(path) is None
    index = LiveCCIndex(path)
    assert not index.has_seek_line and len(index) == 2
    assert [w.text for w in index[1].words] == ["goal"]


def test_written_file_reads_back_in_livecc_layout(tmp_path):
    path = write_livecc_jsonl([_word_record(["one"]), _word_record(["two"])], tmp_path / "w.jsonl")
    assert not path.read_bytes().endswith(b"\n")  # as LiveCC writes it
    offsets = json.loads(_livecc_readlastline(path))
    with open(path, "rb") as f:  # LiveCC's load_conversation: seek, readline, json.loads
        f.seek(offsets[1])
        assert json.loads(f.readline())[1]["content"][0]["text_stream"][0][2] == "two"
    assert [c.words[0].text for c in LiveCCIndex(path)] == ["one", "two"]


def test_bad_seek_lines_fail_cleanly(tmp_path):
    path = tmp_path / "cc.jsonl"
    offsets = _with_seeks(path, [GOOD, GOOD])
    path.write_bytes(path.read_bytes().replace(json.dumps(offsets).encode(), json.dumps([0, 10**9]).encode()))
    with pytest.raises(AnnotationError, match="seek line: offset 1"):
        LiveCCIndex(path)
    path.write_bytes(path.read_bytes().replace(json.dumps([0, 10**9]).encode(), json.dumps([0, 5]).encode()))
    with pytest.raises(AnnotationError, match="offset 5 of record 1 is not a line start"):
        LiveCCIndex(path)[1]
    _write_jsonl(path, [GOOD, [0, 12], GOOD])
    with pytest.raises(AnnotationError, match="line 2: a list of integers .* may only be last"):
        load_livecc_jsonl(path)


def test_empty_words_dropped_with_one_counted_warning(tmp_path, caplog):
    # LiveCC's splitter on "the  ball " yields ["the", "", "ball", ""]
    records = [_word_record(["the", "", "ball", ""]), _word_record(["", "goal"], 13.0)]
    path = tmp_path / "cc.jsonl"
    _with_seeks(path, records)
    with caplog.at_level(logging.WARNING, logger="mmduplex.data.transcripts"):
        clips = load_livecc_jsonl(path)
    assert [[w.text for w in c.words] for c in clips] == [["the", "ball"], ["goal"]]
    warnings = [r.getMessage() for r in caplog.records if "empty words" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 3 empty words" in warnings[0], warnings
    assert str(path) in warnings[0] and "line 1: text_stream[1]" in warnings[0]


def test_livecc_jsonl_streams_one_line_at_a_time(tmp_path):
    """The first clip arrives before a malformed later line is read: nothing is loaded whole."""
    path = _write_jsonl(tmp_path / "cc.jsonl", [GOOD, "{broken"])
    clips = iter_livecc_jsonl(path)
    assert [w.text for w in next(clips).words] == ["the", "ball"]
    with pytest.raises(AnnotationError, match="line 2: malformed JSON"):
        next(clips)


def test_moshi_drops_negative_and_zero_duration_words_and_keeps_the_file(tmp_path, caplog):
    rows = [
        ["hello", [0.1, 0.4], "SPEAKER_MAIN"],
        ["uh", [0.6, 0.5], "SPEAKER_MAIN"],  # end < start
        ["oh", [0.7, 0.7], "SPEAKER_MAIN"],  # zero duration
        ["", [0.8, 0.85], "SPEAKER_MAIN"],  # no text
        ["there", [0.9, 1.2], "SPEAKER_MAIN"],
    ]
    manifest = _moshi_set(tmp_path, {"a": rows, "b": rows[1:3]}, {"a": 2.0, "b": 2.0})
    with caplog.at_level(logging.WARNING, logger="mmduplex.data.transcripts"):
        a, b = load_moshi_alignments(manifest)
    assert [w.text for w in a.words] == ["hello", "there"] and a.meta["speakers"] == ["SPEAKER_MAIN"] * 2
    assert b.words == []
    warnings = [r.getMessage() for r in caplog.records if "moshi-finetune" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 5 words with end <= start" in warnings[0], warnings
    assert "a.json alignments[1]" in warnings[0]


def test_last_line_is_read_backwards_across_blocks(tmp_path):
    path = tmp_path / "f.jsonl"
    seeks = json.dumps(list(range(0, 3_000_000, 100))).encode()  # 30,000 offsets, ~240 KB: several 64 KiB blocks
    path.write_bytes(b'{"a": 1}\n' + seeks + b"\n\n")
    assert read_last_line(path) == (9, seeks)
    path.write_bytes(seeks)
    assert read_last_line(path) == (0, seeks)
    path.write_bytes(b"\n \n")
    assert read_last_line(path) == (0, b"")
    with pytest.raises(AnnotationError, match="file not found"):
        read_last_line(tmp_path / "missing.jsonl")


def test_seek_line_with_the_wrong_count_is_reported(tmp_path, caplog):
    path = tmp_path / "cc.jsonl"
    _with_seeks(path, [GOOD, GOOD])
    path.write_bytes(path.read_bytes().rsplit(b"\n", 1)[0] + b"\n[0]")
    with caplog.at_level(logging.WARNING, logger="mmduplex.data.transcripts"):
        assert len(load_livecc_jsonl(path)) == 2
    assert "the seek line lists 1 offsets for 2 records" in caplog.text
