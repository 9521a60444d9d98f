"""M4.2 and M4.3 — one optimizer step: token-normalised gradient accumulation, clipping.

A step consumes a list of micro-batches (dicts from :func:`ftlab.data.collate` or
:func:`ftlab.train.batching.pack`): ``input_ids`` and ``labels`` (batch, length), and
``attention_mask`` (padded batches) or ``position_ids`` (packed rows). Labels are not
shifted; :func:`target_loss_sum` shifts them, as transformers' models do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.data.labels import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
"""Batch keys passed to the model; ``labels`` stay with the loss."""


def target_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, seq - 1) bool: the positions whose next token is trained (labels other than
    ``IGNORE_INDEX`` after the shift), aligned with ``logits[:, :-1]``."""
    return batch["labels"][:, 1:] != IGNORE_INDEX


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Number of trained tokens in ``batch``: labels other than ``IGNORE_INDEX`` after the
    shift (the first position of each row predicts nothing)."""
    return int(target_mask(batch).sum())


def target_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of the cross-entropy over the trained tokens of ``batch``.

    Logits at position ``t`` are scored against ``labels[t + 1]``; ``IGNORE_INDEX`` labels
    contribute nothing. Returns a float32 scalar with a graph when gradients are enabled.
    The model runs with ``use_cache=False``: with a key/value cache, transformers ignores
    packed ``position_ids`` and packed examples silently attend to each other.
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@dataclass(frozen=True)
class Accumulated:
    """What :func:`accumulate_gradients` did: the step's loss (mean over its trained
    tokens) and how many trained tokens it saw. Other objectives (DPO) add their own
    per-step figures in ``metrics``; the trainer logs them with the step."""

    loss: float
    targets: int
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    """Real tokens the step ran on, when the objective replaced the trainer's micro-batches
    with its own (on-policy distillation's sampled replies); None: the trainer's batches."""


def accumulate_gradients(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                         ) -> Accumulated:
    """Forward and backward every micro-batch so ``.grad`` holds the gradient of one step.

    The step's loss is the mean cross-entropy over *all* trained tokens of all micro-batches
    (``N`` = :func:`count_targets` summed over them): each micro-batch backpropagates
    ``target_loss_sum(model, mb) / N``. So the gradients equal those of one batch made of
    every example, whatever the micro-batch split and however unequal the lengths. Call it
    with zeroed gradients; it does not step the optimizer. With no trained token at all the
    loss is ``nan`` and no backward runs.

    Returns ``Accumulated(loss, targets)``: ``loss`` a Python float (the sum of the parts'
    ``.item()``; no tensor, no graph kept), ``targets`` a Python int (``N``). ``N`` counts
    labels after the shift (:func:`count_targets`): the first label of a row is never a
    target, even when it is not ``IGNORE_INDEX``. A micro-batch with no trained token (every
    label ignored: a placeholder row, a response truncated away) adds 0 to the loss and to the
    gradients, never ``nan``; it is still run. The micro-batch dicts are left unmodified and
    the model's mode (training, as the trainer set it) is not changed.
    """
    ### BEGIN SOLUTION M4.2
    total = sum(count_targets(mb) for mb in micro_batches)
    if total == 0:
        return Accumulated(loss=math.nan, targets=0)
    loss = 0.0
    for mb in micro_batches:
        part = target_loss_sum(model, mb) / total
        part.backward()
        loss += part.item()
    return Accumulated(loss=loss, targets=total)
    ### END SOLUTION


@dataclass(frozen=True)
class StepOutcome:
    """What :func:`clip_and_step` did: the global gradient L2 norm *before* clipping
    (``nan`` when the loss was not finite) and whether the optimizer stepped."""

    grad_norm: float
    stepped: bool


def clip_and_step(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter],
                  max_grad_norm: float, loss: float) -> StepOutcome:
    """Clip the accumulated gradients, step the optimizer, zero the gradients.

    When ``loss`` or the gradient norm is not finite (nan, ±inf), skip the update: the
    parameters and optimizer state stay as they were, and the gradients are zeroed so the
    next step starts clean. Otherwise scale the gradients so their global L2 norm is at
    most ``max_grad_norm`` *before* ``optimizer.step()``. Gradients end zeroed
    (``set_to_none=True``) either way. Reports the pre-clip norm.

    The norm is *global*: one L2 norm over every gradient entry of all ``parameters``
    together (not one per parameter), and clipping multiplies every gradient by the same
    ``min(1, max_grad_norm / norm)`` — gradients already within the bound are left as they
    are (at a norm equal to it, up to ``clip_grad_norm_``'s 1e-6 guard), never scaled up. ``grad_norm`` is a Python float (the
    trainer writes it to JSON): the pre-clip norm; ``nan`` when the loss is not finite (the
    step is skipped before anything is measured); the non-finite norm itself (inf or nan)
    when the gradients are not finite.
    """
    ### BEGIN SOLUTION M4.3
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(grad_norm=math.nan, stepped=False)
    norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(grad_norm=norm, stepped=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(grad_norm=norm, stepped=True)
    ### END SOLUTION
