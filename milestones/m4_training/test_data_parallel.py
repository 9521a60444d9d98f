"""Milestone 4, scaling out — the global token count across data-parallel processes (M4.6).

The checks start 2 CPU processes themselves (gloo, one thread each; about 10 s), so they run
on a laptop: one process takes 1 short example, the other 3 long ones, and each backpropagates
its loss sum divided by what ``global_loss_divisor`` returned through PyTorch's DDP. The
gradients DDP leaves must equal those of one process over the 4 examples. The model is a
tiny random Llama in float64, so "equal" means to 1e-10."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.course.standins import right_pad
from ftlab.course.teaching import expect, explained, teach
from ftlab.models.tiny import tiny_config, tiny_examples
from ftlab.train import count_targets, target_loss_sum
from ftlab.train.distributed import global_loss_divisor, ranks, run_processes, wrap

pytestmark = pytest.mark.m4

PAD = 0
WORLD = 2


def _model() -> torch.nn.Module:
    """A tiny random float64 Llama (seeded) whose q/v projections train."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).double().train()
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(("q_proj.weight", "v_proj.weight")))
    return model


def _shares() -> list[list[dict]]:
    """Process 0: one short example; process 1: three long ones (very unequal counts)."""
    examples = sorted(tiny_examples(4, seed=8, lengths=(6, 60)), key=lambda e: len(e["input_ids"]))
    return [examples[:1], examples[1:]]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_process_of_two(shares: list[list[dict]]) -> dict:
    """Run in each of the 2 processes: this process's count, the learner's divisor, one
    backward through DDP; the gradients DDP leaves (they are the same on both)."""
    batch = right_pad(shares[ranks().rank], PAD)
    local = count_targets(batch)
    try:
        total, divisor = global_loss_divisor(local)
    except NotImplementedError as error:
        return {"not_started": str(error)}
    except Exception as error:  # noqa: BLE001 - reported as the learner's crash
        return {"crash": f"{type(error).__name__}: {error}"}
    model = _model()
    ddp = wrap(model, "ddp")  # kept alive until backward is done: its hooks sync gradients
    (target_loss_sum(ddp, batch) / divisor).backward()
    return {"local": local, "total": total, "divisor": divisor, "grads": _grads(model)}


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    results = run_processes(_one_process_of_two, WORLD, _shares(), timeout_s=300)
    for result in results:
        if "not_started" in result:
            raise NotImplementedError(result["not_started"])
        if "crash" in result:
            raise AssertionError(teach(
                "M4.6", "global_loss_divisor(local_targets) in 2 processes",
                "(total trained tokens of both processes, total / 2)", result["crash"],
                "all-reduce a tensor holding the local count (all_sum([local_targets]) does "
                "it), then divide by the world size (ranks().world_size)"))
    return results


def _divisor_cause(locals_: list[int], got: float) -> str:
    total = sum(locals_)
    causes = {
        float(total): f"DDP averages the processes' gradients (sum / {WORLD}), so dividing by "
                      f"the global count {total} makes every update {WORLD}x too small: the "
                      f"update is off by the world size; divide by total / world_size",
        float(total * WORLD): "multiplied by the world size instead of dividing by it: the "
                              "divisor is total / world_size",
    }
    for i, local in enumerate(locals_):
        causes.setdefault(float(local), (
            f"each process divided by its own trained tokens ({' and '.join(map(str, locals_))}): "
            "DDP then averages the processes' means, so a token of the short share weighs "
            "more than a token of the long one; divide by the global count (all-reduced) / "
            "world_size"))
    return next((c for v, c in causes.items() if math.isclose(got, v)), (
        "the divisor must be (sum of every process's trained tokens) / world_size"))


def test_m4_6_one_process_divides_by_its_own_count():
    with explained(task="M4.6", what="global_loss_divisor(37) in one process (no process group)",
                   expected="(37, 37.0)", cause="with one process ranks().world_size is 1 and "
                   "all_sum returns its input: total = 37 and divisor = 37 / 1"):
        got = global_loss_divisor(37)
    expect(tuple(got) == (37, 37.0), task="M4.6", what="global_loss_divisor(37), one process",
           expected="(37, 37.0)", got=got,
           cause="return (total, total / world_size) with total the all-reduced count")


def test_m4_6_two_processes_count_the_whole_step(two_processes):
    locals_ = [r["local"] for r in two_processes]
    for rank, result in enumerate(two_processes):
        expect(result["total"] == sum(locals_), task="M4.6",
               what=f"total returned in process {rank} (local counts {locals_})",
               expected=f"{sum(locals_)} on every process", got=result["total"],
               cause=("the count was not all-reduced: each process returned its own; "
                      "all_sum([local_targets]) sums it over the processes"
                      if result["total"] == result["local"] else
                      "total is the SUM of every process's trained tokens (all-reduce, sum)"))
        want = sum(locals_) / WORLD
        expect(math.isclose(result["divisor"], want), task="M4.6",
               what=f"divisor in process {rank} (local counts {locals_}, 2 processes)",
               expected=f"{want:g} = {sum(locals_)} / {WORLD}", got=result["divisor"],
               cause=_divisor_cause(locals_, float(result["divisor"])))


def test_m4_6_two_processes_update_like_one_process(two_processes):
    model = _model()
    batch = right_pad([e for share in _shares() for e in share], PAD)
    (target_loss_sum(model, batch) / count_targets(batch)).backward()
    want, got = _grads(model), two_processes[0]["grads"]
    worst = max(float((got[n] - want[n]).abs().max() / want[n].abs().max()) for n in want)
    scale = (sum(float((got[n] * want[n]).sum()) for n in want)
             / sum(float((want[n] * want[n]).sum()) for n in want))
    expect(worst < 1e-10, task="M4.6",
           what="gradients after DDP's average vs one process over all 4 examples",
           expected="equal (float64)",
           got=f"largest relative difference {worst:.3g} (gradients ~{scale:.3g}x the expected)",
           cause=_divisor_cause([r["local"] for r in two_processes],
                                float(two_processes[0]["divisor"])))
