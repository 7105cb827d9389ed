"""The learning-rate schedule both trainers use: linear warm-up, cosine decay to a floor, then hold at the floor.

Built from torch's own schedulers (``LinearLR`` -> ``CosineAnnealingLR`` -> ``ConstantLR`` chained by
``SequentialLR``), stepped once per optimizer step. With ``lr`` the optimizer's learning rate, ``w`` the warm-up
steps, ``d`` the decay steps and ``r`` the floor ratio, the learning rate at step ``k`` is

- ``lr * (k + 1) / w`` for ``k < w`` (the first step already trains; no step runs at zero);
- ``lr * (r + (1 - r) * (1 + cos(pi * (k - w) / d)) / 2)`` for ``w <= k < w + d``;
- ``lr * r`` from ``w + d`` on (torch's cosine alone would rise again after ``d`` steps); with ``d = None`` the
  learning rate stays at ``lr`` after the warm-up instead.

``transformers.get_cosine_with_min_lr_schedule_with_warmup`` has the floor but starts the warm-up at zero and rises
again after the decay; its ``get_wsd_schedule`` holds the floor but starts the warm-up at the floor: neither gives
this curve, which the recipes' tuned values assume.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from mmduplex.errors import InputError

_FOREVER = 2**62  # ConstantLR's length for the final hold (it never ends)


def warmup_cosine_schedule(
    optimizer: Optimizer, warmup_steps: int, decay_steps: int | None, min_lr_ratio: float
) -> LRScheduler:
    """The warm-up + cosine + floor schedule of the module docstring, for an optimizer whose groups share one lr.

    Args:
        optimizer: the optimizer (every parameter group at the same learning rate).
        warmup_steps: linear warm-up steps (0: none).
        decay_steps: cosine decay steps after the warm-up (values below 1 count as 1); ``None``: constant after it.
        min_lr_ratio: the floor as a fraction of the learning rate, in ``[0, 1]``.

    Raises:
        InputError: a negative step count, a ratio outside ``[0, 1]`` or groups with different learning rates.
    """
    if warmup_steps < 0:
        raise InputError("warmup_steps", f"must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise InputError("min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio}")
    rates = {group["lr"] for group in optimizer.param_groups}
    if len(rates) != 1:
        raise InputError("optimizer", f"parameter groups must share one learning rate, got {sorted(rates)}")
    phases: list[LRScheduler] = []
    milestones: list[int] = []
    if warmup_steps > 0:
        phases.append(LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1))
        milestones.append(warmup_steps)
    if decay_steps is None:
        phases.append(ConstantLR(optimizer, factor=1.0, total_iters=0))
    else:
        decay = max(decay_steps, 1)
        floor = min_lr_ratio * rates.pop()
        phases.append(CosineAnnealingLR(optimizer, T_max=decay, eta_min=floor))
        milestones.append(warmup_steps + decay)
        phases.append(ConstantLR(optimizer, factor=min_lr_ratio, total_iters=_FOREVER))
    if len(phases) == 1:
        return phases[0]
    return SequentialLR(optimizer, phases, milestones=milestones[: len(phases) - 1])
