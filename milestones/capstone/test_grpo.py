"""Capstone, RL track — group-relative advantages (C.4) and the GRPO loss (C.5).

Every expected value is computed here the slow way, one completion and one token at a time,
in float64. The checks of a task run from the most specific property (shape, dtype, inputs
left alone, no NaN, the KL term, the clip) to the whole formula, so the first failure names
the likely cause.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from ftlab.course.teaching import expect, expect_close, explained
from ftlab.rl import STD_EPSILON, group_advantages, grpo_loss

pytestmark = pytest.mark.capstone

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0,    # group 0: mean 0.5
                        5.0, 5.0, 5.0, 5.0,    # group 1: every answer the same
                        2.0, 4.0, 9.0, 1.0],   # group 2: mean 4
                       dtype=torch.float64)
G = 4


def _std(values: list[float], ddof: int = 1) -> float:
    """Standard deviation (unbiased with ddof 1); 0 for a single value."""
    if len(values) <= ddof:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))


def _advantages_by_hand(rewards: list[float], g: int, scale: str, *, centre: str = "group",
                        interleaved: bool = False, ddof: int = 1, std_of: str = "rewards",
                        divide: str = "plus", swap_stds: bool = False) -> list[float]:
    """The spec one group at a time; the keyword knobs build known wrong variants (used only
    to name the likely cause of a failure)."""
    n = len(rewards)
    rows = ([list(range(s, s + g)) for s in range(0, n, g)] if not interleaved else
            [list(range(p, n, n // g)) for p in range(n // g)])
    means = {i: sum(rewards[j] for j in row) / len(row) for row in rows for i in row}
    batch_mean = sum(rewards) / n
    centred = [r - (means[i] if centre == "group" else batch_mean) for i, r in enumerate(rewards)]
    if scale not in ("group", "batch"):  # 'none': the centred rewards as they are
        return list(centred)
    if scale == "batch":
        spreads = [_std(rewards if std_of == "rewards" else centred, ddof)] * n
    else:
        stds = [_std([rewards[j] for j in row], ddof) for row in rows]
        spreads = [0.0] * n
        for k, row in enumerate(rows):
            for i in row:
                spreads[i] = stds[k]
        if swap_stds:  # each group's std repeated over the groups instead of its own rows
            spreads = [stds[i % len(stds)] for i in range(n)]
    if divide == "plus":
        return [c / (s + STD_EPSILON) for c, s in zip(centred, spreads)]
    if divide == "precedence":
        return [(c / s if s else math.nan) + STD_EPSILON for c, s in zip(centred, spreads)]
    return [c / max(s, STD_EPSILON) for c, s in zip(centred, spreads)]  # clamp


ADVANTAGE_SPEC = ("each reward minus the mean of its own group — a group is the consecutive "
                  "rows g*G .. g*G+G-1 (rewards.view(-1, group_size)) — then 'group' divides "
                  "by that group's std + 1e-4, 'batch' by the std of all N rewards + 1e-4, "
                  "'none' by nothing; stds are unbiased (n - 1, torch.std's default, as TRL)")
KNOWN_ADVANTAGE_MISTAKES = (
    ({"centre": "batch"}, "centred over the batch instead of the group: subtract each group's "
                          "own mean (rewards.view(-1, group_size).mean(dim=1)), so a prompt's "
                          "difficulty does not leak into the others' advantages"),
    ({"interleaved": True}, "groups are consecutive rows g*G .. g*G+G-1: "
                            "rewards.view(-1, group_size), not view(group_size, -1)"),
    ({"ddof": 0}, "the std must be unbiased (n - 1, torch.std's default, as TRL), not the "
                  "population std"),
    ({"std_of": "centred"}, "'batch' divides by the std of all N rewards themselves, not of "
                            "the centred values"),
    ({"swap_stds": True}, "each completion is divided by its own group's std: expand each "
                          "group's std over its own rows (expand_as / repeat_interleave, not "
                          "repeat)"),
    ({"divide": "precedence"}, "divide by (std + 1e-4), in parentheses: centred / std + 1e-4 "
                               "divides by the bare std"),
    ({"divide": "clamp"}, "add 1e-4 to the std (TRL's std + 1e-4), do not clamp it at 1e-4"),
)


def _advantage_cause(got: torch.Tensor, rewards: torch.Tensor, g: int, scale: str) -> str:
    """The likely cause of ``got`` differing from the spec: a known mistake it equals, or
    the whole spec."""
    values = rewards.double().tolist()
    candidates = [*KNOWN_ADVANTAGE_MISTAKES]
    if scale not in ("group", "batch"):
        candidates.append(({"_scale": "group"}, "'none' (Dr. GRPO) divides by nothing: "
                                                "return the centred rewards"))
    for knobs, cause in candidates:
        knobs = dict(knobs)
        other_scale = knobs.pop("_scale", scale)
        try:
            wrong = torch.tensor(_advantages_by_hand(values, g, other_scale, **knobs),
                                 dtype=torch.float64)
        except ZeroDivisionError:
            continue
        right = torch.tensor(_advantages_by_hand(values, g, scale), dtype=torch.float64)
        if (got.shape == wrong.shape and not torch.allclose(wrong, right, atol=1e-9, equal_nan=True)
                and torch.allclose(got.double(), wrong, atol=1e-6, rtol=1e-6, equal_nan=True)):
            return cause
    return ADVANTAGE_SPEC


@contextmanager
def meta_device(task: str, what: str):
    """A crash reading the data of a ``meta`` tensor (``.item()``, ``.cpu()``, ``float()``)
    as a teaching message (torch raises NotImplementedError, which would read as a stub)."""
    try:
        yield
    except NotImplementedError as error:
        if "meta" not in str(error):
            raise
        expect(False, task=task, what=what, expected="no value read from the tensors",
               got=f"NotImplementedError: {error}",
               cause="make every new tensor on the input's device (zeros_like, or "
                     "device=x.device) and keep the maths in tensors: .item(), float(), "
                     ".cpu() or .tolist() read values — and move work to the CPU")


def _advantages(rewards: torch.Tensor, g: int, scale: str, copy: bool = True) -> torch.Tensor:
    rewards = rewards.clone() if copy else rewards  # a mistake in place must not touch ours
    with explained(task="C.4", what=f"group_advantages of {rewards.numel()} rewards, "
                                    f"group_size={g}, scale={scale!r}",
                   expected=f"advantages of shape ({rewards.numel()},)",
                   cause="group with rewards.view(-1, group_size) and reduce over dim=1; "
                         + ADVANTAGE_SPEC):
        return group_advantages(rewards, g, scale)


def _expect_advantages(got, rewards, g, scale, what):
    expect(tuple(got.shape) == (rewards.numel(),), task="C.4", what=f"{what}: shape",
           expected=f"({rewards.numel()},)", got=tuple(got.shape),
           cause="return one advantage per completion, in the input order (reshape(-1))")
    expect(bool(torch.isfinite(got).all()), task="C.4", what=f"{what}: finite advantages",
           expected="no NaN or inf", got=got.tolist(),
           cause="a group with no spread (or of one reward) divides 0 by 0: add 1e-4 to the "
                 "std, in parentheses (centred / (std + 1e-4)), and count a single reward's "
                 "std as 0 (torch.std of one value is NaN)")
    want = torch.tensor(_advantages_by_hand(rewards.double().tolist(), g, scale),
                        dtype=torch.float64)
    tol = 1e-9 if got.dtype == torch.float64 else 1e-5
    close = bool(((got.double() - want).abs() <= tol + tol * want.abs()).all())
    expect(close, task="C.4", what=what, expected=[round(v, 5) for v in want.tolist()],
           got=[round(v, 5) for v in got.tolist()],
           cause="" if close else _advantage_cause(got, rewards, g, scale))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_c_4_leaves_rewards_alone_and_keeps_their_dtype_and_device(scale):
    for dtype in (torch.float32, torch.float64):
        rewards = REWARDS.to(dtype)
        given = rewards.clone()
        got = _advantages(given, G, scale, copy=False)
        expect(torch.equal(given, rewards), task="C.4",
               what=f"the rewards after group_advantages (scale={scale!r})",
               expected="unchanged", got=f"changed to {given.tolist()}",
               cause="rewards modified in place: rewards.view(-1, G) shares the caller's "
                     "storage, so grouped -= mean (or /=) rewrites the caller's rewards; "
                     "compute new tensors (grouped - mean)")
        expect(got.dtype == dtype, task="C.4", what=f"dtype of the advantages of {dtype} rewards",
               expected=str(dtype), got=str(got.dtype),
               cause="keep the rewards' dtype: no .float() / .double() on the result, and no "
                     "tensor of another dtype (torch.tensor(...) defaults to float32) in the sum")
    for g, n in ((G, 12), (1, 3), (1, 1)):
        with meta_device("C.4", f"advantages of {n} rewards on the meta device, group_size={g}"):
            got = _advantages(torch.zeros(n, device="meta"), g, scale)
        expect(got.device.type == "meta" and tuple(got.shape) == (n,), task="C.4",
               what=f"advantages of {n} rewards on the meta device, group_size={g}",
               expected=f"shape ({n},) on meta", got=f"shape {tuple(got.shape)} on {got.device}",
               cause="make every new tensor on the rewards' device (zeros_like(rewards), or "
                     "device=rewards.device); no .cpu() or .item()")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_c_4_advantages_are_centred_on_their_own_group(scale):
    got = _advantages(REWARDS, G, scale)
    expect(tuple(got.shape) == (12,), task="C.4", what="advantages shape", expected="(12,)",
           got=tuple(got.shape), cause="return one advantage per completion, in the input order")
    sums = got.view(-1, G).sum(dim=1)
    centred = float(sums.abs().max()) < 1e-9
    expect(centred, task="C.4", what="sum of each group's advantages",
           expected="0 for every group", got=[round(float(s), 4) for s in sums],
           cause="" if centred else _advantage_cause(got, REWARDS, G, scale))
    _expect_advantages(got, REWARDS, G, scale, f"advantages with scale={scale!r} vs one group "
                                               "at a time")


def test_c_4_equal_rewards_and_groups_of_one_give_zero_not_nan():
    got = _advantages(REWARDS, G, "group")
    expect(bool(torch.isfinite(got).all()) and float(got[4:8].abs().max()) == 0.0, task="C.4",
           what="advantages of a group whose four rewards are all 5", expected="[0, 0, 0, 0]",
           got=got[4:8].tolist(),
           cause="a group with no spread teaches nothing: centred it is 0, and the 1e-4 added to "
                 "its std keeps 0 / 0 away")
    for scale in ("group", "batch", "none"):
        single = _advantages(torch.tensor([0.0, 1.0, 3.0]), 1, scale)
        expect(bool(torch.isfinite(single).all()) and float(single.abs().max()) == 0.0,
               task="C.4", what=f"groups of one completion each (scale={scale!r})",
               expected="advantages [0, 0, 0]", got=single.tolist(),
               cause="std of a one-sample group dividing by zero: torch.std of one value is "
                     "NaN (n - 1 = 0); count a single reward's std as 0 (a group of one is "
                     "its own mean: advantage 0)")
    for scale in ("group", "batch", "none"):
        lone = _advantages(torch.tensor([2.0]), 1, scale)
        expect(bool(torch.isfinite(lone).all()) and float(lone.abs().max()) == 0.0, task="C.4",
               what=f"a batch of one reward (scale={scale!r})", expected="advantage [0]",
               got=lone.tolist(), cause="std of a one-sample batch is NaN: count it as 0")


DOMAIN = {  # name: (rewards, group_size)
    "two groups of three (odd size), 0/1 rewards": ([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3),
    "three groups of two": ([0.5, 1.5, 3.0, 3.0, -2.0, 7.0], 2),
    "one group of five (group = batch)": ([3.0, -1.0, 0.25, 8.0, 2.0], 5),
    "every reward equal": ([2.0] * 6, 3),
    "rewards far from 0 with a small spread": ([1000.0, 1000.5, 999.0, 1001.0], 2),
}


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("case", list(DOMAIN))
def test_c_4_spec_over_group_sizes_and_spreads(case, scale):
    values, g = DOMAIN[case]
    rewards = torch.tensor(values, dtype=torch.float64)
    got = _advantages(rewards, g, scale)
    _expect_advantages(got, rewards, g, scale, f"{case} (group_size={g}, scale={scale!r})")


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
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
AGGREGATION = ("'grpo' averages each completion's tokens and then the B completions, 'bnpo' "
               "averages all tokens, 'dr_grpo' divides the sum by B x max_completion_length, "
               "'dapo' by step_tokens (this micro-batch's tokens when None)")


def _slow_loss(policy, old, ref, adv, mask, *, beta=BETA, loss_type="bnpo", eps_low=EPS_LOW,
               eps_high=EPS_HIGH, max_len=MAX_LEN, step_tokens=None, kl_correction=True):
    """The spec token by token (float64 scalars; autograd gives the exact gradient w.r.t.
    ``policy``): a completion with no token contributes 0 and still counts among the B."""
    rows = []
    for b in range(policy.shape[0]):
        row = []
        for t in range(policy.shape[1]):
            if not mask[b, t]:
                continue
            logp = policy[b, t]
            ratio = torch.exp(logp - float(logp if old is None else old[b, t]))
            a = float(adv[b])
            term = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
            if beta and ref is not None:
                k3 = torch.exp(float(ref[b, t]) - logp) - (float(ref[b, t]) - logp) - 1
                term = term + beta * (ratio * k3 if kl_correction else k3)
            row.append(term)
        rows.append(row)
    zero = policy.sum() * 0.0
    total = sum((sum(row, zero) for row in rows), zero)
    tokens = sum(len(row) for row in rows)
    divisor = {"bnpo": max(tokens, 1), "dr_grpo": len(rows) * max_len,
               "dapo": max(tokens if step_tokens is None else step_tokens, 1)}
    if loss_type in divisor:
        return total / divisor[loss_type]
    # 'grpo': each completion's mean over its own tokens, then the mean over all B
    return sum((sum(row, zero) / max(len(row), 1) for row in rows), zero) / len(rows)


def _loss_by_hand(policy, old, ref, adv, mask, beta: float, loss_type: str,
                  step_tokens: float | None = None) -> float:
    return float(_slow_loss(policy, old, ref, adv, mask, beta=beta, loss_type=loss_type,
                            step_tokens=step_tokens))


def _slow_grad(policy, old, ref, adv, mask, **kw) -> torch.Tensor:
    leaf = policy.detach().clone().requires_grad_(True)
    loss = _slow_loss(leaf, old, ref, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def _call(what: str, policy, old=OLD, ref=REF, adv=ADV, mask=MASK, *, beta=BETA,
          loss_type="bnpo", eps_low=EPS_LOW, eps_high=EPS_HIGH, max_len=MAX_LEN,
          step_tokens=None, kl_correction=True, copy=True):
    if copy:  # a mistake in place must not touch the module's tensors (the policy is a leaf)
        old, ref, adv, mask = (t.clone() if isinstance(t, torch.Tensor) else t
                               for t in (old, ref, adv, mask))
        policy = policy if policy.requires_grad else policy.clone()
    with explained(task="C.5", what=what, expected="a GRPOLoss with a scalar loss",
                   cause="advantages (B,) are one per completion: advantages.unsqueeze(1) "
                         "broadcasts over the C token positions (B may equal C); mask is "
                         "(B, C); every count is taken over mask tokens only; compute new "
                         "tensors (an in-place change of logps breaks its graph)"):
        out = grpo_loss(policy, old, ref, adv, mask, beta, eps_low, eps_high, loss_type,
                        max_completion_length=max_len, step_tokens=step_tokens,
                        kl_correction=kl_correction)
    loss = out.loss
    expect(isinstance(loss, torch.Tensor) and loss.dim() == 0, task="C.5",
           what=f"{what}: GRPOLoss.loss", expected="a scalar (0-dim) tensor",
           got=f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss),
           cause="aggregate the per-token losses to one tensor as loss_type says (masked sum "
                 "divided by the count) — a tensor with the graph, not a Python number")
    return out


def _grad_of(loss: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """d loss / d policy; zeros when the loss has no graph (a check then says so)."""
    if not loss.requires_grad:
        return torch.zeros_like(policy)
    (grad,) = torch.autograd.grad(loss, policy, allow_unused=True)
    return torch.zeros_like(policy) if grad is None else grad


def test_c_5_inputs_are_left_unchanged():
    pristine = {"logps": POLICY, "old_logps": OLD, "ref_logps": REF, "advantages": ADV,
                "mask": MASK}
    changed = set()
    for loss_type in LOSS_TYPES:
        given = {k: v.clone() for k, v in pristine.items()}
        _call(f"grpo_loss ({loss_type})", *given.values(), loss_type=loss_type, copy=False)
        changed |= {k for k, v in given.items() if not torch.equal(v, pristine[k])}
    expect(not changed, task="C.5", what="the inputs after grpo_loss", expected="unchanged",
           got=f"changed: {sorted(changed)}",
           cause="inputs modified in place (masked_fill_, mul_, -=, [...] = on an argument): "
                 "the trainer reuses old and reference log-probs over several updates; "
                 "compute new tensors")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_c_5_padding_adds_nothing(loss_type):
    pad = MASK == 0
    garbage = torch.linspace(-9.0, 4.0, int(pad.sum()), dtype=torch.float64)
    moved, old, ref = POLICY.clone(), OLD.clone(), REF.clone()
    moved[pad], old[pad], ref[pad] = garbage, garbage.flip(0) - 2.0, garbage * 0.5 + 1.0
    base = POLICY.clone().requires_grad_(True)
    moved.requires_grad_(True)
    clean = _call(f"grpo_loss ({loss_type})", base, OLD, REF, loss_type=loss_type)
    dirty = _call(f"grpo_loss ({loss_type}), other values at padding", moved, old, ref,
                  loss_type=loss_type)
    cause = ("padding averaged in: the log-probs at padding positions are arbitrary (whatever "
             "the model or the sampler left there); multiply every per-token term — the "
             "clipped objective and the KL — by the mask before summing, and count only "
             "mask tokens in every denominator")
    expect_close(dirty.loss.detach(), clean.loss.detach(), task="C.5", atol=1e-12, rtol=1e-12,
                 what=f"loss ({loss_type}) after changing only the policy, old and reference "
                      "log-probs at padding positions", cause=cause)
    expect_close(_grad_of(dirty.loss, moved), _grad_of(clean.loss, base), task="C.5",
                 atol=1e-12, rtol=1e-12,
                 what=f"gradient ({loss_type}) after changing only the padding positions' "
                      "log-probs (0 at padding)", cause=cause)


# One token per completion: ratios on both sides of 1 - eps_low = 0.8 and 1 + eps_high = 1.28
# (with 1 - eps_high = 0.72 and 1 + eps_low = 1.2 in between), each for A > 0 and A < 0.
CLIP_RATIOS = [0.5, 0.75, 0.9, 1.1, 1.24, 1.5]
CLIP_ADV = [1.3, -0.7]


def test_c_5_clip_follows_the_advantage_sign():
    ratios = torch.tensor([r for _ in CLIP_ADV for r in CLIP_RATIOS], dtype=torch.float64)
    adv = torch.tensor([a for a in CLIP_ADV for _ in CLIP_RATIOS], dtype=torch.float64)
    old = torch.full((len(ratios), 1), -1.0, dtype=torch.float64)
    policy = (old + ratios.log()[:, None]).requires_grad_(True)
    mask = torch.ones_like(old)
    out = _call("grpo_loss of one-token completions", policy, old, None, adv, mask, beta=0.0)
    grad = _grad_of(out.loss, policy)[:, 0]
    want = _slow_grad(policy, old, None, adv, mask, beta=0.0)[:, 0]
    wrong = [(round(float(r), 2), float(a)) for r, a, g, w in zip(ratios, adv, grad, want)
             if abs(float(g - w)) > 1e-9]
    rule = ("per token -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A): the "
            "gradient stops (0) only where min() picks the clipped term — above 1 + eps_high "
            "for A > 0, below 1 - eps_low for A < 0 — and is -A * ratio / N elsewhere")
    if len(wrong) == len(ratios):
        cause = ("the ratio is wrong at every token: ratio = exp(logps - old_logps) with the "
                 "old_logps given (logps.detach() only when None), per token; " + rule)
    elif all(0.72 <= r < 0.8 or 1.2 < r <= 1.28 for r, _ in wrong):
        cause = ("epsilon_low and epsilon_high mixed up: clip(ratio, 1 - epsilon_low, "
                 "1 + epsilon_high) — epsilon_low bounds the ratio from below, epsilon_high "
                 "from above (DAPO's clip-higher); " + rule)
    else:
        cause = ("clip on the wrong side for negative advantages (or on both sides whatever "
                 "A's sign): take the min of the two products, not of the ratios, and do "
                 "not clamp alone; " + rule)
    expect(not wrong, task="C.5",
           what="gradient per token at ratios 0.5 .. 1.5 for A = +1.3 and A = -0.7 (eps_low "
                "0.2, eps_high 0.28)",
           expected="the slow reference's", got=f"differs at (ratio, A) = {wrong}", cause=cause)
    expect_close(out.loss.detach(), _slow_loss(policy, old, None, adv, mask, beta=0.0).detach(),
                 task="C.5", atol=1e-12, rtol=1e-9, what="loss of one-token completions",
                 cause=cause)


def test_c_5_old_logprobs_are_constants():
    for what, old in (("old_logps=None (one update per sample batch)", None),
                      ("old_logps with a graph", "graph")):
        policy = POLICY.clone().requires_grad_(True)
        given = policy * 1.0 if old == "graph" else None  # equal to the policy, with a graph
        out = _call(f"grpo_loss with {what}", policy, given, REF, beta=0.0)
        grad = _grad_of(out.loss, policy)
        expected = -(ADV[:, None] * MASK) / MASK.sum()  # ratio 1: the plain policy gradient
        expect_close(grad, expected, task="C.5", atol=1e-12, rtol=1e-9,
                     what=f"gradient at ratio 1 with {what}",
                     cause="old log-probs not detached: with old = logp and a graph through "
                           "both, the ratio is exp(0) = 1 whatever the weights and no gradient "
                           "flows; old log-probs are numbers from the sampling policy — "
                           "logps.detach() when none are given, old_logps.detach() otherwise "
                           "(a constant ratio of ones has no gradient either: the ratio is "
                           "exp(logps - old))")


def test_c_5_kl_is_the_k3_estimator_to_the_reference():
    policy = POLICY.clone().requires_grad_(True)
    out = _call("grpo_loss on-policy (old_logps None) with beta > 0", policy, None,
                loss_type="bnpo")
    delta = REF - POLICY
    live = MASK.bool()
    expect_close(out.kl[live], (torch.exp(delta) - delta - 1)[live], task="C.5", atol=1e-12,
                 rtol=1e-9, what="per-token KL estimate on-policy (GRPOLoss.kl at completion "
                                 "tokens, ratio 1)",
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
                       "1 in value, but its gradient counts (kl_correction), and k3 needs the "
                       "graph through logp (do not detach logps in the KL); a KL sign or "
                       "estimator wrong changes the gradient")
    ratio = torch.exp(POLICY - OLD)
    for correction in (True, False):
        off = _call(f"grpo_loss off-policy, kl_correction={correction}", POLICY, OLD,
                    loss_type="bnpo", kl_correction=correction)
        k3 = torch.exp(delta) - delta - 1
        expect_close(off.kl[live], (k3 * ratio if correction else k3)[live], task="C.5",
                     atol=1e-12, rtol=1e-9,
                     what=f"per-token KL off-policy (ratios != 1), kl_correction={correction}",
                     cause="GRPOLoss.kl is the KL term before beta as the loss uses it: k3 "
                           "times the ratio exp(logp - old) with kl_correction (TRL's "
                           "use_bias_correction_kl), k3 alone without it; honour the "
                           "kl_correction argument")
    plain = _call("grpo_loss, kl_correction=False", POLICY, kl_correction=False)
    expect_close(plain.kl[live], (torch.exp(delta) - delta - 1)[live], task="C.5", atol=1e-12,
                 rtol=1e-9, what="per-token KL with kl_correction=False (off-policy ratios)",
                 cause="without the correction the KL term is k3 alone, not weighted by the ratio")
    no_ref = _call("grpo_loss with beta 0 and no reference", POLICY, OLD, None, beta=0.0)
    with_ref = _call("grpo_loss with beta 0 and a reference", POLICY, OLD, REF, beta=0.0)
    expect_close(no_ref.loss, torch.tensor(_loss_by_hand(POLICY, OLD, REF, ADV, MASK, 0.0, "bnpo"),
                                           dtype=torch.float64),
                 task="C.5", atol=1e-10, rtol=1e-9, what="loss with beta 0 and no reference",
                 cause="beta 0 means no KL term: the reference may be None then"
                       if not torch.allclose(no_ref.loss, with_ref.loss, rtol=1e-12, atol=0)
                       else "the clipped policy term alone (beta 0) differs from the spec: "
                            "-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) per "
                            "token with ratio = exp(logps - old_logps), averaged over the "
                            "mask tokens ('bnpo')")


def test_c_5_the_reference_is_a_constant_and_beta_0_ignores_it():
    policy, ref = POLICY.clone().requires_grad_(True), REF.clone().requires_grad_(True)
    out = _call("grpo_loss with reference log-probs that carry a graph", policy, OLD, ref)
    out.loss.backward()
    leaked = ref.grad is not None and float(ref.grad.abs().sum()) > 0
    expect(not leaked, task="C.5", what="gradient reaching the reference log-probs",
           expected="none", got="a non-zero gradient",
           cause="reference not detached: the reference model is frozen (and shares the base "
                 "weights with the policy): use ref_logps.detach() in the KL term")
    zero_beta = _call("grpo_loss with beta 0 and a reference given", POLICY, OLD, REF, beta=0.0)
    expect(float(zero_beta.kl.abs().max()) == 0.0, task="C.5",
           what="GRPOLoss.kl with beta 0 (a reference given)", expected="all 0",
           got=f"max |kl| {float(zero_beta.kl.abs().max()):.3g}",
           cause="beta 0 means no KL term: compute it only when beta != 0 and a reference "
                 "is given (GRPOLoss.kl is 0 otherwise)")
    no_ref = _call("grpo_loss with beta 0 and no reference", POLICY, OLD, None, beta=0.0)
    expect_close(zero_beta.loss, no_ref.loss, task="C.5", atol=0, rtol=1e-12,
                 what="loss with beta 0 and a reference given vs without a reference",
                 cause="beta 0 means no KL term, whatever the reference is")


SQUARE = 4  # B == C: advantages broadcast along the wrong axis still run


@pytest.mark.parametrize("kl_correction", [True, False])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_c_5_loss_and_gradient_equal_token_by_token(loss_type, kl_correction):
    policy = POLICY.clone().requires_grad_(True)
    out = _call(f"grpo_loss ({loss_type}, kl_correction={kl_correction})", policy,
                loss_type=loss_type, kl_correction=kl_correction)
    expect(out.loss.dim() == 0 and out.loss.requires_grad, task="C.5", what="loss",
           expected="a scalar with a graph to the policy log-probs", got=out.loss,
           cause="aggregate to one number and keep the graph (no .item(), no detach)")
    expected = _slow_loss(POLICY, OLD, REF, ADV, MASK, loss_type=loss_type,
                          kl_correction=kl_correction)
    expect_close(out.loss.detach(), expected.detach(), task="C.5", atol=1e-10, rtol=1e-9,
                 what=f"loss_type={loss_type!r} (kl_correction={kl_correction}) vs a "
                      "token-by-token sum",
                 cause="per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + "
                       "beta * ratio * (exp(ref - logp) - (ref - logp) - 1), with ratio = "
                       "exp(logp - old) (kl_correction, TRL's default; k3 alone without it); "
                       "then " + AGGREGATION + " — masked positions count "
                       "nowhere (padding averaged in changes every one of them); the min() keeps "
                       "the unclipped term where it is the smaller (clip on the wrong side for "
                       "negative advantages: clipping both sides whatever A's sign is wrong)")
    expect_close(_grad_of(out.loss, policy),
                 _slow_grad(POLICY, OLD, REF, ADV, MASK, loss_type=loss_type,
                            kl_correction=kl_correction), task="C.5", atol=1e-10, rtol=1e-9,
                 what=f"gradient w.r.t. the policy log-probs ({loss_type})",
                 cause="old log-probs are constants (detach them); the clip stops the gradient "
                       "only where min() picks the clipped term: above 1 + eps_high for a "
                       "positive advantage, below 1 - eps_low for a negative one (clip on the "
                       "wrong side for negative advantages changes these tokens); padding gets "
                       "no gradient")
    square = [t[:, :SQUARE] for t in (POLICY, OLD, REF, MASK)]
    policy = square[0].clone().requires_grad_(True)
    out = _call(f"grpo_loss of {SQUARE} completions x {SQUARE} positions", policy, square[1],
                square[2], ADV, square[3], loss_type=loss_type, kl_correction=kl_correction)
    expect_close(out.loss.detach(),
                 _slow_loss(square[0], square[1], square[2], ADV, square[3],
                            loss_type=loss_type, kl_correction=kl_correction).detach(),
                 task="C.5", atol=1e-10, rtol=1e-9,
                 what=f"loss ({loss_type}) of {SQUARE} completions of {SQUARE} positions (B = C)",
                 cause="advantages broadcast along the wrong axis: advantages (B,) times a "
                       "(B, C) tensor pairs A[t] with position t when B = C; use "
                       "advantages.unsqueeze(1) so each completion's tokens share its A")


EMPTY_ROW = MASK.clone()
EMPTY_ROW[2] = 0  # completion 2 has no token (it ended at once)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_c_5_completions_without_tokens_give_zero_not_nan(loss_type):
    cause = ("a completion with no tokens (a mask row of zeros) or a micro-batch of padding "
             "only divides 0 by 0: clamp every count at 1 (mask.sum(-1).clamp(min=1), "
             "mask.sum().clamp(min=1), max(step_tokens, 1)) so it contributes 0 — and keep "
             "the graph (no NaN replaced after the fact: its gradient is still NaN)")
    policy = POLICY.clone().requires_grad_(True)
    out = _call(f"grpo_loss ({loss_type}) with an empty completion", policy, OLD, REF,
                mask=EMPTY_ROW, loss_type=loss_type)
    want = _slow_loss(POLICY, OLD, REF, ADV, EMPTY_ROW, loss_type=loss_type)
    expect(bool(torch.isfinite(out.loss)), task="C.5",
           what=f"loss ({loss_type}) with one completion that has no tokens",
           expected=f"{float(want):.6f}, finite", got=float(out.loss.detach()), cause=cause)
    expect_close(out.loss.detach(), want.detach(), task="C.5", atol=1e-12, rtol=1e-9,
                 what=f"loss ({loss_type}) with one completion that has no tokens",
                 cause="an empty completion contributes 0 and is still one of the B "
                       "completions ('grpo' averages over all B, as TRL); " + AGGREGATION)
    expect_close(_grad_of(out.loss, policy),
                 _slow_grad(POLICY, OLD, REF, ADV, EMPTY_ROW, loss_type=loss_type), task="C.5",
                 atol=1e-12, rtol=1e-9,
                 what=f"gradient ({loss_type}) with one completion that has no tokens",
                 cause=cause)
    for step_tokens in ((None, 0, 17.0) if loss_type == "dapo" else (None,)):
        policy = POLICY.clone().requires_grad_(True)
        out = _call(f"grpo_loss ({loss_type}) of a micro-batch of padding only",
                    policy, OLD, REF, mask=torch.zeros_like(MASK), loss_type=loss_type,
                    step_tokens=step_tokens)
        what = (f"a micro-batch of padding only ({loss_type}"
                + (f", step_tokens={step_tokens})" if loss_type == "dapo" else ")"))
        expect(out.loss.dim() == 0 and out.loss.requires_grad, task="C.5",
               what=f"loss of {what}", expected="a scalar with a graph (value 0)",
               got=out.loss, cause="keep the graph even when nothing is trained: the caller "
                                   "calls loss.backward() on every micro-batch")
        grad = _grad_of(out.loss, policy)
        expect(float(out.loss.detach()) == 0.0 and bool(torch.isfinite(grad).all())
               and float(grad.abs().max()) == 0.0, task="C.5", what=f"loss and gradient of {what}",
               expected="loss 0.0, gradient 0 everywhere",
               got=f"loss {float(out.loss.detach())}, gradient max "
                   f"{float(grad.abs().max())}", cause=cause)


def test_c_5_dapo_divides_by_the_steps_tokens():
    tokens = float(MASK.sum())
    for loss_type in LOSS_TYPES:
        for step_tokens in (40.0, 40):
            policy = POLICY.clone().requires_grad_(True)
            out = _call(f"grpo_loss ({loss_type}, step_tokens={step_tokens!r})", policy,
                        loss_type=loss_type, step_tokens=step_tokens)
            want = _slow_loss(POLICY, OLD, REF, ADV, MASK, loss_type=loss_type,
                              step_tokens=step_tokens)
            expect_close(out.loss.detach(), want.detach(), task="C.5", atol=1e-12, rtol=1e-9,
                         what=f"loss ({loss_type}) given step_tokens={step_tokens!r} (this "
                              f"micro-batch has {tokens:g} tokens)",
                         cause=("dapo ignoring step_tokens: 'dapo' divides the token sum by "
                                "step_tokens, the completion tokens of the whole step (every "
                                "micro-batch and process) — this micro-batch's own count only "
                                "when step_tokens is None" if loss_type == "dapo" else
                                f"step_tokens is for 'dapo' only: '{loss_type}' ignores it "
                                f"({AGGREGATION})"))
            expect_close(_grad_of(out.loss, policy),
                         _slow_grad(POLICY, OLD, REF, ADV, MASK, loss_type=loss_type,
                                    step_tokens=step_tokens), task="C.5", atol=1e-12, rtol=1e-9,
                         what=f"gradient ({loss_type}) given step_tokens={step_tokens!r}",
                         cause="dapo ignoring step_tokens: the gradient is that of the token "
                               "sum / step_tokens")
