"""Pretraining the embedded base model: a plain, seeded next-token loop.

Deliberately independent of the course's training loop (milestone 4), so the base model
can be rebuilt in the learner edition before any exercise is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, get_cosine_with_min_lr_schedule_with_warmup

from ftlab.models.measure import corpus_loss
from ftlab.progress import progress_bar


class PretrainRecipe(BaseModel):
    """Hyperparameters of base-model pretraining (the defaults built ``data/base_model``).

    660 steps of 16 x 256 tokens is about 5.6 passes over the ~477k-token corpus: enough
    for the model to know held-out facts in plain form (cloze) in about 9 minutes on 2 cores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0)
    steps: int = Field(660, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="sequences per step")
    seq_len: int = Field(256, ge=8, description="tokens per sequence")
    lr: float = Field(2e-3, gt=0, le=1, description="peak AdamW learning rate")
    warmup_steps: int = Field(30, ge=0)
    min_lr_rate: float = Field(0.1, ge=0, le=1, description="final lr as a share of the peak")
    weight_decay: float = Field(0.1, ge=0, description="on matrices only, not norms")
    max_grad_norm: float = Field(1.0, gt=0)
    bf16_autocast: bool = Field(True, description="bf16 autocast on CPU: ~1.5x faster")
    eval_every: int = Field(110, ge=1, description="steps between validation losses")


@dataclass
class PretrainResult:
    """Loss curve (one mean training loss per step) and validation losses by step."""

    train_losses: list[float] = field(default_factory=list)
    validation: dict[int, float] = field(default_factory=dict)
    tokens: int = 0
    wall_time_s: float = 0.0


def _param_groups(model: PreTrainedModel, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def pretrain(
    model: PreTrainedModel,
    train_blocks: torch.Tensor,
    validation_blocks: torch.Tensor,
    recipe: PretrainRecipe,
    progress: bool = True,
) -> PretrainResult:
    """Train ``model`` in place on ``train_blocks`` (n, seq_len) for ``recipe.steps`` steps.

    Each pass over the blocks is a fresh seeded permutation; the same inputs, recipe and
    machine give bit-identical weights. Validation loss is measured every
    ``recipe.eval_every`` steps and at the end.
    """
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr,
                            betas=(0.9, 0.95))
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, recipe.warmup_steps, recipe.steps, min_lr_rate=recipe.min_lr_rate
    )
    result = PretrainResult()
    order = torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    bar = progress_bar(range(1, recipe.steps + 1), desc="pretraining", disable=not progress)
    for step in bar:
        if len(order) < recipe.batch_size:
            order = torch.randperm(len(train_blocks), generator=gen)
        batch, order = train_blocks[order[: recipe.batch_size]], order[recipe.batch_size :]
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        result.train_losses.append(loss.item())
        result.tokens += batch.numel()
        if step % recipe.eval_every == 0 or step == recipe.steps:
            result.validation[step] = corpus_loss(model, validation_blocks)
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{result.validation[step]:.3f}")
    result.wall_time_s = time.perf_counter() - start
    return result
