"""The ``dpo`` section: the preference loss of a dpo stage (capstone)."""

from __future__ import annotations

from pydantic import Field

from ftlab.config.fields import Section


class DPOConfig(Section):
    """Direct preference optimization (capstone)."""

    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the implicit KL penalty to the reference model. Typical 0.05-0.5.",
    )
    sft_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of an added SFT loss on the chosen response; 0 gives plain DPO.",
    )
