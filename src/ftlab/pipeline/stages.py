"""The built-in stages: ``sft``, ``dpo``, ``merge``, ``export``, ``eval`` (given).

Training stages (``sft``, ``dpo``) add a LoRA adapter to the model they receive, with the
``ftlab`` or ``trl`` backend, and measure the result (:func:`ftlab.pipeline.measure.measure`).
With several data-parallel processes every process runs a training stage's ``run`` (they
train together); rank 0 alone writes its files and measures, and every process returns
rank 0's result (:func:`ftlab.train.distributed.on_main`).
``merge`` folds the newest adapter into the weights in float32 and checks the logits;
``export`` writes the merged model as a transformers folder and GGUF files, each loaded back
and compared; ``eval`` measures the model it receives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftlab.align import DPOObjective, add_reference_logprobs, pair_logprobs, prepare_dpo
from ftlab.align.preferences import load_pairs
from ftlab.config import DPOConfig, EvalConfig, ExportConfig, LoRAConfig, QuantConfig, StageConfig
from ftlab.data.loading import LoadReport
from ftlab.data.prepare import prepare_sft
from ftlab.errors import DataError
from ftlab.export import export_gguf, export_hf, merge_for_export, verify_gguf, verify_hf_export
from ftlab.models.build import question_items
from ftlab.paths import data_dir
from ftlab.pipeline import trl_backend
from ftlab.pipeline.context import ModelRef, StageContext, StageResult, load_model
from ftlab.pipeline.measure import file_size_mb, heldout_pairs, measure
from ftlab.pipeline.registry import Stage, register_stage
from ftlab.pipeline.training import (publish_adapter, resolvable_base, save_trained_adapter,
                                     stage_train_config, target_names, train_ftlab,
                                     trainable_model, training_curves)
from ftlab.train.distributed import on_main, ranks
from ftlab.train.objective import SFTObjective

DATA_REPORT = "data_report.txt"
"""In a training stage's folder: every record its data loading rejected, with file:line."""

VERIFY_QUESTIONS = 8
"""Held-out questions answered by each exported model and by the model it came from."""


def _eval_config(stage: StageConfig) -> EvalConfig:
    return stage.eval or EvalConfig()


def _measured(ctx: StageContext, model: ModelRef, figures: dict[str, float],
              curves: dict | None = None, artifacts: dict | None = None) -> StageResult:
    """A stage result with ``model`` measured (figures prefixed ``eval/``)."""
    evaluated, samples = measure(load_model(model), ctx.tokenizer, _eval_config(ctx.stage),
                                 heldout_pairs(_eval_config(ctx.stage), ctx.tokenizer),
                                 ctx.progress)
    return StageResult(model, {**figures, **{f"eval/{k}": v for k, v in evaluated.items()}},
                       artifacts or {}, curves or {}, samples)


def _data_files(stage: StageConfig) -> str:
    """The stage's data file names (``a.jsonl + b.jsonl`` for a mixture)."""
    data = stage.data
    if data is None:
        return "no data"
    paths = [data.path] if data.path else [m.path for m in data.mixture]
    return " + ".join(Path(p).name for p in paths)


def _report_data(ctx: StageContext, records: LoadReport, details: str) -> dict[str, float]:
    """Say what the stage's data loading kept and refused (one line, plus the first few
    rejections with file:line), write every rejection to ``<stage>/data_report.txt`` and
    return the counts as figures for the report."""
    if ranks().is_main:
        (ctx.folder / DATA_REPORT).write_text(f"{records.summary()}\n{details}\n")
    more = f" (all of them in {ctx.folder / DATA_REPORT})" if records.rejected else ""
    ctx.log(f"  data: {records.brief()}{more}\n  data: {details}")
    return {"data/records": records.total, "data/rejected": len(records.rejected)}


def preference_file_problems(stage: StageConfig) -> list[str]:
    """Plan-time problems of a stage's preference file (dpo, reward): a mixture instead of one
    file, a file that cannot be read, no valid pair (a file without ``chosen`` / ``rejected``
    says so with file:line for each record), or more refused records than
    ``data.max_rejected_fraction`` allows."""
    data = stage.data
    if data is None:
        return []
    if data.path is None:
        return [f"data.mixture: a {stage.kind} stage reads one preference file: give data.path"]
    try:
        _, report = load_pairs(data.path)
        report.refuse_above(data.max_rejected_fraction)
    except (DataError, OSError) as e:
        return [f"data.path: {e}"]
    return []


class _TrainingStage(Stage):
    sections = ("data", "lora", "quant", "train", "eval")
    trains = True

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter)
        if self.config.data is None:
            problems.append(f"a {self.kind} stage needs a data section with a path")
        quant = self.config.quant or QuantConfig()
        if self.config.backend == "trl" and quant.enabled:
            problems.append("backend 'trl' with quant.enabled is not supported by the pipeline; "
                            "use backend: ftlab (QLoRA with ftlab's NF4 or bitsandbytes)")
        train = stage_train_config(self.config)
        if self.config.backend == "trl" and (train.schedule, train.warmup_start) != ("cosine", 0):
            problems.append("train.schedule: the trl backend runs transformers' cosine schedule "
                            "warmed up from 0; the other schedules (M4.7) and warmup_start run on "
                            "backend: ftlab")
        return problems

    def describe(self) -> str:
        lora, train = self.config.lora or LoRAConfig(), stage_train_config(self.config)
        quant = self.config.quant or QuantConfig()
        length = (f"{train.max_steps} steps" if train.max_steps
                  else f"{train.epochs:g} epoch{'' if train.epochs == 1 else 's'}")
        return (f"{self.kind} [{self.config.backend}] on {_data_files(self.config)}: "
                f"{'Q' if quant.enabled else ''}LoRA r={lora.r} alpha={lora.alpha:g}, lr {train.lr:g}, "
                f"{length}, batch {train.batch_size}x{train.grad_accum}")

    def _lora_and_quant(self) -> tuple[LoRAConfig, QuantConfig]:
        return self.config.lora or LoRAConfig(), self.config.quant or QuantConfig()


@register_stage
class SFTStage(_TrainingStage):
    """Supervised fine-tuning on conversations (replay optional) with a LoRA adapter."""

    kind = "sft"

    def describe(self) -> str:
        replay = self.config.data.replay_fraction if self.config.data else 0
        return super().describe() + (f", {replay:.0%} general-text replay" if replay else "")

    def run(self, ctx: StageContext) -> StageResult:
        data_cfg, train = ctx.stage.data, stage_train_config(ctx.stage)
        lora, quant = self._lora_and_quant()
        data = prepare_sft(data_cfg, ctx.tokenizer)
        data_figures = _report_data(ctx, data.records, data.summary())
        pad_id = ctx.tokenizer.pad_token_id
        if ctx.stage.backend == "ftlab":
            model = trainable_model(ctx.model, ctx.run.model.dtype, lora, quant, train.seed)
            figures = train_ftlab(model, data.train, data.validation, train, ctx.folder, pad_id,
                                  data_cfg.max_length, SFTObjective(), ctx.progress, ctx.log)
            on_main(lambda: save_trained_adapter(model, ctx.folder, ctx.model))
        else:
            model = load_model(ctx.model, ctx.run.model.dtype)
            figures = trl_backend.train_sft(model, ctx.tokenizer, data.train, data.validation,
                                            train, lora, target_names(model, lora), ctx.folder,
                                            data_cfg.max_length, ctx.progress)
            on_main(lambda: publish_adapter(ctx.model, ctx.folder / "adapter",
                                            ctx.folder / "adapter"))
        figures |= {"train_examples": len(data.train), "replay_examples": data.replayed,
                    **data_figures}
        return on_main(lambda: _measured(ctx, ctx.model.with_adapter(ctx.folder / "adapter"),
                                         figures, training_curves(ctx.folder),
                                         {"adapter": str(ctx.folder / "adapter")}))


@register_stage
class DPOStage(_TrainingStage):
    """Direct preference optimisation (+ optional SFT term) with a fresh LoRA adapter; the
    reference is the model the stage receives."""

    kind = "dpo"
    sections = (*_TrainingStage.sections, "dpo")

    def check(self, has_adapter: bool) -> list[str]:
        return super().check(has_adapter) + preference_file_problems(self.config)

    def describe(self) -> str:
        dpo = self.config.dpo or DPOConfig()
        return super().describe() + f", beta {dpo.beta:g}, SFT term x{dpo.sft_weight:g}"

    def run(self, ctx: StageContext) -> StageResult:
        data_cfg, train = ctx.stage.data, stage_train_config(ctx.stage)
        lora, quant = self._lora_and_quant()
        dpo = ctx.stage.dpo or DPOConfig()
        pairs = prepare_dpo(data_cfg, ctx.tokenizer)
        data_figures = _report_data(ctx, pairs.load_report, pairs.summary())
        held = heldout_pairs(_eval_config(ctx.stage), ctx.tokenizer, data_cfg.max_length)
        pad_id = ctx.tokenizer.pad_token_id
        if ctx.stage.backend == "ftlab":
            model = trainable_model(ctx.model, ctx.run.model.dtype, lora, quant, train.seed)
            reference = pair_logprobs(model, held, pad_id)  # adapters still zero: the reference
            train_pairs, val_pairs = (add_reference_logprobs(model, p, pad_id, progress=ctx.progress)
                                      for p in (pairs.train, pairs.validation))
            figures = train_ftlab(model, train_pairs, val_pairs, train, ctx.folder, pad_id,
                                  data_cfg.max_length, DPOObjective(dpo.beta, dpo.sft_weight),
                                  ctx.progress, ctx.log)
            on_main(lambda: save_trained_adapter(model, ctx.folder, ctx.model))
        else:
            model = load_model(ctx.model, ctx.run.model.dtype)
            reference = pair_logprobs(model, held, pad_id)
            records = lambda ps: [{"prompt": p.prompt,  # noqa: E731
                                   "chosen": [{"role": "assistant", "content": p.chosen}],
                                   "rejected": [{"role": "assistant", "content": p.rejected}]}
                                  for p in ps]
            figures = trl_backend.train_dpo(model, ctx.tokenizer, records(pairs.train_pairs),
                                            records(pairs.validation_pairs), train, lora, dpo,
                                            target_names(model, lora), ctx.folder,
                                            data_cfg.max_length, ctx.progress)
            on_main(lambda: publish_adapter(ctx.model, ctx.folder / "adapter",
                                            ctx.folder / "adapter"))
        new = ctx.model.with_adapter(ctx.folder / "adapter")
        figures |= {"train_pairs": len(pairs.train), **data_figures}

        def measured() -> StageResult:
            policy = pair_logprobs(load_model(new), held, pad_id)
            return _measured(ctx, new, figures | _reward_figures(policy, reference, held, dpo.beta),
                             training_curves(ctx.folder), {"adapter": str(ctx.folder / "adapter")})
        return on_main(measured)


def _reward_figures(policy: tuple[torch.Tensor, torch.Tensor],
                    reference: tuple[torch.Tensor, torch.Tensor], pairs: list[dict],
                    beta: float) -> dict[str, float]:
    """Held-out implicit-reward accuracy and mean margin per pair type."""
    margins = beta * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
    figures = {}
    for pair_type in sorted({p["pair_type"] for p in pairs}):
        chosen = torch.tensor([p["pair_type"] == pair_type for p in pairs])
        figures[f"reward_accuracy/{pair_type}"] = float((margins[chosen] > 0).double().mean())
        figures[f"reward_margin/{pair_type}"] = float(margins[chosen].mean())
    return figures


@register_stage
class MergeStage(Stage):
    """Fold the newest adapter into the weights (float32) and check the logits agree."""

    kind = "merge"
    needs_adapter = True

    def describe(self) -> str:
        return "merge the newest adapter into the weights (float32), logits checked"

    def run(self, ctx: StageContext) -> StageResult:
        model = load_model(ctx.model, keep_last_adapter=True)
        questions = [q for _, q in question_items(data_dir(), "heldout_chat")[:VERIFY_QUESTIONS]]
        ids = ctx.tokenizer(questions, return_tensors="pt", padding=True).input_ids
        merged = merge_for_export(model, ids)
        folder = ctx.folder / "model"
        merged.model.save_pretrained(folder)
        ctx.tokenizer.save_pretrained(folder)
        return StageResult(ModelRef(str(folder)),
                           {"merge_max_logit_diff": merged.max_logit_diff,
                            "merged_size_mb": file_size_mb(folder)}, {"merged": str(folder)})


def _last_measurements(ctx: StageContext) -> dict[str, float]:
    """The ``eval/`` figures of the newest earlier stage that measured its model (the model
    a merge and export hand on unchanged)."""
    for result in reversed(list(ctx.earlier.values())):
        figures = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
        if figures:
            return figures
    return {}


def base_model_of(ctx: StageContext) -> str:
    """The base model under the model this stage receives: the run's ``model.name_or_path``,
    unless an earlier stage changed models (a distill stage's student), which it records as
    its ``base_model`` artifact."""
    changed = [r.artifacts["base_model"] for r in ctx.earlier.values() if "base_model" in r.artifacts]
    return changed[-1] if changed else ctx.run.model.name_or_path


def _provenance(ctx: StageContext) -> dict:
    """What made the exported model: the base, and each earlier stage's kind and figures
    that are not measurements (steps, losses, merge check)."""
    return {"base_model": base_model_of(ctx), "seed": ctx.run.seed,
            "stages": {name: {"kind": next(s.kind for s in ctx.run.stages if s.name == name),
                              **{k: v for k, v in r.metrics.items() if not k.startswith("eval/")}}
                       for name, r in ctx.earlier.items()}}


@register_stage
class ExportStage(Stage):
    """Write the merged model as a transformers folder and GGUF files, each verified."""

    kind = "export"
    sections = ("export",)

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter)
        if has_adapter:
            problems.append("export writes a merged model: put a merge stage before it")
        if "adapter" in (self.config.export or ExportConfig()).formats:
            problems.append("export.formats: 'adapter' — every training stage already writes "
                            "its PEFT adapter (<stage>/adapter); list hf and/or gguf here")
        return problems

    def describe(self) -> str:
        export = self.config.export or ExportConfig()
        gguf = f" ({', '.join(export.gguf_types)})" if "gguf" in export.formats else ""
        return f"export {', '.join(export.formats)}{gguf}, each loaded back and compared"

    def run(self, ctx: StageContext) -> StageResult:
        export = ctx.stage.export or ExportConfig()
        model = load_model(ctx.model)
        questions = [q for _, q in question_items(data_dir(), "heldout_chat")[:VERIFY_QUESTIONS]]
        figures, artifacts = {}, {}
        if "hf" in export.formats:
            measured = _last_measurements(ctx)
            folder = export_hf(model, ctx.tokenizer, ctx.folder / "hf",
                               base_model=resolvable_base(base_model_of(ctx)),
                               metrics=measured, provenance=_provenance(ctx),
                               baseline={k: ctx.baseline[k[len("eval/"):]] for k in measured
                                         if k[len("eval/"):] in ctx.baseline})
            check = verify_hf_export(folder, model, ctx.tokenizer, questions)
            figures |= {"hf/max_logit_diff": check.max_logit_diff,
                        "hf/same_replies": float(check.same_replies),
                        "hf/size_mb": file_size_mb(folder)}
            artifacts["hf"] = str(folder)
        for tensor_type in export.gguf_types if "gguf" in export.formats else []:
            written = export_gguf(model, ctx.tokenizer, ctx.folder / f"model-{tensor_type}.gguf",
                                  tensor_type, progress=ctx.progress)
            check = verify_gguf(written.path, model, ctx.tokenizer, questions)
            figures |= {f"gguf_{tensor_type}/max_logit_diff": check.max_logit_diff,
                        f"gguf_{tensor_type}/same_generations": float(check.generations_equal),
                        f"gguf_{tensor_type}/size_mb": written.size_bytes / 1e6}
            artifacts[f"gguf_{tensor_type}"] = str(written.path)
        return StageResult(ctx.model, figures, artifacts)


@register_stage
class EvalStage(Stage):
    """Measure the model as it is (held-out exact match, style, forgetting, preferences)."""

    kind = "eval"
    sections = ("eval",)

    def describe(self) -> str:
        return f"evaluate on {', '.join(_eval_config(self.config).sets)}, general text, preference pairs"

    def run(self, ctx: StageContext) -> StageResult:
        return _measured(ctx, ctx.model, {})

