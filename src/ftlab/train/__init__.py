"""Milestone 4 — the training loop.

Tasks (solution regions): M4.1 :func:`lr_factor` (warm-up + cosine to a floor),
M4.2 :func:`accumulate_gradients` (token-normalised accumulation), M4.3
:func:`clip_and_step` (clipping with the pre-clip norm; non-finite steps skipped),
M4.4 :func:`restore_training_state` (resume exactly), M4.5 :meth:`EarlyStopping.update`.
Given: :class:`Trainer` around them, batching with length grouping and packing,
atomic checksummed checkpoints, the metrics log and plots.
"""

from ftlab.train.batching import BatchLoader, pack, pack_rows, real_tokens
from ftlab.train.checkpoint import (Checkpoint, CheckpointWarning, checkpoint_problems,
                                    latest_good_checkpoint, list_checkpoints, load_checkpoint,
                                    restore_training_state, save_checkpoint)
from ftlab.train.early_stopping import EarlyStopping
from ftlab.train.metrics import MetricsLog, flops_per_token, plot_training, read_metrics
from ftlab.train.schedule import Schedule, lr_at, lr_factor, make_scheduler, warmup_steps_for
from ftlab.train.step import (Accumulated, StepOutcome, accumulate_gradients, clip_and_step,
                              count_targets, target_loss_sum)
from ftlab.train.objective import Objective, SFTObjective, validation_loss
from ftlab.train.trainer import Trainer, TrainResult, seed_everything

__all__ = [
    "Accumulated", "BatchLoader", "Checkpoint", "CheckpointWarning", "EarlyStopping",
    "MetricsLog", "Objective", "SFTObjective", "StepOutcome", "TrainResult", "Trainer", "accumulate_gradients",
    "checkpoint_problems", "clip_and_step", "count_targets", "flops_per_token",
    "latest_good_checkpoint", "list_checkpoints", "load_checkpoint", "lr_factor",
    "Schedule", "lr_at", "make_scheduler", "pack", "pack_rows", "plot_training", "read_metrics", "real_tokens",
    "restore_training_state", "save_checkpoint", "seed_everything", "target_loss_sum",
    "validation_loss", "warmup_steps_for",
]
