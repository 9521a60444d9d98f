"""The ``distill`` section: the teacher, the student and the mode of a distillation stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftlab.config.fields import DATA_FILE_HINT, DataFile, Section, hint

EMBEDDED_STUDENT = "embedded-student"
"""``distill.student``'s name for the project's own student model (``data/student_model``)."""

MODES_WITH_PROMPTS = ("on_policy", "sequence")
"""Modes that ask ``distill.prompts``' questions (the student or the teacher answers them)."""


class DistillConfig(Section):
    """Distillation (distillation track, C.8): a teacher's knowledge into a smaller student.
    The stage trains LoRA adapters on the student and hands on the student."""

    student: str = Field(
        EMBEDDED_STUDENT,
        description="The student: 'embedded-student' (the project's own, data/student_model, a fifth "
        "of the base model with its tokenizer), a local HF model folder, or a cached Hub id. Its "
        "tokenizer must be the teacher's (same vocabulary, position for position).",
    )
    teacher: str | None = Field(
        None,
        description="The teacher as a model: a model folder (relative to the current directory, as "
        "model.name_or_path; e.g. another run's runs/capstone_rl/merge/model) or a cached Hub id. "
        "Unset (and no teacher_stage): the model the stage receives (the run's chain so far).",
    )
    teacher_stage: str | None = Field(
        None,
        description="The teacher as an earlier stage of this run: its name (the model it handed on). "
        "Give teacher or teacher_stage, not both.",
    )
    mode: Literal["offline", "on_policy", "sequence", "sft"] = Field(
        "offline",
        description="'offline': C.8 on the data's trained tokens, the teacher's distributions as "
        "targets. 'on_policy': as offline, but a fraction lmbda of the steps asks distill.prompts' "
        "questions to the student, which answers by sampling, and C.8 runs on its replies (GKD). "
        "'sequence': the teacher answers distill.prompts (samples replies each), the verifier keeps "
        "the right replies, and the student is fine-tuned (cross-entropy) on the data plus them. "
        "'sft': no teacher; the student fine-tuned on the data alone, the baseline the others are "
        "measured against.",
    )
    beta: float = Field(
        0.5, ge=0, le=1,
        description="Generalized JSD weight (offline, on_policy): 0 forward KL(teacher||student), 1 "
        "reverse KL(student||teacher), between: the JSD (TRL's DistillationConfig.beta; 0.5 its "
        "default).",
    )
    temperature: float = Field(
        1.0, gt=0,
        description="Both sides' logits are divided by it before the softmax of C.8 (no T^2 "
        "factor, as TRL); offline and on_policy.",
    )
    prompts: DataFile | None = Field(
        None,
        description="Questions for on_policy and sequence: a JSONL prompt file as a grpo stage reads "
        "({question, id, kind}; sequence needs each id to name a world fact, for the verifier), "
        "relative to the config file's folder.",
        json_schema_extra=hint(DATA_FILE_HINT),
    )
    lmbda: float = Field(
        0.5, ge=0, le=1,
        description="on_policy: the fraction of steps whose batch is the student's own replies to "
        "distill.prompts (GKD's and TRL's lmbda); the other steps are offline steps on the data.",
    )
    samples: int = Field(
        4, ge=1,
        description="sequence: replies the teacher samples for each question.",
    )
    sample_temperature: float = Field(
        0.7, ge=0,
        description="Sampling temperature of the replies (on_policy: the student's; sequence: the "
        "teacher's); 0 is greedy.",
    )
    max_new_tokens: int = Field(
        24, ge=1,
        description="Longest sampled reply, in tokens (on_policy, sequence).",
    )
    max_prompt_length: int = Field(
        128, ge=1,
        description="Longest question of distill.prompts in tokens (on_policy, sequence); a longer one "
        "is refused at plan time with its file:line.",
    )
    verifier: Literal["correct_strict", "correct"] = Field(
        "correct_strict",
        description="sequence: which replies are kept: the world's check_answer, strict (the right "
        "answer, no rival, the question's subject named) or lenient (the right answer, no rival).",
    )

    @model_validator(mode="after")
    def _settings_the_mode_uses(self) -> DistillConfig:
        """on_policy and sequence ask questions: they need a prompt file; a setting the mode
        does not read, given a value other than its default, is refused rather than silently
        ignored (a saved config, which spells out every default, still loads)."""
        if self.mode in MODES_WITH_PROMPTS and self.prompts is None:
            raise ValueError(f"mode '{self.mode}' asks questions: give distill.prompts (a JSONL "
                             "prompt file, e.g. ../data/rl/prompts.jsonl)")
        if self.teacher is not None and self.teacher_stage is not None:
            raise ValueError("give distill.teacher (a model) or distill.teacher_stage (an earlier "
                             "stage), not both")
        unused = sorted(name for name in UNUSED_BY[self.mode]  # set away from its default
                        if getattr(self, name) != type(self).model_fields[name].default)
        if unused:
            raise ValueError(f"mode '{self.mode}' does not read {', '.join(unused)}: remove "
                             f"{'it' if len(unused) == 1 else 'them'} or choose the mode that "
                             "does (see distill.mode)")
        return self


UNUSED_BY = {
    "offline": {"prompts", "lmbda", "samples", "sample_temperature", "max_new_tokens",
                "max_prompt_length", "verifier"},
    "on_policy": {"samples", "verifier"},
    "sequence": {"beta", "temperature", "lmbda"},
    "sft": {"teacher", "teacher_stage", "beta", "temperature", "prompts", "lmbda", "samples",
            "sample_temperature", "max_new_tokens", "max_prompt_length", "verifier"},
}
"""The settings each mode does not read."""
