"""Capstone, rewards track — a reward model's sequence score (C.6) and its loss (C.7).

C.6 is checked against the definition position by position: the score at the rightmost
position whose mask is 1, for right padding, left padding, rows without padding, rows of
one real token, mixed padding sides in one batch, int and bool masks, bf16 scores, on the
meta device, with the gradient reaching that position alone. C.7 is checked against the
formula in float64 for pairs of one and of many, with and without a margin and the
centring term, at a margin far beyond where ``log(sigmoid(.))`` underflows, in bf16, and
its gradient; a result that matches a known misreading names it."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.course.teaching import expect, expect_close, explained
from ftlab.reward import last_token_rewards, reward_loss

pytestmark = pytest.mark.capstone

SPEC_C6 = ("the reward is the score at the last REAL token: the rightmost position whose "
           "attention_mask is 1 — not the last position, which is padding under right padding")


def _last_real(mask: torch.Tensor) -> list[int]:
    """Position by position: the rightmost index whose mask is 1, per row."""
    return [max(t for t in range(mask.shape[1]) if mask[row, t]) for row in range(mask.shape[0])]


def _scores(batch: int, seq: int, dtype=torch.float32) -> torch.Tensor:
    """Distinct scores: row r, position t -> 10 r + t (every position tells which it is)."""
    return (10 * torch.arange(batch)[:, None] + torch.arange(seq)[None, :]).to(dtype)


def _rewards(scores, mask, what):
    with explained(task="C.6", what=what, expected=f"a tensor of shape ({scores.shape[0]},)",
                   cause="index each row at its own last real position (gather with one index "
                         "per row, or scores[arange(batch), last]); " + SPEC_C6):
        return last_token_rewards(scores, mask)


def _which_position(got: torch.Tensor) -> list[int]:
    """The position each returned value was read from (scores are 10 r + t)."""
    return [round(float(v)) - 10 * r for r, v in enumerate(got)]


def _diagnose(positions: list[int], mask: torch.Tensor) -> str:
    """The misreading that explains the positions read, if one does."""
    counts = mask.long().sum(-1).tolist()
    last = _last_real(mask)
    seq = mask.shape[1]
    if positions == [seq - 1] * len(positions):
        return ("you read the last position for every row: under right padding that is a "
                "padding token; read the last REAL token instead")
    if positions == counts:
        return ("you read the first padding token (index = number of real tokens): the last "
                "real token is one before it under right padding")
    if positions == [p - 1 for p in last]:
        return "you read the token before the last real one (an off-by-one)"
    if positions == [c - 1 for c in counts] and positions != last:
        return ("you used (number of real tokens - 1), which is the last real token only under "
                "right padding; with left padding the real tokens end at the last position — "
                "take the rightmost position whose mask is 1")
    return SPEC_C6


MASKS = {
    "right padding": [[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]],
    "left padding": [[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1]],
    "no padding and one real token": [[1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0],
                                      [0, 0, 0, 0, 0, 0, 1]],
    "right and left padding in one batch": [[1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1],
                                            [1, 1, 1, 1, 1, 1, 1]],
    "a batch of one sequence": [[1, 1, 1, 1, 1, 0, 0]],
}


@pytest.mark.parametrize("case", list(MASKS))
def test_c_6_reads_the_score_at_the_last_real_token(case):
    for mask_dtype in (torch.long, torch.bool):
        mask = torch.tensor(MASKS[case], dtype=mask_dtype)
        scores = _scores(*mask.shape)
        got = _rewards(scores, mask, f"last_token_rewards, {case}, {mask_dtype} mask")
        expect(tuple(got.shape) == (mask.shape[0],), task="C.6", what=f"output shape ({case})",
               expected=f"({mask.shape[0]},)", got=tuple(got.shape),
               cause="one reward per row: gather one position per row and squeeze(-1) — a bare "
                     "squeeze() also drops the batch dimension of a batch of one")
        positions = _which_position(got)
        want = _last_real(mask)
        expect(positions == want, task="C.6",
               what=f"positions read, {case} ({mask_dtype} mask)",
               expected=f"the last real token of each row: {want}", got=positions,
               cause=_diagnose(positions, mask))


def test_c_6_keeps_dtype_device_graph_and_inputs():
    mask = torch.tensor(MASKS["right and left padding in one batch"])
    scores = _scores(*mask.shape, torch.bfloat16)
    given = (scores.clone(), mask.clone())
    got = _rewards(scores, mask, "last_token_rewards of bf16 scores")
    expect(got.dtype == torch.bfloat16, task="C.6", what="dtype of bf16 rewards",
           expected="torch.bfloat16 (the scores' dtype)", got=str(got.dtype),
           cause="read the scores as they are: no .float() or .tolist() (the reward keeps "
                 "the head's dtype and graph)")
    expect(torch.equal(scores, given[0]) and torch.equal(mask, given[1]), task="C.6",
           what="scores and attention_mask after the call", expected="unchanged",
           got="modified", cause="do not write into the inputs (mask[mask == 0] = ..., "
                                 "in-place ops): the batch is scored again for the loss")
    leaf = _scores(*mask.shape).requires_grad_()
    graph = _rewards(leaf, mask, "last_token_rewards with a graph")
    cut = ("index the scores tensor itself (gather / advanced indexing keep the graph); "
           "building a new tensor from Python numbers cuts it")
    expect(graph.requires_grad, task="C.6", what="rewards of scores that require grad",
           expected="a tensor with a graph back to the scores", got="no graph", cause=cut)
    graph.sum().backward()
    hot = leaf.grad.nonzero().tolist()
    want = [[row, t] for row, t in enumerate(_last_real(mask))]
    expect(hot == want, task="C.6", what="positions the gradient reaches",
           expected=f"the last real token of each row only: {want}", got=hot,
           cause=cut)
    meta = _rewards(torch.empty(3, 7, device="meta"), mask.to("meta"),
                    "last_token_rewards on the meta device")
    expect(meta.device.type == "meta" and tuple(meta.shape) == (3,), task="C.6",
           what="rewards of tensors on another device (meta)",
           expected="(3,) on meta", got=f"{tuple(meta.shape)} on {meta.device}",
           cause="make new tensors on the mask's device (torch.arange(..., device="
                 "attention_mask.device)); no .item() / .tolist() / Python loops over values")


# -- C.7 ----------------------------------------------------------------------------------

SPEC_C7 = ("loss = mean over pairs of -logsigmoid(chosen - rejected - margin), plus "
           "center_coefficient * mean((chosen + rejected) ** 2) when a coefficient is given")


def _by_hand(chosen, rejected, margin, center) -> float:
    """The Bradley–Terry loss in float64, pair by pair (log1p(exp(-d)) written out stably)."""
    total, square = 0.0, 0.0
    n = len(chosen)
    for i in range(n):
        d = float(chosen[i]) - float(rejected[i]) - (float(margin[i]) if margin is not None else 0.0)
        total += max(-d, 0.0) + math.log1p(math.exp(-abs(d)))
        square += (float(chosen[i]) + float(rejected[i])) ** 2
    return total / n + (center or 0.0) * square / n


def _misreadings(chosen, rejected, margin, center) -> dict[str, float]:
    """Loss values of known misreadings, each with its cause."""
    out = {"chosen and rejected swapped: the loss must fall as chosen - rejected grows, so "
           "it is -logsigmoid(chosen - rejected - margin)":
           _by_hand(rejected, chosen, margin, center)}
    if isinstance(margin, torch.Tensor):
        out["the margin added instead of subtracted: the chosen reply must win BY the margin, "
            "-logsigmoid(chosen - rejected - margin)"] = _by_hand(chosen, rejected, -margin, center)
    if center:
        n = len(chosen)
        diff_sq = sum((float(c) - float(r)) ** 2 for c, r in zip(chosen, rejected)) / n
        sum_sq = sum((float(c) + float(r)) ** 2 for c, r in zip(chosen, rejected)) / n
        out["the centring term on the difference: it is mean((chosen + rejected) ** 2), which "
            "keeps the rewards near 0 (the difference is what the first term trains)"] = (
            _by_hand(chosen, rejected, margin, center) - center * sum_sq + center * diff_sq)
        out["the centring term left out although center_coefficient was given"] = (
            _by_hand(chosen, rejected, margin, None))
    if len(chosen) > 1:
        out["the losses summed over pairs instead of averaged"] = (
            _by_hand(chosen, rejected, margin, center) * len(chosen))
    return out


def _loss(what, *args, **kwargs):
    with explained(task="C.7", what=what, expected="a scalar tensor",
                   cause="work on whole tensors: F.logsigmoid(chosen - rejected - margin).mean(); "
                         "margin and center_coefficient may be None; " + SPEC_C7):
        return reward_loss(*args, **kwargs)


def _check_value(got, chosen, rejected, margin, center, what):
    expect(isinstance(got, torch.Tensor) and got.dim() == 0, task="C.7", what=f"{what}: type",
           expected="a 0-dim tensor", got=type(got).__name__ if not isinstance(got, torch.Tensor)
           else f"shape {tuple(got.shape)}", cause="return the mean as a tensor (.mean()), "
                                                  "not .item() and not per-pair losses")
    want = _by_hand(chosen, rejected, margin, center)
    if abs(float(got) - want) <= 1e-5 + 1e-5 * abs(want):
        return
    cause = next((why for why, value in _misreadings(chosen, rejected, margin, center).items()
                  if abs(float(got) - value) <= 1e-5 + 1e-5 * abs(value)), SPEC_C7)
    expect(False, task="C.7", what=what, expected=f"{want:.6f}", got=f"{float(got):.6f}",
           cause=cause)


G = torch.Generator().manual_seed(7)
CHOSEN = torch.randn(5, generator=G) * 2
REJECTED = torch.randn(5, generator=G) * 2
MARGIN = torch.tensor([0.0, 1.0, 2.5, -0.5, 3.0])


@pytest.mark.parametrize("margin,center", [(None, None), (MARGIN, None), (None, 0.01),
                                           (MARGIN, 0.5)])
def test_c_7_equals_the_bradley_terry_formula(margin, center):
    what = f"reward_loss, margin {'given' if margin is not None else 'None'}, center {center}"
    got = _loss(what, CHOSEN.clone(), REJECTED.clone(),
                margin=None if margin is None else margin.clone(), center_coefficient=center)
    _check_value(got, CHOSEN, REJECTED, margin, center, what)
    one = _loss(what + ", one pair", CHOSEN[:1].clone(), REJECTED[:1].clone(),
                margin=None if margin is None else margin[:1].clone(), center_coefficient=center)
    _check_value(one, CHOSEN[:1], REJECTED[:1], None if margin is None else margin[:1], center,
                 what + ", one pair")


def test_c_7_stays_finite_at_a_huge_margin_and_a_zero_coefficient():
    chosen, rejected = torch.tensor([0.0, 5.0]), torch.tensor([0.0, -5.0])
    margin = torch.tensor([150.0, 0.0])  # d = -150: sigmoid(d) underflows to 0 in float32
    got = _loss("reward_loss with a margin of 150", chosen, rejected, margin=margin)
    expect(bool(torch.isfinite(got)), task="C.7", what="the loss when chosen - rejected - margin "
           "is -150", expected=f"{_by_hand(chosen, rejected, margin, None):.4f} (finite)",
           got=float(got), cause="log(sigmoid(x)) underflows to log(0) = -inf for x below about "
                                 "-104 in float32: use F.logsigmoid(x), which is stable")
    _check_value(got, chosen, rejected, margin, None, "reward_loss with a margin of 150")
    zero = _loss("reward_loss with center_coefficient=0", CHOSEN, REJECTED, center_coefficient=0.0)
    _check_value(zero, CHOSEN, REJECTED, None, None, "reward_loss with center_coefficient=0")


def test_c_7_float32_maths_gradient_and_inputs():
    chosen, rejected = CHOSEN.to(torch.bfloat16), REJECTED.to(torch.bfloat16)
    given = (chosen.clone(), rejected.clone(), MARGIN.clone())
    got = _loss("reward_loss of bf16 rewards", chosen, rejected, margin=MARGIN,
                center_coefficient=0.1)
    expect(got.dtype == torch.float32, task="C.7", what="dtype of the loss of bf16 rewards",
           expected="torch.float32", got=str(got.dtype),
           cause="the given lines cast the rewards to float32 before your code: keep using "
                 "the cast tensors (chosen, rejected, margin), not copies made before them")
    _check_value(got, chosen.float(), rejected.float(), MARGIN, 0.1, "reward_loss of bf16 rewards")
    unchanged = all(torch.equal(a, b) for a, b in zip(given, (chosen, rejected, MARGIN)))
    expect(unchanged, task="C.7", what="chosen, rejected and margin after the call",
           expected="unchanged", got="modified",
           cause="no in-place ops on the inputs (chosen -= margin, sub_): they are the "
                 "model's outputs, reused for the accuracy and margin figures")
    c = CHOSEN.double().clone().requires_grad_()
    r = REJECTED.double().clone().requires_grad_()
    _loss("reward_loss with a graph", c, r, margin=MARGIN.double(),
          center_coefficient=0.1).backward()
    expect(c.grad is not None and r.grad is not None, task="C.7",
           what="gradients reaching chosen and rejected", expected="both", got="none",
           cause="the loss must be built from the input tensors (no .item(), .detach(), or "
                 "torch.tensor(...) of values): " + SPEC_C7)
    d = CHOSEN.double() - REJECTED.double() - MARGIN.double()
    n = len(d)
    common = -torch.sigmoid(-d) / n
    centre = 2 * 0.1 * (CHOSEN.double() + REJECTED.double()) / n
    expect_close(c.grad, common + centre, task="C.7", what="d loss / d chosen", atol=1e-9,
                 rtol=1e-7, cause="the loss must be built from the input tensors (no .item(), "
                                  ".detach(), or torch.tensor(...) of values): " + SPEC_C7)
    expect_close(r.grad, -common + centre, task="C.7", what="d loss / d rejected", atol=1e-9,
                 rtol=1e-7, cause=SPEC_C7)
