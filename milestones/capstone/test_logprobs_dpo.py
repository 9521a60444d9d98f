"""Capstone — sequence log-probs over response tokens (C.1) and the DPO loss (C.2)."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.align import dpo_loss, sequence_logprobs
from ftlab.course.teaching import expect, expect_close, explained
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


SPEC_C1 = ("the logits at position t score labels[:, t + 1] (shift by one), take log_softmax "
           "over the vocabulary (the last dimension), and add up (not average) the log-probs "
           "of the response tokens only (prompt tokens summed in would score the prompt too; "
           "only IGNORE_INDEX marks a skipped position — token id 0 is a real token); "
           "log-probs, not their negative (a sum <= 0)")


ON_DEVICE = ("keep everything on the logits' device: labels.to(logits.device), new tensors "
             "with device=logits.device, and no .item() / .tolist() / Python loops over values")


def _scored(logits: torch.Tensor, labels: torch.Tensor, what: str, copy: bool = True,
            cause: str | None = None) -> torch.Tensor:
    """sequence_logprobs (on copies unless told: a mistake in place must not touch the
    module's tensors); a crash becomes a course message."""
    with explained(task="C.1", what=what, expected=f"a tensor of shape ({labels.shape[0]},)",
                   cause=cause or "IGNORE_INDEX (-100) is no token id: gather with the targets "
                                  "clamped (or -100 replaced) and mask those positions after; "
                                  "labels may live on another device (labels.to(logits.device)"
                                  "); " + SPEC_C1):
        return sequence_logprobs(*((logits.clone(), labels.clone()) if copy else (logits, labels)))


def test_c_1_float32_result_on_the_logits_device_inputs_untouched():
    for dtype in (torch.float32, torch.bfloat16):
        logits, labels = LOGITS.to(dtype), LABELS.clone()
        given = (logits.clone(), labels.clone())
        got = _scored(*given, f"sequence_logprobs of {dtype} logits", copy=False)
        expect(tuple(got.shape) == (3,), task="C.1", what="output shape",
               expected="(batch,) = (3,)", got=tuple(got.shape),
               cause="return one sum per row: reduce over the positions (sum(dim=-1)); "
                     "squeeze(-1) after gather, not squeeze() (a batch or row of one)")
        expect(got.dtype == torch.float32, task="C.1",
               what=f"dtype of the result for {dtype} logits",
               expected="torch.float32", got=str(got.dtype),
               cause="do the maths in float32: logits.float() before log_softmax (bfloat16 "
                     "log-probs are off by ~0.1 per sequence; float64 is not the spec either)")
        unchanged = torch.equal(given[0], logits) and torch.equal(given[1], labels)
        expect(unchanged, task="C.1", what="logits and labels after sequence_logprobs",
               expected="unchanged", got="modified",
               cause="inputs modified in place (labels[labels == -100] = 0, masked_fill_, ...): "
                     "the collated batch is reused (DPO scores it with the policy and "
                     "reports on it); replace -100 in a new tensor (clamp, torch.where)")
    try:
        got = _scored(LOGITS.to("meta"), LABELS, "sequence_logprobs of meta-device logits with "
                                                 "CPU labels", cause=ON_DEVICE)
    except NotImplementedError as error:  # reading a meta tensor's data
        if "meta" not in str(error):
            raise
        got = error
    on_meta = isinstance(got, torch.Tensor) and got.device.type == "meta"
    expect(on_meta, task="C.1", what="sequence_logprobs of meta-device logits with CPU labels",
           expected="a result on meta (the logits' device)",
           got=got if not isinstance(got, torch.Tensor) else f"a result on {got.device}",
           cause=ON_DEVICE)
    single = _scored(LOGITS[:1], LABELS[:1], "a batch of one row")
    expect(tuple(single.shape) == (1,), task="C.1", what="output shape for a batch of one row",
           expected="(1,)", got=tuple(single.shape),
           cause="squeeze(-1) after gather, not squeeze(): a batch of one keeps its batch "
                 "dimension")


def test_c_1_sums_response_token_logprobs():
    got = _scored(LOGITS, LABELS, "sequence_logprobs of a (3, 7, 11) batch")
    expect(tuple(got.shape) == (3,), task="C.1", what="output shape", expected="(batch,) = (3,)",
           got=tuple(got.shape), cause="return one sum per row: reduce over the positions")
    expect_close(got, _by_hand(LOGITS, LABELS), task="C.1", atol=1e-5, rtol=1e-5,
                 what="sequence log-probs vs a position-by-position sum", cause=SPEC_C1)


def test_c_1_every_token_id_is_scored():
    labels = IDS.clone()
    labels[:, :2] = IGNORE_INDEX
    labels[0, 2:] = 0  # token id 0 (often the pad id, also a real token) in a response
    labels[1, 3] = 10  # the last id of the vocabulary
    labels[2, 5:] = IGNORE_INDEX
    expect_close(_scored(LOGITS, labels, "responses holding token ids 0 and 10"),
                 _by_hand(LOGITS, labels), task="C.1", atol=1e-5, rtol=1e-5,
                 what="log-probs of responses holding token id 0 (and the last id)",
                 cause="only IGNORE_INDEX (-100) marks positions to skip: token 0 is a real "
                       "token (often the pad id too, which is why labels carry -100): test "
                       "labels != IGNORE_INDEX, not labels > 0 or != a pad id")
    short = _scored(LOGITS[:, :1], LABELS[:, :1], "rows of one token")
    expect(tuple(short.shape) == (3,) and float(short.abs().max()) == 0.0, task="C.1",
           what="rows of a single token (nothing to score after the shift)",
           expected="[0.0, 0.0, 0.0]", got=short.tolist(),
           cause="a row of length 1 has no next token: the shifted sums are empty, so 0")


def test_c_1_prompt_and_padding_add_nothing():
    changed = LOGITS.clone()
    for row, n in enumerate(PROMPT):  # logits that predict prompt tokens (positions < n - 1)
        changed[row, : n - 1] += 5 * torch.randn(n - 1, 11, generator=G)
    changed[2, 5] += 3.0  # predicts the padding label at position 6
    base = _scored(LOGITS, LABELS, "sequence_logprobs")
    moved = _scored(changed, LABELS, "sequence_logprobs after changing prompt logits")
    expect_close(moved, base, task="C.1", atol=1e-5, rtol=1e-5,
                 what="log-probs after changing only the logits that predict prompt tokens",
                 cause="prompt tokens summed in: positions whose label is IGNORE_INDEX (prompt, "
                       "padding) must contribute nothing — DPO compares responses, and the prompt "
                       "is the same for both")
    empty = _scored(LOGITS[:1], torch.full_like(LABELS[:1], IGNORE_INDEX),
                    "a row whose labels are all IGNORE_INDEX")
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
    slow = LOGITS.double().requires_grad_(True)
    sum(slow[row, t - 1].log_softmax(-1)[LABELS[row, t]] for row in range(3)
        for t in range(1, LABELS.shape[1]) if LABELS[row, t] != IGNORE_INDEX).backward()
    expect_close(logits.grad.double(), slow.grad, task="C.1", atol=1e-6, rtol=1e-5,
                 what="gradient of the summed log-probs w.r.t. every logit",
                 cause="only the logits that predict response tokens get a gradient (softmax - "
                       "one-hot there, 0 at prompt and padding positions and at the last "
                       "position); " + SPEC_C1)


def test_c_1_confident_and_bfloat16_logits_match_float64():
    confident = LOGITS * 60.0  # log-probs down to about -300: softmax underflows to 0
    got = _scored(confident, LABELS, "very confident logits")
    expect_close(got, _by_hand(confident, LABELS), task="C.1", atol=1e-3, rtol=1e-5,
                 what="log-probs of very confident logits (some near -300)",
                 cause="softmax then log underflows to log(0) = -inf for unlikely tokens: use "
                       "log_softmax, which stays exact" if not bool(torch.isfinite(got).all())
                       else SPEC_C1)
    gen = torch.Generator().manual_seed(1)
    low = (torch.randn(3, 6, 50, generator=gen) * 3).bfloat16()
    labels = torch.randint(0, 50, (3, 6), generator=gen)
    labels[:, :1] = IGNORE_INDEX
    got = _scored(low, labels, "bfloat16 logits")
    expect_close(got.double(), _by_hand(low.double(), labels), task="C.1", atol=1e-4, rtol=1e-5,
                 what="log-probs of bfloat16 logits vs float64 maths on the same values",
                 cause="do the maths in float32: logits.float() before log_softmax — bfloat16 "
                       "keeps 3 significant digits, and its log_softmax is off by ~0.01 per "
                       "token")


BETA = 0.1
PC = torch.tensor([-12.0, -30.0, -8.0, -20.0])
PR = torch.tensor([-15.0, -25.0, -8.0, -20.0])   # pair 2: chosen and rejected scored alike,
RC = torch.tensor([-14.0, -29.0, -8.5, -19.0])   # a tie however the rewards are computed
RR = torch.tensor([-13.0, -26.0, -8.5, -21.0])
SPEC_C2 = ("loss = -log sigmoid(beta * ((policy_chosen - reference_chosen) - (policy_rejected "
           "- reference_rejected))) per pair, with the beta argument")


def _formula(pc, pr, rc, rr, beta):
    return [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
            for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]


def _dpo(*args, what: str = "dpo_loss of 4 pairs"):
    """dpo_loss on copies (a mistake in place must not touch the module's tensors)."""
    with explained(task="C.2", what=what, expected="a DPOOutput of (pairs,) tensors",
                   cause="elementwise maths on (pairs,) tensors; " + SPEC_C2):
        return dpo_loss(*(a.clone() if isinstance(a, torch.Tensor) and not a.requires_grad
                          else a for a in args))


@pytest.mark.parametrize("pairs", [4, 1])
def test_c_2_one_loss_and_reward_per_pair_inputs_untouched(pairs):
    given = [t[:pairs].double() for t in (PC, PR, RC, RR)]
    with explained(task="C.2", what=f"dpo_loss of {pairs} pair(s)",
                   expected=f"a DPOOutput of ({pairs},) tensors", cause=SPEC_C2):
        out = dpo_loss(*given, 0.5)
    shapes = {name: tuple(getattr(out, name).shape)
              for name in ("losses", "chosen_rewards", "rejected_rewards")}
    expect(set(shapes.values()) == {(pairs,)}, task="C.2", what=f"shapes for {pairs} pair(s)",
           expected=f"({pairs},) each", got=shapes,
           cause="one loss and one reward per pair: no .mean() or .sum() inside dpo_loss "
                 "(DPOOutput.loss averages the losses)")
    kept = all(torch.equal(a, b[:pairs].double()) for a, b in zip(given, (PC, PR, RC, RR)))
    expect(kept, task="C.2", what="the log-probs after dpo_loss", expected="unchanged",
           got=[t.tolist() for t in given],
           cause="inputs modified in place (-=, sub_): the caller reuses the reference "
                 "log-probs every epoch; compute new tensors (policy - reference)")
    expect(out.losses.dtype == torch.float64, task="C.2", what="dtype of float64 inputs' losses",
           expected="torch.float64", got=str(out.losses.dtype),
           cause="keep the inputs' dtype: no new float32 tensors in the maths")
    expect_close(out.losses, torch.tensor(_formula(*given, 0.5), dtype=torch.float64),
                 task="C.2", atol=1e-9, rtol=1e-9, what=f"losses of {pairs} pair(s), beta 0.5",
                 cause=SPEC_C2)


@pytest.mark.parametrize("beta", [BETA, 0.5, 2.0])
def test_c_2_loss_and_rewards_follow_the_formula(beta):
    out = _dpo(PC, PR, RC, RR, beta)
    expect_close(out.losses, torch.tensor(_formula(PC, PR, RC, RR, beta)), task="C.2",
                 atol=1e-6, rtol=1e-5, what=f"per-pair losses (beta {beta})",
                 cause="sign flipped, or beta or the reference missing (beta inside the "
                       "logsigmoid, the argument's value — not a fixed 0.1): " + SPEC_C2)
    expect_close(out.chosen_rewards, beta * (PC - RC), task="C.2", atol=1e-6,
                 what=f"chosen rewards (beta {beta})",
                 cause="reward = beta * (policy - reference) log-probs, with the beta argument")
    expect_close(out.rejected_rewards, beta * (PR - RR), task="C.2", atol=1e-6,
                 what=f"rejected rewards (beta {beta})",
                 cause="reward = beta * (policy - reference) log-probs, with the beta argument")
    # margins 4, -2, 0 (a tie is not a win), -2 (times beta / 0.1)
    expect(abs(out.accuracy - 0.25) < 1e-9, task="C.2", what="accuracy (chosen reward > rejected)",
           expected=0.25, got=out.accuracy, cause="the rewards decide the accuracy; check their sign")


def test_c_2_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    out = _dpo(pc, pr, RC, RR, BETA)
    expect(out.losses.requires_grad, task="C.2", what="losses", expected="a graph to the policy",
           got="no graph", cause="only the reference is detached: the policy log-probs must "
                                 "carry their gradient into the loss")
    out.losses.sum().backward()
    grads = [torch.zeros(4) if t.grad is None else t.grad for t in (pc, pr)]
    ok = bool((grads[0] < 0).all() and (grads[1] > 0).all())
    expect(ok, task="C.2", what="gradient of the loss",
           expected="negative for the chosen log-prob, positive for the rejected (descent makes "
                    "the chosen reply likelier)",
           got=f"chosen {grads[0].tolist()}, rejected {grads[1].tolist()}",
           cause="sign flipped: minimising -logsigmoid(beta * (chosen margin - rejected margin)) "
                 "must push the chosen reply up")
    margin = BETA * ((PC - RC) - (PR - RR)).double()
    slope = -BETA * torch.sigmoid(-margin)  # d loss / d policy_chosen; the rejected's is minus
    expect_close(torch.stack(grads).double(), torch.stack([slope, -slope]), task="C.2",
                 atol=1e-7, rtol=1e-5, what="gradient of each pair's loss w.r.t. its log-probs",
                 cause="d/dpc -logsigmoid(beta * m) = -beta * sigmoid(-beta * m): beta inside "
                       "the logsigmoid, once; " + SPEC_C2)


def test_c_2_no_gradient_reaches_the_reference():
    rc, rr = RC.clone().requires_grad_(True), RR.clone().requires_grad_(True)
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    out = _dpo(pc, pr, rc, rr, BETA)
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
    out = _dpo(big, -big, torch.zeros(2), torch.zeros(2), 1.0, what="dpo_loss of huge margins")
    finite = bool(torch.isfinite(out.losses).all())
    near = finite and abs(float(out.losses[0]) - 2e4) < 1.0 and abs(float(out.losses[1])) < 1e-6
    expect(near, task="C.2",
           what="losses for margins of -2e4 and +2e4",
           expected="[2e4, 0.0], finite", got=out.losses.tolist(),
           cause="log(sigmoid(x)) underflows to log(0) = -inf for very negative x (and "
                 "log(sigmoid(x) + eps) caps the loss at -log(eps)): use "
                 "torch.nn.functional.logsigmoid")
