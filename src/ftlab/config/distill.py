"""The ``distill`` section: the student and the divergence of a distillation stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftlab.config.fields import Section

EMBEDDED_STUDENT = "embedded-student"
"""``distill.student``'s name for the project's own student model (``data/student_model``)."""


class DistillConfig(Section):
    """Logit distillation (distillation track, C.8): the model the stage receives is the
    teacher; the stage trains LoRA adapters on the student and hands on the student."""

    student: str = Field(
        EMBEDDED_STUDENT,
        description="The student: 'embedded-student' (the project's own, data/student_model, a fifth "
        "of the base model with its tokenizer), a local HF model folder, or a cached Hub id. Its "
        "tokenizer must be the teacher's (same vocabulary, position for position).",
    )
    mode: Literal["offline"] = Field(
        "offline",
        description="'offline': the teacher's distributions on the data's assistant tokens. (On-policy "
        "and sequence-level distillation are not built yet.)",
    )
    beta: float = Field(
        0.5, ge=0, le=1,
        description="Generalized JSD weight: 0 forward KL(teacher||student), 1 reverse KL(student||"
        "teacher), between: the JSD (TRL's DistillationConfig.beta; 0.5 its default).",
    )
    temperature: float = Field(
        1.0, gt=0,
        description="Both sides' logits are divided by it before the softmax (no T^2 factor, as TRL).",
    )
