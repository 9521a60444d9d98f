"""Capstone — sequence log-probs over response tokens (C.1) and the DPO loss (C.2)."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.align import dpo_loss, sequence_logprobs
from ftlab.course.teaching import expect, expect_close
from ftlab.data.labels import IGNORE_INDEX

pytestmark = pytest.mark.capstone

G = torch.Generator().manual_seed(0)
LOGITS = torch.randn(3, 7, 11, generator=G)
IDS = torch.randint(0, 11, (3, 7), generator=G)
PROMPT = [3, 2, 5]  # prompt tokens per row; the rest is the response, row 2 padded at the end
LABELS = IDS.clone()
for row, n in enumerate(PROMPT):
    LABELS[row, :n] = IGNORE_INDEX
LABELS[2, 6:] = IGNORE_INDEX


def _by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Position by position: the logits at t score the label at t + 1."""
    out = []
    for row in range(labels.shape[0]):
        total = 0.0
        for t in range(1, labels.shape[1]):
            if labels[row, t] != IGNORE_INDEX:
                total += float(torch.log_softmax(logits[row, t - 1].double(), -1)[labels[row, t]])
        out.append(total)
    return torch.tensor(out)


def test_c_1_sums_response_token_logprobs():
    got = sequence_logprobs(LOGITS, LABELS)
    expect(tuple(got.shape) == (3,), task="C.1", what="output shape", expected="(batch,) = (3,)",
           got=tuple(got.shape), cause="return one sum per row: reduce over the positions")
    expect_close(got, _by_hand(LOGITS, LABELS), task="C.1", atol=1e-5, rtol=1e-5,
                 what="sequence log-probs vs a position-by-position sum",
                 cause="the logits at position t score labels[:, t + 1] (shift by one), take "
                       "log_softmax over the vocabulary, and add up (not average) the log-probs "
                       "of the response tokens only (prompt tokens summed in would score the "
                       "prompt too)")


def test_c_1_prompt_and_padding_add_nothing():
    changed = LOGITS.clone()
    for row, n in enumerate(PROMPT):  # logits that predict prompt tokens (positions < n - 1)
        changed[row, : n - 1] += 5 * torch.randn(n - 1, 11, generator=G)
    changed[2, 5] += 3.0  # predicts the padding label at position 6
    base, moved = sequence_logprobs(LOGITS, LABELS), sequence_logprobs(changed, LABELS)
    expect_close(moved, base, task="C.1", atol=1e-5, rtol=1e-5,
                 what="log-probs after changing only the logits that predict prompt tokens",
                 cause="prompt tokens summed in: positions whose label is IGNORE_INDEX (prompt, "
                       "padding) must contribute nothing — DPO compares responses, and the prompt "
                       "is the same for both")
    empty = sequence_logprobs(LOGITS[:1], torch.full_like(LABELS[:1], IGNORE_INDEX))
    expect(float(empty.abs().max()) == 0.0, task="C.1", what="a row without response tokens",
           expected="0.0", got=f"{float(empty[0]):.4g}",
           cause="prompt tokens summed in: mask out every IGNORE_INDEX label (gather with a "
                 "clamped index, then multiply by the mask)")


def test_c_1_keeps_the_graph():
    logits = LOGITS.clone().requires_grad_(True)
    total = sequence_logprobs(logits, LABELS).sum()
    expect(total.requires_grad, task="C.1", what="output", expected="a tensor with a graph",
           got="no graph", cause="do not detach or convert to Python numbers: DPO trains through it")
    total.backward()
    untouched = float(logits.grad[0, PROMPT[0]:].abs().sum()) > 0
    expect(untouched, task="C.1", what="gradient at response positions", expected="non-zero",
           got="zero", cause="the response tokens' log-probs must depend on the logits")


BETA = 0.1
PC = torch.tensor([-12.0, -30.0, -8.0, -20.0])
PR = torch.tensor([-15.0, -25.0, -9.0, -20.0])
RC = torch.tensor([-14.0, -29.0, -8.5, -19.0])
RR = torch.tensor([-13.0, -26.0, -9.5, -21.0])


def _formula(pc, pr, rc, rr, beta):
    return [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
            for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]


def test_c_2_loss_and_rewards_follow_the_formula():
    out = dpo_loss(PC, PR, RC, RR, BETA)
    expect_close(out.losses, torch.tensor(_formula(PC, PR, RC, RR, BETA)), task="C.2",
                 atol=1e-6, rtol=1e-5, what="per-pair losses",
                 cause="sign flipped, or beta or the reference missing: loss = "
                       "-log sigmoid(beta * ((policy_chosen - reference_chosen) - "
                       "(policy_rejected - reference_rejected)))")
    expect_close(out.chosen_rewards, BETA * (PC - RC), task="C.2", atol=1e-6,
                 what="chosen rewards", cause="reward = beta * (policy - reference) log-probs")
    expect_close(out.rejected_rewards, BETA * (PR - RR), task="C.2", atol=1e-6,
                 what="rejected rewards", cause="reward = beta * (policy - reference) log-probs")
    # margins 4, -2, 0 (a tie is not a win), -2
    expect(abs(out.accuracy - 0.25) < 1e-9, task="C.2", what="accuracy (chosen reward > rejected)",
           expected=0.25, got=out.accuracy, cause="the rewards decide the accuracy; check their sign")


def test_c_2_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    dpo_loss(pc, pr, RC, RR, BETA).losses.sum().backward()
    ok = bool((pc.grad < 0).all() and (pr.grad > 0).all())
    expect(ok, task="C.2", what="gradient of the loss",
           expected="negative for the chosen log-prob, positive for the rejected (descent makes "
                    "the chosen reply likelier)",
           got=f"chosen {pc.grad.tolist()}, rejected {pr.grad.tolist()}",
           cause="sign flipped: minimising -logsigmoid(beta * (chosen margin - rejected margin)) "
                 "must push the chosen reply up")


def test_c_2_no_gradient_reaches_the_reference():
    rc, rr = RC.clone().requires_grad_(True), RR.clone().requires_grad_(True)
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    out = dpo_loss(pc, pr, rc, rr, BETA)
    out.losses.sum().backward()
    leaked = [name for name, t in (("reference_chosen", rc), ("reference_rejected", rr))
              if t.grad is not None and float(t.grad.abs().sum()) > 0]
    expect(not leaked, task="C.2", what="gradients of the reference log-probs",
           expected="none", got=f"gradients on {leaked}",
           cause="reference not detached: the reference model is frozen; detach its log-probs "
                 "so training cannot move it (with a shared base it would drag the policy's "
                 "own target along)")
    flags = [out.chosen_rewards.requires_grad, out.rejected_rewards.requires_grad]
    expect(not any(flags), task="C.2", what="rewards", expected="detached (metrics only)",
           got="tensors with a graph", cause="detach the rewards: they are reported, not trained")


def test_c_2_large_margins_stay_finite():
    big = torch.tensor([-1e4, 1e4])
    out = dpo_loss(big, -big, torch.zeros(2), torch.zeros(2), 1.0)
    finite = bool(torch.isfinite(out.losses).all())
    expect(finite and abs(float(out.losses[1])) < 1e-6, task="C.2",
           what="losses for margins of -2e4 and +2e4",
           expected="[2e4, 0.0], finite", got=out.losses.tolist(),
           cause="log(sigmoid(x)) underflows to log(0) = -inf for very negative x: use "
                 "torch.nn.functional.logsigmoid")
