"""M5.1 — perplexity, weighted by tokens, over response tokens or over all tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.data.labels import IGNORE_INDEX
from ftlab.train.step import MODEL_INPUTS


@dataclass(frozen=True)
class Perplexity:
    """Mean negative log-likelihood per scored token (nats), its exponential, and how many
    tokens were scored."""

    loss: float
    perplexity: float
    tokens: int


def all_token_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels that score every real token: ``input_ids`` with padding set to ``IGNORE_INDEX``
    (``attention_mask`` 0), shape (batch, length)."""
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return labels


@torch.no_grad()
def perplexity(model: nn.Module, batches: list[dict[str, torch.Tensor]],
               response_only: bool = True) -> Perplexity:
    """Token-weighted perplexity of ``model`` over ``batches`` (dicts from
    :func:`ftlab.data.collate`: ``input_ids``, ``attention_mask``, ``labels``, all (B, T)).

    Scored tokens: with ``response_only``, those whose label is not ``IGNORE_INDEX`` (the
    assistant replies and their end-of-turn tokens); otherwise every real token
    (:func:`all_token_labels`). The logits at position ``t`` predict the label at ``t + 1``.
    ``loss`` = (sum over every scored token of all batches of ``-log p(label)``) / (number of
    scored tokens), so a batch with more tokens weighs more — never a mean of batch means.
    ``perplexity = exp(loss)``. Run in eval mode, float32 log-probabilities.
    """
    ### BEGIN SOLUTION M5.1
    model.eval()
    nll, count = 0.0, 0
    for batch in batches:
        labels = batch["labels"] if response_only else all_token_labels(batch)
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        nll -= float(log_probs[scored].sum())
        count += int(scored.sum())
    loss = nll / count
    return Perplexity(loss=loss, perplexity=math.exp(loss), tokens=count)
    ### END SOLUTION
