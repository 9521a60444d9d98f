"""C.5 — the GRPO loss: a clipped policy gradient per token, a KL penalty to the reference,
and TRL's ways of averaging tokens into one number.

Per completion token ``t`` with log-prob ``logp_t`` under the policy being trained,
``old_t`` under the policy that sampled it and ``ref_t`` under the frozen reference:

    ratio_t = exp(logp_t - old_t)
    loss_t  = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A) + beta * kl_t
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (the "k3" estimator of
              KL(policy || reference): unbiased for samples from the policy, never negative)

and, by default as in TRL 1.16 (``use_bias_correction_kl``), the KL term is weighted by the
ratio: ``beta * ratio_t * kl_t``. Its value is unchanged on-policy (ratio 1), but the ratio
is differentiable, which makes the penalty's gradient the unbiased gradient of the reverse
KL for samples drawn by the old policy (DeepSeek-V3.2).

``A`` is the completion's advantage (C.4). The min makes clipping pessimistic on both
sides: a positive advantage stops pushing once the ratio passes ``1 + eps_high``, a
negative one once it falls below ``1 - eps_low``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
"""How per-token losses become one loss (TRL's ``loss_type``s with this clipped objective).

``grpo``: mean over each completion's tokens, then over completions (short completions
weigh more per token). ``bnpo``: mean over all tokens of the micro-batch. ``dr_grpo``: sum
over tokens / (completions x the token budget) — no length bias. ``dapo`` (TRL's default):
sum over tokens / the number of completion tokens of the whole step, over every
micro-batch and process (``step_tokens``)."""


@dataclass(frozen=True)
class GRPOLoss:
    """``loss``: the aggregated scalar with a graph to the policy; ``kl`` (B, C): the KL
    term per token before ``beta`` (k3, times the ratio with ``kl_correction``), detached;
    0 where ``beta`` is 0 or no reference is given. ``kl`` at padding positions is not
    used (any value)."""

    loss: torch.Tensor
    kl: torch.Tensor


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None,
              ref_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              beta: float, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
              loss_type: str = "dapo", max_completion_length: int | None = None,
              step_tokens: float | None = None, kl_correction: bool = True) -> GRPOLoss:
    """The GRPO loss of one micro-batch of B completions of C token positions.

    ``logps`` (B, C): per-token log-probs of the completion tokens under the policy, with a
    graph. ``old_logps`` (B, C): the same under the policy that sampled them — constants
    (detach them); None when sampling and training are the same policy (one update per
    sample batch): then ``logps`` detached. ``ref_logps`` (B, C) or None: the reference's,
    constants too (no gradient reaches them), used when ``beta`` != 0 — with ``beta`` 0
    there is no KL term even when a reference is given; ``kl_correction``: weight the KL by
    the ratio (module doc). ``advantages`` (B,): one per completion, shared by its tokens
    (B may equal C). ``mask`` (B, C): 1 on completion tokens, 0 on padding after a
    completion's end — padding adds nothing to any sum or count, and the log-probs there
    are arbitrary (whatever the model or the sampler left there): they change neither the
    loss nor its gradient.
    ``loss_type``: one of :data:`AGGREGATIONS`; ``dr_grpo`` needs
    ``max_completion_length``; ``dapo`` divides by ``step_tokens`` (default: the tokens of
    this micro-batch; the other types ignore it). Equal to TRL ``GRPOTrainer``'s loss for
    that ``loss_type`` (one process, no gradient accumulation), and so are its gradients.

    Empty completions: a completion with no token (a mask row of 0s) contributes 0 to
    every sum and still counts among the B completions ('grpo', 'dr_grpo'); every count
    is clamped at 1 (as TRL), so a micro-batch of padding only (or ``step_tokens`` 0)
    gives loss 0 and a zero gradient, never NaN. The loss always keeps its graph to
    ``logps``. No input is modified.
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {AGGREGATIONS}, got {loss_type!r}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("loss_type 'dr_grpo' divides by max_completion_length: pass it")
    mask = mask.to(logps.dtype)
    ### BEGIN SOLUTION C.5
    old = logps.detach() if old_logps is None else old_logps.detach()
    ratio = torch.exp(logps - old)
    gain = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * gain,
                           torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * gain)
    kl = torch.zeros_like(logps)
    if beta != 0.0 and ref_logps is not None:
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        if kl_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    summed = per_token * mask
    if loss_type == "grpo":
        loss = (summed.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = summed.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = summed.sum() / (len(logps) * max_completion_length)
    else:
        loss = summed.sum() / max(float(mask.sum() if step_tokens is None else step_tokens), 1.0)
    return GRPOLoss(loss=loss, kl=kl.detach())
    ### END SOLUTION


def clip_fractions(logps: torch.Tensor, old_logps: torch.Tensor | None,
                   advantages: torch.Tensor, mask: torch.Tensor, epsilon_low: float,
                   epsilon_high: float) -> tuple[float, float, float]:
    """(tokens, low-clipped tokens, high-clipped tokens) of a micro-batch: the ratio fell
    below ``1 - epsilon_low`` with a negative advantage, or rose above ``1 + epsilon_high``
    with a positive one (where the clip stopped the gradient)."""
    if old_logps is None:
        return float(mask.sum()), 0.0, 0.0
    ratio = torch.exp(logps.detach() - old_logps)
    gain = advantages.unsqueeze(1)
    low = ((ratio < 1 - epsilon_low) & (gain < 0)) * mask
    high = ((ratio > 1 + epsilon_high) & (gain > 0)) * mask
    return float(mask.sum()), float(low.sum()), float(high.sum())
