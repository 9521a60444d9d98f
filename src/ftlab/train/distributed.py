"""Data parallelism (given, except M4.6): one process per device, the engine's gradient sync.

A run is launched as N processes (``torchrun --nproc-per-node N``, ``accelerate launch``
or ``ftlab run --nproc N``), each with the environment variables ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_env` joins them into
one process group (gloo on CPU, NCCL on CUDA). Every process then runs the same program:
the :class:`~ftlab.train.Trainer` wraps the model in PyTorch's own engine — DDP (every
process holds the whole model; gradients are averaged over processes during ``backward``)
or FSDP2 (parameters, gradients and optimizer state sharded over processes) — and each
process trains on its own share of every micro-batch (:func:`rank_share`).

What this module adds to the engine is the arithmetic of the loss (M4.6): the engine
*averages* gradients over processes, so each process must scale its loss so that the
average equals the gradient of one process over the whole step. Everything else (who
writes files, what is broadcast) is plumbing around it. With one process (no process
group), every function here is the identity, so the same code runs everywhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ftlab.errors import ConfigError
from ftlab.train.step import Accumulated, count_targets, target_loss_sum

T = TypeVar("T")

TIMEOUT_S = 1800
"""Seconds a process waits for the others at a collective before it fails with an error
(rank 0 alone measures, merges and exports while the others wait). A process that dies is
noticed sooner: the launcher (torchrun, accelerate) stops the others within seconds."""

ENGINES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world_size``. ``is_main``: rank 0, the one
    process that writes files and prints."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks() -> Ranks:
    """This process's :class:`Ranks` (one process when no process group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size())


def launched_world_size() -> int:
    """``WORLD_SIZE`` as the launcher set it (1 when not launched by torchrun/accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(timeout_s: float = TIMEOUT_S) -> Ranks:
    """Join the process group the launcher describes in the environment (see module doc);
    a no-op for one process or when already joined. CUDA processes take GPU ``LOCAL_RANK``
    and NCCL; CPU processes gloo. Raises :class:`ConfigError` when there are more processes
    per machine than GPUs."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local} on this machine has no GPU: {torch.cuda.device_count()} "
                "GPU(s) for more processes; start at most one process per GPU (--nproc)")
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return ranks()


@contextmanager
def joined(timeout_s: float = TIMEOUT_S) -> Iterator[Ranks]:
    """:func:`init_from_env` for the length of a ``with`` block, then leave the process group
    if this block joined it: after a barrier when the block completed (no process leaves
    while another still talks to it), at once when it raised. Leaving explicitly matters:
    a process that exits with its group alive lets interpreter shutdown destroy the
    backend's threads in any order, which can abort a finished run (``terminate called
    without an active exception``, seen under ``accelerate launch``)."""
    already = dist.is_available() and dist.is_initialized()
    here = init_from_env(timeout_s)
    try:
        yield here
        if not already:
            barrier()
    finally:
        if not already and dist.is_initialized():
            dist.destroy_process_group()


def engine_for(setting: str) -> str:
    """The data-parallel engine for ``train.distributed``: ``ddp`` or ``fsdp`` as asked;
    ``auto`` is ``fsdp`` when ``accelerate launch`` was configured for FSDP
    (``ACCELERATE_USE_FSDP``), else ``ddp``."""
    if setting == "auto":
        return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"
    if setting not in ENGINES:
        raise ConfigError(f"train.distributed: {setting!r} is not one of auto, ddp, fsdp")
    return setting


def wrap(model: nn.Module, engine: str) -> nn.Module:
    """``model`` under the engine, for forward and backward: a ``DistributedDataParallel``
    wrapper (``ddp``), or ``model`` itself sharded in place by FSDP2's ``fully_shard``
    (each decoder layer, then the whole; ``fsdp``). Unchanged with one process."""
    if not ranks().distributed:
        return model
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        # buffers (packed 4-bit weights, rotary tables) never change: no broadcast per forward
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "model", None), "layers", None) or []
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def unshard(model: nn.Module) -> None:
    """Gather FSDP2-sharded parameters of ``model`` whole on every process (each module's
    ``unshard()``; a collective: call it on all processes), e.g. to save them after
    training. A no-op for a model FSDP2 did not shard."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 modules are their own)."""
    return getattr(model, "module", model)


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Inside, ``backward`` synchronises gradients over processes only when ``enabled``: the
    micro-batches of an accumulation step but the last need no communication, since only
    the step's total gradient is used. DDP: ``no_sync()``; FSDP2:
    ``set_requires_gradient_sync``."""
    if enabled or not ranks().distributed:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def micro_steps(model: nn.Module, micro_batches: list[T]) -> Iterator[T]:
    """The micro-batches in order; while the loop body handles each one (forward and
    backward), gradients are synchronised for the last one only (:func:`gradient_sync`)."""
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, enabled=i == last):
            yield batch


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all processes (float64; one all-reduce)."""
    if not ranks().distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def global_loss_divisor(local_targets: int) -> tuple[int, float]:
    """M4.6 — what each process divides its micro-batches' loss *sums* by.

    ``local_targets``: trained tokens (:func:`~ftlab.train.step.count_targets`) of this
    process's share of the step, all micro-batches together. Returns ``(total, divisor)``:
    ``total`` the trained tokens of the whole step over all ``W`` processes (an all-reduce
    of the count, :func:`all_sum`), and ``divisor`` = ``total / W``. Why ``/ W``: the engine
    (DDP, FSDP) *averages* the processes' gradients, so a process that backpropagates
    ``loss_sum / (total / W)`` contributes ``W`` times its share, and the average over ``W``
    processes is ``sum over processes of grad(loss_sum) / total``: the gradient of one
    process over the whole step. With one process: ``(local_targets, local_targets)``.

    Returns ``(int, float)``: ``total`` a Python int, the same exact count on every process
    (:func:`all_sum` sums in float64; a float32 tensor loses counts above 2**24), and
    ``divisor`` a Python float (true division: ``13 / 2`` is 6.5). ``W`` is the number of
    processes of the whole run, :func:`ranks`'s ``world_size``, on every machine together —
    not ``LOCAL_WORLD_SIZE`` (this machine's processes) nor a GPU count.

    It is a collective: every process calls it once per step, whatever its count —
    including a process with ``local_targets == 0`` (the placeholder row
    :func:`rank_share` gives a process left without one), which adds 0 to the sum and gets
    the same ``(total, divisor)`` as the others. A process that returns early leaves the
    others waiting in the all-reduce: the run hangs. With no trained token on any process
    the result is ``(0, 0.0)`` on every process (the caller then skips the step).
    """
    ### BEGIN SOLUTION M4.6
    world = ranks().world_size
    total = int(round(all_sum([local_targets])[0]))
    return total, total / world
    ### END SOLUTION


def accumulate_across_ranks(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                            ) -> Accumulated:
    """M4.2 for data-parallel processes: forward and backward this process's micro-batches
    so that, after the engine's gradient average, ``.grad`` on every process is the
    gradient of the step's mean cross-entropy over *all* its trained tokens, on all
    processes (:func:`global_loss_divisor`). Gradients are synchronised once, on the last
    micro-batch (:func:`micro_steps`). The loss reported is that global mean, the same on
    every process; ``nan`` with no trained token anywhere."""
    local = sum(count_targets(mb) for mb in micro_batches)
    total, divisor = global_loss_divisor(local)
    if total == 0:
        return Accumulated(loss=math.nan, targets=0)
    loss_sum = 0.0
    for mb in micro_steps(model, micro_batches):
        part = target_loss_sum(model, mb)
        (part / divisor).backward()
        loss_sum += part.item()
    return Accumulated(loss=all_sum([loss_sum])[0] / total, targets=total)


def rank_share(rows: list[T], rank: int, world_size: int) -> tuple[list[T], bool]:
    """This process's rows of one micro-batch of the global plan: every ``world_size``-th
    row from ``rank`` (rows are sorted by length within a micro-batch under length
    grouping, so the shares are balanced). Returns ``(rows, placeholder)``: when the
    micro-batch has fewer rows than processes, a process without one gets the first row as
    a *placeholder* (``placeholder=True``) that the caller masks so it trains nothing —
    every process must run forward and backward for the engine's gradient sync."""
    mine = rows[rank::world_size]
    return (mine, False) if mine else (rows[:1], True)


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every process (any picklable object)."""
    if not ranks().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def on_main(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 alone and return its result on every process (the others
    wait). For what must happen once: writing files, measuring, merging."""
    return broadcast(work() if ranks().is_main else None)


def gather(value: T) -> list[T]:
    """Every process's ``value``, in rank order, on every process."""
    if not ranks().distributed:
        return [value]
    out: list = [None] * ranks().world_size
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait until every process gets here (no-op with one process)."""
    if ranks().distributed:
        dist.barrier(device_ids=[torch.cuda.current_device()]
                     if dist.get_backend() == "nccl" else None)


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a stop request)."""
    return bool(all_sum([float(flag)])[0] > 0)


def _collective_device() -> torch.device:
    return (torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl" else torch.device("cpu"))


# -- checkpoints of sharded (FSDP2) models -------------------------------------------------
def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (``name -> tensor``, the model's own names) into the parameters of
    ``model`` in place: each FSDP2 process keeps its shard of them (call it on every
    process), a DDP wrapper's module or a plain model gets them whole."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    inner = unwrap(model)
    if any(hasattr(p, "full_tensor") for p in inner.parameters()):
        set_model_state_dict(inner, weights,
                             options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = dict(inner.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state of an FSDP2 model, keyed by parameter name, on rank 0 (an
    empty dict elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def restore_sharded(checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, loader) -> dict:
    """M4.4's :func:`~ftlab.train.checkpoint.restore_training_state` for an FSDP2 model:
    the full weights and optimizer state of ``checkpoint`` sharded onto this process, then
    the scheduler, data position and RNG as there; returns the trainer counters."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_optimizer_state_dict)

    from ftlab.train.checkpoint import set_rng_state

    load_full_weights(model, checkpoint.weights)
    set_optimizer_state_dict(model, optimizer, checkpoint.state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    loader.load_state_dict(checkpoint.state["data"])
    set_rng_state(checkpoint.state["rng"])
    return checkpoint.state["trainer"]


# -- running N processes on one machine (checks, tests, benchmarks) -----------------------
def run_processes(work: Callable[..., T], world_size: int, *args, kwargs: dict | None = None,
                  threads: int = 1, timeout_s: float = 600) -> list[T]:
    """``work(*args, **kwargs)`` in ``world_size`` new CPU processes joined in one gloo
    group, each with ``threads`` torch threads; their return values in rank order. The
    processes fork from a server that imported torch, transformers and ``ftlab.train``
    once (``forkserver``): the first group starts in ~3 s, later ones in ~0.1 s.

    For checks, tests and benchmarks that must run on a laptop: no launcher needed.
    ``work`` must be importable (a module-level function) and its result picklable. An
    exception in any process is raised here as :class:`RuntimeError` with that process's
    traceback (a ``NotImplementedError`` — a course task not done yet — as itself); a process that dies or a group that is still running after ``timeout_s``
    seconds stops them all with an error, never a hang.
    """
    import pickle
    import queue as queues
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # children fork from a server that imported torch once (fast, and fork-safe: the server
    # never ran a parallel region); later calls from this process reuse the server
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "ftlab.train"])
    results = context.Queue()
    processes = [context.Process(target=_process_main, daemon=True,
                                 args=(rank, world_size, port, threads, work, args,
                                       kwargs or {}, results))
                 for rank in range(world_size)]
    for p in processes:
        p.start()
    out: dict[int, T] = {}
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(out) < world_size:
            try:
                rank, ok, value = results.get(timeout=1)
            except queues.Empty:
                dead = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    why = (f"process {dead[0]} died (exit code {processes[dead[0]].exitcode})"
                           if dead else f"still running after {timeout_s:g} s")
                    raise RuntimeError(f"{getattr(work, '__name__', work)} in {world_size} "
                                       f"processes: {why}") from None
                continue
            if ok is None:  # a task stub reached in a process: the same error here
                raise NotImplementedError(value)
            if not ok:  # the root cause may be another process that died: say so first
                time.sleep(2)
                dead = [f"process {r} died (exit code {p.exitcode}); "
                        for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
                raise RuntimeError(f"{getattr(work, '__name__', work)} in {world_size} "
                                   f"processes: {''.join(dead)}process {rank} failed:\n{value}")
            out[rank] = pickle.loads(value)
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]


def _process_main(rank: int, world_size: int, port: int, threads: int, work, args, kwargs,
                  results) -> None:
    import pickle
    import traceback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(threads)
    try:
        init_from_env(timeout_s=300)
        results.put((rank, True, pickle.dumps(work(*args, **kwargs))))  # bytes: no shared memory
    except NotImplementedError as error:  # an unfinished task: the parent raises it as such
        results.put((rank, None, str(error)))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
