"""LongVideoBench model mode: ``mmduplex eval longvideobench --checkpoint BUNDLE`` through a streaming duplex session.

The tiny bundle was never trained on questions (its data set has none), so accuracy values mean nothing here: these
tests check consistency (keys, settings, rescoring, state reuse, determinism, errors).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import one_torch_thread
from test_longvideobench import _record, _subtitle_files

from mmduplex import cli
from mmduplex.eval.duplex_responder import DuplexResponder
from mmduplex.eval.longvideobench import Subtitle
from mmduplex.inference.session import DuplexSession

PROMPT = "What happens?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def lvb_root(tmp_path):
    """Two 6 s videos (16 and 32 px), one subtitle file of each published shape, three questions."""
    from mmduplex.io.video import write_video

    root = tmp_path / "lvb"
    (root / "videos").mkdir(parents=True)
    (root / "subtitles").mkdir()
    for name, size in (("va", 16), ("vb", 32)):
        frames = torch.arange(60, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, size, size, 3) * 4  # [60, s, s, 3]
        write_video(root / "videos" / f"{name}.mp4", frames.contiguous(), fps=10)
    seconds, clock = _subtitle_files(tmp_path)
    (root / "subtitles" / "va_en.json").write_text(seconds.read_text())
    (root / "subtitles" / "vb_en.json").write_text(clock.read_text())
    records = [
        _record("va_0", "S2E", "L1-Perception", 15, 1, 4, duration=6.0, start=100.0),
        _record("va_1", "TOS", "L2-Relation", 15, 2, 4, duration=6.0, start=100.0),
        _record("vb_0", "E3E", "L2-Relation", 15, 0, 5, duration=6.0, start=100.0),
    ]
    (root / "lvb_val.json").write_text(json.dumps(records))
    return root


@pytest.fixture
def count_prepares(monkeypatch):
    """Counts ``DuplexResponder.prepare_video`` calls and the states it returned."""
    states: list[DuplexSession] = []
    prepare = DuplexResponder.prepare_video

    def counted(self, frames, timestamps, subtitles):
        states.append(prepare(self, frames, timestamps, subtitles))
        return states[-1]

    monkeypatch.setattr(DuplexResponder, "prepare_video", counted)
    return states


@pytest.mark.parametrize("scoring", ["generation", "likelihood"])
def test_model_mode_command_rescores_and_reuses_state(tiny_bundle, lvb_root, tmp_path, scoring, count_prepares):
    out = tmp_path / "out" / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(lvb_root), "--checkpoint", str(tiny_bundle)]
    argv += ["--out", str(out), "--frames", "3", "--scoring", scoring, "--max-answer-steps", "8", "--batch", "1"]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    for key in ("overall", "n", "by_duration_group", "by_question_category", "by_level", "no_letter", "settings"):
        assert key in results
    assert results["n"] == 3 and 0.0 <= results["overall"] <= 1.0
    settings = results["settings"]
    assert (settings["mode"], settings["scoring"], settings["frames"], settings["subtitles"]) == (
        "model",
        scoring,
        3,
        True,
    )
    assert settings["checkpoint"] == str(tiny_bundle) and settings["responder"]["max_answer_steps"] == 8
    assert settings["responder"]["max_gap_steps"] is None and settings["skipped_steps"] == 0
    assert "every step" in settings["responder"]["skipped_steps_rule"]
    assert (settings["missing_videos"], settings["missing_subtitles"], settings["missing_responses"]) == (0, 0, 0)
    # one prepare_video per video, each 3 frames at 0, 2, 4 s plus its kept subtitles ("two", "four")
    assert len(count_prepares) == 2 and all(state.frames_pushed == 3 for state in count_prepares)
    # the default responses file, beside the results; it rescores to the same figures
    responses = out.with_name("results.responses.jsonl")
    assert settings["responses"] == str(responses)
    lines = [json.loads(line) for line in responses.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["va_0", "va_1", "vb_0"]
    if scoring == "likelihood":
        assert all(r["response"] in "ABCDE" for r in lines)
    rescored = tmp_path / "rescored.json"
    argv = ["eval", "longvideobench", "--data-root", str(lvb_root), "--predictions", str(responses)]
    assert cli.main([*argv, "--out", str(rescored)]) == 0
    again = json.loads(rescored.read_text())
    assert again["overall"] == results["overall"] and again["no_letter"] == results["no_letter"]
    assert again["by_question_category"] == results["by_question_category"]


def _video(seconds: int = 4, size: int = 16) -> tuple[torch.Tensor, list[float]]:
    frames = torch.arange(seconds, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, size, size, 3) * 50  # [T, s, s, 3]
    return frames.contiguous(), [float(t) for t in range(seconds)]


def test_questions_leave_the_prepared_state_unchanged(tiny_bundle):
    responder = DuplexResponder(tiny_bundle, max_answer_steps=12)
    frames, times = _video()
    state = responder.prepare_video(frames, times, [Subtitle(1.0, 2.0, "red square enters")])
    steps, cached = state.step_index, state.cache.get_seq_length()
    assert steps == 3 * responder.step_hz + 1 and state.pending_user_tokens == 0 and state.frames_pushed == 4
    first = responder.answer(state, PROMPT)
    letters = responder.letter_logprobs(state, PROMPT, ["A", "red", "B", "E"])
    assert responder.answer(state, PROMPT) == first  # temperature 0 on an unchanged state: the same answer
    assert responder.letter_logprobs(state, PROMPT, ["A", "red", "B", "E"]) == letters
    assert (state.step_index, state.cache.get_seq_length()) == (steps, cached)
    # a letter outside the word-level vocabulary (the synthetic questions offer A-D) cannot be one token; a
    # vocabulary word gets its log-softmax
    assert letters["E"] == -math.inf
    assert all(-50.0 < letters[word] < 0.0 for word in ("A", "B", "red"))
    session = state.copy()
    session.ask(PROMPT)
    while True:
        out = session.step()
        if not session.pending_user_tokens:
            break
    red = responder._session.text_tokenizer.encode_word("red")[0]
    assert letters["red"] == pytest.approx(float(torch.log_softmax(out.logits.double(), -1)[red]))


def test_answer_is_every_word_of_the_reply_window(tiny_bundle):
    """The reply is the whole ``max_answer_steps`` window, silences skipped: not only its first line."""
    responder = DuplexResponder(tiny_bundle, max_answer_steps=24)
    frames, times = _video()
    state = responder.prepare_video(frames, times, [])
    session = state.copy()
    session.ask(PROMPT)
    outs = [session.step()]
    while session.pending_user_tokens:
        outs = [session.step()]
    outs += [session.step() for _ in range(23)]
    words: list[str] = []
    for out in outs:
        if out.word is not None:
            if words and not out.word_start:
                words[-1] += out.word
            else:
                words.append(out.word)
    assert responder.answer(state, PROMPT) == " ".join(words)


def test_gap_skipping_shortens_the_stream(tiny_bundle):
    frames, times = _video()
    times = [0.0, 10.0, 20.0, 30.0]  # sparse frames: 50 steps apart at 5 Hz
    full = DuplexResponder(tiny_bundle, max_answer_steps=4)
    gapped = DuplexResponder(tiny_bundle, max_answer_steps=4, max_gap_steps=3)
    subtitles = [Subtitle(14.0, 16.0, "blue circle moves")]
    long_state = full.prepare_video(frames, times, subtitles)
    short_state = gapped.prepare_video(frames, times, subtitles)
    assert long_state.step_index == 151 and full.skipped_steps == 0
    assert short_state.step_index < 20 and gapped.skipped_steps == long_state.step_index - short_state.step_index
    assert short_state.frames_pushed == 4 and short_state.pending_user_tokens == 0
    assert "at most 3 empty steps" in gapped.settings["skipped_steps_rule"]


def test_wrong_bundle_and_flag_conflicts_fail_cleanly(lvb_root, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(lvb_root), "--out", str(out)]
    assert cli.main([*argv, "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmduplex: error: ") and err.count("\n") == 1 and str(tmp_path) in err
    assert "not an inference bundle" in err
    assert not out.exists() and not out.with_suffix(".md").exists()
    assert not out.with_name("results.responses.jsonl").exists()
    assert cli.main([*argv, "--checkpoint", str(tmp_path), "--predictions", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "va_0", "response": "A"}\n')
    assert cli.main([*argv, "--predictions", str(preds), "--scoring", "likelihood"]) == 2
    assert "--scoring: only with --checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_batched_answers_are_each_question_asked_alone(tiny_bundle):
    """``answer_batch`` (lockstep streams, a video per question) replies as ``answer(prepare_video(...))`` does, for
    videos of different lengths, with subtitles and gap skipping, over more questions than one batch holds."""
    settings = {"max_answer_steps": 12, "max_gap_steps": 4, "temperature": 1.0}  # sampled: the tiny model speaks
    responder, alone = DuplexResponder(tiny_bundle, **settings), DuplexResponder(tiny_bundle, **settings)
    videos, expected = [], []
    for seconds, times, subtitles, prompts in (
        (4, None, [Subtitle(1.0, 2.0, "red square enters")], [PROMPT, "what colour is the square ?"]),
        (6, [0.0, 1.0, 9.0, 10.0, 11.0, 12.0], [], [PROMPT]),  # a gap of 40 steps, cut to 4
        (2, None, [Subtitle(0.5, 1.5, "blue circle moves")], ["how many shapes are on screen ?"]),
        (0, None, [], [PROMPT]),  # no frame: the prompt is typed at once
    ):
        frames, default_times = _video(seconds)
        times = times or default_times
        state = alone.prepare_video(frames, times, subtitles)
        expected.append([alone.answer(state, prompt) for prompt in prompts])
        videos.append((times, responder.features(frames), subtitles, prompts))
    assert sum(bool(reply) for replies in expected for reply in replies) >= 2  # the tiny model says something
    assert responder.answer_batch(videos, batch=3) == expected  # cohorts of 3 and 2
    assert responder.skipped_steps == alone.skipped_steps > 0  # counted once per video
    # the features are what push_frame encodes
    frames, times = _video(2)
    assert torch.equal(responder.features(frames)[0], alone._session.encoder.encode(frames[:1]).patches[0])


def test_model_mode_batches_generation_by_default(tiny_bundle, lvb_root, tmp_path, count_prepares):
    """``eval longvideobench --checkpoint`` answers 8 questions at once unless told otherwise: the same responses as
    ``--batch 1``, without a ``prepare_video``."""
    argv = ["eval", "longvideobench", "--data-root", str(lvb_root), "--checkpoint", str(tiny_bundle)]
    argv += ["--frames", "3", "--max-answer-steps", "8"]
    responses = {}
    for batch in (None, "1"):
        out = tmp_path / f"batch{batch}" / "results.json"
        assert cli.main([*argv, "--out", str(out), *([] if batch is None else ["--batch", batch])]) == 0
        results = json.loads(out.read_text())
        assert results["settings"]["batch"] == (8 if batch is None else 1)
        responses[batch] = out.with_name("results.responses.jsonl").read_text()
    assert len(count_prepares) == 2  # only the --batch 1 run prepared videos (two of them)
    assert responses[None] == responses["1"] and responses[None].count("\n") == 3


def test_model_mode_default_streams_frames_at_the_bundle_fps(tiny_bundle, lvb_root, tmp_path, count_prepares):
    """Without --frames, model mode streams frames at the bundle's own rate (the reference would take 1 per second)."""
    from mmduplex.lm.bundle import load_bundle

    fps = load_bundle(tiny_bundle).fps
    assert fps == 2.0  # the tiny model's features were extracted at 2 fps
    out = tmp_path / "results.json"
    argv = ["eval", "longvideobench", "--data-root", str(lvb_root), "--checkpoint", str(tiny_bundle)]
    assert cli.main([*argv, "--out", str(out), "--scoring", "likelihood"]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["frames"], settings["frame_fps"]) == (None, fps)
    # 6 s videos: 12 frames at 0, 0.5, ..., 5.5 s each (the reference's sampling would give min(64, 6) = 6)
    assert len(count_prepares) == 2 and all(state.frames_pushed == 12 for state in count_prepares)
