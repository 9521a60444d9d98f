"""Milestone 4, advanced track — M4.7: the re-warmup schedules of continued pre-training.

``lr_at(step, schedule)`` against a slow reference built from the specification alone (each
schedule as the straight segments and cosine it is made of, in float64), over every step of
schedules that cover its whole domain: warm-up from zero, from a fraction and from the peak,
no warm-up and a warm-up that fills the run, every shape, a stable phase of zero, one and
many steps, a decay that takes all that warm-up leaves, floors 0, 0.1 and 1, and steps past
the end; and against transformers' own schedules where they coincide (``cosine`` with
``get_cosine_with_min_lr_schedule_with_warmup``, ``wsd`` with ``get_wsd_schedule``, whose
warm-up starts at the floor). When a check fails, the likely cause names the mistake whose
shape matches what came back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule

from ftlab.course.teaching import expect, explained
from ftlab.train.schedule import Schedule, lr_at

pytestmark = pytest.mark.m4


def _reference(step: int, s: Schedule) -> float:
    """The schedule from its definition (float64): a straight line from ``(0, start)`` to
    ``(warmup, 1)``; then the peak until the decay's first step; then the decay, a straight
    line or the cosine over ``max(1, length)`` steps, and the floor after it."""
    if s.warmup_steps > step:
        return float(np.interp(step, [0, s.warmup_steps], [s.start_fraction, 1.0]))
    first = {"wsd": s.total_steps - s.decay_steps, "constant": math.inf}.get(s.shape,
                                                                             s.warmup_steps)
    if step <= first:
        return 1.0
    last = first + max(1, s.total_steps - first)
    if s.shape != "cosine":
        return float(np.interp(step, [first, last], [1.0, s.min_lr_ratio]))
    angle = math.pi * float(np.clip((step - first) / (last - first), 0.0, 1.0))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * (math.cos(angle) + 1) / 2


def _ours(s: Schedule, steps) -> list[float]:
    out = []
    for step in steps:
        with explained(task="M4.7", what=f"lr_at({step}, {s})", expected="a float",
                       cause="warm-up divides by warmup_steps only while step < warmup_steps (it "
                             "may be 0); each decay divides by max(1, its length), which is 0 "
                             "when warm-up (or wsd's stable phase) fills the run"):
            out.append(lr_at(step, s))
    return out


def _warmup_divided_by(s: Schedule, divisor: int, step: int) -> float:
    """The warm-up reaching the peak at ``divisor`` instead of ``warmup_steps``."""
    if step >= s.warmup_steps:
        return _reference(step, s)
    return s.start_fraction + (1 - s.start_fraction) * min(1.0, step / divisor)


def _straight(s: Schedule, step: int, first: int, length: int, clamp: bool = True,
              floor: str = "scale") -> float:
    """After warm-up: the peak through ``first``, then a straight decay over ``length``
    steps (``clamp``: not below its end; ``floor``: scale into [floor, 1], clamp at it, or
    ignore it)."""
    if s.warmup_steps > step:
        return _reference(step, s)
    if step <= first:
        return 1.0
    done = (step - first) / max(1, length)
    done = min(1.0, done) if clamp else done
    if floor == "clamp":
        return max(s.min_lr_ratio, 1 - done)
    low = s.min_lr_ratio if floor == "scale" else 0.0
    return low + (1 - low) * (1 - done)


def _cause(s: Schedule, ours: list[float], steps: list[int]) -> str:
    """The mistake whose schedule matches ``ours`` on ``steps``, else the rule."""
    import dataclasses

    def like(value_at) -> bool:
        return all(math.isclose(o, value_at(t), abs_tol=1e-9) for o, t in zip(ours, steps))

    def variant(**change):  # built when called: only where the check applies
        return lambda t: _reference(t, dataclasses.replace(s, **change))

    w, total, floor = s.warmup_steps, s.total_steps, s.min_lr_ratio
    straight = s.shape in ("linear", "wsd")
    first = total - s.decay_steps if s.shape == "wsd" else w  # where the decay begins
    length = total - first

    def from_zero(guarded: bool):  # progress = step / total_steps
        def value(t: int) -> float:
            if t < w or (guarded and t == w):
                return _reference(t, s)
            done = min(1.0, t / total)
            left = 0.5 * (1 + math.cos(math.pi * done)) if s.shape == "cosine" else 1 - done
            return floor + (1 - floor) * left
        return value

    checks = [
        (s.start_fraction > 0 and w > 0, variant(start_fraction=0.0),
         f"warm-up starts at 0: it starts at start_fraction of the peak ({s.start_fraction:g} "
         "here), start_fraction + (1 - start_fraction) * step / warmup_steps"),
        (w > 1, lambda t: _warmup_divided_by(s, w + 1, t),
         "the peak comes one step late: warm-up reaches 1 exactly at step == warmup_steps "
         "(divide by warmup_steps, not warmup_steps + 1)"),
        (w > 1, lambda t: _warmup_divided_by(s, w - 1, t),
         "the peak comes one step early: warm-up reaches 1 exactly at step == warmup_steps "
         "(divide by warmup_steps, not warmup_steps - 1)"),
        (w > 1, lambda t: _reference(t, s) if t == 0 or t >= w else s.start_fraction,
         "integer division in the warm-up: step // warmup_steps is 0 until the end of "
         "warm-up; divide with /"),
        (s.shape in ("cosine", "linear") and w > 0,
         lambda t: from_zero(True)(t) if like(from_zero(True)) else from_zero(False)(t),
         "decay measured from step 0: progress = (step - warmup_steps) / (total_steps - "
         "warmup_steps), so the decay starts at 1 where warm-up ends"),
        (s.shape == "wsd" and w > 0 and length > 0, lambda t: _straight(s, t, first, total - w),
         "the decay's length is decay_steps: divide by decay_steps (it runs from total_steps - "
         "decay_steps to total_steps), not by the steps after warm-up"),
        (s.shape == "wsd" and first > w, lambda t: _straight(s, t, w, total - w),
         "the stable phase is skipped: wsd holds the peak from the end of warm-up until "
         "total_steps - decay_steps, then decays over decay_steps"),
        (s.shape == "wsd" and 0 < 2 * s.decay_steps <= total - w,
         variant(decay_steps=2 * s.decay_steps),
         "the decay is counted twice: it lasts decay_steps, from total_steps - decay_steps to "
         "total_steps, not twice as long"),
        (s.shape == "wsd" and w > 0 and s.decay_steps > 0,
         lambda t: _straight(s, t, first + w, length),
         "warm-up counted twice: the stable phase ends at total_steps - decay_steps (warm-up "
         "included), not warmup_steps + total_steps - decay_steps"),
        (s.shape == "wsd" and s.decay_steps > 0, lambda t: _straight(s, t, total, 0),
         "decay_steps ignored: wsd decays over its last decay_steps steps, reaching "
         "min_lr_ratio at total_steps"),
        (s.shape == "wsd" and s.decay_steps == 0 and floor < 1,
         lambda t: _reference(t, s) if t <= total else 1.0,
         "decay_steps 0 still ends at the floor: the decay of length 0 counts as one step "
         "(max(1, decay_steps)): 1 through total_steps, min_lr_ratio after it"),
        (straight, lambda t: _straight(s, t, first, length + 1),
         "the decay counted one step too long: it reaches min_lr_ratio at total_steps, "
         "progress = (step - start) / (total_steps - start)"),
        (straight and floor > 0, lambda t: _straight(s, t, first, length, floor="clamp"),
         "the floor clamps the line instead of scaling it: max(min_lr_ratio, 1 - progress) "
         "has a kink; the decay is min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)"),
        (straight and any(o < floor - 1e-9 for o in ours), lambda t: ours[steps.index(t)],
         "decay past the floor: clamp the progress at 1, or the line keeps falling below "
         "min_lr_ratio after total_steps"),
        (s.shape == "constant" and w > 0 and s.start_fraction < 1, lambda t: 1.0,
         "constant skips the warm-up: every shape warms up first; constant holds the peak "
         "after it"),
        (floor > 0 and s.shape != "constant", variant(min_lr_ratio=0.0),
         "the floor is ignored: every decay ends at min_lr_ratio (scale it into "
         "[min_lr_ratio, 1]) and stays there after total_steps"),
        (straight, variant(shape="cosine"),
         f"shape {s.shape!r} decays like cosine: only 'cosine' is the cosine; 'linear' and "
         "'wsd' decay in a straight line"),
    ]
    causes = []
    for applies, value_at, cause in checks:
        if applies and like(value_at) and not like(lambda t: _reference(t, s)):
            causes.append(cause)
    if not causes:
        return ("the factor is start_fraction -> 1 linearly over warm-up, then the shape's "
                "decay measured from its own start, ending at min_lr_ratio at total_steps")
    return " | OR | ".join(causes)


SCHEDULES = [
    Schedule(20, 4, "cosine", 0.1, 0.1),
    Schedule(20, 4, "linear", 0.1, 0.1),
    Schedule(20, 4, "wsd", 0.1, 0.1, decay_steps=6),
    Schedule(20, 4, "constant", 0.1),
    Schedule(20, 0, "cosine", 0.1, 0.2),          # no warm-up: the start fraction plays no part
    Schedule(20, 5, "wsd", 0.0, 0.0, decay_steps=15),   # no stable phase: decay right after warm-up
    Schedule(20, 5, "wsd", 0.25, 0.05, decay_steps=14),  # a stable phase of one step
    Schedule(20, 5, "wsd", 0.25, 0.05, decay_steps=0),   # no decay inside the run
    Schedule(12, 12, "linear", 0.5, 0.3),         # warm-up fills the run
    Schedule(30, 7, "cosine", 1.0, 1.0),          # start at the peak, floor at the peak: flat
    Schedule(1, 0, "wsd", 0.1, 0.1, decay_steps=1),  # a one-step run
    Schedule(50, 3, "wsd", 0.1, 0.1, decay_steps=10),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.shape}-{s.total_steps}-"
                         f"{s.warmup_steps}-{s.start_fraction:g}-{s.min_lr_ratio:g}-{s.decay_steps}")
def test_m4_7_every_step_follows_the_definition(schedule):
    steps = list(range(schedule.total_steps + 6))  # past the end too
    ours = _ours(schedule, steps)
    want = [_reference(t, schedule) for t in steps]
    bad = [t for t in steps if not math.isclose(ours[t], want[t], abs_tol=1e-9)]
    expect(not bad, task="M4.7", what=f"lr_at for steps 0..{steps[-1]} of {schedule}",
           expected=[round(want[t], 4) for t in bad[:5]], got=[round(ours[t], 4) for t in bad[:5]],
           cause=_cause(schedule, ours, steps) + (f" (first wrong step: {bad[0]})" if bad else ""))


def test_m4_7_returns_a_python_float_and_leaves_the_schedule_as_it_was():
    s = Schedule(10, 2, "wsd", 0.1, 0.1, decay_steps=3)
    got = [g for shape in ("cosine", "linear", "wsd", "constant")  # every phase of every shape
           for g in _ours(Schedule(10, 2, shape, 0.1, 0.1, 3 if shape == "wsd" else 0),
                          [0, 1, 2, 3, 7, 9, 10, 11])]
    expect(all(type(g) is float for g in got), task="M4.7", what="the type lr_at returns",
           expected="float every time (a LambdaLR multiplier)",
           got=sorted({type(g).__name__ for g in got}),
           cause="return a Python float: math, not torch or numpy, so the scheduler's state "
                 "stays plain numbers")
    expect(s == Schedule(10, 2, "wsd", 0.1, 0.1, decay_steps=3), task="M4.7",
           what="the schedule after lr_at", expected="unchanged", got=s,
           cause="lr_at reads the schedule; it never changes it")


def _expect_equal(s: Schedule, steps: list[int], want: list[float], what: str) -> None:
    """Every step of ``s`` equals ``want`` (another implementation's factors)."""
    ours = _ours(s, steps)
    bad = [t for t in steps if not math.isclose(ours[t], want[t], abs_tol=1e-9)]
    expect(not bad, task="M4.7", what=what, expected=[round(want[t], 4) for t in bad[:5]],
           got=[round(ours[t], 4) for t in bad[:5]], cause=_cause(s, ours, steps))


def _lambda(scheduler) -> callable:
    return scheduler.lr_lambdas[0]


@pytest.mark.parametrize(("total", "warmup", "floor"), [(20, 4, 0.1), (9, 0, 0.0), (6, 6, 0.2)])
def test_m4_7_cosine_from_zero_equals_transformers(total, warmup, floor):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = _lambda(get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total,
                                                                 min_lr_rate=floor))
    steps = list(range(total + 1))
    _expect_equal(Schedule(total, warmup, "cosine", 0.0, floor), steps, [theirs(t) for t in steps],
                  f"cosine from zero vs transformers' get_cosine_with_min_lr_schedule_with_warmup"
                  f"({warmup}, {total}, {floor})")


@pytest.mark.parametrize(("total", "warmup", "decay", "floor"),
                         [(30, 5, 10, 0.1), (30, 0, 30, 0.0), (16, 4, 1, 0.25)])
def test_m4_7_wsd_equals_transformers_when_warm_up_starts_at_the_floor(total, warmup, decay, floor):
    """transformers' get_wsd_schedule warms up from min_lr_ratio and decays linearly."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = _lambda(get_wsd_schedule(opt, warmup, decay, num_training_steps=total,
                                      decay_type="linear", min_lr_ratio=floor))
    steps = list(range(total + 4))
    _expect_equal(Schedule(total, warmup, "wsd", floor, floor, decay_steps=decay), steps,
                  [theirs(t) for t in steps], f"wsd vs transformers' get_wsd_schedule(warmup "
                  f"{warmup}, decay {decay}, total {total}, linear, min_lr_ratio {floor})")
