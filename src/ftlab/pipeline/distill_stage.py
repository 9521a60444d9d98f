"""The ``distill`` stage (given): a smaller student learns from the model the stage receives.

The model the stage receives (the run's chain so far: SFT, DPO, GRPO on the base) is the
teacher. ``distill.student`` names the student (the embedded student model by default); the
stage adds LoRA adapters to it and trains them on the data's assistant tokens with C.8's
divergence from the teacher's next-token distributions
(:class:`ftlab.distill.objective.DistillObjective`, ``offline`` mode; resumable like every
ftlab training). It hands on the *student* with its adapter: a merge and an export after it
work on the student. Besides the usual measurements (of the student), the report gives the
student's divergence from the teacher on the data's validation split before training
(``before/val_divergence``) beside the training's ``best_val_loss`` (the best evaluation
during training; the adapter handed on is the last one).

Not yet: on-policy and sequence-level modes; the vocabulary check runs when the stage starts,
not at plan time; an export after a distill stage still names the run's base model in its
model card; the embedded student is recorded by its absolute folder.
"""

from __future__ import annotations


from ftlab.config import DistillConfig, StageConfig
from ftlab.config.distill import EMBEDDED_STUDENT
from ftlab.data.prepare import prepare_sft
from ftlab.distill.objective import DistillObjective
from ftlab.errors import ConfigError
from ftlab.paths import student_model_dir
from ftlab.pipeline.context import (EMBEDDED, ModelRef, StageContext, StageResult, load_model,
                                    model_problem)
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.stages import _measured, _report_data, _TrainingStage
from ftlab.pipeline.training import (resolvable_base, save_trained_adapter, stage_train_config,
                                     train_ftlab, trainable_model, training_curves)
from ftlab.train.batching import length_sorted_batches
from ftlab.train.distributed import on_main


def _distill(stage: StageConfig) -> DistillConfig:
    return stage.distill or DistillConfig()


def student_path(cfg: DistillConfig) -> str:
    """The student's model path: the embedded student's folder, or ``cfg.student`` itself."""
    return str(student_model_dir()) if cfg.student == EMBEDDED_STUDENT else cfg.student


def vocabulary_problem(teacher_tokenizer, teacher_vocab_size: int, student: str) -> str | None:
    """Why the student cannot learn from this teacher position for position (another
    tokenizer, or logits of another width), or None."""
    from transformers import AutoConfig, AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(student).get_vocab()
    ours = teacher_tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
        return (f"distill.student: {student} has another tokenizer than the teacher "
                f"({len(theirs)} vs {len(ours)} tokens; e.g. {differ}): its logits would not "
                "index the same vocabulary; give a student built with the teacher's tokenizer")
    width = AutoConfig.from_pretrained(student).vocab_size
    if width != teacher_vocab_size:
        return (f"distill.student: {student} gives logits over {width} tokens, the teacher over "
                f"{teacher_vocab_size} (same tokenizer, padded differently): C.8 compares them "
                "position by position over one vocabulary")
    return None


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
        if cfg.student == EMBEDDED:
            problems.append("distill.student: 'embedded' is the base model; the embedded student "
                            f"is '{EMBEDDED_STUDENT}'")
        elif cfg.student != EMBEDDED_STUDENT:
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
        student = ModelRef(resolvable_base(student_path(cfg)))
        teacher = load_model(ctx.model, ctx.run.model.dtype)
        problem = vocabulary_problem(ctx.tokenizer, teacher.config.vocab_size, student.path)
        if problem:
            raise ConfigError(problem)
        data = prepare_sft(data_cfg, ctx.tokenizer)
        data_figures = _report_data(ctx, data.records, data.summary())
        model = trainable_model(student, ctx.run.model.dtype, lora, quant, train.seed)
        objective = DistillObjective(teacher, cfg.beta, cfg.temperature)
        before = objective.evaluate(model, length_sorted_batches(
            data.validation, train.batch_size, ctx.tokenizer.pad_token_id, objective.collate)
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
