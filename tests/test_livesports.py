"""LiveSports-3K CC: the published event files (JSON, CSV), LiveCC prediction files, offline scoring, the LLM judge
(against a stand-in server on 127.0.0.1) and ``mmduplex eval livesports`` in both modes."""

from __future__ import annotations

import csv
import http.server
import json
import threading

import pytest
import torch

from mmduplex import cli
from mmduplex.errors import AnnotationError, InputError
from mmduplex.eval.livesports import commentate, context_text, score
from mmduplex.eval.livesports_data import Prediction, event_key, load_events, load_predictions, read_events_csv
from mmduplex.eval.livesports_judge import JudgeClient, Judgment, ab_prompt, judge_all, parse_verdict, win_rate

# One record as the data set's LiveSports-3K-CC.json holds it (event_asr / preasr are JSON text, as published).
RECORD = {
    "video_id": "6gyD-Mte2ZM",
    "url": "https://www.youtube.com/watch?v=6gyD-Mte2ZM",
    "event_id": 2,
    "begin": 26.127,
    "end": 38.876,
    "event_type": 1,
    "video": "6gyD-Mte2ZM.mp4",
    "class": "Bowling",
    "event_title": "Tom's performance and struggles during the game.",
    "event_asr": '[[26.127, 29.509, "A season for him."], [29.529, 31.131, "A big cleanup effort here."]]',
    "event_asr_text": "A season for him. A big cleanup effort here.",
    "preasr": '[[0.874, 8.337, "The number two qualifier is Tom Doherty."]]',
    "preasr_text": "The number two qualifier is Tom Doherty.",
}


def _record(**changes) -> dict:
    return {**RECORD, **changes}


def _json_root(tmp_path, records: list[dict]):
    root = tmp_path / "ls"
    root.mkdir(exist_ok=True)
    (root / "LiveSports-3K-CC.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def _write_csv(path, records: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def _predictions(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _pred_row(record: dict, pred: str) -> dict:
    """A line as LiveCC publishes it (its key order: video_id, begin, end, pred, event_id)."""
    return {"video_id": record["video_id"], "begin": record["begin"], "end": record["end"], "pred": pred,
            "event_id": record["event_id"]}  # fmt: skip


TWO = [
    _record(),
    _record(event_id=3, begin=40.0, end=52.5, event_asr_text="What a strike for the title.", preasr_text="x y"),
]


# ------------------------------------------------------------------------------------------------ event files


def test_json_events_as_published(tmp_path):
    events, files = load_events(_json_root(tmp_path, TWO))
    assert [f.name for f in files] == ["LiveSports-3K-CC.json"]
    first = events[0]
    assert (first.key, first.video, first.begin, first.end) == ("6gyD-Mte2ZM_2", "6gyD-Mte2ZM.mp4", 26.127, 38.876)
    assert first.title.startswith("Tom's") and first.asr == RECORD["event_asr_text"]
    assert first.preasr == RECORD["preasr_text"] and first.extra["class"] == "Bowling"


def test_csv_events_val_and_test(tmp_path):
    root = tmp_path / "ls"
    root.mkdir()
    columns = ["video_id", "url", "event_id", "begin", "end", "event_title", "event_type", "video", "class"]
    _write_csv(root / "LiveSports-3K-CC-val.csv", TWO, [*columns, "preasr_text", "event_asr_text"])
    _write_csv(root / "LiveSports-3K-CC-test.csv", [_record(video_id="other", event_id="7")], columns)
    events, files = load_events(root)
    assert [f.name for f in files] == ["LiveSports-3K-CC-val.csv", "LiveSports-3K-CC-test.csv"]
    assert [e.key for e in events] == ["6gyD-Mte2ZM_2", "6gyD-Mte2ZM_3", "other_7"]
    assert events[1].asr == "What a strike for the title." and events[2].asr == ""  # test split: ASR withheld
    assert events[0].begin == 26.127 and events[0].extra["class"] == "Bowling"
    (root / "LiveSports-3K-CC.json").write_text(json.dumps([RECORD]))
    assert len(load_events(root)[0]) == 1  # the JSON release is preferred when both are there


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([RECORD, _record(begin="soon")], "record 1: begin: expected a number of seconds"),
        ([RECORD, {k: v for k, v in RECORD.items() if k != "end"}], "record 1: missing 'end'"),
        ([RECORD, _record(end=1.0)], "record 1: end 1.0 is not after begin"),
        ([RECORD, RECORD], "event '6gyD-Mte2ZM_2' listed twice"),
        ({"events": []}, "expected a JSON list of event records"),
    ],
)
def test_malformed_event_files_name_the_record(tmp_path, records, problem):
    root = _json_root(tmp_path, records)
    with pytest.raises(AnnotationError, match=problem) as info:
        load_events(root)
    assert info.value.path == str(root / "LiveSports-3K-CC.json")


def test_json_lines_copy_is_read_too(tmp_path):
    path = tmp_path / "LiveSports-3K-CC.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in TWO) + '{"video_id": "v"}\n', encoding="utf-8")
    with pytest.raises(AnnotationError, match="line 3: missing 'event_id'"):
        load_events(tmp_path)
    path.write_text("".join(json.dumps(r) + "\n" for r in TWO), encoding="utf-8")
    assert [e.key for e in load_events(tmp_path)[0]] == ["6gyD-Mte2ZM_2", "6gyD-Mte2ZM_3"]


def test_malformed_csv_and_missing_files(tmp_path):
    path = tmp_path / "LiveSports-3K-CC-val.csv"
    _write_csv(path, [RECORD, _record(begin="x")], ["video_id", "event_id", "begin", "end"])
    with pytest.raises(AnnotationError, match="line 3: begin"):
        read_events_csv(path)
    _write_csv(path, [RECORD], ["video_id", "begin", "end"])
    with pytest.raises(AnnotationError, match="line 1: the header lacks column.s. event_id"):
        read_events_csv(path)
    with pytest.raises(AnnotationError, match="no LiveSports-3K CC event file"):
        load_events(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------- prediction files


def test_livecc_prediction_file_and_keys(tmp_path):
    path = _predictions(tmp_path / "p.jsonl", [_pred_row(TWO[0], "a"), _pred_row(TWO[1], "b") | {"event_id": "3"}])
    predictions = load_predictions(path)
    assert list(predictions) == ["6gyD-Mte2ZM_2", "6gyD-Mte2ZM_3"]  # an int or a string id: LiveCC's same key
    assert predictions["6gyD-Mte2ZM_2"] == Prediction("6gyD-Mte2ZM", "2", 26.127, 38.876, "a")
    assert event_key("v", 3.0) == event_key("v", "3") == "v_3"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "line 2: malformed JSON"),
        ('{"video_id": "v", "pred": "x"}', "line 2: expected"),
        ('{"video_id": "v", "event_id": 1, "pred": 3}', "line 2: 'pred' must be a string"),
        (json.dumps(_pred_row(RECORD, "again")), "line 2: second prediction for event '6gyD-Mte2ZM_2'"),
    ],
)
def test_malformed_prediction_lines_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_pred_row(RECORD, "ok")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=problem) as info:
        load_predictions(path)
    assert info.value.path == str(path)


# ------------------------------------------------------------------------------------------------------ scoring


@pytest.fixture
def events(tmp_path):
    return load_events(_json_root(tmp_path, [*TWO, _record(event_id=9, event_asr_text="")]))[0]


def test_scoring_perfect_partial_and_counts(events):
    perfect = {e.key: Prediction(e.video_id, e.event_id, e.begin, e.end, e.asr.upper()) for e in events[:2]}
    result = score(events, perfect)
    assert result["rougeL"] == pytest.approx(1.0) and result["bleu"] == pytest.approx(1.0)
    assert (result["scored"], result["events"], result["with_reference"]) == (2, 3, 2)  # event 9 has no ASR
    half = dict(perfect)
    half[events[1].key] = Prediction(events[1].video_id, events[1].event_id, None, None, "nothing alike here")
    worse = score(events, half)
    assert 0.4 < worse["rougeL"] < 0.6 and worse["bleu"] < 1.0
    partial = score(events, {events[0].key: perfect[events[0].key], "zz_1": perfect[events[0].key]})
    assert (partial["scored"], partial["missing_predictions"], partial["predictions_not_in_data"]) == (1, 1, 1)


def test_context_is_title_then_the_end_of_the_previous_commentary(events):
    event = events[0]
    assert context_text(event, "both", 3) == f"{event.title} is Tom Doherty."
    assert context_text(event, "title", 3) == event.title
    assert context_text(event, "preasr", None) == event.preasr
    assert context_text(event, "none", None) == ""


class _FakeSession:
    """Records what :func:`commentate` does to a session; its steps say ``pieces`` during the clip."""

    def __init__(self, pieces):
        self.pieces, self.asked, self.step_index, self.pending, self.resets = pieces, [], 0, 0, 0

    def reset(self):
        self.resets += 1

    def ask(self, text):
        self.asked.append(text)
        self.pending = len(text.split())

    @property
    def pending_user_tokens(self):
        return self.pending

    @property
    def time(self):
        return self.step_index / 2.0

    def step(self):
        self.pending -= 1
        self.step_index += 1

    def run(self, frames, end_s):
        self.frames, self.end_s = [t for t, _ in frames], end_s
        for word, start in self.pieces:
            yield type("Out", (), {"word": word, "word_start": start})()


def test_commentate_types_the_context_first_and_joins_pieces():
    session = _FakeSession([("hel", True), ("lo", False), (None, False), (" world", True), ("!", False)])
    text = commentate(session, torch.zeros(2, 4, 4, 3, dtype=torch.uint8), [0.0, 0.5], 1.0, "a title here")
    assert text == "hello world!"
    assert session.resets == 1 and session.asked == ["a title here"]
    assert session.frames == [1.5, 2.0] and session.end_s == 2.5  # the clip starts after the 3 context steps
    silent = _FakeSession([(None, False)])
    assert commentate(silent, torch.zeros(1, 4, 4, 3, dtype=torch.uint8), [0.0], 1.0, " ") == ""
    assert silent.asked == [] and silent.frames == [0.0]


def test_command_scores_a_livecc_prediction_file(tmp_path, capsys):
    root = _json_root(tmp_path, TWO)
    preds = _predictions(tmp_path / "LiveCC-7B-Instruct.jsonl", [_pred_row(r, r["event_asr_text"]) for r in TWO])
    out = tmp_path / "r.json"
    argv = ["eval", "livesports", "--data-root", str(root), "--predictions", str(preds), "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["overall"]["scored"] == 2 and results["overall"]["rougeL"] == pytest.approx(1.0)
    assert results["settings"]["mode"] == "predictions" and "judge" not in results
    assert "LiveSports-3K CC" in out.with_suffix(".md").read_text() and "ROUGE-L" in capsys.readouterr().out


def test_the_recipe_scores_prediction_files_too(tmp_path, caplog):
    """The recipe's model-mode settings (context_words) are ignored, with a warning, when scoring a file."""
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "recipes" / "eval" / "livesports_cc.yaml"
    root = _json_root(tmp_path, TWO)
    preds = _predictions(tmp_path / "p.jsonl", [_pred_row(r, "a strike") for r in TWO])
    argv = ["eval", "livesports", "--config", str(recipe), "--data-root", str(root), "--predictions", str(preds),
            "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert cli.main(argv) == 0
    assert "context_words only apply with --checkpoint" in caplog.text
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["scored"] == 2


def test_command_bad_input_exits_2_naming_file_and_line(tmp_path, capsys):
    root = _json_root(tmp_path, TWO)
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(_pred_row(RECORD, "a")) + "\n{oops\n")
    out = tmp_path / "r.json"
    argv = ["eval", "livesports", "--data-root", str(root), "--predictions", str(preds), "--out", str(out)]
    assert cli.main(argv) == 2
    assert f"{preds}: line 2: malformed JSON" in capsys.readouterr().err
    assert cli.main(["eval", "livesports", "--data-root", str(tmp_path / "none"), "--predictions", str(preds),
                     "--out", str(out)]) == 2  # fmt: skip
    assert "no LiveSports-3K CC event file" in capsys.readouterr().err
    assert not out.exists()


# -------------------------------------------------------------------------------------------------------- judge


class _StandIn(http.server.BaseHTTPRequestHandler):
    """A chat-completions stand-in: prefers the commentary that says "goal"; records every request body."""

    requests: list[dict] = []
    failures: list[int] = []  # HTTP codes to answer first, one per request

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if type(self).failures:
            self.send_error(type(self).failures.pop(0))
            return
        prompt = body["messages"][0]["content"]
        a = prompt.split("---Commentary A---\n")[1].split("\n----------")[0]
        b = prompt.split("---Commentary B---\n")[1].split("\n----------")[0]
        winner = "tie" if ("goal" in a) == ("goal" in b) else "A" if "goal" in a else "B"
        verdict = "I cannot tell." if winner == "tie" else f"Commentary {winner} is better aligned with the human one"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    """The stand-in on 127.0.0.1 (an ephemeral port, loopback only); yields its base URL."""
    _StandIn.requests, _StandIn.failures = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_prompt_verdicts_and_win_rate_arithmetic():
    prompt = ab_prompt("mine", "theirs", "human")
    assert prompt.startswith("You are an expert in video commentary. Your task is to review two commentaries")
    assert "\n---Commentary A---\nmine\n----------\n\n---Commentary B---\ntheirs\n----------\n" in prompt
    assert prompt.endswith('"Commentary B is better aligned with the human commentary".\n')
    assert [parse_verdict(r) for r in ("Commentary B wins", "Commentary A, not Commentary B", "neither")] == [
        "B", "A", "tie"]  # fmt: skip
    judged = [Judgment("a", "model", "model"), Judgment("b", "model", "baseline"), Judgment("c", "tie", "baseline")]
    assert win_rate(judged) == {"win_rate": 50.0, "events": 3, "wins": 3, "losses": 2, "ties": 1}


def test_judge_client_against_a_local_stand_in(judge_server):
    client = JudgeClient(judge_server, "judge-x", "k3y", timeout_s=120, retries=0)
    model = {"v_1": "what a goal", "v_2": "nothing", "v_3": "goal"}
    baseline = {"v_1": "nothing", "v_2": "a goal", "v_3": "goal again", "v_4": "x"}
    judged = judge_all(client, model, baseline, {"v_1": "h", "v_2": "h", "v_3": "h", "v_4": "h"}, workers=2)
    assert judged == [Judgment("v_1", "model", "model"), Judgment("v_2", "baseline", "baseline"),
                      Judgment("v_3", "tie", "tie")]  # fmt: skip
    assert len(_StandIn.requests) == 6  # two orders per event judged, nothing more
    first = _StandIn.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k3y"
    assert (first["model"], first["seed"], first["temperature"]) == ("judge-x", 42, 0)


def test_judge_client_retries_server_errors_and_stops_on_refusals(judge_server):
    client = JudgeClient(judge_server + "/chat/completions", "j", None, timeout_s=120, retries=2)
    waits: list[float] = []
    client.sleep = waits.append
    _StandIn.failures = [503, 500]
    assert parse_verdict(client.complete(ab_prompt("goal", "no", "h"))) == "A"
    assert waits == [1.0, 2.0] and _StandIn.requests[0]["auth"] is None
    _StandIn.failures = [401]
    with pytest.raises(InputError, match="HTTP 401"):
        client.complete("x")
    _StandIn.failures = [500, 500, 500]
    with pytest.raises(InputError, match="failed 3 times"):
        client.complete("x")
    with pytest.raises(InputError, match="http"):
        JudgeClient("ftp://x", "j", None, 1, 0)


def test_command_with_judge_writes_livecc_judgments(tmp_path, judge_server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "secret")
    root = _json_root(tmp_path, TWO)
    preds = _predictions(tmp_path / "mine.jsonl", [_pred_row(TWO[0], "goal!"), _pred_row(TWO[1], "goal")])
    base = _predictions(tmp_path / "GPT-4o.jsonl", [_pred_row(TWO[0], "hm"), _pred_row(TWO[1], "goal too")])
    out = tmp_path / "r.json"
    argv = ["eval", "livesports", "--data-root", str(root), "--predictions", str(preds), "--out", str(out),
            "--judge-url", judge_server, "--judge-model", "j", "--judge-api-key-env", "MY_JUDGE_KEY",
            "--baseline-predictions", str(base)]  # fmt: skip
    assert cli.main(argv) == 0
    judge = json.loads(out.read_text())["judge"]
    assert (judge["win_rate"], judge["wins"], judge["ties"], judge["events"]) == (50.0, 2, 2, 2)
    rows = [json.loads(line) for line in (tmp_path / "r.judgments.jsonl").read_text().splitlines()]
    assert rows[0] == {"video_event_id": "6gyD-Mte2ZM_2", "ab_winner": "mine", "ba_winner": "mine"}
    assert rows[1] == {"video_event_id": "6gyD-Mte2ZM_3", "ab_winner": "tie", "ba_winner": "tie"}
    assert {r["auth"] for r in _StandIn.requests} == {"Bearer secret"}


# ---------------------------------------------------------------------------------------------------- model mode


def test_model_mode_streams_each_clip_and_writes_livecc_predictions(tiny_bundle, tmp_path):
    from mmduplex.io.video import write_video

    root = _json_root(tmp_path, [_record(video="clip.mp4", begin=1.0, end=3.0), _record(
        video="clip.mp4", event_id=5, begin=3.5, end=5.5, event_asr_text="red square"), _record(
        video="gone.mp4", video_id="gone", event_id=1, begin=0.0, end=1.0), _record(
        video="clip.mp4", event_id=8, begin=60.0, end=70.0)])  # fmt: skip
    (root / "videos").mkdir()
    frames = torch.arange(60, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 32, 32, 3) * 4  # [60, 32, 32, 3]
    write_video(root / "videos" / "clip.mp4", frames.contiguous(), fps=10)
    out = tmp_path / "r.json"
    argv = ["eval", "livesports", "--data-root", str(root), "--checkpoint", str(tiny_bundle), "--out", str(out),
            "--context-words", "4"]  # fmt: skip
    torch.set_num_threads(1)
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["events_streamed"] == 2 and results["settings"]["missing_videos"] == 1
    assert results["settings"]["unreadable_events"] == ["6gyD-Mte2ZM_8"]  # past the end of the 6 s video
    rows = [json.loads(line) for line in (tmp_path / "r.predictions.jsonl").read_text().splitlines()]
    assert [(r["video_id"], r["event_id"], r["begin"], r["end"]) for r in rows] == [
        ("6gyD-Mte2ZM", 2, 1.0, 3.0), ("6gyD-Mte2ZM", 5, 3.5, 5.5)]  # fmt: skip
    assert all(isinstance(r["pred"], str) for r in rows)
    assert results["overall"]["scored"] == 2  # the written file rescores the same way
    again = tmp_path / "again.json"
    rescore = ["eval", "livesports", "--data-root", str(root), "--predictions", str(tmp_path / "r.predictions.jsonl"),
               "--out", str(again)]  # fmt: skip
    assert cli.main(rescore) == 0
    assert json.loads(again.read_text())["overall"] == results["overall"]
