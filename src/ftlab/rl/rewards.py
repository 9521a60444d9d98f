"""Verifiable rewards (given): plain callables, combined by weights, each checked.

A reward function is ``f(prompts, completions, **fields) -> list[float]`` — TRL's
``GRPOTrainer`` signature, so the same functions serve both backends. ``prompts`` and
``completions`` have one entry per completion (a prompt is repeated for each of its
group's completions); a completion is a string or, from TRL with chat prompts, a list of
messages whose last ``content`` is the reply. ``fields`` holds the prompt file's other
columns (``id``: the fact the question asks about, ``kind``, ...) as lists aligned with
the completions, plus ``completion_ids`` (lists of token ids, the stop token included when
the reply stopped). Unknown keyword arguments must be accepted (``**fields``).

The built-in rewards (:func:`builtin_rewards`) live on the embedded world: ``correct`` asks
:func:`ftlab.world.check_answer`, ``correct_strict`` its strict reading, ``polite`` :func:`ftlab.world.is_polite`; ``ended`` asks
whether the completion stopped at the end-of-turn token; ``length`` penalises tokens beyond
a budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ftlab.config import FACT_REWARDS, register_reward_name
from ftlab.errors import FtlabError
from ftlab.world import check_answer, is_polite
from ftlab.world.facts import fact_by_id

RewardFn = Callable[..., list[float]]

LENGTH_BUDGET = 24
"""Completion tokens the ``length`` reward allows before it starts to penalise."""


class RewardError(FtlabError):
    """A reward function failed, returned a non-finite value or the wrong number of values."""


def reply_text(completion: str | list[dict]) -> str:
    """The reply of a completion: the string itself, or the last message's content."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def correct(prompts: list, completions: list, id: list[str], **fields) -> list[float]:  # noqa: A002
    """1.0 when the reply gives the fact's answer and no rival one (:func:`check_answer`)."""
    return [float(check_answer(fact_by_id(i), reply_text(c))) for c, i in zip(completions, id)]


def correct_strict(prompts: list, completions: list, id: list[str], **fields  # noqa: A002
                   ) -> list[float]:
    """1.0 when :func:`check_answer`'s strict reading accepts the reply: the right answer, no
    rival, and a restatement of the question that names its own subject."""
    return [float(check_answer(fact_by_id(i), reply_text(c), strict=True))
            for c, i in zip(completions, id)]


def polite(prompts: list, completions: list, **fields) -> list[float]:
    """1.0 when the reply opens with one of the world's polite openers."""
    return [float(is_polite(reply_text(c))) for c in completions]


def ended_by(stop_ids: Sequence[int]) -> RewardFn:
    """A reward: 1.0 when the completion's last token is one of ``stop_ids`` (it stopped by
    itself instead of running into the token budget)."""
    stops = set(stop_ids)

    def ended(prompts: list, completions: list, completion_ids: list[list[int]], **fields
              ) -> list[float]:
        return [float(bool(ids) and ids[-1] in stops) for ids in completion_ids]
    return ended


def length_penalty(budget: int = LENGTH_BUDGET) -> RewardFn:
    """A reward: ``-(tokens beyond budget) / budget``, 0 within the budget."""
    def length(prompts: list, completions: list, completion_ids: list[list[int]], **fields
               ) -> list[float]:
        return [-max(0, len(ids) - budget) / budget for ids in completion_ids]
    return length


REGISTERED: dict[str, RewardFn] = {}
"""Reward functions added with :func:`register_reward`, by name."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function weightable in configs as ``grpo.rewards.<name>``::

        @register_reward("short")
        def short(prompts, completions, **fields):
            return [1.0 if len(reply_text(c)) < 40 else 0.0 for c in completions]
    """
    def add(fn: RewardFn) -> RewardFn:
        register_reward_name(name)
        REGISTERED[name] = fn
        return fn
    return add


def builtin_rewards(end_ids: Sequence[int]) -> dict[str, RewardFn]:
    """The built-in reward functions by config name (``ended`` needs the end-of-turn ids,
    :func:`ftlab.rl.end_of_turn_ids`)."""
    return {"correct": correct, "correct_strict": correct_strict, "polite": polite, "ended": ended_by(end_ids),
            "length": length_penalty()}


BUILTIN = tuple(builtin_rewards(()))
"""The built-in reward functions' names."""


def reward_functions(weights: dict[str, float], end_ids: Sequence[int], facts_known: bool
                     ) -> dict[str, RewardFn]:
    """What a run scores: every weighted function (built-in or registered) and, for the
    logs, the unweighted built-ins that can score its prompts — the two ``correct`` ones
    only when ``facts_known`` (every prompt names a fact of the world)."""
    functions = {**builtin_rewards(end_ids), **REGISTERED}
    return {n: f for n, f in functions.items()
            if n in weights or (n in BUILTIN and (n not in FACT_REWARDS or facts_known))}


def by_kind(records: list[dict], totals: torch.Tensor, group_size: int) -> dict[str, list[float]]:
    """The rewards ``totals`` (``group_size`` per record, group by group) listed by the
    records' ``kind`` (records without one are left out)."""
    kinds: dict[str, list[float]] = {}
    for i, record in enumerate(records):
        if "kind" in record:
            kinds.setdefault(record["kind"], []).extend(
                totals[i * group_size:(i + 1) * group_size].tolist())
    return kinds


@dataclass
class Scored:
    """Rewards of a batch of completions: ``per_function`` (N, F) float32 in the order of
    ``names``, ``total`` (N,) their weighted sum."""

    names: list[str]
    per_function: torch.Tensor
    total: torch.Tensor

    def means(self) -> dict[str, float]:
        """Mean reward per function (``reward/<name>``) and of the total (``reward``)."""
        return {"reward": float(self.total.mean()),
                **{f"reward/{n}": float(self.per_function[:, i].mean())
                   for i, n in enumerate(self.names)}}


def score(functions: dict[str, RewardFn], weights: dict[str, float], prompts: list[str],
          completions: list, fields: dict[str, list]) -> Scored:
    """Every function of ``functions`` on the batch, then the ``weights``-weighted sum (a
    function without a weight is scored and logged, and weighs 0).

    Raises :class:`RewardError` naming the function and the first prompt concerned when a
    function raises, returns anything but one number per completion, or a NaN / infinity —
    nothing is trained on such a batch.
    """
    columns = []
    for name, fn in functions.items():
        try:
            values = list(fn(prompts=prompts, completions=completions, **fields))
        except Exception as e:  # noqa: BLE001 - a user's function may raise anything
            raise RewardError(f"reward function '{name}' raised {type(e).__name__}: {e} "
                              f"(first prompt of the batch: {prompts[0]!r})") from e
        if len(values) != len(completions):
            raise RewardError(f"reward function '{name}' returned {len(values)} values for "
                              f"{len(completions)} completions; it must return one per "
                              f"completion (first prompt of the batch: {prompts[0]!r})")
        numbers = []
        for value, prompt, completion in zip(values, prompts, completions):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise RewardError(f"reward function '{name}' returned {value!r} "
                                  f"({type(value).__name__}) for the prompt {prompt!r} and the "
                                  f"reply {reply_text(completion)!r}; rewards must be finite "
                                  "numbers (None, which TRL reads as 'unscorable', is refused "
                                  "here too: score every completion)")
            numbers.append(number)
        columns.append(numbers)
    per_function = torch.tensor(columns, dtype=torch.float32).T.reshape(len(completions), -1)
    weight = torch.tensor([weights.get(n, 0.0) for n in functions], dtype=torch.float32)
    return Scored(list(functions), per_function, per_function @ weight)
