"""Offline logit distillation for the Trainer (given): the student learns the teacher's
next-token distributions on the data's trained tokens with C.8's divergence.

A batch is an SFT batch (``input_ids``, ``attention_mask``, ``labels``); the positions that
count are those whose next token is trained (``labels[:, 1:] != -100``: the assistant's
replies). The teacher runs in eval mode without gradients; the step's loss is the mean
divergence over every counted position of all its micro-batches (each micro-batch's C.8
mean weighted by its share of the positions), so the gradient does not depend on how the
step is split, as M4.2's cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ftlab.data.collate import collate
from ftlab.distill.loss import distillation_loss
from ftlab.train.step import MODEL_INPUTS, Accumulated, target_mask



class DistillObjective:
    """The generalized JSD between ``teacher`` and the model being trained (the student)."""

    name = "distill"
    supports_packing = False
    repeatable_steps = True

    def __init__(self, teacher: nn.Module, beta: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.beta, self.temperature = beta, temperature

    def settings(self) -> dict:
        return {"beta": self.beta, "temperature": self.temperature}

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

    def _divergence(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        student = model(**inputs, use_cache=False).logits[:, :-1]
        with torch.no_grad():
            teacher = self.teacher(**inputs, use_cache=False).logits[:, :-1]
        return distillation_loss(student, teacher, target_mask(batch), self.beta,
                                 self.temperature)

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        counts = [int(target_mask(mb).sum()) for mb in micro_batches]
        total = sum(counts)
        if total == 0:
            return Accumulated(loss=math.nan, targets=0)
        self.teacher.to(micro_batches[0]["input_ids"].device)  # once per step, not per forward
        loss = 0.0
        for mb, count in zip(micro_batches, counts):
            part = self._divergence(model, mb) * (count / total)
            part.backward()
            loss += part.item()
        return Accumulated(loss=loss, targets=total)

    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        """``val_loss``: the divergence per counted position over ``batches``."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        if batches:
            self.teacher.to(batches[0]["input_ids"].device)
        with torch.no_grad():
            for batch in batches:
                n = int(target_mask(batch).sum())
                total += float(self._divergence(model, batch)) * n
                count += n
        model.train(was_training)
        return {"val_loss": total / count if count else math.nan}
