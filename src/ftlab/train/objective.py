"""What the trainer optimizes: the objective interface and the SFT objective (given).

The :class:`~ftlab.train.Trainer` owns the loop (order, schedule, clipping, checkpoints);
an objective owns what a batch is and what its loss is. :class:`SFTObjective`, the
default, is next-token cross-entropy on trained tokens (M4.2). The capstone's DPO objective
(:class:`ftlab.align.DPOObjective`) plugs in the same way.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from ftlab.data.collate import collate
from ftlab.train.distributed import accumulate_across_ranks, ranks
from ftlab.train.step import Accumulated, accumulate_gradients, count_targets, target_loss_sum


class Objective(Protocol):
    """A training objective.

    ``name`` and ``settings()`` identify it in checkpoints (a run resumes only with the same
    objective). ``collate(examples, pad_id)`` turns examples into one micro-batch of tensors
    (a ``real_tokens`` count may be included; every other tensor is moved to the model's
    device). ``accumulate(model, micro_batches)`` runs forward and backward so ``.grad``
    holds one optimizer step's gradient; under data parallelism ``model`` is the engine's
    (DDP/FSDP2) module, ``micro_batches`` this process's shares, and the gradient and the
    figures returned must be those of the whole step (:mod:`ftlab.train.distributed`). ``evaluate(model, batches)`` returns figures with
    at least ``val_loss`` (lower is better), without gradients. An objective that carries
    state from one step to the next (GRPO's samples, reused for several updates) may also
    define ``state_dict()`` / ``load_state_dict(state)``: checkpoints then keep that state.
    ``repeatable_steps`` says whether ``accumulate`` may be run on a batch outside training
    without changing anything but ``.grad`` (no state carried, no sampling or outside
    calls): ``auto`` precision times such steps before the first one (:meth:`Trainer.fit`).
    """

    name: str
    supports_packing: bool
    repeatable_steps: bool

    def settings(self) -> dict: ...

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]: ...

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated: ...

    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]: ...


def validation_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean cross-entropy over every trained token of ``batches`` (token-weighted), in eval
    mode without gradients; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            total += float(target_loss_sum(model, batch))
            count += count_targets(batch)
    model.train(was_training)
    return total / count if count else math.nan


class SFTObjective:
    """Supervised fine-tuning: token-weighted cross-entropy on the trained tokens."""

    name = "sft"
    supports_packing = True
    repeatable_steps = True

    def settings(self) -> dict:
        return {}

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        """M4.2 in one process; with data-parallel processes, the same normalisation over
        the whole step's tokens on all of them (M4.6)."""
        if ranks().distributed:
            return accumulate_across_ranks(model, micro_batches)
        return accumulate_gradients(model, micro_batches)

    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        return {"val_loss": validation_loss(model, batches)}
