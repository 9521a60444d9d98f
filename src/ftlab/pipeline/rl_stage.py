"""The ``grpo`` stage (given): reinforcement learning with verifiable rewards on a prompt
file, with a fresh LoRA adapter on the model it receives (the reference of its KL penalty).

Besides the usual measurements it reports the mean greedy reward on the training prompts
before and after (per function and per kind), curves of reward, KL, entropy and clipping,
and the first and last rounds' first sample groups with their rewards and advantages
(``<stage>/samples.json``). The ``ftlab`` backend runs :class:`ftlab.rl.GRPOObjective` in
the course's Trainer (resumable); ``trl`` runs ``trl.GRPOTrainer`` with the same rewards.
"""

from __future__ import annotations

import json
import torch

from ftlab.config import GRPOConfig, StageConfig
from ftlab.pipeline import trl_backend
from ftlab.pipeline.context import StageContext, StageResult, load_model
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.reward_stage import earlier_reward_model
from ftlab.pipeline.stages import _measured, _TrainingStage
from ftlab.pipeline.training import (publish_adapter, save_trained_adapter, stage_train_config,
                                     target_names, train_ftlab, trainable_model, training_curves)
from ftlab.reward.judges import reward_model_reward
from ftlab.rl import GRPOObjective, end_of_turn_ids, reward_functions
from ftlab.rl.rewards import by_kind
from ftlab.rl.prompts import (MAX_LISTED, load_prompts, long_prompt_problems, long_prompts,
                              names_fact, prepare_prompts, prompt_problems, split_prompts)
from ftlab.train.distributed import on_main

SAMPLES = "samples.json"
"""In a grpo stage's folder: sample groups of the first and last rounds, with rewards."""


def _grpo(stage: StageConfig) -> GRPOConfig:
    return stage.grpo or GRPOConfig()


def greedy_rewards(objective: GRPOObjective, model, records: list[dict]) -> dict[str, float]:
    """Mean reward of greedy replies to ``records``: the total, each function
    (``reward/<name>``) and the total per kind (``reward_kind/<kind>``) when records have
    one."""
    _, scored = objective.rollout(model, records, group_size=1, temperature=0.0)
    return scored.means() | {f"reward_kind/{k}": sum(v) / len(v)
                             for k, v in sorted(by_kind(records, scored.total, 1).items())}


class _SampleKeeper:
    """Keeps the first group of the first and of the latest round for the report."""

    def __init__(self, group_size: int) -> None:
        self.group_size, self.groups = group_size, []

    def __call__(self, records: list[dict], rollouts, rewards: torch.Tensor,
                 advantages: torch.Tensor) -> None:
        g = self.group_size
        group = {"question": records[0]["question"], "completions": [
            {"reply": t, "reward": float(r), "advantage": float(a), "ended": bool(e)}
            for t, r, a, e in zip(rollouts.texts[:g], rewards[:g], advantages[:g],
                                  rollouts.ended[:g])]}
        self.groups = [self.groups[0], group] if self.groups else [group]


@register_stage
class GRPOStage(_TrainingStage):
    """Group relative policy optimisation on a prompt file with the built-in rewards."""

    kind = "grpo"
    sections = (*_TrainingStage.sections, "grpo")
    distributed = False

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter)
        data, grpo = self.config.data, _grpo(self.config)
        if data is not None and data.path is None:
            problems.append("data.mixture: a grpo stage reads one prompt file: give data.path")
        elif data is not None:
            found = prompt_problems(data.path, grpo.needs_facts)[1]
            problems += found[:MAX_LISTED] + ([f"data.path: ... and {len(found) - MAX_LISTED} "
                                               "more problems in the prompt file"]
                                              if len(found) > MAX_LISTED else [])
        lora = self.config.lora
        if grpo.iterations > 1 and (lora is None or lora.dropout > 0):
            problems.append("lora.dropout: with grpo.iterations > 1 the old log-probs (sampling, "
                            "no dropout) and the training pass must see the same model, or the "
                            "first update is not on-policy; set lora.dropout: 0")
        return problems

    def references(self) -> list[tuple[str, str, str]]:
        return [(f"grpo.rewards.{name}.stage", stage, "reward")
                for name, stage in _grpo(self.config).reward_stages.items()]

    def check_inputs(self, tokenizer) -> list[str]:
        """Questions over ``grpo.max_prompt_length`` tokens, with file:line, unless the
        config says to truncate them."""
        data, grpo = self.config.data, _grpo(self.config)
        if data is None or data.path is None or grpo.long_prompts != "error":
            return []
        records = prompt_problems(data.path, grpo.needs_facts)[0]
        over = long_prompts(data.path, records, tokenizer, grpo.max_prompt_length)
        return long_prompt_problems(data.path, over[:MAX_LISTED], grpo.max_prompt_length)

    def describe(self) -> str:
        grpo = _grpo(self.config)
        weights = ", ".join(f"{n} x{w:g}" for n, w in grpo.weights.items())
        return (super().describe() + f", G={grpo.group_size}, beta {grpo.beta:g}, "
                f"T {grpo.temperature:g}, {grpo.loss_type}, rewards {weights}")

    def run(self, ctx: StageContext) -> StageResult:
        data_cfg, train = ctx.stage.data, stage_train_config(ctx.stage)
        lora, quant = self._lora_and_quant()
        grpo = _grpo(ctx.stage)
        records, counts = prepare_prompts(
            data_cfg.path, load_prompts(data_cfg.path, grpo.needs_facts), ctx.tokenizer,
            grpo.max_prompt_length, grpo.long_prompts, grpo.duplicate_prompts)
        train_records, val_records = split_prompts(records, data_cfg.validation_fraction,
                                                   data_cfg.seed)
        repeats = counts["prompts/duplicates"]
        fate = {"drop": "dropped", "keep": "kept"}[grpo.duplicate_prompts]
        ctx.log(f"  prompts: {len(train_records)} training, {len(val_records)} validation "
                f"from {data_cfg.path.name} (a fact's prompts on one side)"
                + (f"; {repeats} repeated lines {fate}" if repeats else "")
                + (f"; {counts['prompts/truncated']} questions truncated to "
                   f"{grpo.max_prompt_length} tokens" if counts["prompts/truncated"] else ""))
        rewards = reward_functions(grpo.weights, end_of_turn_ids(ctx.tokenizer),
                                   all(names_fact(r) for r in records))
        for name, stage in grpo.reward_stages.items():  # scored by an earlier reward model
            rewards[name] = reward_model_reward(earlier_reward_model(ctx, stage), ctx.tokenizer)
        keeper = _SampleKeeper(grpo.group_size)
        model = trainable_model(ctx.model, ctx.run.model.dtype, lora, quant, train.seed)
        objective = GRPOObjective(train_records + val_records, ctx.tokenizer, rewards, grpo,
                                  on_round=keeper)
        before = greedy_rewards(objective, model, train_records)
        n = len(train_records)
        if ctx.stage.backend == "ftlab":
            figures = train_ftlab(model, objective.examples(range(n)),
                                  objective.examples(range(n, len(records))), train, ctx.folder,
                                  ctx.tokenizer.pad_token_id, data_cfg.max_length, objective,
                                  ctx.progress, ctx.log)
            on_main(lambda: save_trained_adapter(model, ctx.folder, ctx.model))
        else:
            model = load_model(ctx.model, ctx.run.model.dtype)
            figures = trl_backend.train_grpo(model, ctx.tokenizer, train_records, val_records,
                                             rewards, train, lora, grpo,
                                             target_names(model, lora), ctx.folder, ctx.progress)
            on_main(lambda: publish_adapter(ctx.model, ctx.folder / "adapter",
                                            ctx.folder / "adapter"))
        new = ctx.model.with_adapter(ctx.folder / "adapter")

        def measured() -> StageResult:
            after = greedy_rewards(objective, load_model(new), train_records)
            (ctx.folder / SAMPLES).write_text(json.dumps(keeper.groups, indent=1) + "\n")
            rewards_figures = ({f"before/{k}": v for k, v in before.items()}
                               | {f"after/{k}": v for k, v in after.items()})
            return _measured(ctx, new, figures | rewards_figures
                             | {"prompts": len(train_records), **counts},
                             training_curves(ctx.folder), {"adapter": str(ctx.folder / "adapter"),
                                                           "samples": str(ctx.folder / SAMPLES)})
        return on_main(measured)
