"""C.6 and C.7 — a reward model's score of a sequence, and the loss that trains it.

A reward model is the language model with its vocabulary head replaced by a scalar head
(``AutoModelForSequenceClassification`` with ``num_labels=1``): it gives one score per
position, and the sequence's reward is the score at its **last real token**, the only
position that has read the whole reply. It is trained on preference pairs with the
Bradley–Terry loss: the probability that the chosen reply beats the rejected one is
``sigmoid(r_chosen - r_rejected)``, and the loss is its negative log, averaged over pairs
(Ouyang et al. 2022; TRL's ``RewardTrainer``). Rewards are only defined up to a constant,
so TRL optionally adds ``center_coefficient * mean((r_chosen + r_rejected)**2)`` to keep
them near 0 (Eisenstein et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_rewards(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward of each sequence: its score at its last real token.

    ``scores``: (batch, seq), the scalar head's output at every position (any float dtype;
    ``(batch, seq, 1)`` is squeezed first). ``attention_mask``: (batch, seq), 1 (or True)
    at real tokens and 0 at padding, which may sit on the right (``[t t t 0 0]``) or on the
    left (``[0 0 t t t]``), differently per row; the real tokens are contiguous. The last
    real token is the rightmost position whose mask is 1, whatever the padding side; a row
    with no padding takes its last position. Returns (batch,) in the scores' dtype and on
    their device, carrying their graph. The inputs are not modified. A row with no real
    token raises ValueError before your code runs.
    """
    if scores.dim() == 3 and scores.shape[-1] == 1:
        scores = scores.squeeze(-1)
    if scores.shape != attention_mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be (batch, seq)")
    empty = ~attention_mask.bool().any(dim=-1)
    if attention_mask.device.type != "meta" and empty.any():  # meta tensors hold no values
        raise ValueError(f"rows {empty.nonzero().flatten().tolist()} have no real token: "
                         "a sequence needs at least one")
    ### BEGIN SOLUTION C.6
    real = attention_mask.bool()
    positions = torch.arange(real.shape[-1], device=real.device).expand_as(real)
    last = torch.where(real, positions, -1).amax(dim=-1)
    return scores.gather(-1, last.unsqueeze(-1)).squeeze(-1)
    ### END SOLUTION


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                center_coefficient: float | None = None) -> torch.Tensor:
    """The Bradley–Terry loss of a reward model on a batch of preference pairs.

    ``chosen``, ``rejected``: (pairs,) rewards of the preferred and the other reply of each
    pair (C.6's output), with their graph. ``margin``: None, or (pairs,) — how much the
    chosen reply must win by (a pair rated 5 vs 2 may carry margin 3); it is subtracted:
    ``-logsigmoid(chosen - rejected - margin)``. ``center_coefficient``: None (or 0) for
    none, else the weight of ``mean((chosen + rejected) ** 2)`` added to the loss (the
    centring term of TRL's ``center_rewards_coefficient``: on the sum, not the difference).

    Returns the scalar ``mean over pairs of -logsigmoid(chosen - rejected - margin)`` plus
    the centring term — exactly TRL ``RewardTrainer.compute_loss``. Computed in float32 (or
    float64 for float64 inputs): bf16 rewards are cast up first. Finite for any finite
    rewards, however large the margin (``logsigmoid``, not ``log(sigmoid(.))``, which is
    ``-inf`` from a difference of about -104 in float32). ``pairs`` may be 1. The inputs are
    not modified.
    """
    dtype = torch.float64 if chosen.dtype == torch.float64 else torch.float32
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    margin = None if margin is None else margin.to(dtype)
    ### BEGIN SOLUTION C.7
    difference = chosen - rejected
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen + rejected) ** 2).mean()
    return loss
    ### END SOLUTION
