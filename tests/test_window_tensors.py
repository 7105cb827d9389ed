"""Window tensors built in data-loader workers equal the in-process reference (``DuplexModule.window_tensors`` /
``collate``) element for element, and training on them gives the same model."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from conftest import duplex_fit_args, one_torch_thread, tiny_duplex_module
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mmduplex.lm.text import TextTokenizer
from mmduplex.tokenizer.base import FrameTokens
from mmduplex.train.duplex_datamodule import DuplexDataModule
from mmduplex.train.lightning_cli import run_cli
from mmduplex.train.windows import VideoTokens, WindowTensorDataset, build_window, stack_windows

WORDS = ["red", "blue", "green", "circle", "square", "enters", "leaves", "left", "right", "the", "a", "moves"]


def subword_tokenizer() -> TextTokenizer:
    """A small byte-level BPE (words split into several pieces), trained here on the words above."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS[: i + 1]) for i in range(4)] * 3, trainer)
    return TextTokenizer(tokenizer, word_level=False, source="test-bpe")


def random_frames(rng: random.Random, dim: int, duration: float, fps: float) -> list[FrameTokens]:
    """A frame every 1/fps s with 0-11 tokens each (more than K per step at times: the FIFO spills)."""
    frames = []
    for k in range(int(duration * fps)):
        n = rng.choice([0, 0, 1, 2, 3, 5, 11])
        frames.append(FrameTokens(k / fps, "flow", torch.randn(n, dim), torch.zeros(n, dtype=torch.long)))
    return frames


def as_video(frames: list[FrameTokens]) -> VideoTokens:
    tokens = torch.cat([f.tokens for f in frames])
    return VideoTokens(
        times=np.array([f.t for f in frames], dtype=np.float64),
        counts=np.array([f.n_tokens for f in frames], dtype=np.int64),
        rows=lambda a, b: tokens[a:b],
    )


def random_sample(rng: random.Random, duration: float) -> dict:
    clip_start = rng.choice([0.0, 0.5, 1.3, 4.0]) + rng.choice([0.0, 5e-7])  # a frame a hair before the start is in
    clip_end = rng.choice([None, duration, duration - 3.0])
    words, t = [], rng.uniform(-0.5, 1.0)
    while t < duration + 2.0:  # some words are spoken too fast (spill), overlap, or run past the window
        words.append([round(t, 3), round(t + 0.3, 3), rng.choice(WORDS)])
        t += rng.choice([0.05, 0.1, 0.2, 0.4, 1.0, 2.5])
    questions = [[round(rng.uniform(-1.0, duration), 2), " ".join(rng.choices(WORDS, k=rng.randint(1, 9)))]
                 for _ in range(rng.randint(0, 3))]  # fmt: skip
    if questions and rng.random() < 0.5:
        questions[0][1] += "\nA. red\nB. blue circle"
    offset, length = rng.choice([0.0, 2.0, 5.2, 9.0]), rng.choice([2.0, 4.0, 6.0])
    return {"key": "v", "clip_start_s": clip_start, "clip_end_s": clip_end, "offset_s": offset, "window_s": length,
            "words": words, "questions": questions}  # fmt: skip


@pytest.mark.parametrize("text", ["synthetic", "subword"])
@pytest.mark.parametrize(("delay", "slots", "user_slots"), [(4, 8, 4), (4, 8, 1), (1, 4, 1), (3, 2, 4), (0, 8, 2)])
def test_build_window_equals_the_module_reference(monkeypatch, text, delay, slots, user_slots):
    """(4, 8, 4): the demo recipe's grid; (4, 8, 1): the SmolLM2 recipe's."""
    tokenizer = {"synthetic": "synthetic", "subword": subword_tokenizer()}[text]
    module = tiny_duplex_module(delay_steps=delay, slots_per_step=slots, user_slots_per_step=user_slots)
    if text == "subword":
        module.text_tokenizer = tokenizer
    grid = module.step_grid()
    grid = pickle.loads(pickle.dumps(grid))  # what a worker gets
    rng = random.Random(f"{text}{delay}{slots}{user_slots}")
    for _ in range(40):
        frames = random_frames(rng, module.model.token_dim, 16.0, rng.choice([2.0, 4.0, 7.0]))
        monkeypatch.setattr(module, "video_tokens", lambda key, frames=frames: frames)
        sample = random_sample(rng, 16.0)
        want, got = module.window_tensors(sample), build_window(sample, grid, as_video(frames))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (key, sample)


def test_worker_batches_equal_the_in_process_batches(duplex_data):
    """The tiny recipe's data module: the same windows as a 2-worker loader's stacked tensors and as the module's
    collate of their descriptions."""
    with one_torch_thread():
        cli = run_cli(duplex_fit_args(duplex_data, duplex_data["features"].parent / "equal", "--trainer.max_steps=1",
                                      "--trainer.logger=false", "--data.init_args.window_stride_s=3.0"))  # fmt: skip
    module, data = cli.model, cli.datamodule
    assert data.grid is not None and len(data.store) == len({s["key"] for s in data.train_samples + data.val_samples})
    dataset = WindowTensorDataset(data.train_samples + data.val_samples, data.grid, data.store)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=stack_windows)
    seen = 0
    for batch in loader:
        indices = batch.pop("window")
        want = module.collate([dataset.samples[i] for i in indices])
        assert batch.keys() == want.keys()
        for key in want:
            assert torch.equal(batch[key], want[key]), key
        seen += len(indices)
    assert seen == len(dataset) > 40


def test_training_on_worker_tensors_equals_the_in_process_path(duplex_data, tmp_path, monkeypatch):
    """Three optimiser steps of the tiny recipe end with the same weights either way."""
    steps = ("--trainer.max_steps=3", "--trainer.logger=false", "--trainer.limit_val_batches=0")
    with one_torch_thread():
        new = run_cli(duplex_fit_args(duplex_data, tmp_path / "new", *steps))
        assert new.datamodule.grid is not None
        monkeypatch.setattr(DuplexDataModule, "use_step_grid", lambda self, grid, fingerprint: None)
        old = run_cli(duplex_fit_args(duplex_data, tmp_path / "old", *steps))
        assert old.datamodule.grid is None
    a, b = new.model.state_dict(), old.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
