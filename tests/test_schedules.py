"""The shared learning-rate schedule (torch schedulers chained) against its closed form, and the weighted text loss
against torch's class-weighted cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmduplex.errors import InputError
from mmduplex.lm.model import LossWeights, text_loss
from mmduplex.schedules import warmup_cosine_schedule


def _closed_form(step: int, warmup: int, decay: int | None, floor: float) -> float:
    """The schedule the trainers had as a hand-written ``LambdaLR`` (the reference)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay is None:
        return 1.0
    progress = min((step - warmup) / max(decay, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("warmup", "decay", "floor"),
    [(20, 900, 0.1), (0, 50, 0.0), (1, 10, 0.5), (5, None, 0.1), (0, None, 0.3), (3, 0, 0.2), (4, 7, 1.0)],
)
def test_schedule_equals_the_closed_form(warmup: int, decay: int | None, floor: float) -> None:
    lr = 3e-4
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = warmup_cosine_schedule(optimizer, warmup, decay, floor)
    for step in range(warmup + (decay or 0) + 25):  # past the end of the decay: it holds at the floor
        expected = lr * _closed_form(step, warmup, decay, floor)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), f"step {step}"
        optimizer.step()
        scheduler.step()


def test_schedule_rejects_bad_settings() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(InputError, match="warmup_steps"):
        warmup_cosine_schedule(torch.optim.SGD(params, lr=0.1), -1, 10, 0.1)
    with pytest.raises(InputError, match="min_lr_ratio"):
        warmup_cosine_schedule(torch.optim.SGD(params, lr=0.1), 0, 10, 1.5)
    mixed = torch.optim.SGD([{"params": params, "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1)
    with pytest.raises(InputError, match="share one learning rate"):
        warmup_cosine_schedule(mixed, 0, 10, 0.1)


def test_text_loss_is_torchs_class_weighted_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    vocab, pad_id, epad_id = 11, 0, 1
    logits = torch.randn(3, 9, vocab, generator=generator)
    text_ids = torch.randint(0, vocab, (3, 9), generator=generator)
    text_ids[:, ::3] = pad_id
    text_ids[0, 4] = epad_id
    weights = LossWeights(pad=0.5, epad=2.0)
    loss, stats = text_loss(logits, text_ids, pad_id, epad_id, weights)
    class_weight = torch.ones(vocab)
    class_weight[pad_id], class_weight[epad_id] = weights.pad, weights.epad
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), text_ids[:, 1:].reshape(-1), weight=class_weight)
    assert torch.allclose(loss, expected, rtol=1e-6)
    unweighted = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), text_ids[:, 1:].reshape(-1))
    assert not torch.allclose(loss, unweighted, rtol=1e-3)  # the weights matter on this input
    assert torch.allclose(stats["ce"], unweighted, rtol=1e-6)


def test_text_loss_of_a_window_whose_targets_all_weigh_zero_is_zero() -> None:
    logits = torch.randn(1, 5, 4)
    text_ids = torch.zeros(1, 5, dtype=torch.long)  # all PAD
    loss, _ = text_loss(logits, text_ids, 0, 1, LossWeights(pad=0.0))
    assert float(loss) == 0.0  # torch's weighted mean would be 0/0 = NaN here
