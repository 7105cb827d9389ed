"""``mmduplex stream``: outputs that parse with monotone cue times, the words owed at the end (flush), report keys, HTML
page, stdin, clean errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from delayed_echo import DelayedEcho

from mmduplex.cli import main
from mmduplex.commands.stream import parse_ask, printed_line, timestamp
from mmduplex.errors import InputError
from mmduplex.inference.commentary import LineCollector
from mmduplex.io.outputs import LineBuilder, read_commentary

REPORT_KEYS = ["steps", "step_hz", "rtf", "step_ms_p50", "step_ms_p95", "peak_rss_mb", "video_tokens_per_second"]
PRINTED = re.compile(r"^\[\d{2}:\d{2}:\d{2}\.\d\] \S.*$")


@pytest.fixture(scope="module")
def video(duplex_data) -> Path:
    return sorted((duplex_data["synthetic_dir"] / "videos").glob("*.mp4"))[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".vtt", ".srt", ".jsonl"])
def test_stream_writes_commentary_page_and_report(tiny_bundle, video, tmp_path, capsys, suffix):
    out, page, report = tmp_path / f"c{suffix}", tmp_path / "page" / "index.html", tmp_path / "r.json"
    argv = ["stream", str(video), "--checkpoint", str(tiny_bundle), "--out", str(out), "--html", str(page),
            "--report", str(report), "--max-seconds", "6", "--pad-bias", "-2", "--ask", "2.5:what moved"]  # fmt: skip
    assert main(argv) == 0
    lines = read_commentary(out)
    assert lines, "the PAD bias should make the tiny model talk"
    assert all(b.start >= a.start for a, b in zip(lines, lines[1:], strict=False))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(lines) and all(PRINTED.match(p) for p in printed)
    assert [p.split("] ", 1)[1] for p in printed] == [line.text for line in lines]

    data = json.loads(report.read_text())
    assert list(data)[: len(REPORT_KEYS)] == REPORT_KEYS
    assert data["step_hz"] == 5.0 and data["frames"] == 12 and data["video_s"] == 6.0
    assert data["steps"] == 30 + data["flush_steps"] and data["flush_steps"] >= 2  # tau = 2 steps owed at the end
    assert all(line.end > line.start and 0 <= line.start <= data["stream_s"] for line in lines)
    assert data["rtf"] > 0 and 0 < data["step_ms_p50"] <= data["step_ms_p95"] and data["peak_rss_mb"] > 0
    assert data["video_tokens_per_second"] == pytest.approx(data["video_tokens"] / 6.0)
    assert data["cache_peak_length"] <= data["cache_max_length"]
    assert data["questions"] == [{"t": 2.5, "text": "what moved"}]

    html = page.read_text()
    track = "../c.vtt" if suffix == ".vtt" else "index.vtt"
    assert f'src="{track}"' in html and f'src="{os.path.relpath(video, page.parent)}"' in html
    if suffix != ".vtt":
        assert read_commentary(page.with_suffix(".vtt")) == lines
    assert files_in(tmp_path) == sorted([out.name, "page", "r.json"])


def test_stream_from_stdin_pipe(tiny_bundle, video, tmp_path):
    script = Path(sys.executable).with_name("mmduplex")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mmduplex"]
    out, page, report = tmp_path / "live.vtt", tmp_path / "live.html", tmp_path / "r.json"
    argv = ["stream", "-", "--checkpoint", str(tiny_bundle), "--out", str(out), "--html", str(page),
            "--report", str(report), "--max-seconds", "4", "--pad-bias", "-2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(video, "rb") as stdin:
        result = subprocess.run(command + argv, stdin=stdin, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = read_commentary(out)
    data = json.loads(report.read_text())
    assert data["video_s"] == 4.0 and data["flush_steps"] >= 2
    assert lines and all(line.start <= data["stream_s"] for line in lines)
    assert [p for p in result.stdout.splitlines() if PRINTED.match(p)] == [
        f"[{timestamp(line.start)}] {line.text}" for line in lines
    ]
    assert 'id="no-video"' in page.read_text()


def test_stream_says_the_last_line_after_the_last_frame(tiny_bundle, video, tmp_path, capsys, monkeypatch):
    """A bundle whose model describes each step's video tau = 1.2 s later (forced output): the words owed when the
    video ends come out, printed and in the VTT, at times after the last frame and within the end + tau."""
    from mmduplex.lm.bundle import load_bundle
    from mmduplex.lm.model import DuplexLM

    bundle, tau = tmp_path / "bundle", 6
    shutil.copytree(tiny_bundle, bundle)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "delay_steps": tau}))
    loaded = load_bundle(bundle)
    tok = loaded.text_tokenizer
    echo = DelayedEcho(loaded.model.vocab_size, tok.pad_id, tok.encode_text("red")[0], delay=tau)
    monkeypatch.setattr(DuplexLM, "forward", lambda self, *args, **kwargs: echo(*args, **kwargs))
    out, report = tmp_path / "c.vtt", tmp_path / "r.json"
    argv = ["stream", str(video), "--checkpoint", str(bundle), "--out", str(out), "--report", str(report),
            "--max-seconds", "6", "--line-words", "1"]  # fmt: skip
    assert main(argv) == 0
    lines, data = read_commentary(out), json.loads(report.read_text())
    hz, last_frame = data["step_hz"], 5.5  # frames at 0, 0.5, .., 5.5 (2 fps)
    assert [line.start for line in lines] == pytest.approx([(k + 1) / hz for k in echo.word_steps()])
    assert lines[-1].text == "red" and last_frame < lines[-1].start <= 6.0 + tau / hz
    assert capsys.readouterr().out.splitlines()[-1] == f"[{timestamp(lines[-1].start)}] red"
    assert data["flush_steps"] == tau and data["steps"] == 30 + tau


class _VirtualClock:
    """``time.perf_counter`` and ``time.sleep`` on a clock that moves only while someone sleeps: on it, computing takes
    no time, so what pacing does is exact on a machine of any speed, however busy."""

    def __init__(self) -> None:
        self.now, self.slept = 1000.0, 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_realtime_paces_and_reports_lateness(tiny_bundle, video, tmp_path, monkeypatch):
    clock = _VirtualClock()
    monkeypatch.setattr(time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    report = tmp_path / "r.json"
    argv = ["stream", str(video), "--checkpoint", str(tiny_bundle), "--report", str(report), "--realtime",
            "--max-seconds", "1.5"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(report.read_text())
    assert data["realtime"] is True and data["steps"] == 8 + data["flush_steps"]
    assert 1.0 <= clock.slept <= data["stream_s"]  # it waited for each frame's time (the last one at 1.0 s)
    assert data["late_steps"] == 0 and data["max_lag_s"] == pytest.approx(0, abs=1e-9)
    assert data["compute_s"] == pytest.approx(0, abs=1e-9)  # the sleeping is not compute


def _tokenizer_bundle(folder: Path) -> Path:
    from mmduplex.tokenizer import BFlowConfig, BFlowTokenizer

    return BFlowTokenizer(BFlowConfig(dim=64, grid=(12, 12))).save_pretrained(folder)


@pytest.mark.parametrize("case", ["missing video", "corrupt video", "missing bundle", "tokenizer bundle",
                                  "random folder", "bad ask", "bad suffix"])  # fmt: skip
def test_bad_inputs_fail_cleanly(tiny_bundle, video, tmp_path, capsys, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source, bundle, extra = str(video), str(tiny_bundle), []
    if case == "missing video":
        source = str(inputs / "nothing.mp4")
    elif case == "corrupt video":
        source = str(inputs / "cut.mp4")
        Path(source).write_bytes(video.read_bytes()[:2000])
    elif case == "missing bundle":
        bundle = str(inputs / "no_bundle")
    elif case == "tokenizer bundle":
        bundle = str(_tokenizer_bundle(inputs / "bflow"))
    elif case == "random folder":
        (inputs / "folder").mkdir()
        (inputs / "folder" / "notes.txt").write_text("hello")
        bundle = str(inputs / "folder")
    elif case == "bad ask":
        extra = ["--ask", "soon:what moved"]
    out_dir = tmp_path / "out"
    out = out_dir / ("c.txt" if case == "bad suffix" else "c.vtt")
    argv = ["stream", source, "--checkpoint", bundle, "--out", str(out), "--html", str(out_dir / "p.html"),
            "--report", str(out_dir / "r.json"), *extra]  # fmt: skip
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mmduplex: error: "), err
    assert not out_dir.exists() or files_in(out_dir) == []


def test_a_question_asked_at_the_end_is_typed_after_the_last_frame(tiny_bundle, video, tmp_path, caplog):
    """``--ask end:TEXT`` is typed once the input has ended, so the flush runs its steps (and tau after them); a
    question timed after the input's end is never typed, and says so."""
    flushed = {}
    for name, asks in (("none", []), ("end", ["--ask", "end:what colour is the circle ?", "--ask", "99:what moved"])):
        report = tmp_path / f"{name}.json"
        argv = ["stream", str(video), "--checkpoint", str(tiny_bundle), "--out", str(tmp_path / f"{name}.vtt"),
                "--report", str(report), "--max-seconds", "6", *asks]  # fmt: skip
        with caplog.at_level(logging.WARNING):
            assert main(argv) == 0
        data = json.loads(report.read_text())
        flushed[name] = data["flush_steps"]
        assert data["video_s"] == 6.0
    assert data["questions"] == [{"t": "end", "text": "what colour is the circle ?"}, {"t": 99.0, "text": "what moved"}]
    assert flushed["end"] >= flushed["none"] + 2  # the 6 words took 2 steps at 4 user tokens a step (or 6 at 1)
    assert any("--ask 99:what moved comes after the input's end (6.0 s)" in r.getMessage() for r in caplog.records)


def test_ask_parsing():
    assert parse_ask("4.5:what moved") == (4.5, "what moved")
    assert parse_ask("end: what now ") == (None, "what now")
    assert parse_ask(" 10 : a:b ") == (10.0, "a:b")
    for bad in ("what", ":x", "3:", "-1:x", "nan:x", "inf:x"):
        with pytest.raises(InputError, match="--ask"):
            parse_ask(bad)


def test_subword_pieces_join_into_words():
    printed: list[str] = []
    builder = LineBuilder(pause_steps=2, max_words=10, min_display_s=1.0)
    lines = LineCollector(builder, on_line=lambda line: printed.append(printed_line(line)))
    steps = [("red", True), ("dish", True), ("es", False), (None, False), (None, False), ("go", True)]
    for k, (word, start) in enumerate(steps):
        lines.push(SimpleNamespace(t=(k + 1) / 5, word=word, word_start=start))
    lines.flush()
    assert printed == ["[00:00:00.2] red dishes", "[00:00:01.2] go"]


def test_interrupt_writes_what_was_streamed(tiny_bundle, video, tmp_path, monkeypatch):
    import mmduplex.io.video

    real = mmduplex.io.video.iter_video

    def interrupted(*args, **kwargs):
        for t, frame in real(*args, **kwargs):
            if t >= 3.0:
                raise KeyboardInterrupt  # Ctrl-C: how a live stream ends
            yield t, frame

    monkeypatch.setattr(mmduplex.io.video, "iter_video", interrupted)
    out, report = tmp_path / "c.jsonl", tmp_path / "r.json"
    argv = ["stream", str(video), "--checkpoint", str(tiny_bundle), "--out", str(out), "--report", str(report),
            "--pad-bias", "-2"]  # fmt: skip
    assert main(argv) == 130
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["steps"] == 12  # the steps before the last frame read (2.5 s)
    assert all(line.start <= 3.0 for line in read_commentary(out))
