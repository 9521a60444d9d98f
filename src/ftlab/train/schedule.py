"""M4.1 — the learning-rate schedule: linear warm-up, then cosine decay to a floor.

The schedule is a multiplier of the peak learning rate, a function of the optimizer step
(0-based: the multiplier of step ``s`` sets the learning rate of the ``s``-th update). It
equals transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` on every step up to
the last, and stays at the floor after it.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Warm-up: for ``step < warmup_steps`` the factor rises linearly, ``step / warmup_steps``
    (0 at step 0, peak reached exactly at ``step == warmup_steps``). Decay: with
    ``progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)`` clamped to at
    most 1, the factor is ``min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress))``:
    1 at the end of warm-up, ``min_lr_ratio`` at ``total_steps`` and for every step after it.
    The floor scales the cosine (it is not a clamp): the factor falls smoothly from 1 to
    ``min_lr_ratio``, reaching it exactly at ``total_steps``.

    Edge cases: ``warmup_steps == 0`` — no warm-up, step 0 has factor 1 (nothing divides by
    ``warmup_steps``). ``warmup_steps == total_steps`` — the decay's length counts as 1 step
    (the ``max(1, ...)``): factor 1 at ``total_steps``, ``min_lr_ratio`` after it.
    ``min_lr_ratio == 1`` — constant 1 after warm-up. Returns a Python float.
    """
    ### BEGIN SOLUTION M4.1
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    ### END SOLUTION


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length in steps: ``ceil(warmup_ratio * total_steps)`` (transformers' rule)."""
    return math.ceil(warmup_ratio * total_steps)


class CosineWithWarmup:
    """:func:`lr_factor` with its settings bound, as a picklable ``LambdaLR`` multiplier.

    Its attributes are plain numbers, so the scheduler's ``state_dict`` stays loadable
    with ``torch.load(..., weights_only=True)``.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                   min_lr_ratio: float) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``step()`` once per optimizer step."""
    return LambdaLR(optimizer, CosineWithWarmup(
        total_steps, warmup_steps_for(total_steps, warmup_ratio), min_lr_ratio))
