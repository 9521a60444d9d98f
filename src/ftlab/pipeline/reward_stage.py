"""The ``reward`` stage (given): a reward model trained on preference pairs, beside the policy.

It builds the model it receives (the policy so far, e.g. after SFT) as a reward model
(:func:`ftlab.reward.model.scalar_head_model`: the same body, a scalar head), adds LoRA
adapters, trains them and the head on a preference file with C.6 + C.7
(:class:`~ftlab.reward.model.RewardObjective`, ``ftlab`` backend, resumable) or with
``trl.RewardTrainer`` (``trl`` backend), and writes ``<stage>/reward_model``: a PEFT
``SEQ_CLS`` folder that ``AutoPeftModelForSequenceClassification.from_pretrained(folder,
num_labels=1)`` loads. The policy passes on unchanged: later stages name this stage to use
its reward model (a judge, a GRPO reward).

Report: held-out pairwise accuracy (chosen scored above rejected) per ``pair_type`` and per
fact kind, for the reward model before training (its random head) and after, the mean reward
difference, and a histogram of the held-out differences (``<stage>/reward_margins.png``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from ftlab.align import prepare_dpo
from ftlab.config import LoRAConfig, StageConfig
from ftlab.config.reward import RewardConfig
from ftlab.lora import combine_adapters, inject_lora
from ftlab.pipeline import trl_backend
from ftlab.pipeline.context import StageContext, StageResult, load_model
from ftlab.pipeline.measure import heldout_pairs
from ftlab.pipeline.registry import register_stage
from ftlab.pipeline.stages import (_eval_config, _report_data, _TrainingStage,
                                   preference_file_problems)
from ftlab.pipeline.training import (resolvable_base, stage_train_config, target_names,
                                     train_ftlab, training_curves)
from ftlab.reward.model import (HEAD, RewardObjective, load_reward_model, pair_rewards,
                                save_reward_model, scalar_head_model)
from ftlab.train import seed_everything

REWARD_MODEL = "reward_model"
"""In a reward stage's folder: the reward model (PEFT ``SEQ_CLS`` folder + tokenizer)."""

MARGINS_PLOT = "reward_margins.png"
"""In a reward stage's folder: histogram of held-out reward differences, before and after."""


def _reward(stage: StageConfig) -> RewardConfig:
    return stage.reward or RewardConfig()


def pair_figures(chosen: torch.Tensor, rejected: torch.Tensor, pairs: list[dict], prefix: str
                 ) -> dict[str, float]:
    """``<prefix>accuracy`` (chosen scored strictly higher), ``<prefix>margin`` (mean
    difference), and the accuracy per ``pair_type`` and per fact ``kind``."""
    right = chosen > rejected
    figures = {f"{prefix}accuracy": float(right.double().mean()),
               f"{prefix}margin": float((chosen - rejected).mean())}
    for key in ("pair_type", "kind"):
        for value in sorted({p[key] for p in pairs} - {""}):
            rows = torch.tensor([p[key] == value for p in pairs])
            figures[f"{prefix}accuracy/{value}"] = float(right[rows].double().mean())
    return figures


def plot_margins(before: torch.Tensor, after: torch.Tensor, pairs: list[dict], path: Path) -> None:
    """Histograms of held-out ``r_chosen - r_rejected`` before and after training, one
    colour per pair type (right of 0: the pair is ranked right)."""
    types = sorted({p["pair_type"] for p in pairs})
    fig = Figure(figsize=(10, 3.2))  # no pyplot: a notebook's backend stays as it is
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (title, diffs) in zip(axes, (("before training", before), ("after training", after))):
        for pair_type in types:
            rows = torch.tensor([p["pair_type"] == pair_type for p in pairs])
            ax.hist(diffs[rows].numpy(), bins=30, alpha=0.6, label=pair_type or "pairs")
        ax.axvline(0, color="grey", ls="--")
        ax.set(title=f"held-out reward differences, {title}", xlabel="r_chosen - r_rejected")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@register_stage
class RewardStage(_TrainingStage):
    """A reward model (scalar head + LoRA, the head trained in full) on preference pairs."""

    kind = "reward"
    sections = ("data", "lora", "train", "eval", "reward")
    trains = False  # the policy passes on unchanged; the reward model is a file beside it
    distributed = False

    def check(self, has_adapter: bool) -> list[str]:
        problems = super().check(has_adapter) + preference_file_problems(self.config)
        lora = self.config.lora or LoRAConfig()
        if lora.target_modules != "auto" and HEAD in lora.target_modules:
            problems.append(f"lora.target_modules: '{HEAD}' is the reward head, trained in full "
                            "(PEFT's modules_to_save); list the body's layers only")
        return problems

    def describe(self) -> str:
        center = _reward(self.config).center_coefficient
        return super().describe() + ", head in full" + (
            f", centring x{center:g}" if center else "")

    def run(self, ctx: StageContext) -> StageResult:
        data_cfg, train = ctx.stage.data, stage_train_config(ctx.stage)
        lora, pad_id = self.config.lora or LoRAConfig(), ctx.tokenizer.pad_token_id
        pairs = prepare_dpo(data_cfg, ctx.tokenizer)
        figures = _report_data(ctx, pairs.load_report, pairs.summary())
        train_rows = _with_margins(pairs.train_pairs, pairs.train)
        val_rows = _with_margins(pairs.validation_pairs, pairs.validation)
        held = heldout_pairs(_eval_config(ctx.stage), ctx.tokenizer, data_cfg.max_length)
        model = scalar_head_model(load_model(ctx.model, ctx.run.model.dtype), pad_id, train.seed)
        before = pair_rewards(model, held, pad_id)
        # the head trains in full; architectures without a known target list would adapt it
        names = [n for n in target_names(model, lora) if n.rsplit(".", 1)[-1] != HEAD]
        out = ctx.folder / REWARD_MODEL
        base = resolvable_base(ctx.model.path)
        if ctx.stage.backend == "ftlab":
            seed_everything(train.seed)
            inject_lora(model, names, lora.r, lora.alpha, lora.dropout)
            getattr(model, HEAD).requires_grad_(True)
            figures |= train_ftlab(model, train_rows, val_rows, train, ctx.folder, pad_id,
                                   data_cfg.max_length,
                                   RewardObjective(_reward(ctx.stage).center_coefficient),
                                   ctx.progress, ctx.log)
            save_reward_model(model, out, base, [*map(Path, ctx.model.adapters)])
        else:
            figures |= trl_backend.train_reward(
                model, ctx.tokenizer, [_record(p) for p in pairs.train_pairs],
                [_record(p) for p in pairs.validation_pairs], train, lora, names,
                _reward(ctx.stage).center_coefficient, ctx.folder, data_cfg.max_length,
                ctx.progress)
            # PEFT's folder (SEQ_CLS LoRA + head) over the run's base, as ours is written
            combine_adapters([*map(Path, ctx.model.adapters), ctx.folder / "trl_adapter"], out,
                             base)
        ctx.tokenizer.save_pretrained(out)
        after = pair_rewards(load_reward_model(out, pad_id), held, pad_id)
        plot_margins(before[0] - before[1], after[0] - after[1], held, ctx.folder / MARGINS_PLOT)
        figures |= pair_figures(*before, held, "before/heldout_") | pair_figures(
            *after, held, "heldout_")
        figures["train_pairs"] = len(train_rows)
        return StageResult(ctx.model, figures,
                           {"reward_model": str(out), "margins_plot": str(ctx.folder / MARGINS_PLOT)},
                           training_curves(ctx.folder))


def _with_margins(pairs: list, rows: list[dict]) -> list[dict]:
    """Tokenized ``rows`` with the ``margin`` of their pair when it has one (TRL's optional
    margin column)."""
    return [{**row, "margin": float(p.info["margin"])} if "margin" in p.info else row
            for p, row in zip(pairs, rows)]


def _record(pair) -> dict:
    """A pair as TRL's conversational preference record (plus its margin, if any)."""
    record = {"prompt": pair.prompt,
              "chosen": [{"role": "assistant", "content": pair.chosen}],
              "rejected": [{"role": "assistant", "content": pair.rejected}]}
    return record | ({"margin": float(pair.info["margin"])} if "margin" in pair.info else {})


def earlier_reward_model(ctx: StageContext, stage: str):
    """The reward model an earlier reward stage named ``stage`` wrote (merged, eval mode);
    plan time has checked the stage exists and ran before."""
    return load_reward_model(ctx.earlier[stage].artifacts[REWARD_MODEL], ctx.tokenizer.pad_token_id)
