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
    scored tokens), so a batch (or a sequence) with more tokens weighs more — never a mean of
    batch means or of sequence means. A batch with no scored token (every label -100) adds
    nothing to either sum: it never makes the result NaN. At least one token of all batches
    must be scored. ``perplexity = exp(loss)``.

    The model is switched to eval mode (``model.eval()``: no dropout) and left there; no
    gradients. Log-probabilities are float32 whatever the model's dtype: cast the logits
    (bfloat16 included) with ``.float()`` before ``log_softmax``. The batches are not modified
    (their labels are reused by the caller). Returns plain Python numbers: ``loss`` and
    ``perplexity`` are ``float``, ``tokens`` an ``int``.
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
