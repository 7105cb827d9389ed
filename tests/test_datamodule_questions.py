"""Questions asked mid-clip reach the training windows at their real times (not only at the window's start)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_torch_thread, tiny_duplex_module

from mmduplex.data.transcripts import Word, livecc_record
from mmduplex.lm.alignment import align_user, time_to_step
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.train.duplex_datamodule import DuplexDataModule

QUESTION = "what colour is the square ?"


class _Cache:
    """The one method ``_samples`` reads of a feature cache."""

    def __init__(self, source: str) -> None:
        self.source = source

    def entries(self) -> dict:
        return {"k": {"source": self.source, "duration_s": 40.0}}


def _synthetic_windows(duplex_data: dict, **options) -> DuplexDataModule:
    """The 10 s windows of the ``duplex_data`` set, set up, with the data module's ``options``."""
    module = DuplexDataModule(
        window_s=10.0,
        features=str(duplex_data["features"]),
        synthetic_dir=str(duplex_data["synthetic_dir"]),
        **options,
    )
    module.setup()
    return module


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def test_a_window_cut_mid_clip_gets_the_question_at_its_step(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    words = [Word(23.0, 23.25, "red"), Word(23.25, 23.5, "square"), Word(23.5, 23.75, "enters")]
    record = livecc_record("v.mp4", words, 10.0, 30.0, questions=[(17.0, QUESTION)])
    record[0]["content"][1]["text"] = "what ?"  # a LiveCC query: still at the clip's start
    transcripts = tmp_path / "t.jsonl"
    transcripts.write_text(json.dumps(record) + "\n", encoding="utf-8")
    data = DuplexDataModule(window_s=4.0, features=str(tmp_path / "features"), transcripts=str(transcripts))
    data.cache = _Cache(str(video))
    clips = data._clips()[0]
    samples = data._samples(clips)
    assert [s["offset_s"] for s in samples] == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert all(s["questions"] == [[0.0, "what ?"], [7.0, QUESTION]] for s in samples)  # clip time, not video time

    hz, tokenizer = 5.0, load_text_tokenizer("synthetic")
    sample = samples[1]  # the window [4 s, 8 s) of the clip, i.e. video time [14 s, 18 s)
    start = time_to_step(sample["offset_s"], hz)
    end = start + round(sample["window_s"] * hz)
    questions = [(float(t), str(text)) for t, text in sample["questions"]]
    user = align_user(questions, end, hz, tokenizer)[start:end]  # as DuplexModule.window_tensors cuts it
    busy = (user != tokenizer.pad_id).reshape(len(user), -1).any(-1).nonzero().flatten().tolist()
    assert busy and busy[0] == round(3.0 * hz)  # 7 s into the clip = 3 s into the window
    first = user[busy[0]].reshape(-1)
    assert int(first[0]) == tokenizer.encode_text(QUESTION)[0]
    assert torch.all(user[: busy[0]] == tokenizer.pad_id)  # the query at t=0 is long gone


def test_stream_end_questions_move_last_windows_past_the_video_to_the_answer(duplex_data, monkeypatch):
    """``synthetic_end_questions``: a video's last window moves to hold a question typed after the last frame and its
    answer, with no video from the video's end on; every other window is unchanged."""
    from mmduplex.tokenizer.base import FrameTokens
    from mmduplex.train.duplex_datamodule import END_TAIL_S

    def data(fraction: float) -> DuplexDataModule:
        return _synthetic_windows(duplex_data, synthetic_end_questions=fraction)

    plain, ending = data(0.0), data(1.0)
    assert len(ending.train_samples) == len(plain.train_samples) and ending.val_samples == plain.val_samples
    moved = [(a, b) for a, b in zip(plain.train_samples, ending.train_samples, strict=True) if a != b]
    lasts = {s["key"]: s for s in plain.train_samples}
    assert len(moved) >= 3 and all(lasts[a["key"]] is a for a, _ in moved)  # only last windows (of 7 videos)
    with pytest.raises(Exception, match="synthetic_end_questions"):
        data(1.5)

    model = tiny_duplex_module(delay_steps=2, user_slots_per_step=4)
    frames = [FrameTokens(k / 2.0, "flow", torch.ones(1, 8), torch.zeros(1, dtype=torch.long)) for k in range(80)]
    monkeypatch.setattr(model, "video_tokens", lambda key: frames)  # a frame every 0.5 s for 40 s
    tok = model.text_tokenizer
    for before, sample in moved:
        duration = float(sample["clip_end_s"])
        (cut, text), kept = sample["questions"][-1], sample["questions"][:-1]
        assert cut == duration and kept == before["questions"]  # asked at the video's end, after the others
        assert sample["offset_s"] > before["offset_s"] and sample["words"][: len(before["words"])] == before["words"]
        answer = [w[2] for w in sample["words"] if w[0] >= cut]
        assert answer and (answer[-1] in "ABCD") == ("\nA. " in text)  # multiple choice ends on the letter
        window = model.window_tensors(sample)
        start = time_to_step(sample["offset_s"], 5.0)
        cut_step = time_to_step(cut, 5.0) - start
        video = window["video_mask"].any(-1)
        # the last frame may share the cut's step (the video's end is not on the 0.5 s frame grid), none comes after
        assert 0 < cut_step < len(video) and video[:cut_step].any() and not video[cut_step + 1 :].any()
        user = (window["user_ids"] != tok.pad_id).any(-1).nonzero().flatten()
        typed = [i for i in user.tolist() if i >= cut_step]
        assert typed[0] == cut_step  # typed from the video's end on
        assert tok.decode(window["text_ids"][typed[-1] :].tolist()).split() == answer  # inside the window
        assert time_to_step(max(w[1] for w in sample["words"]) + END_TAIL_S, 5.0) - start <= len(video)


def test_max_train_clips_keeps_the_first_clips_and_the_split(duplex_data):
    """``max_train_clips``: the first N training videos' windows, exactly as the full set cuts them; the held-out
    windows are unchanged; more clips than the split holds, or fewer than one, is an error naming the setting."""

    def data(limit: int | None) -> DuplexDataModule:
        return _synthetic_windows(duplex_data, max_train_clips=limit)

    full, two = data(None), data(2)
    videos = list(dict.fromkeys(s["key"] for s in full.train_samples))
    assert len(videos) > 2
    assert {s["key"] for s in two.train_samples} == set(videos[:2])
    assert two.train_samples == [s for s in full.train_samples if s["key"] in videos[:2]]
    assert two.val_samples == full.val_samples
    with pytest.raises(Exception, match="max_train_clips"):
        data(len(videos) + 1)
    with pytest.raises(Exception, match="max_train_clips"):
        data(0)
