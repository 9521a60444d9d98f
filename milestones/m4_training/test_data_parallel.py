"""Milestone 4, scaling out — the global token count across data-parallel processes (M4.6).

The checks start CPU processes themselves (gloo, one thread each; a few seconds), so they run
on a laptop. Two processes on one machine: one takes 1 short example, the other 3 long ones,
and each backpropagates its loss sum divided by what ``global_loss_divisor`` returned, then
averages the gradients over the processes as DDP does; they must equal those of one process
over the 4 examples (a tiny float64 model, so "equal" means to 1e-10). Then both, and three
processes launched as three machines of one process each (``LOCAL_WORLD_SIZE`` 1), call it
with given counts: odd totals, a process with no trained token (the placeholder row of a
micro-batch with fewer rows than processes), none anywhere, a count beyond float32's 2**24.

Every process must take part in the all-reduce, whatever its count; one that skips it leaves
the others waiting forever in a real run. Here they give up after ``WAIT_S`` seconds (the
processes' own timeout, and the check's sync after each call on a separate process group),
so such a mistake fails with a message instead of hanging."""

from __future__ import annotations

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from ftlab.course.standins import right_pad
from ftlab.course.teaching import expect, explained, teach
from ftlab.train import count_targets, target_loss_sum
from ftlab.train.distributed import global_loss_divisor, run_processes

pytestmark = pytest.mark.m4

PAD = 0
WORLD = 2
WAIT_S = 15
"""Seconds a process waits at a collective (the learner's or the check's) before giving up."""
BIG = 2**24 + 1
"""A count float32 cannot hold: the first integer above 2**24 = 16,777,216."""
COUNTS = {2: [[5, 8], [0, 9]],
          3: [[7, 12, 4], [BIG, 2, 4], [5, 0, 8], [0, 0, 0]]}
"""Per-process trained-token counts each run passes to global_loss_divisor, in order. Two
processes on one machine; three processes as three machines (LOCAL_WORLD_SIZE 1)."""
HANG = ("every process must call the all-reduce, whatever its count — one with no trained "
        "token too (the placeholder row of a micro-batch with fewer rows than processes): a "
        "process that returns early leaves the others waiting in the collective, and a real "
        "run hangs until its 30-minute timeout")
COMMUNICATION = re.compile(r"(?i)gloo|timed? ?out|connection|closed by peer|DistBackendError")


class _TinyLM(torch.nn.Module):
    """A float64 causal-LM stand-in (seeded): logits of each position from its token alone.
    Light on purpose: the processes start without importing a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(96, 8, dtype=torch.float64)
        self.head = torch.nn.Linear(8, 96, dtype=torch.float64)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids))))


def _model() -> torch.nn.Module:
    return _TinyLM().train()


def _shares() -> list[list[dict]]:
    """Process 0: one short example; process 1: three long ones (very unequal counts)."""
    from ftlab.models.tiny import tiny_examples

    examples = sorted(tiny_examples(4, seed=8, lengths=(6, 60)), key=lambda e: len(e["input_ids"]))
    return [examples[:1], examples[1:]]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# -- what runs in each process -------------------------------------------------------------

def _ddp_step(share: list[dict]) -> dict:
    """This process's count, the learner's divisor, one backward, then the engine's gradient
    average; the gradients left (the same on every process). The average is DDP's own
    arithmetic (its default communication: all-reduce the sum, divide by the number of
    processes), done here directly: building a DDP wrapper imports torch's compiler, seconds
    per process."""
    batch = right_pad(share, PAD)
    local = count_targets(batch)
    total, divisor = global_loss_divisor(local)
    model = _model()
    (target_loss_sum(model, batch) / divisor).backward()
    for param in model.parameters():
        dist.all_reduce(param.grad)
        param.grad /= dist.get_world_size()
    return {"local": local, "total": total, "divisor": divisor, "grads": _grads(model)}


def _count_step(local: int) -> dict:
    total, divisor = global_loss_divisor(local)
    return {"local": local, "total": total, "divisor": divisor}


def _in_each_process(steps: list[tuple], env: dict[str, str]) -> list[dict]:
    """Run ``steps`` (("ddp", shares) or ("count", counts), by rank) in order; after each, meet
    the other processes on a separate group and stop unless every one of them got there
    without an error. A record per step: what came back, or ``crash``/``not_started``;
    ``waited``: the others never arrived."""
    os.environ.update(env)
    rank, world = dist.get_rank(), dist.get_world_size()
    # the learner's collectives give up after WAIT_S too (torch's private setter)
    getattr(dist.distributed_c10d, "_set_pg_timeout", lambda *_: None)(timedelta(seconds=WAIT_S))
    sync = dist.new_group(backend="gloo", timeout=timedelta(seconds=WAIT_S))
    records: list[dict] = []
    for kind, per_rank in steps:
        started = time.monotonic()
        try:
            record = (_ddp_step if kind == "ddp" else _count_step)(per_rank[rank])
        except NotImplementedError as error:
            record = {"not_started": str(error)}
        except Exception as error:  # noqa: BLE001 - reported as the learner's crash
            record = {"crash": f"{type(error).__name__}: {str(error)[:300]}"}
        record.update(local=record.get("local", per_rank[rank] if kind == "count" else None),
                      seconds=time.monotonic() - started)
        records.append(record)
        flags: list = [None] * world
        try:
            dist.all_gather_object(flags, not ({"crash", "not_started"} & set(record)),
                                   group=sync)
        except Exception:  # noqa: BLE001 - the others never arrived
            record["waited"] = True
            break
        if not all(flags):
            break
    return records


def _run(world: int, steps: list[tuple], env: dict[str, str]) -> list[list[dict]]:
    what = f"global_loss_divisor in {world} processes"
    try:
        results = run_processes(_in_each_process, world, steps, env, timeout_s=8 * WAIT_S)
    except RuntimeError as error:  # a process that died or hung, not one that raised
        if not re.search(r"still running|died \(exit code", str(error)):
            raise
        raise AssertionError(teach("M4.6", what, f"every process done within {8 * WAIT_S} s",
                                   str(error).splitlines()[0],
                                   "the processes parted ways at a collective (one died in it "
                                   "or never returned): " + HANG)) from None
    for records in results:
        for record in records:
            if "not_started" in record:
                raise NotImplementedError(record["not_started"])
    return results


@pytest.fixture(scope="module")
def both_worlds() -> dict[int, list[list[dict]] | BaseException]:
    """The two- and three-process runs, started together: a learner's process that skips
    the all-reduce makes each run wait WAIT_S, and the two waits overlap instead of adding
    up. Per world, what ``_run`` returned or raised (raised again by the fixture asking)."""
    runs = {WORLD: ([("ddp", _shares())] + [("count", c) for c in COUNTS[WORLD]], {}),
            3: ([("count", c) for c in COUNTS[3]], {"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"})}

    def one(world: int) -> list[list[dict]] | BaseException:
        try:
            return _run(world, *runs[world])
        except (AssertionError, NotImplementedError, RuntimeError) as error:
            return error

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        return dict(zip(runs, pool.map(one, runs)))


def _world(outcomes: dict, world: int) -> list[list[dict]]:
    outcome = outcomes[world]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.fixture(scope="module")
def two_processes(both_worlds) -> list[list[dict]]:
    """Two processes on one machine: the DDP step, then the counts of COUNTS[2]."""
    return _world(both_worlds, WORLD)


@pytest.fixture(scope="module")
def three_processes(both_worlds) -> list[list[dict]]:
    """Three processes launched as three machines of one process each."""
    return _world(both_worlds, 3)


# -- what the parent checks ----------------------------------------------------------------

def _steps_of(results: list[list[dict]]) -> list[list[dict | None]]:
    """Per step, every process's record (None where a process stopped before it)."""
    return [[r[i] if i < len(r) else None for r in results]
            for i in range(max(len(r) for r in results))]


def _ranks_text(ranks_: list[int], records: list[dict]) -> str:
    return " and ".join(f"{r} (local count {records[r]['local']})" for r in ranks_)


def _check_everyone_took_part(results: list[list[dict]], label: str) -> None:
    """The first step where processes parted ways: some returned, others waited or crashed."""
    for records in _steps_of(results):
        if any(r is None for r in records):
            return
        counts = [r["local"] for r in records]
        what = f"global_loss_divisor in {label}, local counts {counts}"
        stuck = [i for i, r in enumerate(records)
                 if "crash" in r and COMMUNICATION.search(r["crash"])]
        done = [i for i, r in enumerate(records) if "crash" not in r]
        if done and (stuck or any(records[i].get("waited") for i in done)):
            others = stuck or [i for i in range(len(records)) if i not in done]
            expect(False, task="M4.6", what=what,
                   expected="every process joins the same all-reduce and returns",
                   got=f"process {_ranks_text(done, records)} returned while process "
                       f"{_ranks_text(others, records)} waited for it in the all-reduce and "
                       f"gave up after {WAIT_S} s here"
                       + (f" ({records[others[0]]['crash'][:120]})" if stuck else ""),
                   cause="a process skipped the collective: " + HANG)
        crashed = sorted((i for i, r in enumerate(records) if "crash" in r),
                         key=lambda i: bool(COMMUNICATION.search(records[i]["crash"])))
        expect(not crashed, task="M4.6", what=what, expected="(total, divisor) on every process",
               got=f"process {crashed[0]}: {records[crashed[0]]['crash']}" if crashed else "",
               cause="all-reduce a count (all_sum([local_targets]) does it, for every process "
                     "whatever its count) and divide by the number of processes of the whole "
                     "run, ranks().world_size; with no trained token anywhere total is 0 and "
                     "divisor 0.0")


def _value(got) -> float:
    try:
        return float(got)
    except (TypeError, ValueError):
        return math.nan


def _total_cause(counts: list[int], got) -> str:
    total = sum(counts)
    if _value(got) == total:
        return (f"total is the number of trained tokens, a Python int (got a "
                f"{type(got).__name__}): all_sum returns floats, convert with int(round(...)); "
                "a tensor's value comes out with .item()")
    causes = {
        float(sum(max(1, c) for c in counts)): "a process with no trained token counted 1: it "
        "must add 0 (it trains nothing), yet still take part in the all-reduce",
        float(max(counts)): "the all-reduce took the maximum: sum the counts (ReduceOp.SUM, "
        "all_sum's default)",
        float(counts[0] * len(counts)): "rank 0's count times the number of processes: the "
        "processes' counts differ, add them (all-reduce with sum)",
        float(torch.tensor(counts, dtype=torch.float32).sum()): "the count lost precision: "
        "float32 holds integers exactly only up to 2**24 = 16,777,216, and a step of many "
        "processes counts more; all-reduce int64 or float64 (all_sum uses float64)",
    }
    for local in counts:
        causes.setdefault(float(local), "the count was not all-reduced: each process returned "
                          "its own; all_sum([local_targets]) sums it over the processes")
    causes.setdefault(total / len(counts), "the divisor came back where total goes: the pair "
                      "is (total, divisor), in that order")
    return next((c for v, c in causes.items() if _value(got) == v),
                "total is the SUM of every process's trained tokens (all-reduce, sum), the same "
                "on every process")


def _divisor_cause(counts: list[int], got, world: int, local_world: int) -> str:
    total = sum(counts)
    if math.isclose(_value(got), total / world) and type(got) is not float:
        return (f"the divisor is a Python float (got a {type(got).__name__}): total / "
                "world_size with true division — // and round() give an int, a tensor's value "
                "comes out with .item()")
    if total == 0:
        return ("with no trained token on any process, total is 0 and the divisor 0.0 "
                "(0 / world_size, no special case): the caller sees total 0 and skips the step")
    per_machine = (f"divided by the processes on this machine (LOCAL_WORLD_SIZE, "
                   f"{local_world} here: {world} machines of one process each), not by every "
                   f"process of the run: DDP averages over all {world}, so divide by "
                   "ranks().world_size")
    causes = {
        float(total): per_machine if local_world != world else (
            f"DDP averages the processes' gradients (sum / {world}), so dividing by "
            f"the global count {total} makes every update {world}x too small: the "
            f"update is off by the world size; divide by total / world_size"),
        float(total * world): "multiplied by the world size instead of dividing by it: the "
                              "divisor is total / world_size",
        float(total // world): f"integer division: total // world_size drops the fraction "
                               f"({total} / {world} = {total / world:g}); use /",
        float(round(total / world)): f"the divisor was rounded: {total} / {world} = "
                                     f"{total / world:g}, keep the fraction",
    }
    if world != 2:
        causes.setdefault(total / 2, f"divided by 2 whatever the number of processes ({world} "
                                     "here): divide by ranks().world_size")
    if local_world != world:
        causes.setdefault(total / local_world, per_machine)
    for local in counts:
        causes.setdefault(float(local), (
            f"each process divided by its own trained tokens ({' and '.join(map(str, counts))}): "
            "DDP then averages the processes' means, so a token of the short share weighs "
            "more than a token of the long one; divide by the global count (all-reduced) / "
            "world_size"))
    return next((c for v, c in causes.items() if math.isclose(_value(got), v)), (
        "the divisor must be (sum of every process's trained tokens) / world_size"))


def _check_counts(results: list[list[dict]], world: int, local_world: int, label: str) -> None:
    _check_everyone_took_part(results, label)
    for records in _steps_of(results):
        if any(r is None for r in records):
            continue
        counts = [r["local"] for r in records]
        total = sum(counts)
        for rank, r in enumerate(records):
            got = r["total"]
            expect(type(got) is int and got == total, task="M4.6",
                   what=f"total in process {rank} of {label}, local counts {counts}",
                   expected=f"{total} (an int) on every process",
                   got=f"{got!r} ({type(got).__name__})", cause=_total_cause(counts, got))
        for rank, r in enumerate(records):
            got, want = r["divisor"], total / world
            expect(type(got) is float and math.isclose(got, want, rel_tol=1e-12, abs_tol=0),
                   task="M4.6", what=f"divisor in process {rank} of {label}, local counts "
                   f"{counts}", expected=f"{want!r} = {total} / {world} (a float)",
                   got=f"{got!r} ({type(got).__name__})",
                   cause=_divisor_cause(counts, got, world, local_world))


# -- the checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("local", [37, 0, BIG])
def test_m4_6_one_process_divides_by_its_own_count(local):
    with explained(task="M4.6", what=f"global_loss_divisor({local}) in one process (no process "
                   "group)", expected=f"({local}, {float(local)!r})",
                   cause="with one process ranks().world_size is 1 and all_sum returns its "
                   f"input: total = {local} and divisor = {local} / 1"):
        got = global_loss_divisor(local)
    expect(isinstance(got, tuple) and len(got) == 2, task="M4.6",
           what=f"global_loss_divisor({local}), one process", expected="a pair (total, divisor)",
           got=repr(got), cause="return (total, total / world_size)")
    total, divisor = got
    expect(type(total) is int and type(divisor) is float and (total, divisor) == (local, local),
           task="M4.6", what=f"global_loss_divisor({local}), one process",
           expected=f"({local}, {float(local)!r}): an int and a float",
           got=f"({total!r}, {divisor!r}): {type(total).__name__} and {type(divisor).__name__}",
           cause=(_total_cause([local], total) if type(total) is not int or total != local else
                  _divisor_cause([local], divisor, 1, 1)))


def test_m4_6_every_process_takes_part_in_the_all_reduce(two_processes, three_processes):
    _check_everyone_took_part(two_processes, "2 processes")
    _check_everyone_took_part(three_processes, "3 processes on 3 machines")


def test_m4_6_two_processes_count_the_whole_step(two_processes):
    _check_everyone_took_part(two_processes, "2 processes")
    locals_ = [r[0]["local"] for r in two_processes]
    for rank, records in enumerate(two_processes):
        result = records[0]
        expect(result["total"] == sum(locals_), task="M4.6",
               what=f"total returned in process {rank} (local counts {locals_})",
               expected=f"{sum(locals_)} on every process", got=result["total"],
               cause=_total_cause(locals_, result["total"]))
        want = sum(locals_) / WORLD
        expect(math.isclose(result["divisor"], want), task="M4.6",
               what=f"divisor in process {rank} (local counts {locals_}, 2 processes)",
               expected=f"{want:g} = {sum(locals_)} / {WORLD}", got=result["divisor"],
               cause=_divisor_cause(locals_, float(result["divisor"]), WORLD, WORLD))
    _check_counts([records[1:] for records in two_processes], WORLD, WORLD, "2 processes")


def test_m4_6_three_machines_count_every_process(three_processes):
    _check_counts(three_processes, 3, 1, "3 processes on 3 machines (LOCAL_WORLD_SIZE 1)")


def test_m4_6_two_processes_update_like_one_process(two_processes):
    _check_everyone_took_part(two_processes, "2 processes")
    model = _model()
    batch = right_pad([e for share in _shares() for e in share], PAD)
    (target_loss_sum(model, batch) / count_targets(batch)).backward()
    want, got = _grads(model), two_processes[0][0]["grads"]
    worst = max(float((got[n] - want[n]).abs().max() / want[n].abs().max()) for n in want)
    scale = (sum(float((got[n] * want[n]).sum()) for n in want)
             / sum(float((want[n] * want[n]).sum()) for n in want))
    expect(worst < 1e-10, task="M4.6",
           what="gradients after DDP's average vs one process over all 4 examples",
           expected="equal (float64)",
           got=f"largest relative difference {worst:.3g} (gradients ~{scale:.3g}x the expected)",
           cause=_divisor_cause([r[0]["local"] for r in two_processes],
                                float(two_processes[0][0]["divisor"]), WORLD, WORLD))
