"""The ``distill`` stage (given): a smaller student learns from the model the stage receives.

The model the stage receives (the run's chain so far: SFT, DPO, GRPO on the base) is the
teacher. ``distill.student`` names the student (the embedded student model by default); the
stage adds LoRA adapters to it and trains them on the data's assistant tokens with C.8's
divergence from the teacher's next-token distributions
(:class:`ftlab.distill.objective.DistillObjective`, ``offline`` mode; resumable like every
ftlab training). It hands on the *student* with its adapter: a merge and an export after it
work on the student. Besides the usual measurements (of the student), the report gives the
student's held-out divergence from the teacher before and after training.
"""

from __future__ import annotations

from pathlib import Path

from ftlab.config import DistillConfig, StageConfig
from ftlab.config.distill import EMBEDDED_STUDENT
from ftlab.data.prepare import prepare_sft
from ftlab.distill.objective import DistillObjective
from ftlab.errors import ConfigError
from ftlab.paths import student_model_dir
from ftlab.pipeline.context import ModelRef, StageContext, StageResult, load_model, model_problem
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.stages import _measured, _report_data, _TrainingStage
from ftlab.pipeline.training import (save_trained_adapter, stage_train_config, train_ftlab,
                                     trainable_model, training_curves)
from ftlab.train.distributed import on_main


def _distill(stage: StageConfig) -> DistillConfig:
    return stage.distill or DistillConfig()


def student_path(cfg: DistillConfig) -> str:
    """The student's model path: the embedded student's folder, or ``cfg.student`` itself."""
    return str(student_model_dir()) if cfg.student == EMBEDDED_STUDENT else cfg.student


def tokenizer_problem(teacher_tokenizer, student: str) -> str | None:
    """Why the student cannot learn from this teacher position for position (another
    vocabulary), or None."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(student).get_vocab()
    ours = teacher_tokenizer.get_vocab()
    if theirs == ours:
        return None
    differ = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
    return (f"distill.student: {student} has another tokenizer than the teacher ({len(theirs)} vs "
            f"{len(ours)} tokens; e.g. {differ}): its logits would not index the same "
            "vocabulary; give a student built with the teacher's tokenizer")


@register_stage
class DistillStage(_TrainingStage):
    """Offline logit distillation of the received model (teacher) into a student."""

    kind = "distill"
    sections = ("data", "lora", "train", "eval", "distill")
    distributed = False

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter)
        cfg = _distill(self.config)
        if self.config.backend != "ftlab":
            problems.append("backend: a distill stage runs on the ftlab backend")
        if cfg.student != EMBEDDED_STUDENT:
            missing = model_problem(cfg.student)
            if missing:
                problems.append(f"distill.student: {missing}")
        return problems

    def describe(self) -> str:
        cfg = _distill(self.config)
        return (super().describe() + f"; student {cfg.student}, {cfg.mode}, beta {cfg.beta:g}, "
                f"T {cfg.temperature:g}")

    def run(self, ctx: StageContext) -> StageResult:
        cfg, data_cfg, train = _distill(ctx.stage), ctx.stage.data, stage_train_config(ctx.stage)
        lora, quant = self._lora_and_quant()
        student = ModelRef(str(Path(student_path(cfg)).resolve())
                           if Path(student_path(cfg)).is_dir() else student_path(cfg))
        problem = tokenizer_problem(ctx.tokenizer, student.path)
        if problem:
            raise ConfigError(problem)
        data = prepare_sft(data_cfg, ctx.tokenizer)
        data_figures = _report_data(ctx, data.records, data.summary())
        teacher = load_model(ctx.model, ctx.run.model.dtype)
        model = trainable_model(student, ctx.run.model.dtype, lora, quant, train.seed)
        objective = DistillObjective(teacher, cfg.beta, cfg.temperature)
        before = objective.evaluate(model, [objective.collate(data.validation, ctx.tokenizer.pad_token_id)]
                                    ) if data.validation else {}
        figures = train_ftlab(model, data.train, data.validation, train, ctx.folder,
                              ctx.tokenizer.pad_token_id, data_cfg.max_length, objective,
                              ctx.progress, ctx.log)
        on_main(lambda: save_trained_adapter(model, ctx.folder, student))
        figures |= {"train_examples": len(data.train), **data_figures,
                    **({"before/val_divergence": before["val_loss"]} if before else {})}
        return on_main(lambda: _measured(ctx, student.with_adapter(ctx.folder / "adapter"),
                                         figures, training_curves(ctx.folder),
                                         {"adapter": str(ctx.folder / "adapter")}))
