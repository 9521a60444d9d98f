"""Capstone, distillation track — the generalized JSD between teacher and student (C.8).

Checked against the definition computed position by position in float64 (softmax of the
tempered logits, KL written out, the mixture of probabilities): beta 0 (forward KL), 1
(reverse KL) and asymmetric values in between, temperatures 1, 0.5 and 2, masks with
padding on either side, a row with no counted token and a batch with none, bool and int
masks, peaked distributions whose probabilities underflow to 0 in float32, bf16 logits,
the gradient reaching the student's logits, inputs left as they were, and the meta device.
A result that matches a known misreading names it."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.course.teaching import expect, expect_close, explained
from ftlab.distill import distillation_loss

pytestmark = pytest.mark.capstone

SPEC = ("per counted position: beta 0 -> KL(T || S) (forward), beta 1 -> KL(S || T) (reverse), "
        "else beta KL(T || M) + (1 - beta) KL(S || M) with M = beta T + (1 - beta) S (a mixture "
        "of probabilities); S, T = softmax(logits / temperature); summed over the vocabulary, "
        "averaged over the counted positions only")
MASK = [[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]
"""Right padding, left padding (a prompt), and a row with no counted token."""


def _logits(seed: int, scale: float = 3.0, shape=(3, 6, 11)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g), scale * torch.randn(shape, generator=g))


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """KL(P || Q) of one position in float64, from log-probabilities (0 log 0 = 0)."""
    p = p_log.exp()
    return float(sum(p[v] * (p_log[v] - q_log[v]) for v in range(len(p)) if p[v] > 0))


def _slow(student, teacher, mask, beta, temperature, *, t_student=None, t_teacher=None,
          log_mixture=False, swap_weights=False, over_all=False, squared_t=False,
          vocab_mean=False, reverse=False, probs_into_kl_div=False, by_rows=False,
          per_sequence=False, int_index=False) -> float:
    """The loss by its definition, position by position in float64 — or, with a flag set,
    as a known misreading computes it (to name the cause of a wrong result)."""
    s_t = temperature if t_student is None else t_student
    t_t = temperature if t_teacher is None else t_teacher
    if per_sequence or int_index:  # from the per-position values of the definition
        per = [[_slow(student[b:b + 1, t:t + 1], teacher[b:b + 1, t:t + 1], [[1]], beta,
                      temperature) for t in range(student.shape[1])] for b in range(student.shape[0])]
        if int_index:  # an integer mask as an index picks rows 0 and 1, not positions
            picked = torch.tensor(per, dtype=torch.float64)[torch.tensor(mask, dtype=torch.long)]
            return float(picked.sum() / max(picked.numel(), 1))
        means = [sum(v for v, m in zip(row, counted) if m) / max(sum(map(bool, counted)), 1)
                 for row, counted in zip(per, mask)]
        return sum(means) / len(means)
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not (mask[b][t] or over_all):
                continue
            s = torch.log_softmax(student[b, t].double() / s_t, -1)
            q = torch.log_softmax(teacher[b, t].double() / t_t, -1)
            if probs_into_kl_div:  # kl_div(input=probabilities, target=probabilities)
                if beta in (0, 1):
                    inp, tgt = (s, q) if (beta == 0) != reverse else (q, s)
                    value = float((tgt.exp() * (tgt - inp.exp())).sum())
                else:
                    return math.nan
            elif beta == 0 or beta == 1:
                forward = (beta == 0) != reverse
                value = _kl(q, s) if forward else _kl(s, q)
            else:
                w_t, w_s = (1 - beta, beta) if swap_weights else (beta, 1 - beta)
                m = (w_t * q + w_s * s) if log_mixture else torch.log(w_t * q.exp() + w_s * s.exp())
                value = beta * _kl(q, m) + (1 - beta) * _kl(s, m)
            if vocab_mean:
                value /= student.shape[-1]
            total += value * (temperature ** 2 if squared_t else 1)
            count += 1
    return total / (student.shape[0] if by_rows else max(count, 1))


MISREADINGS = {
    "reverse": "the KL direction is swapped: beta 0 is the forward KL(teacher || student) = "
               "kl_div(student_log_probs, teacher_log_probs, log_target=True) (kl_div's FIRST "
               "argument is the distribution the KL is measured against); beta 1 the reverse",
    "probs_into_kl_div": "probabilities went into kl_div: its input (first argument) must be "
                         "log-probabilities (log_softmax), and with log_target=True so must the "
                         "target",
    "t_student": "the temperature divides only the teacher's logits: divide both sides' "
                 "logits by it (student and teacher)",
    "t_teacher": "the temperature divides only the student's logits: divide both sides' "
                 "logits by it (student and teacher)",
    "over_all": "padding averaged in: the mean runs over every position; sum the counted "
                "positions and divide by their number (mask.sum())",
    "log_mixture": "the JSD mixture was built from log-probabilities (beta log T + (1 - beta) "
                   "log S): M mixes probabilities — log M = logsumexp(stack([log T + log(beta), "
                   "log S + log(1 - beta)]))",
    "swap_weights": "the mixture's weights are swapped: M = beta T + (1 - beta) S (beta on the "
                    "teacher), and the JSD is beta KL(T || M) + (1 - beta) KL(S || M)",
    "squared_t": "the loss is multiplied by temperature ** 2 (Hinton's gradient scaling): TRL's "
                 "divergence does not scale it",
    "by_rows": "divided by the number of sequences: divide by the number of counted "
               "positions (mask.sum()), the mean over tokens",
    "per_sequence": "a mean of per-sequence means: a token of a short reply then weighs more than "
                    "one of a long reply; sum every counted position of the batch and divide by "
                    "their total number",
    "int_index": "the integer mask was used as an index (x[mask] with a 0/1 long tensor picks "
                 "rows 0 and 1, not positions): convert it with mask.bool() first",
    "vocab_mean": "the divergence is averaged over the vocabulary: sum it over the vocabulary "
                  "(a KL is a sum over outcomes), then average over positions",
}


def _diagnose(got: float, student, teacher, mask, beta, temperature) -> str:
    for flag, cause in MISREADINGS.items():
        if flag in ("t_student", "t_teacher"):
            if temperature == 1:
                continue
            kwargs = {flag: 1.0}
        else:
            kwargs = {flag: True}
        want = _slow(student, teacher, mask, beta, temperature, **kwargs)
        if math.isfinite(want) and math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
            return cause
    if not math.isfinite(got):
        return ("not finite: a probability underflowed to 0 and its log is -inf (0 * -inf = "
                "nan); work with log_softmax and kl_div(..., log_target=True), never "
                "log(softmax(...))")
    return SPEC


def _loss(student, teacher, mask, beta, temperature, what):
    with explained(task="C.8", what=what, expected="a scalar tensor",
                   cause="log_softmax both tempered logits over the last dimension, per-token "
                         "KL with F.kl_div(..., reduction='none', log_target=True).sum(-1), "
                         "then a masked mean; " + SPEC):
        return distillation_loss(student, teacher, mask, beta=beta, temperature=temperature)


def _check(student, teacher, mask, beta, temperature, what, rtol=1e-5):
    mask_t = torch.as_tensor(mask)
    got = _loss(student, teacher, mask_t, beta, temperature, what)
    expect(isinstance(got, torch.Tensor) and got.dim() == 0, task="C.8", what=f"{what}: result",
           expected="a scalar tensor", got=repr(got)[:80],
           cause="return one number for the batch: the sum over counted positions / their count")
    want = _slow(student, teacher, mask_t.tolist(), beta, temperature)
    value = float(got)
    expect(math.isfinite(value) and math.isclose(value, want, rel_tol=rtol, abs_tol=1e-6),
           task="C.8", what=what, expected=f"{want:.6g} (float64, by the definition)",
           got=f"{value:.6g}", cause=_diagnose(value, student, teacher, mask_t.tolist(), beta,
                                               temperature))
    return got


CASES = [(0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.25, 1.0), (0.75, 2.0), (0.0, 2.0), (1.0, 0.5),
         (0.5, 0.5)]


@pytest.mark.parametrize(("beta", "temperature"), CASES)
def test_c_8_divergence_follows_the_definition(beta, temperature):
    student, teacher = _logits(int(10 * beta + temperature))
    for mask in (MASK, [[True] * 6, [False, True, True, True, True, False], [True] + [False] * 5]):
        _check(student, teacher, mask, beta, temperature,
               f"distillation_loss, beta {beta}, temperature {temperature}, mask {mask}")


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_c_8_peaked_distributions_stay_finite(beta):
    """Logits 60 apart: most probabilities underflow to 0 in float32."""
    student, teacher = _logits(7, scale=60.0)
    _check(student, teacher, MASK, beta, 1.0,
           f"distillation_loss of peaked logits (probabilities that underflow), beta {beta}",
           rtol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_c_8_no_counted_token_is_a_zero_with_a_graph(beta):
    student, teacher = _logits(3)
    student.requires_grad_()
    got = _loss(student, teacher, torch.zeros(3, 6, dtype=torch.long), beta, 1.0,
                f"distillation_loss with every position masked out, beta {beta}")
    expect(float(got.detach()) == 0.0, task="C.8", what="loss of a batch with no counted position",
           expected="0.0", got=float(got.detach()),
           cause="divide by the count clamped to at least 1 (0 / 0 is nan, and a nan loss "
                 "ruins the step): counted.sum().clamp(min=1)")
    expect(got.requires_grad, task="C.8", what="loss of a batch with no counted position",
           expected="a zero that still has a graph (backward works)", got="no graph",
           cause="compute it from the logits (a sum over no positions is 0 with a graph); "
                 "returning torch.tensor(0.0) cuts the graph")


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.25])
def test_c_8_gradient_reaches_the_student_as_the_definition_says(beta):
    student, teacher = _logits(11)
    mask = torch.tensor(MASK)
    leaf = student.double().requires_grad_()
    got = _loss(leaf, teacher.double(), mask, beta, 2.0, f"distillation_loss with a graph, beta {beta}")
    expect(got.requires_grad, task="C.8", what="loss of student logits that require grad",
           expected="a graph back to the student's logits", got="no graph",
           cause="compute from the student's logits with torch ops; no .item(), .detach() or "
                 "torch.tensor(...) on the way")
    expect(got.dtype == torch.float64, task="C.8", what="dtype of the loss of float64 logits",
           expected="torch.float64", got=str(got.dtype),
           cause="float64 logits are computed in float64 (the given cast keeps them): a .float() "
                 "drops them to float32 and the loss loses half its digits")
    got.backward()
    ref_leaf = student.double().requires_grad_()
    s = torch.log_softmax(ref_leaf / 2.0, -1)
    q = torch.log_softmax(teacher.double() / 2.0, -1)
    kl = lambda p, r: (p.exp() * (p - r)).sum(-1)  # noqa: E731 - KL(P || R) from log-probs
    m = torch.log(beta * q.exp() + (1 - beta) * s.exp())
    per = {0.0: kl(q, s), 1.0: kl(s, q)}.get(beta, beta * kl(q, m) + (1 - beta) * kl(s, m))
    (per[mask.bool()].sum() / mask.sum()).backward()
    expect_close(leaf.grad, ref_leaf.grad, task="C.8",
                 what=f"gradient of the loss w.r.t. the student's logits, beta {beta}",
                 cause="the loss must be built from the student's logits through "
                       "log_softmax, with the masked mean; padding positions get no gradient",
                 atol=1e-10, rtol=1e-7)
    expect(bool((leaf.grad[~mask.bool()] == 0).all()), task="C.8",
           what="gradient at masked-out positions", expected="exactly 0",
           got="non-zero", cause="padding and prompt positions must not enter the loss")


def test_c_8_bf16_logits_are_computed_in_float32_and_inputs_are_kept():
    student, teacher = _logits(5)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    given = (s16.clone(), t16.clone())
    mask = torch.tensor(MASK)
    got = _loss(s16, t16, mask, 0.5, 2.0, "distillation_loss of bf16 logits")
    expect(got.dtype == torch.float32, task="C.8", what="dtype of the loss of bf16 logits",
           expected="torch.float32", got=str(got.dtype),
           cause="the cast to float32 is given before your region: keep working on the cast "
                 "tensors (bf16 softmax loses 3 digits)")
    want = _slow(s16.float(), t16.float(), MASK, 0.5, 2.0)
    expect(math.isclose(float(got), want, rel_tol=1e-5, abs_tol=1e-6), task="C.8",
           what="loss of bf16 logits", expected=f"{want:.6g} (the bf16 values, in float64)",
           got=f"{float(got):.6g}", cause=SPEC)
    kept = (student.clone(), teacher.clone())
    _loss(student, teacher, mask, 0.5, 2.0, "distillation_loss of float32 logits")
    for name, now, before in (("bf16 student logits", s16, given[0]),
                              ("bf16 teacher logits", t16, given[1]),
                              ("float32 student logits", student, kept[0]),
                              ("float32 teacher logits", teacher, kept[1]),
                              ("mask", mask, torch.tensor(MASK))):
        expect(torch.equal(now, before), task="C.8", what=f"{name} after the call",
               expected="unchanged", got="modified",
               cause="no in-place operations on the inputs (div_, masked_fill_, ...): for float32 "
                     "logits the given .to(float32) returns the caller's own tensor, and the same "
                     "teacher logits serve several steps")


def test_c_8_runs_on_another_device():
    """The meta device holds no values: a tensor made without device= shows as a crash."""
    for beta in (0.0, 1.0, 0.5):
        try:
            got = _loss(torch.empty(3, 6, 11, device="meta"), torch.empty(3, 6, 11, device="meta"),
                        torch.tensor(MASK).to("meta"), beta, 2.0,
                        f"distillation_loss on the meta device, beta {beta}")
        except NotImplementedError as error:  # boolean indexing (x[mask]) needs the values:
            if "meta" in str(error):          # right on a real device, unknowable on meta
                continue
            raise
        expect(got.device.type == "meta" and got.dim() == 0, task="C.8",
               what=f"loss of tensors on another device (meta), beta {beta}",
               expected="a scalar on meta", got=f"{tuple(got.shape)} on {got.device}",
               cause="make new tensors on the logits' device (or use Python floats such as "
                     "math.log(beta)); no .item() or .tolist()")
