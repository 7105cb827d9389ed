"""Questions asked mid-clip reach the training windows at their real times (not only at the window's start)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_torch_thread

from mmduplex.alignment import align_user, time_to_step
from mmduplex.data.transcripts import Word, livecc_record
from mmduplex.datamodule import DuplexDataModule
from mmduplex.text import load_text_tokenizer

QUESTION = "what colour is the square ?"


class _Cache:
    """The one method ``_samples`` reads of a feature cache."""

    def __init__(self, source: str) -> None:
        self.source = source

    def entries(self) -> dict:
        return {"k": {"source": self.source, "duration_s": 40.0}}


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
