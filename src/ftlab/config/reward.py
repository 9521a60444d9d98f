"""The ``reward`` section: the loss of a reward-model stage (rewards track)."""

from __future__ import annotations

from pydantic import Field

from ftlab.config.fields import Section


class RewardConfig(Section):
    """A reward model trained on preference pairs (rewards track, C.6 and C.7)."""

    center_coefficient: float | None = Field(
        None,
        ge=0,
        description="Weight of mean((r_chosen + r_rejected)^2) added to the Bradley-Terry loss, "
        "keeping rewards near 0 (TRL's center_rewards_coefficient; 0.01 in its docs); none by default.",
    )
