"""Capstone, RL track — group-relative advantages (C.4) and the GRPO loss (C.5).

Every expected value is computed here the slow way, one completion and one token at a time,
in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.course.teaching import expect, expect_close
from ftlab.rl import STD_EPSILON, group_advantages, grpo_loss

pytestmark = pytest.mark.capstone

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0,    # group 0: mean 0.5
                        5.0, 5.0, 5.0, 5.0,    # group 1: every answer the same
                        2.0, 4.0, 9.0, 1.0],   # group 2: mean 4
                       dtype=torch.float64)
G = 4


def _std(values: list[float]) -> float:
    """Unbiased (n - 1) standard deviation; 0 for a single value."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _advantages_by_hand(rewards: list[float], g: int, scale: str) -> list[float]:
    out = []
    for start in range(0, len(rewards), g):
        group = rewards[start:start + g]
        mean = sum(group) / len(group)
        spread = {"group": _std(group), "batch": _std(rewards), "none": None}[scale]
        out += [(r - mean) / (spread + STD_EPSILON) if spread is not None else r - mean
                for r in group]
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_c_4_advantages_are_centred_on_their_own_group(scale):
    got = group_advantages(REWARDS, G, scale)
    expect(tuple(got.shape) == (12,), task="C.4", what="advantages shape", expected="(12,)",
           got=tuple(got.shape), cause="return one advantage per completion, in the input order")
    sums = got.view(-1, G).sum(dim=1)
    expect(float(sums.abs().max()) < 1e-9, task="C.4", what="sum of each group's advantages",
           expected="0 for every group", got=[round(float(s), 4) for s in sums],
           cause="centred over the batch instead of the group: subtract each group's own mean "
                 "(rewards.view(-1, group_size).mean(dim=1)), so a prompt's difficulty does not "
                 "leak into the others' advantages")
    expect_close(got, torch.tensor(_advantages_by_hand(REWARDS.tolist(), G, scale),
                                   dtype=torch.float64),
                 task="C.4", atol=1e-9, rtol=1e-9,
                 what=f"advantages with scale={scale!r} vs one group at a time",
                 cause="'group' divides by the group's std + 1e-4, 'batch' by the std of all "
                       "rewards + 1e-4, 'none' by nothing; stds are unbiased (n - 1, torch.std's "
                       "default, as TRL)")


def test_c_4_equal_rewards_and_groups_of_one_give_zero_not_nan():
    got = group_advantages(REWARDS, G, "group")
    expect(bool(torch.isfinite(got).all()) and float(got[4:8].abs().max()) == 0.0, task="C.4",
           what="advantages of a group whose four rewards are all 5", expected="[0, 0, 0, 0]",
           got=got[4:8].tolist(),
           cause="a group with no spread teaches nothing: centred it is 0, and the 1e-4 added to "
                 "its std keeps 0 / 0 away")
    for scale in ("group", "batch"):
        single = group_advantages(torch.tensor([0.0, 1.0, 3.0]), 1, scale)
        expect(bool(torch.isfinite(single).all()) and float(single.abs().max()) == 0.0,
               task="C.4", what=f"groups of one completion each (scale={scale!r})",
               expected="advantages [0, 0, 0]", got=single.tolist(),
               cause="std of a one-sample group dividing by zero: torch.std of one value is "
                     "NaN (n - 1 = 0); count a single reward's std as 0")
    lone = group_advantages(torch.tensor([2.0]), 1, "batch")
    expect(bool(torch.isfinite(lone).all()), task="C.4", what="a batch of one reward",
           expected="advantage 0", got=lone.tolist(),
           cause="std of a one-sample batch is NaN: count it as 0")


# --- C.5 ---------------------------------------------------------------------------
B, C = 4, 5
GEN = torch.Generator().manual_seed(3)
POLICY = (torch.randn(B, C, generator=GEN, dtype=torch.float64) * 0.3 - 1.5)
OLD = POLICY + torch.tensor([[0.0, 0.4, -0.4, 0.1, 0.0],     # ratios well inside and outside
                             [-0.5, 0.5, 0.05, 0.0, 0.0],    # the clip range, both sides
                             [0.3, -0.3, 0.0, 0.2, -0.6],
                             [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
REF = POLICY + torch.randn(B, C, generator=GEN, dtype=torch.float64) * 0.2
ADV = torch.tensor([1.2, -0.8, -1.5, 0.6], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 1, 1],
                     [1, 1, 1, 0, 0],      # a short completion: two padding positions
                     [1, 1, 1, 1, 0],
                     [1, 1, 0, 0, 0]], dtype=torch.float64)
EPS_LOW, EPS_HIGH, BETA, MAX_LEN = 0.2, 0.28, 0.05, 6


def _token_loss(logp: float, old: float, ref: float, adv: float, beta: float) -> float:
    ratio = math.exp(logp - old)
    clipped = min(max(ratio, 1 - EPS_LOW), 1 + EPS_HIGH)
    loss = -min(ratio * adv, clipped * adv)
    return loss + beta * ratio * (math.exp(ref - logp) - (ref - logp) - 1)


def _loss_by_hand(policy, old, ref, adv, mask, beta: float, loss_type: str,
                  step_tokens: float | None = None) -> float:
    rows = []
    for b in range(policy.shape[0]):
        rows.append([_token_loss(float(policy[b, t]), float(old[b, t]), float(ref[b, t]),
                                 float(adv[b]), beta)
                     for t in range(policy.shape[1]) if mask[b, t]])
    tokens = sum(len(r) for r in rows)
    total = sum(map(sum, rows))
    return {"grpo": sum(sum(r) / len(r) for r in rows) / len(rows),
            "bnpo": total / tokens,
            "dr_grpo": total / (len(rows) * MAX_LEN),
            "dapo": total / (step_tokens or tokens)}[loss_type]


def _ours(loss_type: str, beta: float = BETA, old=OLD, policy=None, step_tokens=None):
    policy = POLICY.clone().requires_grad_(True) if policy is None else policy
    out = grpo_loss(policy, old, REF, ADV, MASK, beta, EPS_LOW, EPS_HIGH, loss_type,
                    max_completion_length=MAX_LEN, step_tokens=step_tokens)
    return out, policy


def _grad_by_hand(loss_type: str, beta: float, step_tokens=None) -> torch.Tensor:
    """Central differences of the slow loss, per policy log-prob."""
    grad, h = torch.zeros(B, C, dtype=torch.float64), 1e-6
    for b in range(B):
        for t in range(C):
            up, down = POLICY.clone(), POLICY.clone()
            up[b, t] += h
            down[b, t] -= h
            grad[b, t] = (_loss_by_hand(up, OLD, REF, ADV, MASK, beta, loss_type, step_tokens)
                          - _loss_by_hand(down, OLD, REF, ADV, MASK, beta, loss_type, step_tokens)
                          ) / (2 * h)
    return grad


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_c_5_loss_and_gradient_equal_token_by_token(loss_type):
    out, policy = _ours(loss_type)
    expect(out.loss.dim() == 0 and out.loss.requires_grad, task="C.5", what="loss",
           expected="a scalar with a graph to the policy log-probs", got=out.loss,
           cause="aggregate to one number and keep the graph (no .item(), no detach)")
    expected = _loss_by_hand(POLICY, OLD, REF, ADV, MASK, BETA, loss_type)
    expect_close(out.loss.detach(), torch.tensor(expected, dtype=torch.float64), task="C.5",
                 atol=1e-10, rtol=1e-9,
                 what=f"loss_type={loss_type!r} vs a token-by-token sum",
                 cause="per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + "
                       "beta * ratio * (exp(ref - logp) - (ref - logp) - 1), with ratio = "
                       "exp(logp - old) (kl_correction, TRL's default); "
                       "then 'grpo' averages each completion's tokens and then the completions, "
                       "'bnpo' averages all tokens, 'dr_grpo' divides the sum by completions x "
                       "max_completion_length, 'dapo' by step_tokens — masked positions count "
                       "nowhere (padding averaged in changes every one of them); the min() keeps "
                       "the unclipped term where it is the smaller (clip on the wrong side for "
                       "negative advantages: clipping both sides whatever A's sign is wrong)")
    out.loss.backward()
    expect_close(policy.grad, _grad_by_hand(loss_type, BETA), task="C.5", atol=1e-6, rtol=1e-5,
                 what=f"gradient w.r.t. the policy log-probs ({loss_type})",
                 cause="old log-probs are constants (detach them); the clip stops the gradient "
                       "only where min() picks the clipped term: above 1 + eps_high for a "
                       "positive advantage, below 1 - eps_low for a negative one (clip on the "
                       "wrong side for negative advantages changes these tokens); padding gets "
                       "no gradient")


def test_c_5_padding_adds_nothing():
    base, _ = _ours("bnpo")
    moved = POLICY.clone()
    moved[MASK == 0] += 3.0  # log-probs at padding positions are garbage; they must not count
    changed, _ = _ours("bnpo", policy=moved.requires_grad_(True))
    expect_close(changed.loss.detach(), base.loss.detach(), task="C.5", atol=1e-12, rtol=1e-12,
                 what="loss after changing only the log-probs at padding positions",
                 cause="padding averaged in: multiply the per-token loss by the mask before "
                       "summing, and count only mask tokens in every denominator")


def test_c_5_old_logprobs_are_constants():
    for what, old in (("old_logps=None (one update per sample batch)", None),
                      ("old_logps with a graph", "graph")):
        policy = POLICY.clone().requires_grad_(True)
        given = policy * 1.0 if old == "graph" else None  # equal to the policy, with a graph
        out = grpo_loss(policy, given, REF, ADV, MASK, 0.0, EPS_LOW, EPS_HIGH, "bnpo")
        out.loss.backward()
        expected = -(ADV[:, None] * MASK) / MASK.sum()  # ratio 1: the plain policy gradient
        expect_close(policy.grad, expected, task="C.5", atol=1e-12, rtol=1e-9,
                     what=f"gradient at ratio 1 with {what}",
                     cause="old log-probs not detached: with old = logp and a graph through "
                           "both, the ratio is exp(0) = 1 whatever the weights and no gradient "
                           "flows; old log-probs are numbers from the sampling policy — "
                           "logps.detach() when none are given, old_logps.detach() otherwise")


def test_c_5_kl_is_the_k3_estimator_to_the_reference():
    policy = POLICY.clone().requires_grad_(True)
    out = grpo_loss(policy, None, REF, ADV, MASK, BETA, EPS_LOW, EPS_HIGH, "bnpo")
    delta = REF - POLICY
    expect_close(out.kl, torch.exp(delta) - delta - 1, task="C.5", atol=1e-12, rtol=1e-9,
                 what="per-token KL estimate on-policy (GRPOLoss.kl, ratio 1)",
                 cause="k3 of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1 — never "
                       "negative; the KL sign or estimator wrong (exp(logp - ref) - ..., or the "
                       "plain difference logp - ref) gives other numbers and other gradients")
    expect(not out.kl.requires_grad, task="C.5", what="GRPOLoss.kl", expected="detached",
           got="with a graph", cause="kl is for logging; the loss carries the graph")
    out.loss.backward()
    # d/dlogp of beta * ratio * k3 at ratio 1: beta * (k3 + 1 - exp(delta)), per masked token
    expected = (-(ADV[:, None]) + BETA * ((torch.exp(delta) - delta - 1) + 1 - torch.exp(delta))
                ) * MASK / MASK.sum()
    expect_close(policy.grad, expected, task="C.5", atol=1e-12, rtol=1e-9,
                 what="gradient on-policy with the KL penalty",
                 cause="the KL term is beta * ratio * k3 with ratio = exp(logp - logp.detach()): "
                       "1 in value, but its gradient counts (kl_correction); a KL sign or "
                       "estimator wrong changes the gradient")
    plain = grpo_loss(POLICY, OLD, REF, ADV, MASK, BETA, EPS_LOW, EPS_HIGH, "bnpo",
                      kl_correction=False)
    expect_close(plain.kl, torch.exp(delta) - delta - 1, task="C.5", atol=1e-12, rtol=1e-9,
                 what="per-token KL with kl_correction=False (off-policy ratios)",
                 cause="without the correction the KL term is k3 alone, not weighted by the ratio")
    no_ref = grpo_loss(POLICY, OLD, None, ADV, MASK, 0.0, EPS_LOW, EPS_HIGH, "bnpo")
    expect_close(no_ref.loss, torch.tensor(_loss_by_hand(POLICY, OLD, REF, ADV, MASK, 0.0, "bnpo"),
                                           dtype=torch.float64),
                 task="C.5", atol=1e-10, rtol=1e-9, what="loss with beta 0 and no reference",
                 cause="beta 0 means no KL term: the reference may be None then")
