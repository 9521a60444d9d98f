"""The stage registry: what each ``kind`` in a run config does (given).

A stage is a class with a ``kind``, the config sections it reads, a ``check`` run before
anything trains (``--dry-run`` prints the plan it validates) and a ``run``. Registering a
new kind (GRPO, distillation, ...) is one decorator; the runner never changes::

    @register_stage
    class DistillStage(Stage):
        kind = "distill"
        sections = ("data", "train")
        def run(self, ctx): ...

A kind must also be accepted by the config schema: built-in kinds are; a new one is added
with :func:`ftlab.config.register_stage_kind` (the decorator does it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ftlab.config import StageConfig, register_stage_kind
from ftlab.errors import ConfigError

if TYPE_CHECKING:
    from ftlab.pipeline.context import StageContext, StageResult


SECTIONS = ("data", "lora", "quant", "train", "eval", "export", "dpo", "grpo", "reward", "online_dpo",
            "distill")
"""The optional sections of a stage config, in the order problems are reported."""


class Stage:
    """Base class of pipeline stages.

    ``kind``: the config's ``kind`` value. ``sections``: the stage-config sections it reads
    (others given in the config are reported as unused by :meth:`check`, one problem each,
    starting with the section's name). ``trains``: whether
    it adds an adapter (the runner evaluates the model after training stages). ``needs_adapter``:
    it works on the input model's newest adapter (merge). ``distributed``: it can run as
    several data-parallel processes (a stage that cannot is refused at plan time).
    """

    kind: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()
    trains: ClassVar[bool] = False
    needs_adapter: ClassVar[bool] = False
    distributed: ClassVar[bool] = True

    def __init__(self, config: StageConfig) -> None:
        self.config = config

    def check(self, has_adapter: bool) -> list[str]:
        """Problems with this stage's config, given whether its input model will carry an
        unmerged adapter; empty when fine. Runs before anything is loaded or trained."""
        reads = ", ".join(self.sections) or "no section"
        problems = [f"{s}: this section is not used by a {self.kind} stage (it reads {reads}); "
                    "remove it or move it to the stage that needs it"
                    for s in SECTIONS
                    if getattr(self.config, s) is not None and s not in self.sections]
        if self.needs_adapter and not has_adapter:
            problems.append(f"a {self.kind} stage needs a trained adapter before it: put an "
                            "sft, dpo or grpo stage with LoRA earlier")
        return problems

    def references(self) -> list[tuple[str, str, str | None]]:
        """Earlier stages this one reads, as ``(config key, stage name, required kind)``
        (``("online_dpo.reward_model", "rm", "reward")``; kind None: any kind); plan time
        refuses a name that is not an earlier stage of that kind, with the key's file:line."""
        return []

    def inputs(self) -> dict:
        """What the stage reads besides its config, its data section's files and the model it
        receives (a prompt file, another run's model), each as what identifies its content
        (a sha256, a :func:`~ftlab.files.folder_listing`): part of the stage's fingerprint, so
        a changed input runs the stage again. Called at plan time, after :meth:`check`."""
        return {}

    def check_inputs(self, tokenizer) -> list[str]:
        """Problems only the run's tokenizer can see (a prompt longer than a limit in
        tokens); empty when fine. Runs at plan time, after :meth:`check`, when the base
        model is on this machine."""
        return []

    def describe(self) -> str:
        """One line for the printed plan."""
        return self.kind

    def run(self, ctx: StageContext) -> StageResult:  # pragma: no cover - abstract
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}
"""Registered stage classes by kind."""


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` the stage of ``cls.kind`` (and a valid config kind)."""
    register_stage_kind(cls.kind)
    STAGES[cls.kind] = cls
    return cls


def stage_for(config: StageConfig) -> Stage:
    """The registered stage of ``config.kind``, built for ``config`` (the built-in stages
    register when :mod:`ftlab.pipeline` is imported, which any import of this module does
    first)."""
    if config.kind not in STAGES:
        raise ConfigError(f"stage '{config.name}': no stage is registered for kind "
                          f"'{config.kind}' (known: {', '.join(sorted(STAGES))})")
    return STAGES[config.kind](config)
