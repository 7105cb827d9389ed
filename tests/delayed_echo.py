"""A forced-output stand-in for ``DuplexLM.forward``: a perfect delayed-streams model with a known text delay.

Step ``s`` says ``word`` when step ``s - delay`` carried video tokens, and PAD otherwise: every step with video is
described exactly ``delay`` steps later, as a model trained with ``delay_steps = delay`` should. So a session that
stops at its last frame loses the words of its last ``delay`` steps, and one that flushes says them all.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class DelayedEcho:
    """Call it like ``DuplexLM.forward`` (one step, batch 1); it records which steps carried video.

    Args:
        vocab_size: ``V`` of the logits it returns.
        pad_id: the PAD token (silence).
        word_id: the token it says.
        delay: steps between a step with video and the word that describes it.
    """

    def __init__(self, vocab_size: int, pad_id: int, word_id: int, delay: int) -> None:
        self.vocab_size, self.pad_id, self.word_id, self.delay = vocab_size, pad_id, word_id, delay
        self.had_video: list[bool] = []  # per step run so far

    def __call__(self, text_ids: torch.Tensor, video_slots: torch.Tensor, video_mask: torch.Tensor, *args, **kwargs):
        assert text_ids.shape == (1, 1), f"one step of batch 1 expected, got {tuple(text_ids.shape)}"
        self.had_video.append(bool(video_mask.any()))
        step = len(self.had_video) - 1
        speaks = step >= self.delay and self.had_video[step - self.delay]
        logits = torch.zeros(1, 1, self.vocab_size)  # [B, S, V]
        logits[..., self.word_id if speaks else self.pad_id] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=kwargs.get("past_key_values"))

    def word_steps(self) -> list[int]:
        """The steps whose output should be the word: each step with video, ``delay`` steps later."""
        return [step + self.delay for step, video in enumerate(self.had_video) if video]
