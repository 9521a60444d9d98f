"""The ``train`` section: the training loop (milestone 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftlab.config.fields import Section, hint


class TrainConfig(Section):
    """The training loop (milestone 4). A step is one optimizer update."""

    lr: float = Field(
        3e-3,
        gt=0,
        le=1,
        description="Peak learning rate. Typical LoRA 1e-4..3e-3; full fine-tuning 1e-5..5e-5.",
        json_schema_extra=hint("learning rates above 1 diverge; typical LoRA values are 1e-4..3e-3"),
    )
    epochs: float = Field(8.0, gt=0, description="Passes over the training data; fractions allowed (0.5).")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps; overrides `epochs` when set.",
    )
    batch_size: int = Field(8, ge=1, description=(
        "Examples per micro-batch, over all processes when several train together (each "
        "takes batch_size / processes; a multiple of the process count)."))
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (effective batch = batch_size x grad_accum).",
    )
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Fraction of total steps with linear warm-up from 0 to `lr`. Typical 0.03-0.1.",
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Every decay ends at lr x min_lr_ratio (the floor).",
    )
    schedule: Literal["cosine", "linear", "wsd", "constant"] = Field(
        "cosine",
        description="Shape after warm-up (M4.7): cosine or linear decay to the floor; wsd holds the "
        "peak, then decays linearly over the last decay_ratio of the steps; constant.",
    )
    warmup_start: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Warm-up starts at lr x warmup_start (0: from zero, as transformers; continued "
        "pre-training re-warms from 0.1).",
    )
    decay_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="wsd: fraction of the steps in the final decay (at most what warm-up leaves).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay. Typical 0-0.1.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this value.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation-loss evaluations.")
    save_every: int = Field(100, ge=1, description="Optimizer steps between checkpoints.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement; unset disables early stopping.",
    )
    early_stopping_min_delta: float = Field(
        0.0,
        ge=0,
        description="Smallest drop in validation loss (nats) that counts as an improvement.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together to waste less padding.",
    )
    packing: bool = Field(False, description="Concatenate short examples into full-length rows.")
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw",
        description="'adamw' (torch) or 'adamw8bit' (bitsandbytes 8-bit states, GPU memory saver).",
    )
    seed: int = Field(0, ge=0, description="Seed of adapter init, dropout and batch order.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description=("With several processes (torchrun, accelerate launch, ftlab run --nproc): "
                     "ddp keeps the whole model in each and averages gradients; fsdp (FSDP2) "
                     "shards parameters, gradients and optimizer state over them; auto is fsdp "
                     "when accelerate launch is configured for FSDP, else ddp. Ignored alone."),
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description=("Training compute precision: float32, or bfloat16 autocast (weights, "
                     "gradients and optimizer stay float32). auto: bf16 on GPUs that support "
                     "it; on CPUs with native bf16 (AVX512-BF16/AMX) whichever of the two a "
                     "measured step finds faster (bf16 only when >= 1.3x); float32 elsewhere. "
                     "The choice is logged and kept by checkpoints."),
    )
    compile: bool = Field(
        False,
        description=("torch.compile the model's forward for training. Off by default: on 2 "
                     "CPU cores compiling the embedded model takes ~140 s and saves ~25% per "
                     "step, so it pays only after thousands of steps."),
    )
    max_skipped_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Training stops with an error once more than this share of the planned steps "
        "was skipped for a non-finite loss or gradient norm (usually a learning rate too high, or "
        "broken data); 1 never stops.",
    )

    @model_validator(mode="after")
    def _schedule_fits_the_run(self) -> TrainConfig:
        """wsd's warm-up and final decay must fit in the run together."""
        if self.schedule == "wsd" and self.warmup_ratio + self.decay_ratio > 1:
            raise ValueError(f"warmup_ratio {self.warmup_ratio:g} + decay_ratio "
                             f"{self.decay_ratio:g} > 1: wsd's warm-up and final decay must fit "
                             "in the run together (the stable phase is what they leave)")
        return self
