"""Milestone 4 — the training loop: the schedule (M4.1), token-normalised accumulation (M4.2),
clipping and skipped steps (M4.3), resuming exactly (M4.4), early stopping (M4.5).

Every check runs on a tiny random Llama with LoRA adapters, so the suite takes seconds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from ftlab.config import TrainConfig
from ftlab.course.teaching import expect, expect_close
from ftlab.data import collate
from ftlab.lora import find_target_modules, inject_lora
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.train import (BatchLoader, Checkpoint, EarlyStopping, Trainer, accumulate_gradients,
                         clip_and_step, count_targets, lr_factor, make_scheduler,
                         restore_training_state, target_loss_sum)
from ftlab.train.checkpoint import rng_state, trainable_weights

pytestmark = pytest.mark.m4

PAD = 0


def _lora_model(dropout=0.0, seed=0):
    model = tiny_model("llama", seed=seed)
    torch.manual_seed(seed)
    inject_lora(model, find_target_modules(model), r=4, alpha=8, dropout=dropout)
    for layer in model.modules():  # B = 0 at init makes the first gradients of A vanish
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B, std=0.02)
    return model.train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- M4.1 -------------------------------------------------------------------------------

def _transformers_factors(total, warmup, floor):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=floor)
    return [sched.lr_lambdas[0](s) for s in range(total + 1)]


@pytest.mark.parametrize("total,warmup,floor", [(20, 5, 0.1), (12, 0, 0.0), (7, 3, 0.5),
                                                (100, 10, 0.1)])
def test_m4_1_schedule_equals_transformers(total, warmup, floor):
    ours = [lr_factor(s, total, warmup, floor) for s in range(total + 1)]
    want = _transformers_factors(total, warmup, floor)
    if warmup:
        expect(math.isclose(ours[warmup], 1.0) and math.isclose(ours[warmup - 1],
                                                                (warmup - 1) / warmup),
               task="M4.1", what=f"factor at steps {warmup - 1} and {warmup} (warm-up {warmup})",
               expected=f"{(warmup - 1) / warmup:.4f} then 1.0",
               got=f"{ours[warmup - 1]:.4f} then {ours[warmup]:.4f}",
               cause="off-by-one at the warm-up end: step s of warm-up has factor s / warmup, "
                     "so step 0 is 0 and the peak comes exactly at step == warmup_steps")
    bad = [s for s in range(total + 1) if not math.isclose(ours[s], want[s], abs_tol=1e-12)]
    expect(not bad, task="M4.1", what=f"factors for steps 0..{total} vs transformers' "
           "get_cosine_with_min_lr_schedule_with_warmup",
           expected=[round(want[s], 5) for s in bad[:4]], got=[round(ours[s], 5) for s in bad[:4]],
           cause=f"first difference at step {bad[0] if bad else None}; decay progress is "
                 "(step - warmup) / (total - warmup) and the cosine runs from 1 down to "
                 "min_lr_ratio: floor + (1 - floor) * 0.5 * (1 + cos(pi * progress))")


def test_m4_1_stays_at_the_floor_after_the_last_step():
    after = [lr_factor(s, 20, 2, 0.1) for s in range(20, 60)]
    expect(all(math.isclose(f, 0.1) for f in after), task="M4.1",
           what="factors for steps 20..59 of a 20-step schedule with floor 0.1",
           expected="0.1 every step", got=f"min {min(after):.4f}, max {max(after):.4f}",
           cause="decay past the floor: clamp the progress at 1, or the cosine comes back up "
                 "(or dips below the floor) when training runs past total_steps")


# -- M4.2 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uneven():
    """Four examples of very unequal trained-token counts."""
    examples = tiny_examples(4, seed=3, lengths=(6, 60))
    examples.sort(key=lambda e: len(e["input_ids"]))
    return [examples[0], examples[3], examples[1], examples[2]]


@pytest.mark.parametrize("micro", [2, 1])
def test_m4_2_accumulation_equals_one_big_batch(uneven, micro):
    counts = [count_targets(collate([e], PAD)) for e in uneven]
    model = _lora_model()
    whole = accumulate_gradients(model, [collate(uneven, PAD)])
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    parts = [collate(uneven[i:i + micro], PAD) for i in range(0, 4, micro)]
    got = accumulate_gradients(model, parts)
    cause = (f"averaging micro-batch means: with trained tokens per example {counts}, each "
             "micro-batch must contribute its loss SUM divided by the trained tokens of the "
             "whole step, so every token weighs the same as in one big batch")
    expect(math.isclose(got.loss, whole.loss, rel_tol=1e-5) and got.targets == whole.targets,
           task="M4.2", what=f"step loss and trained tokens, {4 // micro} micro-batches of {micro}",
           expected=f"{whole.loss:.6f} over {whole.targets} tokens",
           got=f"{got.loss:.6f} over {got.targets} tokens", cause=cause)
    for name, grad in _grads(model).items():
        expect_close(grad, want[name], task="M4.2", what=f"gradient of {name}", cause=cause,
                     atol=1e-6, rtol=1e-4)


def test_m4_2_loss_is_the_token_mean(uneven):
    model = _lora_model()
    batch = collate(uneven, PAD)
    with torch.no_grad():
        want = float(target_loss_sum(model, batch)) / count_targets(batch)
    got = accumulate_gradients(model, [collate(uneven[:1], PAD), collate(uneven[1:], PAD)])
    expect(math.isclose(got.loss, want, rel_tol=1e-5), task="M4.2",
           what="reported step loss", expected=f"{want:.6f} (sum over trained tokens / count)",
           got=f"{got.loss:.6f}",
           cause="return the sum of the parts you backpropagated: the token-weighted mean")
    expect(all(p.grad is not None for p in model.parameters() if p.requires_grad),
           task="M4.2", what="gradients after accumulation", expected="on every adapter",
           got="missing", cause="call backward() on each micro-batch's part of the loss")


# -- M4.3 -------------------------------------------------------------------------------

def _one_param(grad):
    param = torch.nn.Parameter(torch.zeros(len(grad)))
    param.grad = torch.tensor(grad)
    return param


def test_m4_3_clips_before_the_step_and_reports_the_pre_clip_norm():
    param = _one_param([6.0, 8.0])  # norm 10
    opt = torch.optim.SGD([param], lr=1.0)
    out = clip_and_step(opt, [param], max_grad_norm=1.0, loss=1.0)
    expect(out.stepped and math.isclose(out.grad_norm, 10.0, rel_tol=1e-6), task="M4.3",
           what="outcome for gradient (6, 8) with max_grad_norm 1",
           expected="stepped, grad_norm 10.0 (before clipping)",
           got=f"stepped={out.stepped}, grad_norm={out.grad_norm}",
           cause="report the norm clip_grad_norm_ returns: the norm before clipping, the one that "
                 "tells you how large the gradients really were")
    expect_close(param.detach(), torch.tensor([-0.6, -0.8]), task="M4.3",
                 what="parameter after one SGD step (lr 1) from 0",
                 cause="clipping after step(): the update must use the clipped gradient "
                       "(norm 1), so clip first, then optimizer.step()", atol=1e-6)
    expect(param.grad is None or not param.grad.any(), task="M4.3",
           what="gradient after the step", expected="zeroed", got=param.grad,
           cause="zero the gradients after stepping, or the next step adds onto them")


@pytest.mark.parametrize("loss,grad", [(math.nan, [1.0, 1.0]), (math.inf, [1.0, 1.0]),
                                       (1.0, [math.inf, 1.0])])
def test_m4_3_non_finite_skips_the_step(loss, grad):
    param = _one_param(grad)
    opt = torch.optim.AdamW([param], lr=0.1)
    out = clip_and_step(opt, [param], max_grad_norm=1.0, loss=loss)
    expect(not out.stepped and not param.detach().any() and not opt.state,
           task="M4.3", what=f"step with loss {loss} and gradient {grad}",
           expected="skipped: parameter and optimizer state untouched",
           got=f"stepped={out.stepped}, parameter {param.detach().tolist()}, "
               f"optimizer state {'set' if opt.state else 'empty'}",
           cause="a non-finite loss or gradient norm must skip optimizer.step() — one nan "
                 "update poisons every weight and Adam's moments for good")
    expect(param.grad is None or not param.grad.any(), task="M4.3",
           what="gradient after a skipped step", expected="zeroed", got=param.grad,
           cause="zero the gradients of a skipped step too, or they leak into the next one")


# -- M4.4 -------------------------------------------------------------------------------

def _objects(examples, dropout=0.1):
    model = _lora_model(dropout=dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = make_scheduler(opt, 10, 0.2, 0.1)
    loader = BatchLoader(examples, 2, PAD, seed=1)
    return model, params, opt, sched, loader


def _train_steps(model, params, opt, sched, loader, n):
    for _ in range(n):
        acc = accumulate_gradients(model, [loader.next()])
        clip_and_step(opt, params, 1.0, acc.loss)
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
    torch.manual_seed(1234)  # a new process starts from some other RNG state
    returned = restore_training_state(checkpoint, fresh[0], fresh[2], fresh[3], fresh[4])
    after_restore = torch.rand(4)
    torch.set_rng_state(checkpoint.state["rng"]["torch"])
    return original, fresh, checkpoint, returned, (after_restore, torch.rand(4))


def test_m4_4_restores_weights_and_optimizer(resumed):
    original, fresh, checkpoint, returned, _ = resumed
    for (name, p), q in zip(original[0].named_parameters(), fresh[0].parameters()):
        if p.requires_grad:
            expect_close(q.detach(), p.detach(), task="M4.4", what=f"restored {name}",
                         cause="copy every tensor of checkpoint.weights into the parameter of "
                               "the same name", atol=0, rtol=0)
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
    expect(returned == checkpoint.state["trainer"], task="M4.4", what="returned value",
           expected=checkpoint.state["trainer"], got=returned,
           cause="return checkpoint.state['trainer'] (the step counter and friends)")


def test_m4_4_restores_rng_and_data_position(resumed):
    original, fresh, checkpoint, _, (after_restore, want_rng) = resumed
    expect(torch.equal(after_restore, want_rng), task="M4.4",
           what="torch.rand(4) right after restoring", expected=want_rng.tolist(),
           got=after_restore.tolist(),
           cause="RNG not restored: dropout masks then differ from the uninterrupted run and "
                 "the resumed run diverges; call set_rng_state(checkpoint.state['rng'])")
    want, got = original[4].state_dict(), fresh[4].state_dict()
    expect(got == want, task="M4.4", what="data position (epoch, batch index)", expected=want,
           got=got, cause="data position not restored: the resumed run would repeat the first "
                          "batches of the epoch; call loader.load_state_dict(state['data'])")


def test_m4_4_resumed_run_is_bit_identical(tmp_path):
    examples = tiny_examples(24, seed=7)
    cfg = TrainConfig(max_steps=6, batch_size=4, grad_accum=2, lr=1e-2, save_every=100,
                      warmup_ratio=0.2)

    def run(folder, stop_at=None):
        model = _lora_model(dropout=0.1)
        trainer = Trainer(model, examples, cfg, folder, PAD, progress=False)
        if stop_at:
            trainer.callbacks.append(lambda r: r["step"] == stop_at and trainer.request_stop())
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
           cause="something was not restored: weights, optimizer, scheduler, RNG (dropout) or "
                 "data position")


# -- M4.5 -------------------------------------------------------------------------------

def _feed(stopper, val_losses, train_losses=None):
    train_losses = train_losses or [3.0 - 0.3 * i for i in range(len(val_losses))]
    flags = []
    for i, (v, t) in enumerate(zip(val_losses, train_losses)):
        flags.append(stopper.update({"step": 10 * (i + 1), "train_loss": t, "val_loss": v}))
        if stopper.should_stop:
            return flags, i
    return flags, None


def test_m4_5_stops_when_validation_loss_stops_improving():
    stopper = EarlyStopping(patience=2)
    flags, stopped_at = _feed(stopper, [2.0, 1.8, 1.9, 2.1, 2.3, 2.5])
    expect(stopped_at == 3 and flags == [True, True, False, False], task="M4.5",
           what="evaluations with validation loss 2.0, 1.8, 1.9, 2.1, … (training loss falling "
                "all the time), patience 2",
           expected="improvements [True, True, False, False], stop at the 4th evaluation",
           got=f"improvements {flags}, stop at {None if stopped_at is None else stopped_at + 1}",
           cause="stopping on training loss: training loss keeps falling while the model "
                 "overfits; only metrics['val_loss'] decides")
    expect(stopper.best == 1.8 and stopper.bad_evals == 2, task="M4.5",
           what="best and bad_evals", expected="best 1.8, bad_evals 2",
           got=f"best {stopper.best}, bad_evals {stopper.bad_evals}",
           cause="best keeps the lowest validation loss that counted; bad_evals counts the "
                 "evaluations since")


def test_m4_5_min_delta_and_reset():
    stopper = EarlyStopping(patience=3, min_delta=0.1)
    flags, _ = _feed(stopper, [2.0, 1.95, 1.85, 1.8, 1.6])
    expect(flags == [True, False, True, False, True] and stopper.bad_evals == 0, task="M4.5",
           what="validation loss 2.0, 1.95, 1.85, 1.8, 1.6 with min_delta 0.1",
           expected="improvements [True, False, True, False, True], bad_evals 0 at the end",
           got=f"improvements {flags}, bad_evals {stopper.bad_evals}",
           cause="an improvement needs val_loss < best - min_delta (1.95 is not enough after "
                 "2.0), and an improvement resets bad_evals to 0")
