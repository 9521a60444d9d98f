"""C.2 — the DPO loss (Rafailov et al. 2023, sigmoid form) and its implicit rewards.

For a prompt ``x`` with a chosen response ``y_w`` and a rejected one ``y_l``, the policy's
implicit reward of a response is ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))`` and

    loss = -log sigmoid(r(y_w) - r(y_l))

averaged over pairs. The reference model is fixed: no gradient may reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DPOOutput:
    """Per-pair DPO losses and implicit rewards, each of shape (pairs,).

    ``losses`` carry the graph to the policy; the rewards are detached (metrics only).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean loss over the pairs (what TRL's ``DPOTrainer`` reports and optimizes)."""
        return self.losses.mean()

    @property
    def margins(self) -> torch.Tensor:
        """``chosen_rewards - rejected_rewards`` per pair."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """Share of pairs whose chosen reward is strictly above the rejected one."""
        return float((self.margins > 0).float().mean())


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> DPOOutput:
    """DPO (sigmoid) losses and rewards from sequence log-probs (C.1), all of shape (pairs,).

    ``policy_*``: log-probs of the chosen / rejected responses under the model being
    trained (with a graph). ``reference_*``: the same under the frozen reference model;
    treated as constants even when they carry a graph. ``beta`` > 0 scales the rewards
    (the strength of the implicit KL penalty to the reference): the argument's value, any
    positive float. ``pairs`` may be 1. The inputs are not modified.

    ``losses = -logsigmoid(beta * ((pc - rc) - (pr - rr)))`` per pair (no mean here:
    :attr:`DPOOutput.loss` averages) — computed with ``logsigmoid``, which stays finite for
    large margins; rewards ``beta * (p - r)``, detached. Every output is (pairs,) in the
    inputs' dtype.
    """
    ### BEGIN SOLUTION C.2
    chosen_ratio = policy_chosen - reference_chosen.detach()
    rejected_ratio = policy_rejected - reference_rejected.detach()
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return DPOOutput(losses=losses, chosen_rewards=beta * chosen_ratio.detach(),
                     rejected_rewards=beta * rejected_ratio.detach())
    ### END SOLUTION
