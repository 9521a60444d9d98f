"""The ``online_dpo`` section: sampling, the judge and the loss of an online DPO stage (RLAIF)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftlab.config.fields import Section

JUDGES = ("reward_model", "llm", "verifier", "verifier_lenient")
"""Judges an online DPO stage can use (:mod:`ftlab.reward.judges`)."""


class OnlineDPOConfig(Section):
    """Online DPO with AI feedback: the policy samples two replies per prompt, a judge picks."""

    @model_validator(mode="after")
    def _reward_model_named(self) -> OnlineDPOConfig:
        """The reward-model judge needs the reward stage it reads."""
        if self.judge == "reward_model" and not self.reward_model:
            raise ValueError("judge 'reward_model' needs reward_model: the name of an earlier "
                             "reward stage")
        return self

    judge: Literal[JUDGES] = Field(
        "reward_model",
        description="Who picks the better reply: 'reward_model' (the reward stage named by reward_model), "
        "'llm' (the stage's input model asked 'A or B?' in both orders), 'verifier' (the world's strict "
        "check_answer; both or neither right is a tie, left out) or 'verifier_lenient'.",
    )
    reward_model: str | None = Field(
        None,
        description="Name of an earlier reward stage whose reward model judges (judge: reward_model).",
    )
    beta: float = Field(0.1, gt=0, description="DPO's beta: strength of the implicit KL penalty to the "
                        "reference (the stage's input model).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of the chosen replies' cross-entropy added to "
                              "the loss; 0 is TRL's online DPO.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the two replies.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(24, ge=1, le=1024, description="Token budget of a sampled reply.")
    max_prompt_length: int = Field(512, ge=1, description="Longest question in tokens; a longer one is "
                                   "refused at plan time with its file:line.")
    duplicate_prompts: Literal["drop", "keep"] = Field(
        "drop",
        description="Lines with the same question and id: 'drop' keeps the first, 'keep' keeps "
        "deliberate repeats.",
    )
