"""M4.1 — the learning-rate schedule: linear warm-up, then cosine decay to a floor; M4.7 —
the schedules of continued pre-training: re-warm-up from a fraction of the peak, then
cosine, linear or warmup–stable–decay (WSD).

A schedule is a multiplier of the peak learning rate, a function of the optimizer step
(0-based: the multiplier of step ``s`` sets the learning rate of the ``s``-th update).
M4.1's equals transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` on every step up
to the last, and stays at the floor after it. M4.7's :func:`lr_at` generalises it: with
``start_fraction`` 0 and ``shape`` cosine it is M4.1's; ``wsd`` is transformers'
``get_wsd_schedule`` (linear decay) when warm-up starts at the floor. Continued pre-training
re-warms a trained model's learning rate from a fraction of the peak and decays it again
(Ibrahim et al. 2024); WSD holds the peak and decays only at the end (MiniCPM), so a model
saved in the stable phase can be trained on by a new run before one final decay (a resumed
run keeps its checkpoint's schedule: the Trainer refuses to resume with other settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


SHAPES = ("cosine", "linear", "wsd", "constant")
"""Schedule shapes after warm-up: cosine or linear decay to the floor, warmup–stable–decay
(hold the peak, then decay linearly over the last ``decay_steps``), or constant."""


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule over ``total_steps`` optimizer steps, as multipliers of the
    peak learning rate (:func:`lr_at`).

    ``warmup_steps``: linear warm-up from ``start_fraction`` of the peak (0: from zero, as
    transformers; continued pre-training re-warms from 0.1) to the peak. ``shape``: one of
    :data:`SHAPES`. ``min_lr_ratio``: the floor every decay ends at. ``decay_steps``: wsd
    only, the length of the final decay (the peak holds from the end of warm-up until
    ``total_steps - decay_steps``). Raises ValueError for settings no schedule has: warm-up
    longer than the run, a decay longer than what warm-up leaves, fractions outside [0, 1].
    """

    total_steps: int
    warmup_steps: int = 0
    shape: str = "cosine"
    start_fraction: float = 0.0
    min_lr_ratio: float = 0.0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r}: one of {', '.join(SHAPES)}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} of {self.total_steps} steps: "
                             "warm-up cannot be longer than the run")
        if not 0 <= self.decay_steps <= self.total_steps - self.warmup_steps:
            left = self.total_steps - self.warmup_steps
            raise ValueError(f"decay_steps {self.decay_steps}: at most the {left} steps "
                             "warm-up leaves")
        for name in ("start_fraction", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} {getattr(self, name)}: a fraction of the peak, in [0, 1]")


def lr_at(step: int, schedule: Schedule) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based) of
    ``schedule``.

    Warm-up (``step < warmup_steps``): linear from ``start_fraction`` at step 0 to the peak,
    ``start_fraction + (1 - start_fraction) * step / warmup_steps``, reaching 1 exactly at
    ``step == warmup_steps``. After it, by ``shape``:

    - ``cosine``: :func:`lr_factor` (M4.1), the cosine from 1 at the end of warm-up to
      ``min_lr_ratio`` at ``total_steps``;
    - ``linear``: ``min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)``, ``progress =
      (step - warmup_steps) / max(1, total_steps - warmup_steps)`` clamped to at most 1;
    - ``wsd``: 1 (the stable phase) through step ``total_steps - decay_steps``, then the
      same straight line measured from there: ``progress = (step - (total_steps -
      decay_steps)) / max(1, decay_steps)`` clamped to at most 1;
    - ``constant``: 1.

    Every decay is measured from where it starts (the end of warm-up; wsd: the end of the
    stable phase), never from step 0, reaches ``min_lr_ratio`` at ``total_steps`` and stays
    there after. Edge cases: ``warmup_steps == 0`` — no warm-up, ``start_fraction`` plays no
    part; a decay of length 0 (warm-up filling the run, or wsd's ``decay_steps == 0``) counts
    as 1 step (the ``max(1, ...)``, as M4.1): 1 at ``total_steps``, the floor after it;
    ``decay_steps == total_steps - warmup_steps``: no stable phase. Returns a Python float;
    ``schedule`` is only read.
    """
    ### BEGIN SOLUTION M4.7
    s = schedule
    if step < s.warmup_steps:
        return s.start_fraction + (1 - s.start_fraction) * step / s.warmup_steps
    if s.shape == "constant":
        return 1.0
    if s.shape == "cosine":
        return lr_factor(step, s.total_steps, s.warmup_steps, s.min_lr_ratio)
    begin = s.total_steps - s.decay_steps if s.shape == "wsd" else s.warmup_steps
    if step <= begin:
        return 1.0
    progress = min(1.0, (step - begin) / max(1, s.total_steps - begin))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * (1 - progress)
    ### END SOLUTION



class ScheduleMultiplier:
    """:func:`lr_at` with its schedule bound, as a picklable ``LambdaLR`` multiplier; M4.1's
    :func:`lr_factor` for the schedule it covers (cosine warmed up from 0, every run's
    default), so training before the advanced track needs M4.1 only.

    Its attributes are plain numbers and a string, so the scheduler's ``state_dict`` stays
    loadable with ``torch.load(..., weights_only=True)``.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.total_steps, self.warmup_steps = schedule.total_steps, schedule.warmup_steps
        self.shape, self.start_fraction = schedule.shape, schedule.start_fraction
        self.min_lr_ratio, self.decay_steps = schedule.min_lr_ratio, schedule.decay_steps

    def __call__(self, step: int) -> float:
        if self.shape == "cosine" and self.start_fraction == 0:  # M4.1's: the course's first
            return lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)
        return lr_at(step, Schedule(self.total_steps, self.warmup_steps, self.shape,
                                    self.start_fraction, self.min_lr_ratio, self.decay_steps))


def schedule_for(total_steps: int, warmup_ratio: float, min_lr_ratio: float,
                 shape: str = "cosine", warmup_start: float = 0.0,
                 decay_ratio: float = 0.0) -> Schedule:
    """The :class:`Schedule` of a run of ``total_steps`` from a train section's ratios: warm-up
    and (wsd) decay lengths rounded up (transformers' rule), the decay at most what warm-up
    leaves."""
    warmup = warmup_steps_for(total_steps, warmup_ratio)
    decay = min(math.ceil(decay_ratio * total_steps), total_steps - warmup) if shape == "wsd" else 0
    return Schedule(total_steps, warmup, shape, warmup_start, min_lr_ratio, decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_at`; call ``step()`` once per optimizer step."""
    return LambdaLR(optimizer, ScheduleMultiplier(schedule))
