"""``DuplexModule`` with several user tokens per step: the training windows' user stream is ``[S, U]``, placed as
:func:`mmduplex.alignment.align_user` places it, and the setting reaches the bundle config."""

from __future__ import annotations

import torch

from mmduplex.alignment import align_user
from mmduplex.module import DuplexModule
from tokenizer.bflow import BFlowConfig, BFlowTokenizer

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def make_module(user_slots: int) -> DuplexModule:
    tokenizer = BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2))
    return DuplexModule(
        tokenizer, TINY_LLAMA, step_hz=5.0, delay_steps=1, slots_per_step=4, lr=1e-3, text_tokenizer="synthetic",
        attn_implementation="sdpa", user_slots_per_step=user_slots,
    )  # fmt: skip


def test_window_tensors_and_config_carry_the_user_slots(monkeypatch):
    question = (1.2, "which entered first A. red B. green")  # 7 tokens at step 6 of the clip, step 1 of the window
    sample = {"key": "v", "offset_s": 1.0, "window_s": 2.0, "clip_start_s": 0.0, "words": [], "questions": [question]}
    for user_slots in (1, 3):
        module = make_module(user_slots)
        monkeypatch.setattr(module, "video_tokens", lambda key: [])  # no video: only the user stream matters here
        window = module.window_tensors(sample)
        tok = module.text_tokenizer
        expected = align_user([question], 15, 5.0, tok, user_slots)[5:15]
        assert torch.equal(window["user_ids"], expected)
        assert window["user_ids"].shape == ((10,) if user_slots == 1 else (10, user_slots))
        assert module.duplex_config()["user_slots_per_step"] == module.hparams.user_slots_per_step == user_slots
        with torch.no_grad():
            batch = {key: value[None] for key, value in window.items()}
            assert module(batch).shape == (1, 10, tok.vocab_size)
    fed = (window["user_ids"] != tok.pad_id).sum(dim=1).tolist()
    assert fed == [0, 3, 3, 1, 0, 0, 0, 0, 0, 0]
