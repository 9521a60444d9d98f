"""The ``distill`` stage (given): a smaller student learns from a teacher.

The teacher is a model folder or Hub id (``distill.teacher``), an earlier stage's model
(``distill.teacher_stage``: its name), or else the model the stage receives (the run's chain
so far). ``distill.student``
names the student (the embedded student model by default); the stage adds LoRA adapters to
it and trains them (resumable like every ftlab training) in one of four modes:

- ``offline``: C.8's divergence from the teacher's next-token distributions on the data's
  trained tokens (:class:`ftlab.distill.objective.DistillObjective`);
- ``on_policy``: the same, but a fraction ``lmbda`` of the steps are the student's own
  sampled replies to ``distill.prompts`` (GKD);
- ``sequence``: the teacher answers ``distill.prompts`` (``samples`` replies each), the
  world's verifier keeps the right ones (:mod:`ftlab.distill.sequence`; written to
  ``<stage>/teacher_replies.jsonl`` and reused when the stage resumes; the teacher is loaded
  only to sample), and the student is fine-tuned with cross-entropy on the data plus them
  (``data.replay_fraction`` counted over both);
- ``sft``: no teacher; the student fine-tuned on the data alone (the baseline).

It hands on the *student* with its adapter: a merge and an export after it work on the
student. Besides the usual measurements (of the student), the report gives, for offline and
on_policy, the student's divergence from the teacher on the data's validation split before
training (``before/val_divergence``) beside the training's ``best_val_loss``; for sequence,
how many replies were kept per fact kind.

Plan time refuses a student or teacher whose tokenizer is not the run model's, a teacher
stage that does not come before, a missing student, teacher or prompt file, a question over
``max_prompt_length`` tokens; a student larger than its teacher is a warning when the stage
starts. The prompt file's content and a teacher folder's files are part of the stage's
fingerprint: a changed one runs the stage again. The student is recorded as the stage's
``base_model`` artifact, so an export after it names the student in its model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftlab.config import DistillConfig, StageConfig
from ftlab.config.distill import EMBEDDED_STUDENT, MODES_WITH_PROMPTS
from ftlab.data.prepare import prepare_sft
from ftlab.distill.objective import DistillObjective, OnPolicy
from ftlab.distill.sequence import KeptReplies, verified_replies
from ftlab.errors import ConfigError
from ftlab.files import folder_listing, sha256_file, write_text_atomically
from ftlab.paths import base_model_dir, student_model_dir
from ftlab.pipeline.context import (EMBEDDED, ModelRef, StageContext, StageResult, load_model,
                                    model_problem)
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.stages import _measured, _report_data, _TrainingStage
from ftlab.pipeline.training import (resolvable_base, save_trained_adapter, stage_train_config,
                                     train_ftlab, trainable_model, training_curves)
from ftlab.progress import progress_bar
from ftlab.rl.prompts import (MAX_LISTED, load_prompts, long_prompt_problems, long_prompts,
                              prompt_problems)
from ftlab.train.batching import length_sorted_batches
from ftlab.train.distributed import on_main
from ftlab.train.objective import SFTObjective

TEACHER_REPLIES = "teacher_replies.jsonl"
"""The sequence mode's kept replies (chat records an sft stage can read), in the stage folder."""
TEACHER_TALLY = "teacher_replies.figures.json"
"""Their counts per fact kind; written after them, so its presence says they are complete."""


def _distill(stage: StageConfig) -> DistillConfig:
    return stage.distill or DistillConfig()


def student_path(cfg: DistillConfig) -> str:
    """The student's model path: the embedded student's folder, or ``cfg.student`` itself."""
    return str(student_model_dir()) if cfg.student == EMBEDDED_STUDENT else cfg.student


def tokenizer_problem(key: str, path: str, tokenizer) -> str | None:
    """Why the model at ``path`` cannot be compared position by position with the run's
    model, whose tokenizer is ``tokenizer`` (another vocabulary), or None."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(path).get_vocab()
    ours = tokenizer.get_vocab()
    if theirs == ours:
        return None
    differ = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
    return (f"{key}: {path} has another tokenizer than the run's model ({len(theirs)} vs "
            f"{len(ours)} tokens; e.g. {differ}): teacher and student logits must index the "
            "same vocabulary, and the stage reads its data with the run's tokenizer; give a "
            "model built with the run model's tokenizer")


def width_problem(student: str, teacher: ModelRef) -> str | None:
    """Why the student's logits cannot be compared with the teacher's (another width, the
    same tokenizer padded differently), or None; reads both models' configs only."""
    from transformers import AutoConfig

    width = AutoConfig.from_pretrained(student).vocab_size
    theirs = AutoConfig.from_pretrained(
        base_model_dir() if teacher.path == EMBEDDED else teacher.path).vocab_size
    if width == theirs:
        return None
    return (f"distill.student: {student} gives logits over {width} tokens, the teacher over "
            f"{theirs} (same tokenizer, padded differently): C.8 compares them position by "
            "position over one vocabulary")


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_stage
class DistillStage(_TrainingStage):
    """Distillation of a teacher into a student (see module doc)."""

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
        elif cfg.student != EMBEDDED_STUDENT and (missing := model_problem(cfg.student)):
            problems.append(f"distill.student: {missing}")
        if cfg.mode in MODES_WITH_PROMPTS and cfg.prompts is not None:
            found = prompt_problems(cfg.prompts, cfg.mode == "sequence")[1]
            problems += [f"distill.prompts: {p}" for p in found[:MAX_LISTED]] + (
                [f"distill.prompts: ... and {len(found) - MAX_LISTED} more problems"]
                if len(found) > MAX_LISTED else [])
        return problems

    def references(self) -> list[tuple[str, str, str | None]]:
        name = _distill(self.config).teacher_stage
        return [("distill.teacher_stage", name, None)] if name else []

    def inputs(self) -> dict:
        """The prompt file's sha256 and a teacher folder's files (another run may retrain it)."""
        cfg, found = _distill(self.config), {}
        if cfg.mode in MODES_WITH_PROMPTS and cfg.prompts is not None and Path(cfg.prompts).is_file():
            found["prompts"] = sha256_file(Path(cfg.prompts))
        if cfg.mode != "sft" and cfg.teacher is not None and Path(cfg.teacher).is_dir():
            found["teacher"] = folder_listing(Path(cfg.teacher))
        return found

    def check_inputs(self, tokenizer) -> list[str]:
        """A teacher given as a model must be there (checked with the models, as the run's
        own: another run may make it); it and the student must have the run model's
        tokenizer; no question may be over ``max_prompt_length`` tokens."""
        cfg = _distill(self.config)
        models = [("distill.student", student_path(cfg))]
        if cfg.mode != "sft" and cfg.teacher not in (None, EMBEDDED):
            if missing := model_problem(cfg.teacher):
                return [f"distill.teacher: {missing}; a model another run makes (its "
                        "merge/model) is there once that run has finished: run its config first"]
            models.append(("distill.teacher", cfg.teacher))
        found = [problem for key, path in models
                 if (problem := tokenizer_problem(key, path, tokenizer))]
        if cfg.mode in MODES_WITH_PROMPTS and cfg.prompts is not None:
            records = prompt_problems(cfg.prompts, cfg.mode == "sequence")[0]
            over = long_prompts(cfg.prompts, records, tokenizer, cfg.max_prompt_length)
            found += [f"distill.prompts: {p}" for p in long_prompt_problems(
                cfg.prompts, over[:MAX_LISTED], cfg.max_prompt_length, "distill")]
        return found

    def describe(self) -> str:
        cfg = _distill(self.config)
        teacher = "" if cfg.mode == "sft" else (
            f", teacher {cfg.teacher or cfg.teacher_stage or 'the received model'}")
        divergence = (f", beta {cfg.beta:g}, T {cfg.temperature:g}"
                      if cfg.mode in ("offline", "on_policy") else "")
        extra = {"on_policy": f", lmbda {cfg.lmbda:g}",
                 "sequence": f", {cfg.samples} replies per question, {cfg.verifier}"}.get(cfg.mode, "")
        return super().describe() + f"; student {cfg.student}, {cfg.mode}{teacher}{divergence}{extra}"

    def _teacher(self, ctx: StageContext) -> ModelRef:
        cfg = _distill(ctx.stage)
        if cfg.teacher_stage is not None:
            return ctx.earlier[cfg.teacher_stage].model
        return ModelRef(cfg.teacher) if cfg.teacher is not None else ctx.model

    def _kept_replies(self, ctx: StageContext, teacher: ModelRef, device: torch.device,
                      seed: int) -> tuple[list[dict], dict[str, float]]:
        """The sequence mode's verified teacher replies and their figures: read back from the
        stage folder when an interrupted run of this stage wrote them (the figures file is
        written last), else sampled on ``device`` and written there. The teacher is loaded
        only to sample, and let go after."""
        cfg = _distill(ctx.stage)
        replies, tally = ctx.folder / TEACHER_REPLIES, ctx.folder / TEACHER_TALLY
        if tally.is_file():
            records = [json.loads(line) for line in replies.read_text().splitlines()]
            ctx.log(f"  teacher: {len(records)} verified replies read back from {replies.name}")
            return records, json.loads(tally.read_text())
        prompts = [record for _, record in load_prompts(cfg.prompts, needs_fact=True)]
        model = load_model(teacher, ctx.run.model.dtype).to(device)
        with progress_bar(total=len(prompts), desc="teacher replies", unit="question",
                          disable=not ctx.progress) as bar:
            kept: KeptReplies = verified_replies(
                model, ctx.tokenizer, prompts, cfg.samples, cfg.sample_temperature,
                cfg.max_new_tokens, cfg.verifier, torch.Generator(device).manual_seed(seed),
                on_batch=bar.update)
        del model
        ctx.log(f"  teacher: {kept.summary()} -> {replies.name}")
        figures = kept.figures()
        write_text_atomically(replies, "".join(json.dumps(r) + "\n" for r in kept.records))
        write_text_atomically(tally, json.dumps(figures))
        return kept.records, figures

    def run(self, ctx: StageContext) -> StageResult:
        cfg, data_cfg, train = _distill(ctx.stage), ctx.stage.data, stage_train_config(ctx.stage)
        lora, quant = self._lora_and_quant()
        student = ModelRef(resolvable_base(student_path(cfg)))
        teacher = self._teacher(ctx) if cfg.mode != "sft" else None
        if teacher is not None and (problem := width_problem(student.path, teacher)):
            raise ConfigError(problem)
        model = trainable_model(student, ctx.run.model.dtype, lora, quant, train.seed)
        device = next(model.parameters()).device
        figures: dict[str, float] = {}
        kept: list[dict] = []
        if cfg.mode == "sequence":
            kept, figures = self._kept_replies(ctx, teacher, device, train.seed)
        data = prepare_sft(data_cfg, ctx.tokenizer, [r["messages"] for r in kept])
        data_figures = _report_data(ctx, data.records, data.summary())
        if cfg.mode in ("offline", "on_policy"):
            teacher_model = load_model(teacher, ctx.run.model.dtype)
            if _parameters(model) > _parameters(teacher_model):
                ctx.log(f"  warning: the student has more parameters ({_parameters(model):,}) "
                        f"than its teacher ({_parameters(teacher_model):,}); distillation "
                        "usually goes the other way")
            on_policy = None
            if cfg.mode == "on_policy":
                questions = [r["question"] for _, r in load_prompts(cfg.prompts, needs_fact=False)]
                on_policy = OnPolicy(questions, ctx.tokenizer, cfg.lmbda, cfg.sample_temperature,
                                     cfg.max_new_tokens)
            objective = DistillObjective(teacher_model, cfg.beta, cfg.temperature, on_policy)
            del teacher_model  # the objective holds it until training ends
            if data.validation:
                before = objective.evaluate(model, length_sorted_batches(
                    data.validation, train.batch_size, ctx.tokenizer.pad_token_id,
                    objective.collate))
                figures["before/val_divergence"] = before["val_loss"]
        else:
            objective = SFTObjective()
        figures |= train_ftlab(model, data.train, data.validation, train, ctx.folder,
                               ctx.tokenizer.pad_token_id, data_cfg.max_length, objective,
                               ctx.progress, ctx.log)
        del objective  # the teacher is not needed for the measurements
        on_main(lambda: save_trained_adapter(model, ctx.folder, student))
        figures |= {"train_examples": len(data.train), **data_figures}
        return on_main(lambda: _measured(ctx, student.with_adapter(ctx.folder / "adapter"),
                                         figures, training_curves(ctx.folder),
                                         {"adapter": str(ctx.folder / "adapter"),
                                          "base_model": student.path}))

