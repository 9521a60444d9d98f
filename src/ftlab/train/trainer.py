"""The training loop (given): tasks M4.1–M4.5 wired into a resumable, observable run.

``Trainer(model, train_examples, config, run_dir, pad_id, val_examples).fit()`` trains the
parameters of ``model`` that have ``requires_grad`` (our LoRA or QLoRA adapters, a PEFT
model, or a fully trainable model) with AdamW on the schedule of M4.1, one step of
``grad_accum`` micro-batches at a time (M4.2, M4.3). Every ``eval_every`` steps it measures
the validation loss (token-weighted) and updates early stopping (M4.5); every
``save_every`` steps, at every new best, at the end and when asked to stop it writes a
checkpoint (M4.4). Run directory::

    <run_dir>/metrics.jsonl       step and eval records (ftlab.train.metrics)
    <run_dir>/training.png        loss, learning rate and gradient norm
    <run_dir>/checkpoints/step-NNNNNN/   the newest ``keep_last`` and the best

``fit()`` on a run directory with checkpoints resumes from the newest good one: the result
is bit-identical to a run that was never interrupted. Ctrl-C (SIGINT) or SIGTERM stops at
the end of the current step and writes a checkpoint (``TrainResult.interrupted``); a second
one stops at once (``print_fn`` says from which step a later ``fit()`` resumed). A step with a non-finite loss or gradient norm is skipped and
counted; once more than ``max_skipped_fraction`` of the planned steps are skipped, ``fit()``
raises :class:`~ftlab.errors.TrainingError` naming the likely cause.

Data parallelism: run the same program in N processes (``torchrun``, ``accelerate launch``,
``ftlab run --nproc N``; :mod:`ftlab.train.distributed`). The Trainer then wraps the model
in DDP or FSDP2 (``train.distributed``), each process trains on its share of every
micro-batch (``train.batch_size`` is the micro-batch over all processes), gradients are
synchronised by the engine once per step, and the loss is normalised by the trained tokens
of the whole step (M4.6) — so N processes give the update of one process over the same
batch. Rank 0 alone writes the metrics, plots and checkpoints and shows the progress bar;
every process resumes from them, with any number of processes.

Precision and compilation (``train.precision``, ``train.compile``): forward and backward run
in float32 or under bf16 autocast (:mod:`ftlab.train.precision`; ``auto`` is decided once per
run, printed, and kept by the checkpoints); ``compile`` runs them through ``torch.compile``.
Validation runs in the same precision; the weights, gradients and optimizer stay float32.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ftlab.config import TrainConfig
from ftlab.errors import ConfigError, TrainingError
from ftlab.progress import progress_bar
from ftlab.quant.memory import rss_mb
from ftlab.train.batching import BatchLoader, length_sorted_batches, real_tokens
from ftlab.train import distributed
from ftlab.train.checkpoint import (latest_good_checkpoint, load_checkpoint, prune_checkpoints,
                                    restore_training_state, rng_state, save_checkpoint,
                                    set_rng_state, step_dir_name, trainable_weights)
from ftlab.train.early_stopping import EarlyStopping
from ftlab.train.metrics import (MetricsLog, flops_per_token, matmul_peak_flops,
                                 plot_training)
from ftlab.train.schedule import make_scheduler, schedule_for
from ftlab.train.objective import Objective, SFTObjective
from ftlab.train.precision import Decision, decide, training_context
from ftlab.train.step import clip_and_step

SAME_RUN_KEYS = ("lr", "batch_size", "grad_accum", "warmup_ratio", "min_lr_ratio", "schedule",
                 "warmup_start", "decay_ratio", "weight_decay", "max_grad_norm", "group_by_length",
                 "packing", "optimizer", "seed", "precision")
"""Settings a resumed run must share with its checkpoint to continue the same run (a
checkpoint written before a setting existed counts as having its default)."""


@dataclass(frozen=True)
class TrainResult:
    """How a :meth:`Trainer.fit` call ended."""

    steps: int
    """Optimizer steps done in total (resumed ones included)."""
    total_steps: int
    skipped_steps: int
    """Steps skipped for a non-finite loss or gradient norm."""
    final_loss: float
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    interrupted: bool
    resumed_from: int | None
    checkpoint: Path | None
    """The newest checkpoint written."""
    run_dir: Path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` on ``device`` (the ``real_tokens`` count dropped)."""
    return {k: v.to(device) for k, v in batch.items() if k != "real_tokens"}


class Trainer:
    """Fine-tune ``model`` on tokenized ``train_examples`` (see module doc).

    ``train_examples`` / ``val_examples``: lists of ``{"input_ids", "labels"}`` (from
    :func:`ftlab.data.tokenize_with_labels`). ``max_length`` is the packed row length
    (needed when ``config.packing``). ``callbacks`` are called with every metrics record
    as it is written (live plots, tests). ``progress``: show a tqdm bar. ``objective``
    (default :class:`~ftlab.train.objective.SFTObjective`) decides what a batch is and
    what its loss is; examples are whatever it collates (DPO: pairs).
    """

    def __init__(self, model: nn.Module, train_examples: list[dict], config: TrainConfig,
                 run_dir: Path | str, pad_id: int, val_examples: list[dict] | None = None,
                 max_length: int | None = None, callbacks: list[Callable[[dict], None]] = (),
                 progress: bool = True, objective: Objective | None = None,
                 print_fn: Callable[[str], None] = print) -> None:
        self.model, self.config, self.run_dir = model, config, Path(run_dir)
        self.objective = objective or SFTObjective()
        if config.packing and not self.objective.supports_packing:
            raise ConfigError(f"train.packing: the {self.objective.name} objective does not "
                              "support packing; set packing: false")
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("the model has no trainable parameters: inject adapters "
                              "(ftlab.lora.inject_lora) or unfreeze parameters first")
        self.ranks = distributed.ranks()
        self.engine = distributed.engine_for(config.distributed) if self.ranks.distributed else None
        self.engine_model = distributed.wrap(model, self.engine)  # what forward runs through
        if config.compile:
            self.engine_model = torch.compile(self.engine_model, dynamic=True)
        self.params = [p for p in model.parameters() if p.requires_grad]  # sharded by FSDP2
        self.device = self.params[0].device
        self.loader = BatchLoader(train_examples, config.batch_size, pad_id, config.seed,
                                  config.group_by_length, config.packing, max_length,
                                  self.objective.collate, self.ranks.rank, self.ranks.world_size)
        self.val_batches = [_to(b, self.device) for b in length_sorted_batches(
            val_examples or [], config.batch_size, pad_id, self.objective.collate)]
        micro_per_epoch = len(self.loader)
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * micro_per_epoch / config.grad_accum))
        self.optimizer = self._optimizer()
        self.scheduler = make_scheduler(self.optimizer, schedule_for(
            self.total_steps, config.warmup_ratio, config.min_lr_ratio, config.schedule,
            config.warmup_start, config.decay_ratio))
        self.early = EarlyStopping(config.early_stopping_patience,
                                   config.early_stopping_min_delta)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.print_fn = print_fn if self.ranks.is_main else (lambda line: None)
        self.checkpoints = self.run_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.progress = progress and self.ranks.is_main
        self._stop_requested = False
        self.counters = {"step": 0, "skipped": 0, "best_step": None}
        self.precision: str | None = None  # float32 or bfloat16, once fit() has decided

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adamw8bit":
            if self.device.type != "cuda":
                raise ConfigError("train.optimizer: 'adamw8bit' needs a CUDA GPU (bitsandbytes' "
                                  "8-bit optimizer states); use 'adamw' on CPU")
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        fused = self.device.type in ("cpu", "cuda") and all(
            p.is_floating_point() and not hasattr(p, "full_tensor") for p in self.params)
        return torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=fused or None)

    def request_stop(self) -> None:
        """Stop at the end of the current step and write a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    def checkpoint_config(self) -> dict:
        """What a checkpoint records about the run (``config.json``)."""
        return {"train": self.config.model_dump(mode="json"), "total_steps": self.total_steps,
                "objective": {"name": self.objective.name, **self.objective.settings()},
                "train_examples": len(self.loader.examples),
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "processes": self.ranks.world_size, "engine": self.engine,
                "precision": self.precision}

    # -- resume -----------------------------------------------------------------------
    def _check_same_run(self, saved: dict) -> None:
        ours = self.checkpoint_config()
        before = {k: saved["train"].get(k, TrainConfig.model_fields[k].default)
                  for k in SAME_RUN_KEYS}
        diffs = [f"{k}: {before[k]!r} -> {ours['train'][k]!r}"
                 for k in SAME_RUN_KEYS if before[k] != ours["train"][k]]
        diffs += [f"{k}: {saved.get(k)!r} -> {ours[k]!r}"
                  for k in ("objective", "train_examples", "trainable") if saved.get(k) != ours[k]]
        if (saved.get("engine") == "fsdp") != (self.engine == "fsdp"):
            diffs.append(f"engine: {saved.get('engine') or 'one process'} -> "
                         f"{self.engine or 'one process'} (FSDP checkpoints keep the optimizer "
                         "state by parameter name, the others by position)")
        if diffs:
            raise ConfigError(f"{self.checkpoints}: the checkpoints there belong to a run with "
                              f"other settings ({'; '.join(diffs)}); resuming would not "
                              "continue that run. Use another run_dir, or the same settings.")

    def _resume(self) -> int | None:
        # rank 0 alone sets damaged checkpoints aside; then every process loads the good one
        path = distributed.on_main(lambda: getattr(latest_good_checkpoint(self.checkpoints),
                                                   "path", None))
        if path is None:
            if self.ranks.is_main:
                self.log.truncate_after(0)
            seed_everything(self.config.seed)
            return None
        found = load_checkpoint(path)
        saved = json.loads((found.path / "config.json").read_text())
        self._check_same_run(saved)
        self.precision = saved.get("precision") or "float32"  # the precision it started in
        if self.engine == "fsdp":
            trainer_state = distributed.restore_sharded(found, self.model, self.optimizer,
                                                        self.scheduler, self.loader)
        else:
            trainer_state = restore_training_state(found, self.model, self.optimizer,
                                                   self.scheduler, self.loader)
        per_process = found.state.get("rng_processes")
        if per_process and len(per_process) == self.ranks.world_size:
            set_rng_state(per_process[self.ranks.rank])  # each process's own dropout stream
        if "objective" in found.state:
            self.objective.load_state_dict(found.state["objective"])
        self.counters = {k: trainer_state[k] for k in self.counters}
        self.early.load_state_dict(trainer_state["early_stopping"])
        if self.ranks.is_main:
            self.log.truncate_after(found.step)
        processes = saved.get("processes", 1)
        self.print_fn(f"resuming from checkpoint {found.path.name} (step {found.step} of "
                      f"{self.total_steps}); steps before it are not repeated"
                      + (f"; it was written by {processes} process(es), this run has "
                         f"{self.ranks.world_size}: data order and optimizer state continue "
                         "exactly, dropout draws do not" if processes != self.ranks.world_size
                         else ""))
        return found.step

    # -- checkpoints --------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the current step (no-op when one exists) and prune. With
        several processes every one must call it (the state is gathered); rank 0 writes."""
        step = self.counters["step"]
        path = self.checkpoints / step_dir_name(step)
        if not distributed.on_main(path.exists):
            weights = trainable_weights(self.model)
            optimizer = (distributed.full_optimizer_state(self.model, self.optimizer)
                         if self.engine == "fsdp" else self.optimizer.state_dict())
            rngs = distributed.gather(rng_state())
            if self.ranks.is_main:
                state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                         "rng": rngs[0], "data": self.loader.state_dict(),
                         "trainer": {**self.counters, "early_stopping": self.early.state_dict()}}
                if self.ranks.distributed:
                    state["rng_processes"] = rngs
                if hasattr(self.objective, "state_dict"):  # e.g. GRPO's unfinished round
                    state["objective"] = self.objective.state_dict()
                save_checkpoint(self.checkpoints, weights, state, self.checkpoint_config())
        if self.ranks.is_main:
            best = self.counters["best_step"]
            prune_checkpoints(self.checkpoints, self.config.keep_last,
                              {best} if best is not None else set())
        distributed.barrier()
        return path

    def restore_best(self) -> None:
        """Load the trainable weights of the best-validation checkpoint into the model."""
        best = self.counters["best_step"]
        if best is None:
            raise ConfigError("no validation set was evaluated, so there is no best checkpoint")
        weights = load_checkpoint(self.checkpoints / step_dir_name(best)).weights
        distributed.load_full_weights(self.model, weights)

    # -- the loop -----------------------------------------------------------------------
    @contextmanager
    def _ctrl_c_stops(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        stops = (signal.SIGINT, signal.SIGTERM)

        def handler(signum, frame):
            for sig in stops:  # a second Ctrl-C (or SIGTERM) interrupts at once
                signal.signal(sig, previous[sig])
            self.request_stop()

        previous = {sig: signal.signal(sig, handler) for sig in stops}
        try:
            yield
        finally:
            for sig in stops:
                signal.signal(sig, previous[sig])

    def _emit(self, record: dict) -> None:
        if not self.ranks.is_main:
            return
        self.log.append(record)
        for callback in self.callbacks:
            callback(record)

    def _evaluate(self, train_loss: float) -> None:
        step = self.counters["step"]
        # every process evaluates the whole validation set (FSDP2 needs all of them in the
        # forward); rank 0's figures decide for all, so no last-bit difference can split
        # their early-stopping and checkpoint decisions
        with training_context(self.model, self.device, self.precision):
            figures = self.objective.evaluate(self.model, self.val_batches)
        figures = distributed.broadcast(figures)
        improved = self.early.update({"step": step, "train_loss": train_loss, **figures})
        if improved:
            self.counters["best_step"] = step
        self._emit({"kind": "eval", "step": step, **figures, "best": improved,
                    "bad_evals": self.early.bad_evals})
        if improved:
            self.save()

    def fit(self) -> TrainResult:
        """Train to ``total_steps`` (or early stop / interruption); see the module doc."""
        cfg, self._stop_requested = self.config, False
        resumed_from = self._resume()
        if self.precision is None:  # a new run; a resumed one keeps its checkpoint's
            decision = distributed.broadcast(self._decide_precision())  # rank 0's, for all
            self.precision = decision.precision
            self.print_fn(f"precision: {decision.reason}")
        flops = flops_per_token(self.model)
        compute_dtype = torch.bfloat16 if self.precision == "bfloat16" else self.params[0].dtype
        peak = matmul_peak_flops(self.device.type, compute_dtype)
        self.model.train()
        bar = progress_bar(total=self.total_steps, initial=self.counters["step"], desc="train",
                   unit="step", disable=not self.progress)
        steps_logged = ([r for r in self.log.records() if r["kind"] == "step"]
                        if self.ranks.is_main else [])
        loss = steps_logged[-1]["loss"] if steps_logged else math.nan
        stopped_early = self.early.should_stop  # a resumed run that had already stopped
        with self._ctrl_c_stops():
            while self.counters["step"] < self.total_steps and not stopped_early:
                start = time.perf_counter()
                batches, sources = [], {}
                for _ in range(cfg.grad_accum):
                    batches.append(self.loader.next())
                    for source, count in self.loader.last_sources.items():
                        sources[f"targets/{source}"] = sources.get(f"targets/{source}", 0) + count
                local_tokens = sum(real_tokens(b) for b in batches)  # before _to drops the count
                micro = [_to(b, self.device) for b in batches]
                with training_context(self.model, self.device, self.precision):
                    accumulated = self.objective.accumulate(self.engine_model, micro)
                if accumulated.tokens is not None:  # it trained on batches of its own
                    local_tokens, sources = accumulated.tokens, {}
                outcome = clip_and_step(self.optimizer, self.params, cfg.max_grad_norm,
                                        accumulated.loss)
                lr = self.scheduler.get_last_lr()[0]
                with warnings.catch_warnings():  # a skipped step still advances the schedule
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.counters["step"] += 1
                self.counters["skipped"] += not outcome.stepped
                self._refuse_divergence(outcome.stepped)
                tokens = int(distributed.all_sum([local_tokens])[0])  # over all processes
                seconds = time.perf_counter() - start
                loss, step = accumulated.loss, self.counters["step"]
                self._emit({
                    "kind": "step", "step": step,
                    "epoch": self.loader.epoch + self.loader.position / len(self.loader),
                    "loss": loss, "lr": lr, "grad_norm": outcome.grad_norm,
                    "stepped": outcome.stepped, "tokens": tokens,
                    "targets": accumulated.targets, "tokens_per_s": tokens / seconds,
                    "mfu": flops * tokens / seconds / (peak * self.ranks.world_size),
                    "memory_mb": self._memory_mb(),
                    **sources, **accumulated.metrics})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if self.val_batches and (step % cfg.eval_every == 0 or step == self.total_steps):
                    self._evaluate(loss)
                    stopped_early = self.early.should_stop
                # a stop asked of any process (Ctrl-C, a callback) stops them all here
                self._stop_requested = distributed.any_process(self._stop_requested)
                if (step % cfg.save_every == 0 or step == self.total_steps or stopped_early
                        or self._stop_requested):
                    self.save()
                if stopped_early or self._stop_requested:
                    break
        bar.close()
        if self.ranks.is_main:
            self.plot()
        last = self.counters["step"]
        written = self.checkpoints / step_dir_name(last)
        return TrainResult(
            steps=last, total_steps=self.total_steps, skipped_steps=self.counters["skipped"],
            final_loss=loss, best_val_loss=None if math.isinf(self.early.best) else self.early.best,
            best_step=self.counters["best_step"], stopped_early=stopped_early,
            interrupted=self._stop_requested and not stopped_early and last < self.total_steps,
            resumed_from=resumed_from, checkpoint=written if written.exists() else None,
            run_dir=self.run_dir)

    def _decide_precision(self) -> Decision:
        """``train.precision`` resolved for this run (:func:`ftlab.train.precision.decide`);
        ``auto`` on a CPU with native bf16 times the first micro-batch in both precisions,
        leaving the data position and the RNG as they were; not in data-parallel runs nor for
        objectives whose steps are not repeatable (GRPO), which keep float32."""
        if self.ranks.distributed or not self.objective.repeatable_steps:
            why = ("data-parallel processes would time different numbers of collective steps"
                   if self.ranks.distributed else
                   f"a {self.objective.name} step cannot be run outside training")
            return decide(self.config.precision, self.device, self.model, None, why)
        first: list[dict[str, torch.Tensor]] = []

        def step() -> None:
            if not first:
                position = self.loader.state_dict()
                first.append(_to(self.loader.next(), self.device))
                self.loader.load_state_dict(position)
            self.objective.accumulate(self.model, first)  # one process: no wrapper, no compile

        return decide(self.config.precision, self.device, self.model, step)

    def _refuse_divergence(self, stepped: bool) -> None:
        """Raise :class:`TrainingError` once more than ``max_skipped_fraction`` of the planned
        steps were skipped (non-finite loss or gradient norm): the run cannot recover, and an
        adapter that barely trained must not pass for a result."""
        skipped, limit = self.counters["skipped"], self.config.max_skipped_fraction
        if stepped or skipped <= limit * self.total_steps:
            return
        raise TrainingError(
            f"{skipped} of {self.counters['step']} steps were skipped for a non-finite loss or "
            f"gradient norm, more than train.max_skipped_fraction ({limit:g}) of the "
            f"{self.total_steps} planned. Likely cause: a learning rate too high for this model "
            f"(train.lr {self.config.lr:g}; try 10x lower) or broken data (examples with no "
            f"trained tokens, extreme values). Metrics so far: {self.log.path}")

    def _memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return rss_mb()

    def plot(self) -> Path:
        """Write ``training.png`` from the metrics log; returns its path."""
        path = self.run_dir / "training.png"
        fig = plot_training(self.log.records(), path)
        plt.close(fig)
        return path
