"""``DuplexModule`` with several user tokens per step: the training windows' user stream is ``[S, U]``, placed as
:func:`mmduplex.lm.alignment.align_user` places it, and the setting reaches the bundle config."""

from __future__ import annotations

import torch
from conftest import tiny_duplex_module

from mmduplex.lm.alignment import align_user
from mmduplex.lm.bundle import build_duplex_model
from mmduplex.train.duplex_module import DuplexModule


def make_module(user_slots: int, user_scale: float = 1.0, text_scale: float = 1.0) -> DuplexModule:
    return tiny_duplex_module(user_slots_per_step=user_slots, user_scale=user_scale, text_scale=text_scale)


def test_user_scale_multiplies_the_user_stream_and_reaches_the_bundle():
    for user_slots in (1, 3):
        plain, scaled = make_module(user_slots), make_module(user_slots, user_scale=3.0)
        scaled.model.load_state_dict(plain.model.state_dict())  # the same weights: only the scale differs
        pad = plain.text_tokenizer.pad_id
        user = torch.tensor([[[5, 7, pad][:user_slots], [pad] * user_slots]])  # [1, 2, U]: a question, then silence
        user = user[..., 0] if user_slots == 1 else user
        with torch.no_grad():
            one, three = plain.model.embed_user(user, (1, 2)), scaled.model.embed_user(user, (1, 2))
        assert torch.allclose(three, 3.0 * one) and one[0, 0].abs().sum() > 0 and not three[0, 1].any()
        config = scaled.duplex_config()
        assert config["user_scale"] == 3.0 and build_duplex_model(config).user_scale == 3.0
        assert build_duplex_model({k: v for k, v in config.items() if k != "user_scale"}).user_scale == 1.0


def test_text_scale_multiplies_the_own_text_stream_only_and_reaches_the_bundle():
    plain, scaled = make_module(4), make_module(4, text_scale=3.0)
    scaled.model.load_state_dict(plain.model.state_dict())
    tok = plain.text_tokenizer
    text = torch.tensor([[tok.pad_id, tok.epad_id, 5, 7]])  # [1, 4]: every kind of own-text token
    user = torch.tensor([[[5, 7, tok.pad_id, tok.pad_id]] * 4])  # [1, 4, U]
    video = torch.randn(1, 4, 4, plain.model.token_dim)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        base, three = plain.model.embed(text, video, mask, user), scaled.model.embed(text, video, mask, user)
        own = plain.model._token_embedding(text)  # the own-text part of the plain model's step embedding
    assert own.abs().sum() > 0 and torch.allclose(three - base, 2.0 * own, atol=1e-5)  # video and user unchanged
    config = scaled.duplex_config()
    assert config["text_scale"] == 3.0 and build_duplex_model(config).text_scale == 3.0
    assert build_duplex_model({k: v for k, v in config.items() if k != "text_scale"}).text_scale == 1.0


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
