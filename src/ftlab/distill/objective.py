"""Offline logit distillation for the Trainer (given): the student learns the teacher's
next-token distributions on the data's trained tokens with C.8's divergence.

A batch is an SFT batch (``input_ids``, ``attention_mask``, ``labels``); the positions that
count are those whose next token is trained (``labels[:, 1:] != -100``: the assistant's
replies). The teacher runs in eval mode without gradients; the step's loss is the mean
divergence over every counted position of all its micro-batches (each micro-batch's C.8
mean weighted by its share of the positions), so the gradient does not depend on how the
step is split, as M4.2's cross-entropy.

On-policy (GKD, Agarwal et al. 2024; TRL's ``lmbda``): given questions, each step is, with
probability ``lmbda`` (drawn from torch's global generator, which checkpoints restore), a
batch of the student's own sampled replies to randomly drawn questions — the same number of
rows as the data's micro-batches — and the divergence is taken on the reply tokens
(through the first stop token); the other steps are offline steps on the data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ftlab.data.collate import collate
from ftlab.data.labels import IGNORE_INDEX
from ftlab.distill.loss import distillation_loss
from ftlab.rl.sampling import Rollouts, joined, sample_groups
from ftlab.train.step import MODEL_INPUTS, Accumulated, target_mask


class DistillObjective:
    """The generalized JSD between ``teacher`` and the model being trained (the student)."""

    name = "distill"
    supports_packing = False

    def __init__(self, teacher: nn.Module, beta: float, temperature: float,
                 on_policy: OnPolicy | None = None) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.beta, self.temperature = beta, temperature
        self.on_policy = on_policy
        # an on-policy step samples: it cannot be repeated outside training (precision: auto)
        self.repeatable_steps = on_policy is None

    def settings(self) -> dict:
        return {"beta": self.beta, "temperature": self.temperature,
                **(self.on_policy.settings() if self.on_policy else {})}

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
        figures, tokens = {}, None
        if self.on_policy is not None:
            on = float(torch.rand(())) < self.on_policy.lmbda
            figures["on_policy"] = float(on)
            if on:  # the step trains on the replies, not on the data the trainer drew
                micro_batches = [self.on_policy.replies(model, len(mb["input_ids"]))
                                 for mb in micro_batches]
                tokens = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
                figures["reply_length"] = (sum(int(target_mask(mb).sum()) for mb in micro_batches)
                                           / sum(len(mb["input_ids"]) for mb in micro_batches))
        counts = [int(target_mask(mb).sum()) for mb in micro_batches]
        total = sum(counts)
        if total == 0:
            return Accumulated(loss=math.nan, targets=0, metrics=figures, tokens=tokens)
        self.teacher.to(micro_batches[0]["input_ids"].device)  # once per step, not per forward
        loss = 0.0
        for mb, count in zip(micro_batches, counts):
            if count == 0:  # nothing counted: neither model runs
                continue
            part = self._divergence(model, mb) * (count / total)
            part.backward()
            loss += part.item()
        return Accumulated(loss=loss, targets=total, metrics=figures, tokens=tokens)

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


def reply_batch(rollouts: Rollouts) -> dict[str, torch.Tensor]:
    """A training batch of sampled replies: each row its left-padded prompt then its reply,
    position ids counting real tokens from 0 (as they were sampled), and labels on the reply
    tokens through the first stop token only."""
    ids, mask, positions = joined(rollouts.prompt_ids, rollouts.prompt_mask,
                                  rollouts.completion_ids, rollouts.completion_mask)
    trained = torch.cat([torch.zeros_like(rollouts.prompt_mask), rollouts.completion_mask], 1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
            "labels": ids.masked_fill(trained == 0, IGNORE_INDEX)}


class OnPolicy:
    """The on-policy half of GKD: ``questions`` the student answers by sampling, in a
    fraction ``lmbda`` of the steps (``max_new_tokens`` tokens at most, ``temperature``)."""

    def __init__(self, questions: list[str], tokenizer, lmbda: float, temperature: float,
                 max_new_tokens: int) -> None:
        if not questions:
            raise ValueError("on-policy distillation needs at least one question")
        self.questions, self.tokenizer, self.lmbda = questions, tokenizer, lmbda
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def settings(self) -> dict:
        return {"lmbda": self.lmbda, "sample_temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens, "questions": len(self.questions)}

    def replies(self, model: nn.Module, rows: int) -> dict[str, torch.Tensor]:
        """A batch of ``rows`` replies of ``model`` to questions drawn uniformly with
        replacement (torch's global generator)."""
        drawn = torch.randint(len(self.questions), (rows,)).tolist()
        rollouts = sample_groups(model, self.tokenizer, [self.questions[i] for i in drawn], 1,
                                 self.max_new_tokens, self.temperature, 1.0, None)
        return reply_batch(rollouts)
