"""Milestone 4 — the training loop: the schedule (M4.1), token-normalised accumulation (M4.2),
clipping and skipped steps (M4.3), resuming exactly (M4.4), early stopping (M4.5).

Every check runs on a tiny random Llama whose attention projections train, so the suite
takes seconds. Each check exercises its own task only: batches are padded here (not with
milestone 1's ``collate``), the weights train without adapters (milestone 2), and the
resume checks step with plain stand-ins for M4.1–M4.3. When a check fails, its "likely
cause" names the mistakes that reproduce what came back."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

from ftlab.config import TrainConfig
from ftlab.course.standins import right_pad
from ftlab.course.teaching import expect, expect_close, explained
from ftlab.models.tiny import tiny_config, tiny_examples
from ftlab.train import (BatchLoader, Checkpoint, EarlyStopping, Trainer, accumulate_gradients,
                         clip_and_step, count_targets, lr_factor, restore_training_state,
                         target_loss_sum)
from ftlab.train.checkpoint import rng_state, set_rng_state, trainable_weights
from ftlab.train.objective import SFTObjective
from ftlab.train.step import Accumulated, StepOutcome

pytestmark = pytest.mark.m4

PAD = 0


def _model(dropout=0.0, seed=0):
    """A tiny random Llama in training mode; only the q/v projections train (as adapters
    would), and ``dropout`` acts on the attention probabilities."""
    config = tiny_config("llama")
    config.attention_dropout = dropout
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(("q_proj.weight", "v_proj.weight")))
    return model.train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_of(causes, fallback):
    """The likely cause: the one mistake that fits, all of them when several do, else the rule."""
    if not causes:
        return fallback
    if len(causes) == 1:
        return causes[0]
    return "several mistakes fit what came back — " + " | OR | ".join(causes)


# -- M4.1 -------------------------------------------------------------------------------

def _transformers_factors(total, warmup, floor):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=floor)
    return [sched.lr_lambdas[0](s) for s in range(total + 1)]


def _factors(steps, total, warmup, floor):
    factors = []
    for step in steps:
        with explained(task="M4.1", what=f"lr_factor({step}, {total}, {warmup}, {floor})",
                       expected="a float",
                       cause="warm-up divides by warmup_steps only while step < warmup_steps "
                             "(warmup_steps may be 0); the decay divides by max(1, total_steps "
                             "- warmup_steps), which is 0 when warm-up fills the schedule"):
            factors.append(float(lr_factor(step, total, warmup, floor)))
    return factors


def _warmup_cause(ours, warmup):
    """Why the warm-up factors differ: a shift by one step, or another ramp."""
    def ramp(f):
        return all(math.isclose(ours[s], min(1.0, f(s)), abs_tol=1e-9) for s in range(warmup))
    if warmup > 1 and (ramp(lambda s: (s + 1) / warmup) or ramp(lambda s: s / (warmup - 1))
                       or ramp(lambda s: (s - 1) / warmup) or ramp(lambda s: s / (warmup + 1))):
        return ("off-by-one at the warm-up end: step s of warm-up has factor s / warmup_steps, "
                "so step 0 is 0 and the peak comes exactly at step == warmup_steps")
    return ("the warm-up must rise linearly, step / warmup_steps: 0 at step 0, the peak 1.0 "
            "exactly at step == warmup_steps")


def _decay_cause(ours, total, warmup, floor, first):
    """Why the decay differs from transformers', from the shapes of known mistakes."""
    def cosine(progress, low):
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    steps = range(warmup, total + 1)
    span = max(1, total - warmup)
    shapes = {
        "cosine decays to zero, floor ignored: the factor falls to min_lr_ratio at total_steps, "
        "not to 0 — scale the cosine into [min_lr_ratio, 1]":
            [cosine((s - warmup) / span, 0.0) for s in steps],
        "decay progress counted from step 0: progress = (step - warmup_steps) / (total_steps - "
        "warmup_steps), so the decay starts at 1 right after warm-up":
            [cosine(s / total, floor) for s in steps],
        "the floor clamps the cosine instead of scaling it: max(min_lr_ratio, cosine) has a "
        "kink where the cosine crosses the floor; the decay is min_lr_ratio + (1 - "
        "min_lr_ratio) * 0.5 * (1 + cos(pi * progress))":
            [max(floor, cosine((s - warmup) / span, 0.0)) for s in steps],
        "decay measured over total_steps: progress divides by the decay's own length, "
        "total_steps - warmup_steps, so the floor is reached exactly at total_steps":
            [cosine((s - warmup) / max(1, total), floor) for s in steps],
        "off-by-one in the decay: progress is (step - warmup_steps) / (total_steps - "
        "warmup_steps) — 0 exactly at the end of warm-up, 1 exactly at total_steps":
            [cosine((s - warmup + 1) / span, floor) for s in steps],
        "off-by-one in the decay: it must reach the floor exactly at total_steps, dividing by "
        "total_steps - warmup_steps (not one step less)":
            [cosine((s - warmup) / max(1, total - warmup - 1), floor) for s in steps],
        "linear decay: the decay follows a cosine, 0.5 * (1 + cos(pi * progress)), from 1 down "
        "to the floor":
            [floor + (1 - floor) * (1 - min(1.0, (s - warmup) / span)) for s in steps],
    }
    fits = [cause for cause, want in shapes.items()
            if all(math.isclose(ours[s], w, abs_tol=1e-9) for s, w in zip(steps, want))]
    return _one_of(fits, f"first difference at step {first}; decay progress is (step - warmup) "
                         "/ (total - warmup) and the cosine runs from 1 down to min_lr_ratio: "
                         "floor + (1 - floor) * 0.5 * (1 + cos(pi * progress))")


@pytest.mark.parametrize("total,warmup,floor", [(20, 5, 0.1), (12, 0, 0.0), (7, 3, 0.5),
                                                (100, 10, 0.1), (4, 4, 0.2), (6, 1, 1.0)])
def test_m4_1_schedule_equals_transformers(total, warmup, floor):
    ours = _factors(range(total + 1), total, warmup, floor)
    want = _transformers_factors(total, warmup, floor)
    if warmup:
        expect(all(math.isclose(ours[s], want[s], abs_tol=1e-12) for s in range(warmup + 1)),
               task="M4.1", what=f"factors for the warm-up steps 0..{warmup}",
               expected=[round(w, 4) for w in want[:warmup + 1]],
               got=[round(f, 4) for f in ours[:warmup + 1]], cause=_warmup_cause(ours, warmup))
    bad = [s for s in range(total + 1) if not math.isclose(ours[s], want[s], abs_tol=1e-12)]
    expect(not bad, task="M4.1", what=f"factors for steps 0..{total} vs transformers' "
           "get_cosine_with_min_lr_schedule_with_warmup",
           expected=[round(want[s], 5) for s in bad[:4]], got=[round(ours[s], 5) for s in bad[:4]],
           cause=_decay_cause(ours, total, warmup, floor, bad[0] if bad else None))


def test_m4_1_stays_at_the_floor_after_the_last_step():
    after = _factors(range(20, 60), 20, 2, 0.1)
    if all(math.isclose(f, 0.0, abs_tol=1e-9) for f in after):
        cause = ("cosine decays to zero, floor ignored: the factor ends at min_lr_ratio (0.1 "
                 "here) and stays there")
    else:
        cause = ("decay past the floor: clamp the progress at 1, or the cosine comes back up "
                 "(or dips below the floor) when training runs past total_steps")
    expect(all(math.isclose(f, 0.1) for f in after), task="M4.1",
           what="factors for steps 20..59 of a 20-step schedule with floor 0.1",
           expected="0.1 every step", got=f"min {min(after):.4f}, max {max(after):.4f}",
           cause=cause)


# -- M4.2 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uneven():
    """Four examples of very unequal trained-token counts."""
    examples = tiny_examples(4, seed=3, lengths=(6, 60))
    examples.sort(key=lambda e: len(e["input_ids"]))
    return [examples[0], examples[3], examples[1], examples[2]]


def _accumulate(model, parts, what):
    before = _snapshot_batches(parts)
    with explained(task="M4.2", what=f"accumulate_gradients over {what}",
                   expected="an Accumulated(loss, targets) and gradients on the trained weights",
                   cause="each micro-batch dict goes whole to target_loss_sum(model, mb); "
                         "count_targets(mb) counts its trained tokens; backward() each part"):
        got = accumulate_gradients(model, parts)
    expect(_unchanged(parts, before), task="M4.2", what=f"the micro-batches after the step, {what}",
           expected="unchanged (same keys, same tensors)", got="modified",
           cause="accumulate_gradients reads its micro-batches: pop nothing, write nothing "
                 "into them (the trainer may log or reuse them)")
    return got


def _snapshot_batches(parts):
    return [{k: v.clone() for k, v in p.items()} for p in parts]


def _unchanged(parts, before):
    return all(p.keys() == b.keys() and all(torch.equal(p[k], b[k]) for k in b)
               for p, b in zip(parts, before))


def _loss_cause(model, parts, got_loss):
    """The known mistakes whose step loss equals ``got_loss``, from the parts' sums and counts."""
    with torch.no_grad():
        sums = [float(target_loss_sum(model, p)) for p in parts]
    counts = [count_targets(p) for p in parts]
    means = [s / c if c else math.nan for s, c in zip(sums, counts)]
    figures = {
        f"averaging micro-batch means: with trained tokens per micro-batch {counts}, each "
        "micro-batch must contribute its loss SUM divided by the trained tokens of the whole "
        "step, so every token weighs the same as in one big batch": sum(means) / len(means),
        f"summing micro-batch means: each micro-batch divided by its own trained tokens "
        f"{counts} and the parts added, so the loss and gradients grow with the number of "
        "micro-batches; divide every SUM by the trained tokens of the whole step": sum(means),
        "loss not normalised: divide each micro-batch's loss sum by the step's trained tokens "
        "(count_targets summed over the micro-batches)": sum(sums),
        "divided by the number of micro-batches instead of the trained tokens: N is the "
        "count of trained tokens of the whole step": sum(sums) / len(parts),
        "only the last micro-batch's part kept in the reported loss: add every part "
        "(loss += part.item(), not =)": sums[-1] / sum(counts) if len(parts) > 1 else math.nan,
        "divided by every real token (attention_mask), prompt included: N counts the trained "
        "tokens only, labels other than -100 after the shift (count_targets)":
            sum(sums) / sum(int(p["attention_mask"].sum()) for p in parts),
    }
    fits = [cause for cause, figure in figures.items()
            if math.isclose(got_loss, figure, rel_tol=1e-5)]
    return _one_of(fits, "the step loss is the sum over every trained token of the step divided "
                         "once by their number: target_loss_sum(model, mb) / N per micro-batch, "
                         "added up (return the sum of the parts you backpropagated)")


def _last_part_grads(model, parts):
    """The gradients left when the step's gradients are zeroed before each micro-batch."""
    total = sum(count_targets(p) for p in parts)
    model.zero_grad(set_to_none=True)
    (target_loss_sum(model, parts[-1]) / total).backward()
    return _grads(model)


def _grad_cause(got, want, model=None, parts=None):
    """Why the gradients differ while the reported loss is right: a uniform scale, gradients
    zeroed between micro-batches (checked when ``model`` and ``parts`` are given), or not."""
    if model is not None and len(parts) > 1:
        last = _last_part_grads(model, parts)
        if all(n in got and torch.allclose(got[n], last[n], rtol=1e-4, atol=1e-6) for n in last):
            return ("gradients zeroed between micro-batches: only the last micro-batch's "
                    "gradient is left; backward() adds into .grad — let it accumulate over "
                    "the whole step and never zero_grad inside it")
    dot = sum(float((got[n] * want[n]).sum()) for n in want if n in got)
    norm = sum(float((w * w).sum()) for w in want.values())
    scale = dot / norm if norm else math.nan
    uniform = all(n in got and torch.allclose(got[n], scale * want[n], rtol=1e-3, atol=1e-7)
                  for n in want)
    if uniform:
        return (f"the gradients are {scale:.3g} times those of one big batch while the reported "
                "loss is right: backpropagate exactly the parts you add into the loss, "
                "target_loss_sum(model, mb) / N, once per micro-batch")
    return ("the reported loss is right but the gradients are not those of one big batch: "
            "backpropagate target_loss_sum(model, mb) / N for every micro-batch (the same N, "
            "the trained tokens of the whole step) and nothing else")


@pytest.mark.parametrize("micro", [2, 1])
def test_m4_2_accumulation_equals_one_big_batch(uneven, micro):
    model = _model()
    whole = _accumulate(model, [right_pad(uneven, PAD)], "one batch of 4 examples")
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    parts = [right_pad(uneven[i:i + micro], PAD) for i in range(0, 4, micro)]
    counts = [count_targets(p) for p in parts]
    what = f"{4 // micro} micro-batches of {micro}"
    got = _accumulate(model, parts, what)
    expect(got.targets == whole.targets, task="M4.2", what=f"trained tokens, {what}",
           expected=f"{whole.targets} (per micro-batch {counts})", got=got.targets,
           cause=("counted one micro-batch only: " if got.targets in counts else "")
           + "N is count_targets summed over every micro-batch of the step")
    expect(math.isclose(got.loss, whole.loss, rel_tol=1e-5), task="M4.2",
           what=f"step loss, {what}", expected=f"{whole.loss:.6f} (one big batch)",
           got=f"{got.loss:.6f}", cause=_loss_cause(model, parts, got.loss))
    grads = _grads(model)
    bad = [n for n in want if n not in grads or not torch.allclose(grads[n], want[n], rtol=1e-4,
                                                                   atol=1e-6)]
    expect(not bad, task="M4.2", what=f"gradients, {what}, vs one big batch",
           expected="equal on every trained weight",
           got=f"{len(bad)} of {len(want)} differ (first: {bad[0] if bad else None})",
           cause=_grad_cause(grads, want, model, parts) if bad else "")


def test_m4_2_loss_is_the_token_mean(uneven):
    model = _model()
    batch = right_pad(uneven, PAD)
    with torch.no_grad():
        want = float(target_loss_sum(model, batch)) / count_targets(batch)
    parts = [right_pad(uneven[:1], PAD), right_pad(uneven[1:], PAD)]
    got = _accumulate(model, parts, "micro-batches of 1 and 3 examples")
    expect(math.isclose(got.loss, want, rel_tol=1e-5), task="M4.2",
           what="reported step loss", expected=f"{want:.6f} (sum over trained tokens / count)",
           got=f"{got.loss:.6f}", cause=_loss_cause(model, parts, got.loss))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    expect(not missing, task="M4.2", what="gradients after accumulation",
           expected="on every trained weight", got=f"none on {len(missing)}, e.g. {missing[:2]}",
           cause="call backward() on each micro-batch's part of the loss")


def _all_trained(example):
    """``example`` with every label trained, the first position's too (nothing predicts it)."""
    return {"input_ids": example["input_ids"], "labels": list(example["input_ids"])}


def _none_trained(example):
    """``example`` with every label ignored: a placeholder row, or a prompt with its response
    truncated away."""
    return {"input_ids": example["input_ids"], "labels": [-100] * len(example["input_ids"])}


def _slow_count(examples):
    """Trained tokens counted one label at a time: labels after the first of each row."""
    return sum(label != -100 for e in examples for label in e["labels"][1:])


SPLITS = {
    "labels trained from the first position of each row": lambda u: [
        [_all_trained(u[0]), _all_trained(u[1])], [_all_trained(u[2])]],
    "a micro-batch with no trained token between two others": lambda u: [
        [u[0]], [_none_trained(u[1])], [u[2], u[3]]],
}


@pytest.mark.parametrize("split", list(SPLITS))
def test_m4_2_edge_micro_batches_equal_one_big_batch(uneven, split):
    groups = SPLITS[split](uneven)
    examples = [e for group in groups for e in group]
    model = _model()
    whole = right_pad(examples, PAD)
    want_targets = _slow_count(examples)
    (target_loss_sum(model, whole) / want_targets).backward()
    want_grads = _grads(model)
    with torch.no_grad():
        want_loss = float(target_loss_sum(model, whole)) / want_targets
    model.zero_grad(set_to_none=True)
    parts = [right_pad(group, PAD) for group in groups]
    got = _accumulate(model, parts, f"micro-batches with {split}")
    counts = [count_targets(p) for p in parts]
    no_shift = sum(int((p["labels"] != -100).sum()) for p in parts)
    expect(got.targets == want_targets and type(got.targets) is int, task="M4.2",
           what=f"trained tokens of the step, {split}",
           expected=f"{want_targets} (an int: per micro-batch {counts})",
           got=f"{got.targets!r} ({type(got.targets).__name__})",
           cause=("counted the first label of each row: labels are shifted — position t "
                  "predicts labels[t + 1], so the first label is never a target; "
                  "count_targets(mb) counts labels[:, 1:]" if got.targets == no_shift else
                  "targets is a Python int, the trained tokens summed over the micro-batches "
                  "(count_targets returns an int; a tensor's .sum() does not)"
                  if got.targets == want_targets else
                  "counted every real token (attention_mask), prompt included: only labels "
                  "other than -100 after the shift are trained (count_targets)"
                  if got.targets == sum(int(p["attention_mask"].sum()) for p in parts) else
                  "N is count_targets summed over every micro-batch of the step"))
    expect(type(got.loss) is float and math.isfinite(got.loss), task="M4.2",
           what=f"step loss, {split}", expected=f"a finite Python float ({want_loss:.6f})",
           got=f"{got.loss!r} ({type(got.loss).__name__})",
           cause=("a micro-batch with no trained token must contribute 0, not nan: divide "
                  "its loss SUM by the trained tokens of the whole step, never by its own "
                  f"count (0 here; per micro-batch {counts})"
                  if isinstance(got.loss, float) and math.isnan(got.loss) else
                  "the loss is a Python float: add part.item() (a tensor would keep every "
                  "micro-batch's graph alive and cannot be logged)"))
    expect(math.isclose(got.loss, want_loss, rel_tol=1e-5), task="M4.2",
           what=f"step loss, {split}", expected=f"{want_loss:.6f} (one big batch)",
           got=f"{got.loss:.6f}", cause=_loss_cause(model, parts, got.loss))
    grads = _grads(model)
    bad = [n for n in want_grads if n not in grads
           or not torch.allclose(grads[n], want_grads[n], rtol=1e-4, atol=1e-6)]
    expect(not bad, task="M4.2", what=f"gradients, {split}, vs one big batch",
           expected="equal on every trained weight",
           got=f"{len(bad)} of {len(want_grads)} differ (first: {bad[0] if bad else None})",
           cause=_grad_cause(grads, want_grads, model, parts) if bad else "")


def test_m4_2_no_trained_token_gives_nan_and_no_backward(uneven):
    model = _model()
    parts = [right_pad([_none_trained(uneven[0])], PAD),
             right_pad([_none_trained(e) for e in uneven[1:3]], PAD)]
    got = _accumulate(model, parts, "2 micro-batches without a trained token")
    touched = [n for n, p in model.named_parameters() if p.grad is not None]
    expect(got.targets == 0 and isinstance(got.loss, float) and math.isnan(got.loss),
           task="M4.2", what="a step without a single trained token",
           expected="Accumulated(loss=nan, targets=0)", got=f"loss {got.loss!r}, targets "
           f"{got.targets!r}",
           cause="with no trained token the step's mean is 0 / 0: report loss nan (the step "
                 "is then skipped) and targets 0; a 0.0 would look like a perfect step")
    expect(not touched, task="M4.2", what="gradients after a step without a trained token",
           expected="none (no backward runs)", got=f"gradients on {len(touched)} weights",
           cause="with no trained token, return before any backward: dividing the loss sums "
                 "by N = 0 backpropagates nan into every gradient")


def test_m4_2_keeps_the_model_in_training_mode(uneven):
    model = _model(dropout=0.1)
    _accumulate(model, [right_pad(uneven[:2], PAD)], "one micro-batch, model in training mode")
    evaluating = [n for n, m in model.named_modules() if not m.training]
    expect(not evaluating, task="M4.2", what="model mode after accumulate_gradients",
           expected="still training (as the trainer set it)",
           got=f"{len(evaluating)} modules in eval mode, e.g. {evaluating[:2]}",
           cause="accumulate_gradients trains: leave the mode alone — model.eval() turns "
                 "dropout off, so the step trains a different model than the one configured")


# -- M4.3 -------------------------------------------------------------------------------

def _one_param(grad):
    param = torch.nn.Parameter(torch.zeros(len(grad)))
    param.grad = torch.tensor(grad)
    return param


def _clip_and_step(opt, param, loss):
    with explained(task="M4.3", what=f"clip_and_step with loss {loss} and gradient "
                   f"{param.grad.tolist()}", expected="a StepOutcome(grad_norm, stepped)",
                   cause="clip with torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm) "
                         "(error_if_nonfinite left False: a non-finite norm skips the step, it "
                         "does not raise), test the loss with math.isfinite, return "
                         "StepOutcome"):
        return clip_and_step(opt, [param], max_grad_norm=1.0, loss=loss)


def test_m4_3_clips_before_the_step_and_reports_the_pre_clip_norm():
    param = _one_param([6.0, 8.0])  # norm 10
    opt = torch.optim.SGD([param], lr=1.0)
    out = _clip_and_step(opt, param, 1.0)
    if not out.stepped:
        cause = ("a finite loss and gradient must step: only a non-finite loss or gradient norm "
                 "skips optimizer.step()")
    elif math.isclose(out.grad_norm, 1.0, rel_tol=1e-6):
        cause = ("post-clip norm reported: report the norm clip_grad_norm_ returns — the norm "
                 "before clipping, the one that tells you how large the gradients really were")
    else:
        cause = ("report the norm before clipping (what clip_grad_norm_ returns): "
                 "sqrt(6² + 8²) = 10 here")
    expect(out.stepped and math.isclose(out.grad_norm, 10.0, rel_tol=1e-6), task="M4.3",
           what="outcome for gradient (6, 8) with max_grad_norm 1",
           expected="stepped, grad_norm 10.0 (before clipping)",
           got=f"stepped={out.stepped}, grad_norm={out.grad_norm}", cause=cause)
    moved = param.detach()
    if torch.allclose(moved, torch.tensor([-6.0, -8.0])):
        cause = ("clipping after step(): the update used the unclipped gradient (norm 10); "
                 "clip first, then optimizer.step()")
    elif not moved.any():
        cause = "the parameter did not move: call optimizer.step() after clipping"
    elif torch.allclose(moved, torch.tensor([-1.0, -1.0])):
        cause = ("clipped value by value (clip_grad_value_): clipping bounds the L2 norm of all "
                 "the gradients together and keeps their direction")
    else:
        cause = ("the update must use the gradient clipped to norm 1: (6, 8) / 10, one SGD "
                 "step of lr 1 from 0")
    expect_close(moved, torch.tensor([-0.6, -0.8]), task="M4.3",
                 what="parameter after one SGD step (lr 1) from 0", cause=cause, atol=1e-6)
    expect(param.grad is None or not param.grad.any(), task="M4.3",
           what="gradient after the step", expected="zeroed", got=param.grad,
           cause="zero the gradients after stepping, or the next step adds onto them")


@pytest.mark.parametrize("loss,grad", [(math.nan, [1.0, 1.0]), (math.inf, [1.0, 1.0]),
                                       (-math.inf, [1.0, 1.0]), (1.0, [math.inf, 1.0]),
                                       (1.0, [math.nan, 1.0])])
def test_m4_3_non_finite_skips_the_step(loss, grad):
    param = _one_param(grad)
    opt = torch.optim.AdamW([param], lr=0.1)
    out = _clip_and_step(opt, param, loss)
    touched = bool(param.detach().any()) or bool(opt.state)
    if math.isfinite(loss):
        cause = ("non-finite gradient norm not checked: the loss is finite but clip_grad_norm_ "
                 f"returned {sum(g * g for g in grad) ** 0.5} — skip optimizer.step() when the "
                 "norm is not finite either (math.isfinite: inf and nan; nan == inf is False)")
    else:
        cause = (f"non-finite loss not checked: with loss {loss}, skip optimizer.step() — one "
                 "nan update poisons every weight and Adam's moments for good")
    if not out.stepped and touched:
        cause = "stepped=False was reported, yet the optimizer stepped: " + cause
    expect(not out.stepped and not touched, task="M4.3",
           what=f"step with loss {loss} and gradient {grad}",
           expected="skipped: parameter and optimizer state untouched",
           got=f"stepped={out.stepped}, parameter {param.detach().tolist()}, "
               f"optimizer state {'set' if opt.state else 'empty'}", cause=cause)
    expect(param.grad is None or not param.grad.any(), task="M4.3",
           what="gradient after a skipped step", expected="zeroed", got=param.grad,
           cause="zero the gradients of a skipped step too, or they leak into the next one")
    if loss != loss or abs(loss) == math.inf:  # skipped for its loss: nothing was measured
        expect(isinstance(out.grad_norm, float) and math.isnan(out.grad_norm), task="M4.3",
               what=f"grad_norm reported for a step skipped for its loss {loss}",
               expected="nan", got=repr(out.grad_norm),
               cause="a non-finite loss skips the step before anything is measured: report "
                     "grad_norm nan (the spec's StepOutcome), not a norm of the gradients "
                     "that loss produced")


def _sgd_step(grads, max_grad_norm):
    """One parameter per gradient (zeros), an SGD optimizer of lr 1, clip_and_step with loss
    1.0; the outcome and the parameters after it."""
    params = [_one_param(g) for g in grads]
    opt = torch.optim.SGD(params, lr=1.0)
    with explained(task="M4.3", what=f"clip_and_step with gradients {grads}, max_grad_norm "
                   f"{max_grad_norm}", expected="a StepOutcome(grad_norm, stepped)",
                   cause="clip every parameter of the list together: "
                         "torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)"):
        out = clip_and_step(opt, params, max_grad_norm=max_grad_norm, loss=1.0)
    return out, [p.detach().tolist() for p in params]


def _updates(grads, scale_of):
    return [[-g * scale_of(i) for g in grad] for i, grad in enumerate(grads)]


def _clip_cause(grads, max_grad_norm, got):
    """The known clipping mistakes whose update equals ``got`` (SGD lr 1 from 0)."""
    norms = [math.sqrt(sum(g * g for g in grad)) for grad in grads]
    total = math.sqrt(sum(n * n for n in norms))
    shapes = {
        "each parameter clipped on its own norm: clipping bounds the GLOBAL norm over all "
        "parameters together, one scale for every gradient — pass the whole list to "
        "clip_grad_norm_": _updates(grads, lambda i: min(1.0, max_grad_norm / norms[i])),
        "only the first parameter was clipped: clip_grad_norm_ takes the whole parameter list":
            _updates(grads, lambda i: min(1.0, max_grad_norm / norms[0]) if i == 0 else 1.0),
        "gradients scaled although their norm was within max_grad_norm: clipping only ever "
        "shrinks, scale = min(1, max_grad_norm / norm)":
            _updates(grads, lambda i: max_grad_norm / total),
        "gradients not clipped: scale them to norm max_grad_norm before optimizer.step()":
            _updates(grads, lambda i: 1.0),
        "clipped value by value (clip_grad_value_): clipping bounds the L2 norm of all the "
        "gradients together and keeps their direction": [
            [-max(-max_grad_norm, min(max_grad_norm, g)) for g in grad] for grad in grads],
    }
    want = _updates(grads, lambda i: min(1.0, max_grad_norm / total))
    fits = [cause for cause, update in shapes.items() if update != want and all(
        math.isclose(a, b, abs_tol=1e-5) for u, v in zip(update, got) for a, b in zip(u, v))]
    return _one_of(fits, "one scale for every gradient, min(1, max_grad_norm / global L2 "
                         "norm), applied before optimizer.step()")


CLIPS = {"two parameters, global norm 13 > 1": ([[3.0, 4.0], [0.0, 12.0]], 1.0),
         "three parameters, global norm 13 > 6.5": ([[3.0], [4.0], [12.0]], 6.5),
         "norm 0.5, below max_grad_norm 1": ([[0.3, 0.4]], 1.0),
         "norm exactly max_grad_norm": ([[0.6, 0.8]], 1.0)}


@pytest.mark.parametrize("case", list(CLIPS))
def test_m4_3_clips_the_global_norm_of_every_parameter(case):
    grads, max_grad_norm = CLIPS[case]
    norm = math.sqrt(sum(g * g for grad in grads for g in grad))
    want = _updates(grads, lambda i: min(1.0, max_grad_norm / norm))
    out, got = _sgd_step(grads, max_grad_norm)
    ok = all(math.isclose(a, b, abs_tol=1e-5) for u, v in zip(want, got) for a, b in zip(u, v))
    expect(out.stepped and ok, task="M4.3",
           what=f"parameters after one SGD step (lr 1, from 0), {case}",
           expected=want, got=got, cause=_clip_cause(grads, max_grad_norm, got)
           if out.stepped else "a finite loss and gradient norm must step")
    norms = {"the norm after clipping": min(norm, max_grad_norm),
             "the first parameter's norm only": math.sqrt(sum(g * g for g in grads[0])),
             "the sum of the parameters' norms": sum(math.sqrt(sum(g * g for g in grad))
                                                     for grad in grads)}
    wrong = [name for name, value in norms.items() if not math.isclose(value, norm)
             and math.isclose(float(out.grad_norm), value, rel_tol=1e-5)]
    expect(type(out.grad_norm) is float and math.isclose(out.grad_norm, norm, rel_tol=1e-5),
           task="M4.3", what=f"grad_norm reported, {case}",
           expected=f"{norm:g} (a Python float: the global L2 norm before clipping)",
           got=f"{out.grad_norm!r} ({type(out.grad_norm).__name__})",
           cause=(f"reported {wrong[0]}: report the norm before clipping, over all parameters "
                  "together (what clip_grad_norm_ returns)" if wrong else
                  "grad_norm is a Python float: clip_grad_norm_ returns a tensor — "
                  "float(...) it; the trainer writes it into a JSON metrics file"
                  if math.isclose(float(out.grad_norm), norm, rel_tol=1e-5) else
                  "the global L2 norm of all gradients before clipping: sqrt of the sum of "
                  "every squared gradient entry"))


# -- M4.4 -------------------------------------------------------------------------------
# Resuming is checked with plain stand-ins for the schedule, the accumulation and the step
# (not M4.1-M4.3, which have checks of their own): exactness does not depend on them.

def _stand_in_factor(step, total_steps, warmup_steps=0, min_lr_ratio=0.0):
    return 1.0 / (1.0 + 0.1 * step)


def _stand_in_step(optimizer, parameters, max_grad_norm, loss):
    optimizer.step(closure=None)
    optimizer.zero_grad()  # set_to_none by default
    return StepOutcome(grad_norm=1.0, stepped=True)


class _StandInObjective(SFTObjective):
    """Cross-entropy sums scaled by a constant, backpropagated per micro-batch."""

    def collate(self, examples, pad_id):
        return right_pad(examples, pad_id)

    def accumulate(self, model, micro_batches):
        loss = 0.0
        for batch in micro_batches:
            part = target_loss_sum(model, batch) * 1e-2
            part.backward()
            loss += float(part.detach())
        return Accumulated(loss=loss, targets=sum(count_targets(b) for b in micro_batches))


def _objects(examples, dropout=0.1):
    model = _model(dropout=dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _stand_in_factor(s, 10))
    loader = BatchLoader(examples, 2, PAD, seed=1, collate_fn=right_pad)
    return model, params, opt, sched, loader


def _train_steps(model, params, opt, sched, loader, n):
    objective = _StandInObjective()
    for _ in range(n):
        objective.accumulate(model, [loader.next()])
        _stand_in_step(opt, params, 1.0, 0.0)
        sched.step()


def _snapshot(model, opt, sched, loader):
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
             "data": loader.state_dict(), "trainer": {"step": 2}}
    return Checkpoint(path=None, weights=trainable_weights(model), state=copy.deepcopy(state))


@pytest.fixture(scope="module")
def resumed():
    """A run stopped after 2 steps, and a fresh set of objects restored from it."""
    examples = tiny_examples(12, seed=5)
    original = _objects(examples)
    _train_steps(*original, 2)
    checkpoint = _snapshot(original[0], *original[2:])
    fresh = _objects(examples)
    torch.manual_seed(1234)  # a new process starts from some other RNG state, in every RNG
    random.seed(1234)
    np.random.seed(1234)
    with explained(task="M4.4", what="restore_training_state(checkpoint, model, optimizer, "
                   "scheduler, loader)", expected="the run put back, the trainer counters "
                   "returned", cause="checkpoint.weights maps parameter names to tensors; "
                   "checkpoint.state holds 'optimizer', 'scheduler', 'data', 'rng', 'trainer'"):
        before = {key: copy.copy(value) for key, value in checkpoint.state.items()}
        returned = restore_training_state(checkpoint, fresh[0], fresh[2], fresh[3], fresh[4])
    after_restore = _draws()
    set_rng_state(checkpoint.state["rng"])
    return original, fresh, checkpoint, (returned, before), (after_restore, _draws())


def _draws():
    """One draw of each RNG a run may use (dropout: torch; data tools: Python, NumPy)."""
    return {"torch": torch.rand(3).tolist(), "python": [random.random() for _ in range(3)],
            "numpy": np.random.rand(3).tolist()}


def test_m4_4_restores_weights_and_optimizer(resumed):
    original, fresh, checkpoint, (returned, before), _ = resumed
    for (name, p), q in zip(original[0].named_parameters(), fresh[0].parameters()):
        if p.requires_grad:
            expect_close(q.detach(), p.detach(), task="M4.4", what=f"restored {name}",
                         cause="weights not restored: copy every tensor of checkpoint.weights "
                               "into the parameter of the same name", atol=0, rtol=0)
    shared = [n for n, p in fresh[0].named_parameters() if n in checkpoint.weights
              and p.data_ptr() == checkpoint.weights[n].data_ptr()]
    expect(not shared, task="M4.4", what="the restored parameters' storage",
           expected="their own memory, holding copies of checkpoint.weights",
           got=f"{len(shared)} parameters share memory with the checkpoint, e.g. {shared[:2]}",
           cause="weights rebound (p.data = value) instead of copied: each parameter now is the "
                 "checkpoint's tensor (its device and dtype), and training would overwrite the "
                 "checkpoint; copy_ the values into the parameters under torch.no_grad()")
    held = {id(p) for group in fresh[2].param_groups for p in group["params"]}
    replaced = [n for n, p in fresh[0].named_parameters() if p.requires_grad and id(p) not in held]
    expect(not replaced, task="M4.4", what="the optimizer's parameters after restoring",
           expected="the model's own parameters (same objects)",
           got=f"{len(replaced)} trained parameters the optimizer no longer holds, e.g. "
               f"{replaced[:2]}",
           cause="parameters replaced instead of restored in place: the optimizer keeps "
                 "stepping the old tensors; copy_ the values into the existing parameters "
                 "under torch.no_grad()")
    saved, got = original[2].state_dict()["state"], fresh[2].state_dict()["state"]
    expect(len(got) == len(saved) and all(torch.equal(got[k]["exp_avg"], saved[k]["exp_avg"])
                                          for k in saved),
           task="M4.4", what="optimizer state after restoring", expected="Adam moments of step 2",
           got=f"{len(got)} parameters with state",
           cause="optimizer not restored: load checkpoint.state['optimizer'] with "
                 "optimizer.load_state_dict, or Adam restarts from zero moments")
    expect(fresh[3].last_epoch == original[3].last_epoch, task="M4.4",
           what="scheduler position", expected=original[3].last_epoch, got=fresh[3].last_epoch,
           cause="scheduler not restored: the learning rate would restart its warm-up")
    expect(checkpoint.state.keys() == before.keys() and all(
               checkpoint.state[k] is before[k] or checkpoint.state[k] == before[k]
               for k in ("trainer", "data")), task="M4.4",
           what="the checkpoint after restoring from it",
           expected=f"unchanged: keys {sorted(before)}, trainer {before['trainer']}",
           got=f"keys {sorted(checkpoint.state)}, trainer {checkpoint.state.get('trainer')}",
           cause="restoring reads the checkpoint: pop nothing from checkpoint.state and write "
                 "nothing into it (the trainer may restore from it again)")
    expect(returned == before["trainer"], task="M4.4", what="returned value",
           expected=before["trainer"],
           got=(f"a dict with keys {sorted(returned)}" if isinstance(returned, dict)
                and returned.keys() != before["trainer"].keys() else repr(returned)[:200]),
           cause="return the trainer counters, checkpoint.state['trainer'] (the step "
                 "counter and friends), not the whole state")


def test_m4_4_restores_rng_and_data_position(resumed):
    original, fresh, checkpoint, _, (after_restore, want_rng) = resumed
    expect(after_restore["torch"] == want_rng["torch"], task="M4.4",
           what="torch.rand(3) right after restoring", expected=want_rng["torch"],
           got=after_restore["torch"],
           cause="RNG not restored: dropout masks then differ from the uninterrupted run and "
                 "the resumed run diverges; call set_rng_state(checkpoint.state['rng'])")
    missed = [name for name in ("python", "numpy") if after_restore[name] != want_rng[name]]
    expect(not missed, task="M4.4", what="random.random() and np.random.rand() right after "
           "restoring", expected={n: want_rng[n] for n in missed},
           got={n: after_restore[n] for n in missed},
           cause=f"RNG not restored: the {' and '.join(missed)} RNG state"
                 f"{'s were' if len(missed) > 1 else ' was'} left as the new process had it — "
                 "torch's alone is not enough (data tools and augmentations draw from Python's "
                 "and NumPy's); set_rng_state(checkpoint.state['rng']) restores every one")
    want, got = original[4].state_dict(), fresh[4].state_dict()
    expect(got == want, task="M4.4", what="data position (epoch, batch index)", expected=want,
           got=got, cause="data position not restored: the resumed run would repeat the first "
                          "batches of the epoch; call loader.load_state_dict(state['data'])")


def test_m4_4_resumed_run_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr("ftlab.train.schedule.lr_factor", _stand_in_factor)
    monkeypatch.setattr("ftlab.train.trainer.clip_and_step", _stand_in_step)
    examples = tiny_examples(24, seed=7)
    cfg = TrainConfig(max_steps=6, batch_size=4, grad_accum=2, lr=1e-2, save_every=100,
                      warmup_ratio=0.2)

    def run(folder, stop_at=None):
        model = _model(dropout=0.1)
        trainer = Trainer(model, examples, cfg, folder, PAD, progress=False,
                          objective=_StandInObjective())
        if stop_at:
            trainer.callbacks.append(lambda r: r["step"] == stop_at and trainer.request_stop())
        with explained(task="M4.4", what=f"Trainer.fit() in {folder.name}"
                       + (f", stopping at step {stop_at}" if stop_at else ""),
                       expected="a finished (or resumed and finished) run",
                       cause="the Trainer resumes through restore_training_state: it must accept "
                             "the checkpoint the Trainer wrote and put every part back"):
            result = trainer.fit()
        return trainable_weights(model), result

    straight, _ = run(tmp_path / "straight")
    _, first = run(tmp_path / "resumed", stop_at=3)
    resumed, second = run(tmp_path / "resumed")
    expect(first.steps == 3 and second.resumed_from == 3, task="M4.4",
           what="interrupted at step 3, then resumed", expected="steps 3, resumed from 3",
           got=f"steps {first.steps}, resumed from {second.resumed_from}",
           cause="the Trainer writes a checkpoint when asked to stop and resumes from it")
    diff = max(float((resumed[n] - straight[n]).abs().max()) for n in straight)
    expect(diff == 0, task="M4.4", what="final weights, resumed vs uninterrupted (6 steps)",
           expected="bit-identical (difference 0)", got=f"max difference {diff:.3g}",
           cause="something was not restored — any of weights, optimizer, scheduler, RNG "
                 "(dropout) or data position fits; the other M4.4 checks tell which")


# -- M4.5 -------------------------------------------------------------------------------
# Each check feeds evaluation records, compares what EarlyStopping did with the spec, and
# names every known mistake that reproduces what it did instead.

def _records(val_losses, train_losses=None, every=10):
    """Evaluation records every ``every`` steps; training loss falls steadily by default."""
    train_losses = train_losses or [3.0 - 0.3 * i for i in range(len(val_losses))]
    return [{"step": every * (i + 1), "train_loss": t, "val_loss": v}
            for i, (v, t) in enumerate(zip(val_losses, train_losses))]


def _improves(value, reference, min_delta, rule):
    """Whether ``value`` counts as an improvement on ``reference`` under ``rule`` (the spec's:
    "strict"; the others, known mistakes)."""
    if rule == "or equal":
        return value <= reference - min_delta
    if rule == "relative":
        return value < reference * (1 - min_delta)
    if rule == "delta added":
        return value < reference + min_delta
    if rule == "nan improves":
        return not value >= reference - min_delta
    return value < reference - min_delta


def _behaviour(records, patience, min_delta=0.0, *, judged="val_loss", counted="evaluations",
               resets=True, uses_delta=True, best_follows_any_fall=False, rule="strict",
               versus="best"):
    """What early stopping does with ``records``: per-record improvement flags, the index of
    the record that stops it (None: never), then best and bad_evals. With the defaults, what
    the spec asks; each keyword changes one thing, as a known mistake does."""
    lowest, misses, step_of_lowest, flags, previous = math.inf, 0, 0, [], math.inf
    for index, record in enumerate(records):
        value = record[judged]
        better = _improves(value, lowest if versus == "best" else previous,
                           min_delta if uses_delta else 0.0, rule)
        previous = value
        flags.append(better)
        if better:
            lowest, step_of_lowest = value, record["step"]
            misses = 0 if resets else misses
        else:
            lowest = min(lowest, value) if best_follows_any_fall else lowest
            misses = misses + 1 if counted == "evaluations" else record["step"] - step_of_lowest
        if patience is not None and misses >= patience:
            return flags, index, lowest, misses
    return flags, None, lowest, misses


MISTAKES = [
    (dict(judged="train_loss"),
     "stopping on training loss: training loss keeps falling while the model overfits; only "
     "metrics['val_loss'] decides"),
    (dict(counted="steps"),
     "patience counted in steps: bad_evals must grow by 1 per evaluation without improvement, "
     "not by the steps since the best one — evaluations come every eval_every steps, so one "
     "bad evaluation would already use up the patience"),
    (dict(uses_delta=False),
     "min_delta ignored: an improvement needs val_loss < best - min_delta; a smaller fall is "
     "not one"),
    (dict(resets=False),
     "bad_evals not reset: an improvement resets bad_evals to 0 — without that, bad "
     "evaluations from before it stop the run early"),
    (dict(best_follows_any_fall=True),
     "best moved by a fall that did not count: best keeps the lowest validation loss that "
     "counted as an improvement (below best - min_delta); a smaller fall leaves it"),
    (dict(rule="or equal"),
     "an equal loss counted as an improvement (<= instead of <): a plateau — val_loss equal "
     "to best - min_delta, or to best with min_delta 0 — is no improvement, or a run on a "
     "plateau never stops"),
    (dict(rule="relative"),
     "min_delta taken as a fraction of best: it is an absolute amount of loss, "
     "val_loss < best - min_delta"),
    (dict(rule="delta added"),
     "min_delta on the wrong side: an improvement must fall BELOW best - min_delta, not "
     "merely stay under best + min_delta"),
    (dict(rule="nan improves"),
     "a nan validation loss counted as an improvement: nan compares false with everything, so "
     "'not val_loss >= best - min_delta' lets it in and best becomes nan; write the test as "
     "val_loss < best - min_delta"),
    (dict(versus="previous"),
     "compared with the previous evaluation instead of the best: a small recovery after a bad "
     "evaluation is not an improvement unless it beats best - min_delta"),
]
RULE = ("an evaluation improves when val_loss < best - min_delta: best = val_loss, bad_evals "
        "back to 0; any other evaluation adds 1 to bad_evals; the stop comes when bad_evals "
        "reaches patience")


def _same(run, other):
    """Runs compared by their text: a nan best equals a nan best."""
    return repr(run) == repr(other)


def _observe(records, patience, min_delta=0.0):
    """What the learner's EarlyStopping does with ``records``, in :func:`_behaviour`'s form."""
    stopper = EarlyStopping(patience=patience, min_delta=min_delta)
    flags = []
    for index, record in enumerate(records):
        with explained(task="M4.5", what=f"EarlyStopping.update({record})",
                       expected="True or False: is this evaluation the new best?",
                       cause="update gets the evaluation record (a dict of floats) and keeps "
                             "best and bad_evals on self"):
            flags.append(stopper.update(dict(record)))
        if stopper.should_stop:
            return flags, index, stopper.best, stopper.bad_evals
    return flags, None, stopper.best, stopper.bad_evals


def _describe(run):
    flags, stop, best, bad = run
    where = "never stopped" if stop is None else f"stopped at evaluation {stop + 1}"
    return f"improvements {flags}, {where}, best {best}, bad_evals {bad}"


def _probes():
    """Extra runs that tell the known mistakes apart (used for the likely cause only): the
    boundary cases, and a rise that stays within min_delta."""
    runs = []
    for records, patience, delta in [(_records(losses), p, d) for losses, p, d in
                                     [*BOUNDARIES.values(), ([2.0, 2.05, 2.3], 2, 0.1)]]:
        try:
            runs.append((records, patience, delta, _observe(records, patience, delta)))
        except Exception:  # noqa: BLE001 - a probe that crashes tells nothing
            continue
    return runs


def _mistakes_fitting(cases):
    """The known mistakes that reproduce every observed run of ``cases``:
    [(records, patience, min_delta, observed)], and of the probes."""
    def fits(change, modelled, seen):  # which best a "previous" comparison keeps varies
        if change.get("versus") == "previous":
            modelled, seen = modelled[:2] + modelled[3:], seen[:2] + seen[3:]
        return _same(modelled, seen)

    runs = list(cases) + _probes()
    return [cause for change, cause in MISTAKES
            if all(fits(change, _behaviour(records, patience, delta, **change), seen)
                   for records, patience, delta, seen in runs)]


def test_m4_5_stops_when_validation_loss_stops_improving():
    records = _records([2.0, 1.8, 1.9, 2.1, 2.3, 2.5])
    want, got = _behaviour(records, 2), _observe(records, 2)
    expect(got == want, task="M4.5",
           what="evaluations every 10 steps with validation loss 2.0, 1.8, 1.9, 2.1, 2.3, 2.5 "
                "(training loss falling all the time), patience 2",
           expected=_describe(want), got=_describe(got),
           cause=_one_of(_mistakes_fitting([(records, 2, 0.0, got)]), RULE))


def test_m4_5_patience_counts_evaluations_not_steps():
    losses = [2.0, 1.8, 1.9, 2.1, 2.3, 2.5]
    cases = [(_records(losses, every=every), 2, 0.0) for every in (1, 25, 100)]
    runs = [(records, p, d, _observe(records, p, d)) for records, p, d in cases]
    want = _behaviour(cases[0][0], 2)
    stops = {every: run[-1][1] for every, run in zip((1, 25, 100), runs)}
    fits = _mistakes_fitting(runs)
    if len(set(stops.values())) > 1 and MISTAKES[1][1] not in fits:
        fits.append(MISTAKES[1][1])  # the stop moved with the spacing: steps were counted
    expect(all(run[-1][:2] == want[:2] for run in runs), task="M4.5",
           what="the same validation losses evaluated every 1, 25 and 100 steps, patience 2",
           expected=f"stop at evaluation {want[1] + 1} every time",
           got="; ".join(f"every {every}: " + ("never" if stop is None else f"evaluation "
                                                f"{stop + 1}") for every, stop in stops.items()),
           cause=_one_of(fits, "patience counts evaluations, whatever eval_every is: " + RULE))


def test_m4_5_min_delta_and_reset():
    records = _records([2.0, 1.95, 1.85, 1.8, 1.6], [3.0, 2.98, 2.96, 2.94, 2.92])
    want, got = _behaviour(records, 3, 0.1), _observe(records, 3, 0.1)
    expect(got == want, task="M4.5",
           what="validation loss 2.0, 1.95, 1.85, 1.8, 1.6 with min_delta 0.1, patience 3",
           expected=_describe(want), got=_describe(got),
           cause=_one_of(_mistakes_fitting([(records, 3, 0.1, got)]),
                         "1.95 is not enough after 2.0 (min_delta 0.1); " + RULE))


BOUNDARIES = {
    "a plateau: validation loss 2.0 four times, min_delta 0, patience 2":
        ([2.0, 2.0, 2.0, 2.0], 2, 0.0),
    "a fall of exactly min_delta: 2.0, 1.5, 1.4 with min_delta 0.5, patience 2":
        ([2.0, 1.5, 1.4], 2, 0.5),
    "a recovery that does not beat the best: 2.0, 1.8, 1.9, 1.85, 1.84, patience 3":
        ([2.0, 1.8, 1.9, 1.85, 1.84], 3, 0.0),
    "a nan validation loss: 2.0, nan, 1.9, patience 3": ([2.0, math.nan, 1.9], 3, 0.0),
}


@pytest.mark.parametrize("case", list(BOUNDARIES))
def test_m4_5_boundaries_of_an_improvement(case):
    losses, patience, min_delta = BOUNDARIES[case]
    records = _records(losses)
    want, got = _behaviour(records, patience, min_delta), _observe(records, patience, min_delta)
    expect(_same(got, want), task="M4.5", what=case, expected=_describe(want),
           got=_describe(got),
           cause=_one_of(_mistakes_fitting([(records, patience, min_delta, got)]), RULE))
