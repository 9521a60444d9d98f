"""The ``online_dpo`` stage (given): preference learning from AI feedback (RLAIF).

Each step the policy samples two replies per prompt of a prompt file, the configured judge
(:mod:`ftlab.reward.judges`: a reward stage's model, the input model as an LLM judge, or the
world's verifier) picks chosen and rejected, and C.2's DPO loss learns from those fresh pairs
with a new LoRA adapter (:class:`ftlab.reward.online.OnlineDPOObjective`, resumable like
every ftlab training). Besides the usual measurements the report gives the judges' agreement
with the strict verifier on pairs sampled from the trained policy for held-out questions
(the stage's judge, the lenient verifier, the LLM judge, and the reward model when there is
one) and the sampled replies' correctness and the judge's agreement along training.
"""

from __future__ import annotations

import torch

from ftlab.config import OnlineDPOConfig, StageConfig
from ftlab.models.build import question_items
from ftlab.paths import data_dir
from ftlab.pipeline.context import StageContext, StageResult, load_model
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.reward_stage import REWARD_MODEL, earlier_reward_model
from ftlab.pipeline.stages import _measured, _TrainingStage
from ftlab.pipeline.training import (save_trained_adapter, stage_train_config, train_ftlab,
                                     trainable_model, training_curves)
from ftlab.reward.judges import (Judge, LLMJudge, RewardModelJudge, VerifierJudge,
                                 agreement_figures)
from ftlab.reward.online import OnlineDPOObjective
from ftlab.rl.prompts import (MAX_LISTED, load_prompts, long_prompt_problems, long_prompts,
                              prepare_prompts, prompt_problems, split_prompts)
from ftlab.rl.sampling import sample_groups

AGREEMENT_SEED = 1234
"""Seed of the held-out pairs the judges are compared on (the same pairs for every judge)."""


def _online(stage: StageConfig) -> OnlineDPOConfig:
    return stage.online_dpo or OnlineDPOConfig()


def _needs_facts(cfg: OnlineDPOConfig) -> bool:
    return cfg.judge.startswith("verifier")


@register_stage
class OnlineDPOStage(_TrainingStage):
    """Online DPO: the policy's own sampled pairs, judged, learned with DPO."""

    kind = "online_dpo"
    sections = ("data", "lora", "train", "eval", "online_dpo")
    distributed = False

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter)
        data, cfg = self.config.data, _online(self.config)
        if self.config.backend != "ftlab":
            problems.append("backend: an online_dpo stage runs on the ftlab backend (TRL's "
                            "OnlineDPOTrainer is experimental; its loss is what tests compare "
                            "ours with)")
        if data is not None and data.path is None:
            problems.append("data.mixture: an online_dpo stage reads one prompt file: give "
                            "data.path")
        elif data is not None:
            found = prompt_problems(data.path, _needs_facts(cfg))[1]
            problems += found[:MAX_LISTED] + ([f"data.path: ... and {len(found) - MAX_LISTED} "
                                               "more problems in the prompt file"]
                                              if len(found) > MAX_LISTED else [])
        return problems

    def references(self) -> list[tuple[str, str, str]]:
        cfg = _online(self.config)
        return ([("online_dpo.reward_model", cfg.reward_model, "reward")]
                if cfg.judge == "reward_model" else [])

    def check_inputs(self, tokenizer) -> list[str]:
        data, cfg = self.config.data, _online(self.config)
        if data is None or data.path is None:
            return []
        records = prompt_problems(data.path, _needs_facts(cfg))[0]
        over = long_prompts(data.path, records, tokenizer, cfg.max_prompt_length)
        return long_prompt_problems(data.path, over[:MAX_LISTED], cfg.max_prompt_length,
                                    "online_dpo")

    def describe(self) -> str:
        cfg = _online(self.config)
        judge = f"{cfg.judge} ({cfg.reward_model})" if cfg.judge == "reward_model" else cfg.judge
        return (super().describe() + f", judge {judge}, beta {cfg.beta:g}, T {cfg.temperature:g}"
                + (f", SFT term x{cfg.sft_weight:g}" if cfg.sft_weight else ""))

    def _judge(self, ctx: StageContext, policy_input) -> Judge:
        cfg = _online(ctx.stage)
        if cfg.judge == "reward_model":
            judge = RewardModelJudge(earlier_reward_model(ctx, cfg.reward_model), ctx.tokenizer)
            judge.name = f"reward_model ({cfg.reward_model})"
            return judge
        if cfg.judge == "llm":
            return LLMJudge(policy_input, ctx.tokenizer)
        return VerifierJudge(strict=cfg.judge == "verifier")

    def _compared_judges(self, ctx: StageContext, judge: Judge, frozen) -> dict[str, Judge]:
        """The judges the report compares with the verifier: the stage's, the lenient
        verifier, the input model as LLM judge, and the newest earlier reward model."""
        cfg = _online(ctx.stage)
        judges = {cfg.judge: judge, "verifier_lenient": VerifierJudge(strict=False)}
        judges.setdefault("llm", LLMJudge(frozen or load_model(ctx.model, ctx.run.model.dtype),
                                          ctx.tokenizer))
        stages = [n for n, r in ctx.earlier.items() if REWARD_MODEL in r.artifacts]
        if stages and "reward_model" not in judges:
            judges["reward_model"] = RewardModelJudge(earlier_reward_model(ctx, stages[-1]),
                                                      ctx.tokenizer)
        return judges

    def run(self, ctx: StageContext) -> StageResult:
        data_cfg, train, cfg = ctx.stage.data, stage_train_config(ctx.stage), _online(ctx.stage)
        lora, quant = self._lora_and_quant()
        records, counts = prepare_prompts(
            data_cfg.path, load_prompts(data_cfg.path, _needs_facts(cfg)), ctx.tokenizer,
            cfg.max_prompt_length, "error", cfg.duplicate_prompts)
        train_records, val_records = split_prompts(records, data_cfg.validation_fraction,
                                                   data_cfg.seed)
        ctx.log(f"  prompts: {len(train_records)} training, {len(val_records)} validation "
                f"from {data_cfg.path.name}")
        frozen = load_model(ctx.model, ctx.run.model.dtype) if cfg.judge == "llm" else None
        judge = self._judge(ctx, frozen)
        model = trainable_model(ctx.model, ctx.run.model.dtype, lora, quant, train.seed)
        objective = OnlineDPOObjective(train_records + val_records, ctx.tokenizer, judge,
                                       cfg.beta, cfg.sft_weight, cfg.temperature, cfg.top_p,
                                       cfg.max_new_tokens)
        n = len(train_records)
        figures = train_ftlab(model, objective.examples(range(n)),
                              objective.examples(range(n, len(records))), train, ctx.folder,
                              ctx.tokenizer.pad_token_id, data_cfg.max_length, objective,
                              ctx.progress, ctx.log)
        save_trained_adapter(model, ctx.folder, ctx.model)
        new = ctx.model.with_adapter(ctx.folder / "adapter")
        figures |= heldout_agreement(load_model(new), ctx.tokenizer,
                                     self._compared_judges(ctx, judge, frozen), cfg)
        figures |= {"prompts": n, **counts}
        return _measured(ctx, new, figures, training_curves(ctx.folder),
                         {"adapter": str(ctx.folder / "adapter")})


def heldout_agreement(policy, tokenizer, judges: dict[str, Judge], cfg: OnlineDPOConfig
                      ) -> dict[str, float]:
    """:func:`~ftlab.reward.judges.agreement_figures` of ``judges`` on two replies per
    held-out chat question sampled from ``policy`` (seeded: every judge sees the same pairs)."""
    items = question_items(data_dir(), "heldout_chat")
    questions = [q for _, q in items]
    rollouts = sample_groups(policy, tokenizer, questions, 2, cfg.max_new_tokens,
                             cfg.temperature, cfg.top_p,
                             torch.Generator().manual_seed(AGREEMENT_SEED))
    texts = rollouts.raw_texts  # as the judges read them in training
    pairs = [(texts[2 * i], texts[2 * i + 1]) for i in range(len(items))]
    return agreement_figures(judges, questions, pairs, [f.id for f, _ in items])
