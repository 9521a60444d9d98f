"""What data parallelism costs and buys (given): bytes moved per step by each engine, and a
short LoRA run of the embedded model that every process of a group can call (notebook 07,
``benchmarks/bench_data_parallel.py``)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ftlab.config import DataConfig, TrainConfig
from ftlab.train.distributed import ranks


@dataclass(frozen=True)
class Communication:
    """Bytes one process sends per optimizer step under each engine, for a model with
    ``trainable`` of ``total`` parameters, ``world`` processes, ``bytes_per_value`` per
    value (4: float32 gradients and weights).

    Ring algorithms (what NCCL and gloo use for large tensors): an all-reduce of ``S``
    bytes sends ``2 (W-1)/W · S`` per process; a reduce-scatter or an all-gather
    ``(W-1)/W · S``. DDP all-reduces the trainable gradients once per step (accumulation
    micro-steps do not sync). FSDP2 (``reshard_after_forward``, its default) all-gathers
    every parameter — frozen ones too — for the forward and again for the backward of each
    micro-batch, and reduce-scatters the trainable gradients once per step."""

    trainable: int
    total: int
    world: int
    bytes_per_value: int = 4
    micro_batches: int = 1

    @property
    def ddp(self) -> float:
        return 2 * (self.world - 1) / self.world * self.trainable * self.bytes_per_value

    @property
    def fsdp(self) -> float:
        share = (self.world - 1) / self.world * self.bytes_per_value
        return share * (2 * self.total * self.micro_batches + self.trainable)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of ``model`` (tied weights counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


CAPSTONE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def capstone_lora(model: nn.Module) -> nn.Module:
    """``model`` with the capstone SFT stage's adapters: LoRA r 16, alpha 32, no dropout,
    on the attention projections (``configs/capstone.yaml``); only they train."""
    from ftlab.lora import inject_lora

    targets = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.endswith(CAPSTONE_TARGETS)]
    return inject_lora(model, targets, r=16, alpha=32, dropout=0.0)


def embedded_lora_run(steps: int = 10, batch_size: int = 8, grad_accum: int = 1,
                      lr: float = 1e-3, seed: int = 0, dtype: torch.dtype = torch.float32,
                      run_dir: str | None = None) -> dict:
    """Train LoRA (r 16 on the attention projections, no dropout) on the embedded model for
    ``steps`` on the capstone's SFT data with the :class:`~ftlab.train.Trainer`, alone or as
    one of several processes (then every process calls it; ``batch_size`` is the
    micro-batch over all of them). ``dtype`` float64 makes runs with different process
    counts comparable to 1e-12 (float32 rounding, amplified by Adam, reaches ~1e-5).

    Returns ``{"weights", "tokens_per_s", "seconds", "processes"}``: the trained adapter
    weights (rank 0; None elsewhere), the real tokens per second of all processes
    together (the median step's), the training time and the number of processes.
    """
    from transformers.utils import logging

    from ftlab.data.prepare import prepare_sft
    from ftlab.models import load_base_model
    from ftlab.paths import data_dir
    from ftlab.train.checkpoint import trainable_weights
    from ftlab.train.metrics import read_metrics
    from ftlab.train.trainer import Trainer, seed_everything

    logging.disable_progress_bar()  # no "Loading weights" bar from every process
    model, tokenizer = load_base_model(dtype=dtype)
    data = prepare_sft(DataConfig(path=data_dir() / "sft/mixed_style.jsonl", max_length=80,
                                  seed=seed), tokenizer)
    seed_everything(seed)
    capstone_lora(model)
    config = TrainConfig(lr=lr, max_steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                         warmup_ratio=0.0, eval_every=10**6, save_every=10**6, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(run_dir or tmp) / "run"
        trainer = Trainer(model.train(), data.train, config, folder,
                          tokenizer.pad_token_id, progress=False, print_fn=lambda line: None)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        rates = sorted(r["tokens_per_s"] for r in read_metrics(folder / "metrics.jsonl")
                       if r["kind"] == "step") if ranks().is_main else [float("nan")]
    return {"weights": trainable_weights(model) if ranks().is_main else None,
            "tokens_per_s": rates[len(rates) // 2], "seconds": seconds,
            "processes": ranks().world_size}


REAL_MODELS = {
    "SmolLM2-135M": ("llama", dict(hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True)),
    "Qwen2.5-0.5B": ("qwen2", dict(hidden_size=896, intermediate_size=4864,
                                   num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True)),
}
"""The architectures of the real models in ``configs/`` (their published ``config.json``
shapes), to count parameters offline without their weights."""


def real_model(name: str, lora_r: int = 16) -> nn.Module:
    """:data:`REAL_MODELS` ``name`` on the meta device (shapes, no memory), with LoRA of rank
    ``lora_r`` on every projection, as ``configs/`` trains it: only the adapters train."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftlab.lora import find_target_modules, inject_lora

    kind, shape = REAL_MODELS[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **shape))
        return inject_lora(model, find_target_modules(model), lora_r, 2 * lora_r, 0.0)
