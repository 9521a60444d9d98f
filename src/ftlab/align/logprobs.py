"""C.1 — sequence log-probabilities of responses, the quantity DPO compares.

A batch holds prompt + response rows (``input_ids`` (batch, length)) whose ``labels`` equal
the ids on response tokens and ``IGNORE_INDEX`` on the prompt and padding, as
:func:`ftlab.data.tokenize_with_labels` and :func:`ftlab.data.collate` make them.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlab.data.labels import IGNORE_INDEX
from ftlab.train.step import MODEL_INPUTS


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | everything before it) over each row's response tokens.

    Input: ``logits`` (batch, length, vocab) from a causal LM over the rows; ``labels``
    (batch, length), not shifted: the logits at position ``t`` score ``labels[:, t + 1]``.
    Positions whose label is ``IGNORE_INDEX`` (prompt, padding) add nothing, so two rows
    with the same response after different prompts are scored on the response alone; every
    other label is a token id in ``[0, vocab)`` and is scored — id 0 and the pad id too
    (padding is marked by ``IGNORE_INDEX``, never by its id). ``labels`` may live on
    another device than ``logits``. Neither input is modified.
    Output: float32 tensor (batch,) on the logits' device, with a graph when ``logits`` has
    one; the maths in float32 whatever the logits' dtype (bfloat16 logits are converted
    before ``log_softmax``, which stays exact for very unlikely tokens); 0 for a row with no
    response token (every label ``IGNORE_INDEX``, or a row of length 1).
    """
    ### BEGIN SOLUTION C.1
    scores = logits[:, :-1].float().log_softmax(dim=-1)
    targets = labels[:, 1:].to(scores.device)
    scored = targets != IGNORE_INDEX
    picked = scores.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(dim=-1)
    ### END SOLUTION


def response_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_logprobs` of ``model`` on a collated ``batch``; shape (batch,).

    Runs the model with ``use_cache=False`` (see :func:`ftlab.train.step.target_loss_sum`).
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    return sequence_logprobs(model(**inputs, use_cache=False).logits, batch["labels"])
