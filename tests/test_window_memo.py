"""``DuplexModule(memo_windows=N)``: a window's tensors are built once and reused (they are the same every epoch),
at most N kept, least recently used out first; 0 builds every time."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_duplex_module

from mmduplex.errors import InputError
from mmduplex.tokenizer.base import FrameTokens
from mmduplex.train.duplex_module import DuplexModule


def make_module(memo_windows: int) -> DuplexModule:
    return tiny_duplex_module(memo_windows=memo_windows)


def _sample(offset: float, word: str = "red") -> dict:
    return {"key": "v", "offset_s": offset, "window_s": 2.0, "clip_start_s": 0.0, "clip_end_s": 8.0,
            "words": [[offset + 0.4, offset + 0.6, word]], "questions": []}  # fmt: skip


@pytest.mark.parametrize("limit", [0, 1, 8])
def test_windows_are_built_once_per_content_and_bounded(monkeypatch, limit):
    module = make_module(limit)
    frames = [FrameTokens(k / 2.0, "flow", torch.randn(1, 8), torch.zeros(1, dtype=torch.long)) for k in range(16)]
    monkeypatch.setattr(module, "video_tokens", lambda key: frames)
    built = []
    original = module.window_tensors
    monkeypatch.setattr(module, "window_tensors", lambda sample: built.append(sample["offset_s"]) or original(sample))
    a, b, a_again, other_words = _sample(0.0), _sample(2.0), _sample(0.0), _sample(0.0, "blue")
    first = module.collate([a, b])
    second = module.collate([a_again, other_words])  # same content as `a`; same window, other words
    fresh = make_module(0)
    monkeypatch.setattr(fresh, "video_tokens", lambda key: frames)
    for got, samples in ((first, [a, b]), (second, [a_again, other_words])):
        want = fresh.collate(samples)
        assert all(torch.equal(got[k], want[k]) for k in want)  # memoised or not, the same tensors
    expected = {0: [0.0, 2.0, 0.0, 0.0], 1: [0.0, 2.0, 0.0, 0.0], 8: [0.0, 2.0, 0.0]}[limit]
    assert built == expected  # limit 1: `b` evicted `a`; limit 8: `a` reused, the other words built
    assert len(module._windows) == min(limit, 3)


def test_memo_windows_is_validated():
    with pytest.raises(InputError, match="memo_windows"):
        make_module(-1)
