"""A stage (its kind, name and sections) and a whole run: the top of every config file.

A new stage kind adds its section's module beside this one and one field to
:class:`StageConfig`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ftlab.config.adapters import LoRAConfig, QuantConfig
from ftlab.config.data import DataConfig
from ftlab.config.dpo import DPOConfig
from ftlab.config.evaluate import EvalConfig, ExportConfig
from ftlab.config.fields import Section
from ftlab.config.grpo import GRPOConfig
from ftlab.config.model import ModelConfig
from ftlab.config.distill import DistillConfig
from ftlab.config.online_dpo import OnlineDPOConfig
from ftlab.config.reward import RewardConfig
from ftlab.config.train import TrainConfig

STAGE_KINDS = ["sft", "dpo", "grpo", "reward", "online_dpo", "distill", "merge", "export", "eval"]
"""Stage kinds a config may name: the built-in ones and any registered later."""


def register_stage_kind(kind: str) -> None:
    """Accept ``kind`` as a stage kind in configs (:func:`ftlab.pipeline.register_stage`
    calls this)."""
    if kind not in STAGE_KINDS:
        STAGE_KINDS.append(kind)


def _known_stage_kind(kind: str) -> str:
    """Reject kinds no stage is registered for, with a did-you-mean."""
    if kind not in STAGE_KINDS:
        close = difflib.get_close_matches(kind, STAGE_KINDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown stage kind; known kinds: {', '.join(STAGE_KINDS)}{hint}")
    return kind


PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def plain_name(name: str) -> str:
    """Reject a stage name that is not a plain folder name: it names the stage's folder in
    the run folder, so a separator, ``..`` or an absolute path would write outside it."""
    if not PLAIN_NAME.fullmatch(name):
        raise ValueError("a stage name becomes its folder in the run folder, so it must be a "
                         "plain name (letters, digits, '.', '_', '-'; no '/', no leading '.')")
    return name


class StageConfig(Section):
    """One step of a pipeline; sections left out use their defaults."""

    kind: Annotated[str, AfterValidator(_known_stage_kind)] = Field(
        description="What the stage does: sft, dpo, grpo, reward, online_dpo, distill, merge, export or eval (or a kind registered "
        "with ftlab.pipeline.register_stage).",
    )
    name: Annotated[str, AfterValidator(plain_name)] | None = Field(
        None,
        min_length=1,
        description="Unique stage name, used for its folder in the run directory; defaults to `kind`. "
        "A plain folder name: letters, digits, '.', '_' and '-', not starting with '.'.",
    )
    backend: Literal["ftlab", "trl"] = Field(
        "ftlab",
        description="'ftlab': the course's own loop; 'trl': the same stage through TRL trainers.",
    )
    data: DataConfig | None = Field(None, description="Training data (sft, dpo, reward, distill; grpo, online_dpo: a prompt file).")
    lora: LoRAConfig | None = Field(None, description="Adapters (sft, dpo, grpo, reward, online_dpo, distill: on the student).")
    quant: QuantConfig | None = Field(None, description="4-bit base (sft, dpo, grpo).")
    train: TrainConfig | None = Field(None, description="Training loop (sft, dpo, grpo, reward, online_dpo, distill).")
    eval: EvalConfig | None = Field(None, description="Evaluation (eval).")
    export: ExportConfig | None = Field(None, description="Merge and export (merge, export).")
    dpo: DPOConfig | None = Field(None, description="Preference loss (dpo).")
    grpo: GRPOConfig | None = Field(None, description="Rewards and sampling (grpo).")
    reward: RewardConfig | None = Field(None, description="Reward-model loss (reward).")
    online_dpo: OnlineDPOConfig | None = Field(None, description="Judge and sampling (online_dpo).")
    distill: DistillConfig | None = Field(None, description="The teacher, the student and the mode (distill).")

    @model_validator(mode="after")
    def _default_name(self) -> StageConfig:
        """A stage without a name is named after its kind."""
        if self.name is None:
            self.name = self.kind
        return self


class PipelineConfig(Section):
    """A whole run: a base model and stages executed in order into ``run_dir``."""

    run_dir: Path = Field(
        Path("runs/latest"),
        description="Output folder of the run, relative to the current directory; created if missing.",
    )
    seed: int = Field(0, ge=0, description="Global seed of the run (Python, NumPy, torch).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    stages: list[StageConfig] = Field(
        min_length=1,
        description="Stages run in order, e.g. sft -> dpo -> grpo -> merge -> export.",
    )

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        """Stage names are unique; the error points at the second use."""
        first_use: dict[str, int] = {}
        for index, stage in enumerate(stages):
            if stage.name in first_use:
                raise PydanticCustomError(
                    "duplicate_stage_name",
                    "duplicate stage name '{name}' (stage {first} has it too); give each stage a unique 'name'",
                    {"name": stage.name, "first": first_use[stage.name], "loc_suffix": (index, "name")},
                )
            first_use[stage.name] = index
        return stages
