"""C.8 — the distillation loss: how far the student's next-token distributions are from the
teacher's, token by token.

Logit distillation trains a small *student* to give, at every position of a text, the same
distribution over the next token as a larger *teacher* (Hinton et al. 2015): a whole
distribution per token instead of one right token, so the student learns which wrong answers
are nearly right. Which divergence? The forward KL(teacher ‖ student) makes the student
cover everything the teacher finds likely (mass-covering); the reverse KL(student ‖ teacher)
makes it pick what the teacher finds likeliest (mode-seeking), better for a student too small
to cover everything. GKD (Agarwal et al. 2024) interpolates with the generalized
Jensen–Shannon divergence of weight ``beta``; TRL's ``DistillationTrainer`` (and
``GKDTrainer``'s ``generalized_jsd_loss``) implement it, and this task equals them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      mask: torch.Tensor, beta: float = 0.5,
                      temperature: float = 1.0) -> torch.Tensor:
    """The generalized Jensen–Shannon divergence between teacher and student, per token,
    averaged over the tokens that count.

    ``student_logits``, ``teacher_logits``: (batch, seq, vocab), the same shape, each
    position's logits for the next token; the student's carry its graph, the teacher's come
    from a forward pass without gradients. ``mask``: (batch, seq), 1 (or True) where the
    position counts (a reply token), 0 at padding and prompt tokens.

    With ``S = softmax(student_logits / temperature)`` and ``T = softmax(teacher_logits /
    temperature)`` at a position (the temperature divides both sides' logits), the
    per-token divergence, summed over the vocabulary, is

    - ``beta == 0``: the forward KL(T ‖ S) = Σ T (log T − log S);
    - ``beta == 1``: the reverse KL(S ‖ T) = Σ S (log S − log T);
    - else: ``beta · KL(T ‖ M) + (1 − beta) · KL(S ‖ M)`` with the mixture of the
      probabilities ``M = beta · T + (1 − beta) · S`` (build log M with logsumexp of the
      log-probabilities plus log-weights: log of a sum, never a sum of logs).

    ``F.kl_div(input, target, log_target=True)`` computes Σ exp(target) (target − input):
    KL(target ‖ input), with ``input`` the log-probabilities of the *second* distribution.

    Returns the scalar sum of the per-token divergences at masked-in positions divided by
    their number — padding never enters the mean — and 0 (with its graph) when no position
    counts. Exactly TRL's ``generalized_jsd_loss(student, teacher, labels, beta,
    temperature)`` with ``labels`` -100 where ``mask`` is 0 (no T² factor). Computed in
    float32 (float64 for float64 logits): bf16 logits are cast up first. The inputs are not
    modified. Raises ValueError for logits of different shapes, a mask that is not
    (batch, seq), ``beta`` outside [0, 1] or ``temperature`` ≤ 0.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (batch, seq, vocab): the "
                         "same tokenizer and the same positions")
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (batch, seq) = "
                         f"{tuple(student_logits.shape[:2])}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1] (0 forward KL, 1 reverse KL), got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.to(dtype)
    ### BEGIN SOLUTION C.8
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        per_token = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    elif beta == 1:
        per_token = F.kl_div(teacher, student, reduction="none", log_target=True).sum(-1)
    else:
        mixture = torch.logsumexp(torch.stack([teacher + math.log(beta),
                                               student + math.log(1 - beta)]), dim=0)
        per_token = (beta * F.kl_div(mixture, teacher, reduction="none", log_target=True)
                     + (1 - beta) * F.kl_div(mixture, student, reduction="none",
                                             log_target=True)).sum(-1)
    counted = mask.bool()
    return torch.where(counted, per_token, 0).sum() / counted.sum().clamp(min=1)
    ### END SOLUTION
