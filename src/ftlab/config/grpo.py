"""The ``grpo`` section: sampling, rewards and the clipped loss of a grpo stage."""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ftlab.config.fields import Section

REWARD_NAMES = ["correct", "correct_strict", "polite", "ended", "length"]
"""Reward functions a grpo stage can weight: the built-in ones (:mod:`ftlab.rl.rewards`)
and any registered later (:func:`ftlab.rl.register_reward`)."""

FACT_REWARDS = ("correct", "correct_strict")
"""Built-in rewards that judge a reply against the world fact its prompt names (``id``)."""


def register_reward_name(name: str) -> None:
    """Accept ``name`` in a config's ``grpo.rewards`` (:func:`ftlab.rl.register_reward`
    calls this)."""
    if name not in REWARD_NAMES:
        REWARD_NAMES.append(name)


class StageReward(Section):
    """A reward read from an earlier stage's model: ``{stage: rm, weight: 1.0}``."""

    stage: str = Field(description="Name of an earlier reward stage whose reward model scores.")
    weight: float = Field(1.0, description="Weight of its score in the total reward.")


def _known_rewards(rewards: dict[str, float | StageReward]) -> dict[str, float | StageReward]:
    """Reject reward names no built-in function has, with a did-you-mean (a reward model's
    entry may take any name that is not a built-in one)."""
    for name, value in rewards.items():
        if isinstance(value, StageReward):
            if name in REWARD_NAMES:
                raise ValueError(f"'{name}' is a built-in reward; name the reward model's entry "
                                 "otherwise (e.g. reward_model: {stage: rm, weight: 1.0})")
        elif name not in REWARD_NAMES:
            close = difflib.get_close_matches(name, REWARD_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown reward '{name}'; known: {', '.join(REWARD_NAMES)}, or a "
                             f"reward model as <name>: {{stage: <reward stage>, weight: w}}{hint}")
    if not any(v.weight if isinstance(v, StageReward) else v for v in rewards.values()):
        raise ValueError("every reward weight is 0: nothing would be learned")
    return rewards


class GRPOConfig(Section):
    """Group relative policy optimisation with verifiable rewards (capstone, advanced track)."""

    @model_validator(mode="after")
    def _clip_range(self) -> GRPOConfig:
        """``epsilon_high`` below ``epsilon`` contradicts itself: the upper clip is the one
        DAPO raises to let rare good tokens grow."""
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) is below epsilon ({self.epsilon}): "
                             "the clip range above 1 is meant to be at least the one below (DAPO "
                             "raises it to 0.28); leave it unset to use epsilon")
        return self

    group_size: int = Field(
        8,
        ge=2,
        description="Completions sampled per prompt (G); advantages compare each with its group. "
        "Typical 4-16.",
    )
    max_new_tokens: int = Field(
        24,
        ge=1,
        le=1024,
        description="Token budget of a completion; a completion that has not stopped by then is "
        "truncated (the 'ended' reward then gives 0).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables it.")
    beta: float = Field(
        0.04,
        ge=0,
        description="Weight of the KL penalty (k3 estimator) to the stage's input model; 0 skips the "
        "reference pass. TRL's default is 0; DeepSeek-R1 used 0.001.",
    )
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range below 1 of the probability ratio.")
    epsilon_high: float | None = Field(
        None,
        gt=0,
        description="Clip range above 1; unset uses `epsilon` (DAPO recommends 0.28).",
    )
    kl_correction: bool = Field(
        True,
        description="Weight the per-token KL term by the probability ratio (TRL 1.16's default "
        "use_bias_correction_kl): same value on-policy, the unbiased reverse-KL gradient.",
    )
    iterations: int = Field(
        1,
        ge=1,
        description="Optimizer steps per generation round (TRL's num_iterations); >1 reuses a round's "
        "samples with clipped ratios.",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="How per-token losses are averaged: 'dapo' (TRL's default) over the step's "
        "completion tokens, 'grpo' per completion then over completions, 'bnpo' over a micro-batch's "
        "tokens, 'dr_grpo' over completions x max_new_tokens.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="What centred rewards are divided by: the group's std ('group'), the batch's, or "
        "nothing ('none', Dr. GRPO).",
    )
    max_prompt_length: int = Field(
        512,
        ge=1,
        description="Longest question in tokens (TRL's max_prompt_length). A longer one is refused at "
        "plan time with its file:line, or shortened, as long_prompts says.",
    )
    long_prompts: Literal["error", "truncate"] = Field(
        "error",
        description="What a question over max_prompt_length does: 'error' (plan-time error with "
        "file:line) or 'truncate' (keep its last max_prompt_length tokens, as TRL does; counted).",
    )
    duplicate_prompts: Literal["drop", "keep"] = Field(
        "drop",
        description="Lines with the same question and id: 'drop' keeps the first (the others are "
        "reported), 'keep' keeps them all as deliberate repeats that weigh a question more. Either way "
        "a fact's prompts stay on one side of the train/validation split.",
    )
    rewards: Annotated[dict[str, float | StageReward], AfterValidator(_known_rewards)] = Field(
        default_factory=lambda: {"correct": 1.0},
        description="Weight of each reward function by name: 'correct' (the world's check_answer), "
        "'correct_strict' (check_answer's strict reading: the reply must also restate the question "
        "rightly), "
        "'polite', 'ended' (stopped at the end-of-turn token), 'length' (penalty past 24 tokens), or "
        "one registered with ftlab.rl.register_reward; or a reward model as <name>: {stage: <an earlier "
        "reward stage>, weight: w}. Every built-in the prompts allow is logged even at weight 0.",
    )

    @property
    def needs_facts(self) -> bool:
        """Whether a listed reward (weight 0 included) judges replies against world facts:
        every prompt must then name one."""
        return any(name in FACT_REWARDS for name in self.rewards)

    @property
    def weights(self) -> dict[str, float]:
        """Each reward's weight by name (a reward model's included)."""
        return {n: v.weight if isinstance(v, StageReward) else v for n, v in self.rewards.items()}

    @property
    def reward_stages(self) -> dict[str, str]:
        """The reward-model rewards: name -> the reward stage whose model scores."""
        return {n: v.stage for n, v in self.rewards.items() if isinstance(v, StageReward)}
