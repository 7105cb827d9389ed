"""Tests of the commentary writers/readers (WebVTT, SRT, JSONL), the line builder and the HTML viewer page."""

from __future__ import annotations

import functools
import html
import http.server
import json
import math
import re
import shutil
import subprocess
import threading

import av
import numpy as np
import pytest

from mmduplex.errors import AnnotationError, InputError
from mmduplex.io.outputs import (
    WORD_JOINER,
    CommentaryLine,
    LineBuilder,
    normalize_lines,
    read_commentary,
    read_srt,
    read_vtt,
    write_commentary,
    write_html,
    write_jsonl,
    write_srt,
    write_vtt,
)
from mmduplex.io.video import write_video

LINES = [
    CommentaryLine(3.0, 4.25, "a blue square spins"),
    CommentaryLine(0.5, 2.0004, "a red circle & a <green> triangle"),
    CommentaryLine(2.0, 2.0, "zero length --> fixed"),
    CommentaryLine(-0.2, 0.4, "starts before zero"),
    CommentaryLine(5.0, 6.0, "   "),
    CommentaryLine(3661.5, 3662.0, "two\n\nlines"),
    CommentaryLine(3663.0, 3664.0, "00:00:01.000 --> 00:00:02.000"),  # text that is a timing line
    CommentaryLine(3665.0, 3666.0, "kick-off 1:02:03.4, half time 1:50:06.7"),  # two timestamps (pysubs2)
    CommentaryLine(3667.0, 3668.0, "final score\n3"),  # a last line of digits (pysubs2: the next cue number)
]


def as_players_read_srt(lines: list[CommentaryLine]) -> list[CommentaryLine]:
    """SubRip has no escaping: players read ``<...>`` as markup (our own reader keeps the text verbatim)."""
    return [CommentaryLine(x.start, x.end, re.sub(r"<[^>]*>", "", x.text)) for x in lines]


def test_normalize_sorts_rounds_and_fixes_durations():
    lines = normalize_lines(LINES)
    assert [line.start for line in lines] == [0.0, 0.5, 2.0, 3.0, 3661.5, 3663.0, 3665.0, 3667.0]
    assert all(line.end > line.start for line in lines)
    assert lines[1].end == 2.0  # rounded to the millisecond
    assert lines[2].end == 2.5  # zero duration extended by FIXUP_DURATION_S
    assert lines[4].text == "two\n\nlines"  # kept: the SRT / WebVTT writers protect it
    assert "   " not in [line.text for line in lines]
    assert normalize_lines([CommentaryLine(0, 1, "\n  a  \n\n b\n\n")])[0].text == "a\n\nb"


@pytest.mark.parametrize("suffix", [".vtt", ".srt", ".jsonl"])
def test_round_trip(tmp_path, suffix):
    path = write_commentary(LINES, tmp_path / f"out{suffix}")
    assert read_commentary(path) == normalize_lines(LINES)


def test_vtt_text_is_exactly_the_format(tmp_path):
    path = write_vtt(
        [CommentaryLine(1.0, 2.5, "x < y & z"), CommentaryLine(360000.0, 360001.0, "late --> here")], tmp_path / "a.vtt"
    )
    assert path.read_text(encoding="utf-8") == (
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:02.500\nx &lt; y &amp; z\n\n"
        "100:00:00.000 --> 100:00:01.000\nlate --&gt; here\n"
    )


def test_srt_and_jsonl_text(tmp_path):
    lines = [CommentaryLine(1.0, 2.5, "one"), CommentaryLine(61.25, 62.0, "two")]
    srt = write_srt(lines, tmp_path / "a.srt").read_text(encoding="utf-8")
    assert srt == "1\n00:00:01,000 --> 00:00:02,500\none\n\n2\n00:01:01,250 --> 00:01:02,000\ntwo\n"
    rows = write_jsonl(lines, tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(row) for row in rows] == [
        {"start": 1.0, "end": 2.5, "text": "one"},
        {"start": 61.25, "end": 62.0, "text": "two"},
    ]


@pytest.mark.parametrize("suffix", [".vtt", ".srt", ".jsonl"])
def test_commentary_eval_reads_our_files(tmp_path, suffix):
    """The contract with ``eval commentary``: its loader sees exactly the lines ``mmduplex stream`` wrote."""
    from mmduplex.eval.commentary import load_lines

    assert load_lines(write_commentary(LINES, tmp_path / f"out{suffix}")) == normalize_lines(LINES)


@pytest.mark.parametrize("suffix", [".vtt", ".srt"])
def test_ffmpeg_subtitle_demuxer_reads_our_files(tmp_path, suffix):
    """libavformat (through PyAV) is an independent subtitle parser: same times and texts."""
    path = write_commentary(LINES, tmp_path / f"out{suffix}")
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        cues = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            ms = float(stream.time_base * 1000)
            (subtitle,) = packet.decode()
            cues.append((packet.pts * ms, (packet.pts + packet.duration) * ms, subtitle.dialogue.decode()))
    want = normalize_lines(LINES)
    assert [(round(a), round(b)) for a, b, _ in cues] == [(round(x.start * 1000), round(x.end * 1000)) for x in want]
    texts = [re.sub(r"\\N", "\n", text).replace(WORD_JOINER, "") for _, _, text in cues]  # U+2060 shows as nothing
    if suffix == ".srt":
        want = as_players_read_srt(want)
    assert texts == [line.text for line in want]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("WEBVT\n\n00:00:01.000 --> 00:00:02.000\nx\n", "starts with 'WEBVTT'"),
        ("WEBVTT\n00:00:01.000 --> 00:00:02.000\nx\n", "blank line must separate"),
        ("WEBVTT\n\n00:00:01,000 --> 00:00:02.000\nx\n", "line 3: expected"),
        ("WEBVTT\n\n00:00:01.000 --> 00:00:61.000\nx\n", "line 3: expected"),
        ("WEBVTT\n\n00:00:02.000 --> 00:00:01.000\nx\n", "does not end"),
        ("WEBVTT\n\n00:00:05.000 --> 00:00:06.000\nx\n\n00:00:01.000 --> 00:00:02.000\ny\n", "previous cue"),
        ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nx --> y\n", "contains '-->'"),
    ],
)
def test_strict_vtt_reader_rejects_malformed_files(tmp_path, content, problem):
    path = tmp_path / "bad.vtt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnnotationError, match=re.escape(problem)) as info:
        read_vtt(path)
    assert str(path) in str(info.value)


def test_vtt_reader_accepts_the_rest_of_the_spec(tmp_path):
    path = tmp_path / "full.vtt"
    path.write_text(
        "\ufeffWEBVTT - made elsewhere\nKind: captions\n\nNOTE a comment\n\nSTYLE\n::cue { color: red }\n\n"
        "intro\n01:02.500 --> 01:03.000 align:start\n<v Bob>hi</v> &lt;3\n",
        encoding="utf-8",
    )
    assert read_vtt(path) == [CommentaryLine(62.5, 63.0, "hi <3")]


def test_unknown_suffix_and_bad_times_write_nothing(tmp_path):
    with pytest.raises(InputError, match="unknown commentary format '.txt'"):
        write_commentary(LINES, tmp_path / "out.txt")
    with pytest.raises(InputError, match="must be finite"):
        write_commentary([CommentaryLine(0.0, math.nan, "x")], tmp_path / "out.vtt")
    assert list(tmp_path.iterdir()) == []


def test_line_builder_breaks_on_pause_max_words_and_end():
    builder = LineBuilder(pause_steps=3, max_words=4, min_display_s=1.0)
    stream = ["a", None, "red", "circle", None, None, None, None, "it", "spins", "fast", "now", "then", "stops"]
    finished = [builder.push(step / 10, word) for step, word in enumerate(stream)]
    last = builder.flush()
    assert [line for line in finished if line] + [last] == builder.lines
    assert [(line.start, line.end, line.text) for line in builder.lines] == [
        (0.0, pytest.approx(1.3), "a red circle"),  # ended by 3 silent steps; end = last word (0.3 s) + 1 s
        (0.8, pytest.approx(2.1), "it spins fast now"),  # ended by max_words at its 4th word
        (1.2, pytest.approx(2.3), "then stops"),  # ended by the end of the stream
    ]
    assert finished[6] is builder.lines[0] and finished[11] is builder.lines[1]
    assert builder.flush() is None
    with pytest.raises(InputError, match="backwards"):
        builder.push(0.0, "late")
    with pytest.raises(InputError, match="pause_steps >= 1"):
        LineBuilder(pause_steps=0, max_words=4, min_display_s=1.0)


def test_html_page_has_relative_track_video_and_cue_list(tmp_path):
    vtt = write_vtt(LINES, tmp_path / "out" / "commentary.vtt")
    (tmp_path / "videos").mkdir()
    page = write_html(tmp_path / "videos" / "my clip.mp4", vtt, tmp_path / "out" / "index.html", title="A & B")
    text = page.read_text(encoding="utf-8")
    assert re.search(r'<track id="commentary" kind="captions" [^>]*src="commentary.vtt" default>', text)
    assert '<video id="video" controls preload="metadata" src="../videos/my%20clip.mp4">' in text
    assert "<title>A &amp; B</title>" in text
    assert "a red circle &amp; a &lt;green&gt; triangle" in text
    starts = [float(s) for s in re.findall(r'<li data-start="([\d.]+)"', text)]
    assert starts == [line.start for line in normalize_lines(LINES)]
    url_page = write_html("https://example.org/v.mp4", vtt, tmp_path / "out" / "url.html").read_text(encoding="utf-8")
    assert 'src="https://example.org/v.mp4"' in url_page


def test_html_needs_a_valid_vtt(tmp_path):
    with pytest.raises(AnnotationError, match="file not found"):
        write_html("v.mp4", tmp_path / "missing.vtt", tmp_path / "index.html")
    assert not (tmp_path / "index.html").exists()


@pytest.fixture
def served(tmp_path):
    """The folder ``tmp_path / "site"`` served over HTTP on 127.0.0.1 (ephemeral port); yields (folder, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None  # keep test output quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_html_track_loads_in_chromium(tmp_path, served):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the page's track is not browser-checked")
    site, base = served
    frames = np.zeros((10, 64, 64, 3), np.uint8)  # [T, H, W, 3]
    frames[..., 0] = np.arange(10, dtype=np.uint8)[:, None, None] * 20
    write_video(site / "clip.mp4", frames, fps=5.0)
    lines = [CommentaryLine(0.2, 1.0, "a red <circle> & co"), CommentaryLine(1.0, 1.8, "it moves --> left")]
    write_html(site / "clip.mp4", write_vtt(lines, site / "clip.vtt"), site / "index.html", title="browser test")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", f"{base}/index.html",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"no DOM dumped (exit {result.returncode}): {result.stderr[-2000:]}"
    attributes = {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', body.group(1))}
    assert "data-track-error" not in attributes, "the browser failed to load the <track>"
    assert attributes.get("data-track-cues") == "2", f"track cues not loaded; body attributes: {attributes}"
    assert json.loads(attributes["data-track-texts"]) == [line.text for line in lines]
    assert float(attributes.get("data-video-duration", "nan")) == pytest.approx(2.0, abs=0.25)


def test_line_builder_joins_subword_pieces():
    from mmduplex.io.outputs import LineBuilder

    builder = LineBuilder(pause_steps=2, max_words=8, min_display_s=0.5)
    for t, piece, start in [(0.0, "red", True), (0.2, "dish", False), (0.4, "square", True), (0.6, None, False)]:
        assert builder.push_piece(t, piece, start) is None
    line = builder.push_piece(0.8, None, False)
    assert line is not None and line.text == "reddish square"
    assert (line.start, line.end) == (0.0, 0.9)


# ------------------------------------------------------------------- text that subtitle readers would not keep

PYSUBS2_TIMESTAMP = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})[.,](\d{1,3})")  # pysubs2.time.TIMESTAMP


def as_pysubs2_reads(text: str) -> list[tuple[str, list[str]]]:
    """pysubs2's SubRip reader, re-expressed: a line with two timestamps is a timing line, the other lines are the
    previous cue's text, and a last line of digits is dropped as the next cue's number."""
    cues: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if len(PYSUBS2_TIMESTAMP.findall(line)) == 2:
            cues.append((line, []))
        elif cues:
            cues[-1][1].append(line)
    return [(timing, re.sub(r"\n+ *\d+ *$", "", "\n".join(body).strip()).split("\n")) for timing, body in cues]


EDGES = [
    CommentaryLine(1.0, 2.0, "00:00:01,000 --> 00:00:02,000"),
    CommentaryLine(3.0, 4.0, "first\n\nsecond"),
    CommentaryLine(5.0, 6.0, "at 1:02:03.4 and 1:05:06.7"),
    CommentaryLine(7.0, 8.0, "final score\n3"),
]


@pytest.mark.parametrize("suffix", [".srt", ".vtt"])
def test_timing_like_blank_and_number_lines_round_trip(tmp_path, suffix):
    path = write_commentary(EDGES, tmp_path / f"edges{suffix}")
    assert (read_srt if suffix == ".srt" else read_vtt)(path) == normalize_lines(EDGES)
    text = path.read_text(encoding="utf-8")
    assert f"\n{WORD_JOINER}\n" in text  # the blank line inside the cue
    assert "\n\n\n" not in text


def test_srt_cues_survive_a_pysubs2_style_reader(tmp_path):
    text = write_srt(EDGES, tmp_path / "edges.srt").read_text(encoding="utf-8")
    cues = as_pysubs2_reads(text)
    assert len(cues) == len(EDGES)
    assert ["\n".join(body).replace(WORD_JOINER, "") for _, body in cues] == [x.text for x in EDGES]


@pytest.mark.parametrize("suffix", [".srt", ".vtt"])
def test_real_pysubs2_keeps_every_cue(tmp_path, suffix):
    pysubs2 = pytest.importorskip("pysubs2")
    subs = pysubs2.load(str(write_commentary(EDGES, tmp_path / f"edges{suffix}")))
    got = [(e.start / 1000, e.end / 1000, html.unescape(e.plaintext).replace(WORD_JOINER, "")) for e in subs]
    assert got == [(x.start, x.end, x.text) for x in EDGES]


def test_strict_readers_reject_what_others_would_misread(tmp_path):
    """Without the protection the same texts break a strict reader: the test above guards a real failure."""
    path = tmp_path / "raw.srt"
    path.write_text("1\n00:00:03,000 --> 00:00:04,000\nfirst\n\nsecond\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="line 5: expected a cue number"):
        read_srt(path)
