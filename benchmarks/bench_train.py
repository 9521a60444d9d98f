"""Benchmark: the training loop, ftlab's ``Trainer`` against TRL's ``SFTTrainer``, same setup.

What is measured
----------------
LoRA supervised fine-tuning of the embedded 4.6M-parameter Llama
(``ftlab.models.load_base_model``) — or, with ``--model large``, of the 51.6M-parameter Llama
of ``bench_lora_step.py`` (random init from the seed, equal in every worker; the embedded
tokenizer, so the same data) — in float32 (or ``--precision bfloat16``) on the CPU, by two
training loops:

* **ours**: ``ftlab.train.Trainer(model, train_examples, TrainConfig(...), run_dir, pad_id,
  progress=False).fit()`` after ``ftlab.lora.inject_lora(model, find_target_modules(model),
  r, alpha, dropout)``; ``group_by_length=True`` (our default: windows of ``min(n // (4 x batch), 50) x batch``
  shuffled examples sorted by length, batches shuffled).
* **TRL**: ``trl.SFTTrainer(model=<the same base model>, args=SFTConfig(...),
  train_dataset=<datasets.Dataset with a "messages" column>, processing_class=<tokenizer>,
  peft_config=peft.LoraConfig(..., target_modules=<the same 42 full module names>)).train()``,
  in up to three variants (rows):

  - ``trl``: TRL's defaults for batching (random order, each batch padded to its longest);
  - ``trl_grouped``: ``train_sampling_strategy="group_by_length"`` (transformers 5 replaced the
    boolean ``group_by_length`` by this option): ``LengthGroupedSampler``, shuffled megabatches
    of ``min(n // (4 x batch), 50) x batch`` examples sorted by length, the batch holding the
    longest example first (the same window rule as ours; the batch order differs);
  - ``trl_padding_free``: ``padding_free=True`` (each batch is one row of concatenated examples
    with restarting ``position_ids``, no padding). TRL refuses padding-free without packing
    when ``max_length`` is set ("max_length is not enforced"), so this row passes
    ``max_length=None``; that is equivalent here because no example reaches ``--max-length``
    (checked: the row is marked "not equivalent" otherwise). Before training, the worker checks
    on one batch that the padding-free forward gives the same summed loss as the padded
    forward of the same examples (the block-diagonal attention must really be applied on CPU,
    or examples would silently attend to each other); a failure of this row (exception or
    mismatch) is recorded in the results instead of a measurement.

Same setup for every row: data ``<data_dir>/sft/messages.jsonl`` through
``ftlab.data.prepare_sft(DataConfig(max_length=256, validation_fraction=0.1, seed=0))`` (load,
quality filter, leak-free split, tokens and labels). TRL gets exactly the training
conversations of that split (the same load/filter/split functions, checked to tokenize to
``prepare_sft``'s training examples) as conversational ``"messages"`` with
``assistant_only_loss=True``; the worker checks that TRL's prepared ``input_ids`` and
``labels`` equal ours example by example, so both train the same tokens. LoRA r=16, alpha=32,
dropout 0.05 on all 7 projections of every layer (q/k/v/o, gate/up/down; trainable parameter
and adapter counts are checked equal). AdamW, lr 2e-3, weight decay 0, max grad norm 1.0,
warm-up ratio 0.05 (``ceil(0.05 x steps)`` steps in both) then cosine to 0.1 x lr (TRL:
``lr_scheduler_type="cosine_with_min_lr"``, ``lr_scheduler_kwargs={"min_lr_rate": 0.1}``;
the learning rate of every step is recorded on both sides and the largest difference
reported), batch 8, gradient accumulation 1, ``--steps`` optimizer steps (default 60, about
1.4 epochs of the 340 training examples), seed 0. No evaluation during training. TRL:
``save_strategy="no"``, ``eval_strategy="no"``, ``report_to=[]``, ``logging_steps=1`` (ours
logs every step too), ``disable_tqdm=True`` with the ``PrinterCallback`` that then prints every
log line removed (ours runs with ``progress=False`` and prints nothing), and TRL's own defaults that would change the
computation set to ours: ``gradient_checkpointing=False`` (TRL's default is True),
``bf16=False`` (TRL's default is True) — or, with ``--precision bfloat16``, ``bf16=True``
against our ``train.precision: bfloat16``. TRL's optimizer is its default ``optim``
(``adamw_torch_fused`` with torch >= 2.8, the fused CPU kernel); ours is
``torch.optim.AdamW(fused=True)`` too; both are AdamW with the same hyper-parameters
(recorded). TRL's loss runs through its fused LM head (chunked log-probabilities plus entropy
and top-1 metrics), ours through full logits and ``F.cross_entropy``: each loop as a user gets
it. Ours writes a final checkpoint at the end of ``fit()`` (``save_every`` larger than the
steps still saves the last step) and a ``training.png`` plot: both are outside the timed part
and timed separately (``after_steps_s``, with ``save_s`` and ``plot_s``).

How: time and tokens
--------------------
Every run is a fresh subprocess (this script with ``--worker ROW``), so one trainer cannot
warm caches or allocators for the other; all use ``--threads`` torch threads (default: the
parent's ``torch.get_num_threads()``; recorded by every worker; use no more threads than idle
cores: on a busy machine, OpenMP threads waiting for each other inflate every op by orders of
magnitude and the numbers mean nothing). Rows run ``--repeats`` times
(default 3), interleaved, the order reversed every other repeat (ours, trl, trl_grouped,
trl_padding_free, then backwards, ...). Reported per row: the median over repeats.

* **wall s**: ``time.perf_counter`` from the start of the first training batch's collation
  (ours: first ``BatchLoader.next()`` call, wrapped; TRL: first call of its data collator,
  wrapped) to the end of the last optimizer step (ours: the step record of the last step,
  emitted through a ``Trainer`` callback; TRL: ``on_step_end``/``on_log`` of the last step,
  whichever is later). So it covers data loading, forward, backward, clipping, optimizer and
  scheduler steps and per-step logging of every step, and excludes setup (model loading,
  dataset preparation, trainer construction), TRL's ``train()`` bookkeeping before and after
  the loop, and our final checkpoint and plot (all reported separately).
* **real tokens**: non-padding tokens of the batches each trainer actually consumed, counted
  from the batch tensors themselves: ours from every batch ``BatchLoader.next()`` returned
  (``attention_mask`` sum; cross-checked against the ``tokens`` field of ``metrics.jsonl``),
  TRL from every ``inputs`` its ``training_step`` received (a subclass that records, then calls
  the original): ``attention_mask`` sum, or all tokens of a padding-free row. Counting in
  ``training_step`` rather than the collator matters: the data loader fetches one batch ahead.
  **real tokens/s** = real tokens / wall s, the primary throughput; the **ratio ours / TRL**
  of real tokens/s (> 1: ours faster) is given per TRL row (ratio of the medians). Also
  reported: the same throughput over steps 2..N (first-call costs left out).
* **padding %**: padding tokens / all tokens of the consumed batches; also over exactly one
  full epoch (ours: ``BatchLoader.padding_fraction(0)``; TRL: one untimed pass over its train
  data loader after training).
* **median ms/step**: median of the wall-clock intervals between consecutive step ends.
* **eval loss**: after training, ``ftlab.train.validation_loss(model, batches)`` (token-weighted
  mean cross-entropy over the trained tokens, eval mode, no gradients) on the validation
  examples of the split, sorted by length and collated with ``ftlab.data.collate`` in batches
  of 8, exactly as ``Trainer`` builds its validation batches; for TRL the trained PEFT model
  (``trainer.model``). The same number before training (LoRA B is zero, so it is the base
  model's loss) checks that both see the same validation batches.

Sanity checks recorded: when the run covers at least one epoch, the real tokens of the first
epoch's steps (43 batches of 8 for 340 examples) must equal the training set's total tokens
(ours and TRL); TRL's one-epoch data loader pass must too.

How: time per epoch against data size (ours)
--------------------------------------------
The training set replicated x1, x2, x4 (``--sizes``), one epoch each (``--epoch-fraction`` of
an epoch, scaled back to a whole epoch; default 1), each in a fresh subprocess, same settings
otherwise (``TrainConfig(epochs=fraction)`` instead of ``max_steps``). Reported: steps, real
tokens, wall s of the steps (as above), seconds per epoch, seconds per 1k examples (flat if
time grows linearly with size), ms per step and real tokens/s; plus the time of one
``len(trainer.loader)`` call, which ``fit()`` evaluates on every step (it re-plans epoch 0:
shuffle and sort of all examples), as a diagnostic of per-step cost that grows with the data.
With one full epoch, real tokens must equal replicas x the training set's tokens (checked).

Results go to ``<out>/<name>.json`` and ``<out>/<name>.md`` (``--name``, default ``train``).

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 60] [--repeats 3] [--sizes 1,2,4]
[--out benchmarks/results]``; a smoke run: ``--quick`` (5 steps, 1 repeat, size 1, a quarter
epoch). Ratios, never wall-clock limits, are the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _env import ROOT, environment  # noqa: E402
from _models import DESCRIPTIONS, MODELS, benchmark_model  # noqa: E402

ROWS = ("ours", "trl", "trl_grouped", "trl_padding_free")
ROW_LABELS = {
    "ours": "ftlab Trainer, group_by_length=True",
    "trl": "TRL SFTTrainer, default (random order, pad to longest)",
    "trl_grouped": "TRL SFTTrainer, train_sampling_strategy='group_by_length'",
    "trl_padding_free": "TRL SFTTrainer, padding_free=True",
}
RESULT_MARK = "@@BENCH_TRAIN_RESULT@@ "
IGNORE = -100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- shared setup

def data_config(args):
    from ftlab.config import DataConfig
    from ftlab.paths import data_dir

    path = Path(args.data) if args.data else data_dir() / "sft" / "messages.jsonl"
    return DataConfig(path=path, max_length=args.max_length,
                      validation_fraction=args.validation_fraction, seed=args.seed)


def prepare(args, tokenizer, with_conversations: bool = False) -> dict:
    """Tokenized train/validation examples from ``prepare_sft``; with ``with_conversations``,
    also the raw training conversations of the same split (checked to tokenize identically)."""
    from ftlab.data.prepare import prepare_sft

    cfg = data_config(args)
    prepared = prepare_sft(cfg, tokenizer)
    out = {"train": prepared.train, "validation": prepared.validation, "data_path": str(cfg.path)}
    if with_conversations:
        from ftlab.data import tokenize_with_labels
        from ftlab.data.mixture import load_data
        from ftlab.data.quality import quality_filter
        from ftlab.data.split import train_val_split

        # The same stages prepare_sft chains (dedupe on, the config's defaults).
        examples, _ = load_data(cfg)
        conversations = [e.conversation for e in examples]
        if cfg.dedupe:
            kept, _ = quality_filter(conversations, min_response_chars=cfg.min_response_chars)
        else:
            kept = [c for c in conversations
                    if quality_filter([c], min_response_chars=cfg.min_response_chars)[0]]
        train_c, val_c = train_val_split(kept, cfg.validation_fraction, cfg.seed)
        same = ([tokenize_with_labels(c, tokenizer, cfg.max_length) for c in train_c]
                == prepared.train and len(val_c) == len(prepared.validation))
        if not same:
            raise RuntimeError("the re-derived conversations do not tokenize to prepare_sft's "
                               "examples; the split logic changed, update this benchmark")
        out["train_conversations"] = train_c
    return out


def validation_batches(validation: list[dict], batch_size: int, pad_id: int) -> list[dict]:
    """Exactly how ``Trainer`` builds its validation batches."""
    from ftlab.data.collate import collate

    val = sorted(validation, key=lambda e: len(e["input_ids"]))
    return [collate(val[i:i + batch_size], pad_id) for i in range(0, len(val), batch_size)]


def tokens_of(examples: list[dict]) -> tuple[int, int]:
    """(all tokens, trained tokens after the shift) of tokenized examples."""
    total = sum(len(e["input_ids"]) for e in examples)
    trained = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)
    return total, trained


def batch_stats(batch: dict) -> dict:
    ids = batch["input_ids"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(ids.numel())
    targets = int((batch["labels"][:, 1:] != IGNORE).sum())
    return {"real": real, "total": int(ids.numel()), "targets": targets}


def after_first(consumed: list[dict], step_ends: list[float]) -> float | None:
    """Real tokens/s of steps 2..N (first-step costs such as lazy initialisation left out)."""
    if len(step_ends) < 2:
        return None
    return sum(b["real"] for b in consumed[1:len(step_ends)]) / (step_ends[-1] - step_ends[0])


def step_intervals_ms(ends: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(ends, ends[1:])]


def setup_threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def count_adapters(model) -> int:
    return sum(1 for m in model.modules()
               if type(m).__name__ == "LoRALinear"
               or (type(m).__module__.startswith("peft.tuners.lora")
                   and type(m).__name__ == "Linear"))


# ----------------------------------------------------------------------------- ours worker

def worker_ours(args, replicate: int = 1, epoch_fraction: float | None = None) -> dict:
    import torch

    from ftlab.config import TrainConfig
    from ftlab.lora import find_target_modules, inject_lora
    from ftlab.train import Trainer, validation_loss

    t_setup = time.perf_counter()
    torch.manual_seed(args.seed)
    model, tokenizer = benchmark_model(args.model, args.seed)
    data = prepare(args, tokenizer)
    train = data["train"] * replicate
    targets = find_target_modules(model)
    torch.manual_seed(args.seed)
    inject_lora(model, targets, r=args.rank, alpha=args.alpha, dropout=args.dropout)
    pad_id = tokenizer.pad_token_id
    val_batches = validation_batches(data["validation"], args.batch, pad_id)
    eval_before = validation_loss(model, val_batches)

    epoch_mode = epoch_fraction is not None
    config = TrainConfig(
        lr=args.lr, epochs=epoch_fraction if epoch_mode else 1.0,
        max_steps=None if epoch_mode else args.steps, batch_size=args.batch, grad_accum=1,
        warmup_ratio=args.warmup_ratio, min_lr_ratio=args.min_lr_ratio, weight_decay=0.0,
        max_grad_norm=args.max_grad_norm, eval_every=10**9, save_every=10**9, keep_last=1,
        group_by_length=True, packing=False, optimizer="adamw", seed=args.seed,
        precision=args.precision)

    with tempfile.TemporaryDirectory(prefix="bench_train_ours_") as run_dir:
        step_ends: list[float] = []
        records: list[dict] = []

        def on_record(record: dict) -> None:
            if record["kind"] == "step":
                step_ends.append(time.perf_counter())
                records.append(record)

        trainer = Trainer(model, train, config, run_dir, pad_id, val_examples=None,
                          max_length=args.max_length, callbacks=[on_record], progress=False)
        setup_s = time.perf_counter() - t_setup
        batches_per_epoch = len(trainer.loader)
        t_len = time.perf_counter()
        for _ in range(3):
            len(trainer.loader)
        len_loader_ms = (time.perf_counter() - t_len) / 3 * 1000

        # Instance-level wrappers (ftlab's source is untouched): the first batch's collation
        # starts the clock; every consumed batch is counted from its tensors.
        marks: dict = {"first_batch": None, "save_s": 0.0, "plot_s": 0.0}
        consumed: list[dict] = []
        loader_next = trainer.loader.next

        def counted_next():
            if marks["first_batch"] is None:
                marks["first_batch"] = time.perf_counter()
            batch = loader_next()
            consumed.append(batch_stats(batch))
            return batch

        def timed(name, fn):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    marks[name] += time.perf_counter() - t
            return wrapper

        trainer.loader.next = counted_next
        trainer.save = timed("save_s", trainer.save)
        trainer.plot = timed("plot_s", trainer.plot)

        gc.collect()
        t_call = time.perf_counter()
        result = trainer.fit()
        t_return = time.perf_counter()
        epoch_padding = trainer.loader.padding_fraction(0)

    wall = step_ends[-1] - marks["first_batch"]
    real = sum(b["real"] for b in consumed)
    total = sum(b["total"] for b in consumed)
    eval_after = validation_loss(model, val_batches)
    train_tokens, train_targets = tokens_of(train)
    first_epoch = (sum(b["real"] for b in consumed[:batches_per_epoch])
                   if len(consumed) >= batches_per_epoch else None)
    out = {
        "row": "ours", "replicate": replicate, "epoch_fraction": epoch_fraction,
        "train_examples": len(train), "validation_examples": len(data["validation"]),
        "train_tokens": train_tokens, "train_trained_tokens": train_targets,
        "longest_example": max(len(e["input_ids"]) for e in train),
        "batches_per_epoch": batches_per_epoch, "steps": result.steps,
        "wall_s": wall, "real_tokens": real, "all_tokens": total,
        "trained_targets": sum(b["targets"] for b in consumed),
        "real_tokens_per_s": real / wall,
        "real_tokens_per_s_after_step_1": after_first(consumed, step_ends),
        "padding_fraction": 1 - real / total, "padding_fraction_epoch": epoch_padding,
        "metrics_tokens_match": [r["tokens"] for r in records] == [b["real"] for b in consumed],
        "median_step_ms": statistics.median(step_intervals_ms(step_ends))
        if len(step_ends) > 1 else wall * 1000,
        "step_end_s": [round(t - marks["first_batch"], 4) for t in step_ends],
        "first_epoch_real_tokens": first_epoch,
        "first_epoch_tokens_match": None if first_epoch is None else first_epoch == train_tokens,
        "eval_loss_before": eval_before, "eval_loss": eval_after,
        "train_losses": [r["loss"] for r in records], "lrs": [r["lr"] for r in records],
        "setup_s": setup_s, "train_call_s": t_return - t_call,
        "before_steps_s": marks["first_batch"] - t_call, "after_steps_s": t_return - step_ends[-1],
        "save_s": marks["save_s"], "plot_s": marks["plot_s"],
        "len_loader_ms": len_loader_ms,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapted_modules": count_adapters(model), "optimizer": f"torch.optim.AdamW (fused={trainer.optimizer.defaults.get('fused')})",
    }
    return out


# ----------------------------------------------------------------------------- TRL worker

def _loss_sum(model, batch: dict) -> float:
    """Summed next-token cross-entropy over trained tokens, forwarding every key but labels."""
    import torch
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 ignore_index=IGNORE, reduction="sum"))


def worker_trl(args, row: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ftlab.data.collate import collate
    from ftlab.lora import find_target_modules
    from ftlab.train import validation_loss

    t_setup = time.perf_counter()
    torch.manual_seed(args.seed)
    model, tokenizer = benchmark_model(args.model, args.seed)
    data = prepare(args, tokenizer, with_conversations=True)
    train = data["train"]
    targets = find_target_modules(model)
    longest = max(len(e["input_ids"]) for e in train)
    padding_free = row == "trl_padding_free"
    # TRL refuses padding_free without packing when max_length is set; dropping it is
    # equivalent only when no example would be truncated.
    max_length = None if padding_free else args.max_length
    equivalent = not padding_free or longest < args.max_length

    dataset = Dataset.from_list([{"messages": c} for c in data["train_conversations"]])
    peft_config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                             target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
    output_dir = tempfile.mkdtemp(prefix="bench_train_trl_")  # nothing is saved there
    sft_kwargs = dict(
        output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.lr, weight_decay=0.0,
        max_grad_norm=args.max_grad_norm, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": args.min_lr_ratio}, warmup_steps=args.warmup_ratio,
        seed=args.seed, use_cpu=True, bf16=args.precision == "bfloat16", fp16=False,
        gradient_checkpointing=False,
        eval_strategy="no", save_strategy="no", logging_strategy="steps", logging_steps=1,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        assistant_only_loss=True, max_length=max_length, packing=False,
        padding_free=padding_free, dataset_num_proc=None, shuffle_dataset=False,
    )
    if row == "trl_grouped":
        sft_kwargs["train_sampling_strategy"] = "group_by_length"
    sft_args = SFTConfig(**sft_kwargs)

    consumed: list[dict] = []
    lrs: list[float] = []
    marks: dict = {"first_batch": None, "last_log": None}
    step_ends: list[float] = []

    class CountingSFTTrainer(SFTTrainer):
        """Records every batch the loop trains on (and the learning rate it uses)."""

        def training_step(self, model, inputs, *a, **kw):
            consumed.append(batch_stats(inputs))
            lrs.append(float(self.optimizer.param_groups[0]["lr"]))
            return super().training_step(model, inputs, *a, **kw)

    class Clock(TrainerCallback):
        def on_step_end(self, args_, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_log(self, args_, state, control, logs=None, **kw):
            if state.global_step == args.steps:
                marks["last_log"] = time.perf_counter()

    torch.manual_seed(args.seed)
    trainer = CountingSFTTrainer(model=model, args=sft_args, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config,
                                 callbacks=[Clock()])
    # disable_tqdm=True swaps the progress bar for a callback that prints every log line; ours
    # prints nothing (progress=False), so neither does TRL here.
    trainer.remove_callback(PrinterCallback)
    setup_s = time.perf_counter() - t_setup
    tds = trainer.train_dataset
    identical = sum(1 for e, a, b in zip(train, tds["input_ids"], tds["labels"])
                    if e["input_ids"] == a and e["labels"] == b)
    pad_id = tokenizer.pad_token_id
    val_batches = validation_batches(data["validation"], args.batch, pad_id)
    eval_before = validation_loss(trainer.model, val_batches)

    mask_check = None
    if padding_free:
        rows8 = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in train[:args.batch]]
        packed = trainer.data_collator(rows8)
        padded = collate(rows8, pad_id)
        was = trainer.model.training
        trainer.model.eval()
        a, b = _loss_sum(trainer.model, packed), _loss_sum(trainer.model, padded)
        trainer.model.train(was)
        mask_check = {"padding_free_loss_sum": a, "padded_loss_sum": b,
                      "rel_diff": abs(a - b) / abs(b), "ok": abs(a - b) <= 1e-4 * abs(b)}
        if not mask_check["ok"]:
            raise RuntimeError(f"padding-free forward differs from the padded forward on CPU "
                               f"(loss sums {a:.4f} vs {b:.4f}): examples attend to each other")

    collator = trainer.data_collator

    def clocked_collator(features):
        if marks["first_batch"] is None:
            marks["first_batch"] = time.perf_counter()
        return collator(features)

    trainer.data_collator = clocked_collator
    gc.collect()
    t_call = time.perf_counter()
    trainer.train()
    t_return = time.perf_counter()
    end = max(step_ends[-1], marks["last_log"] or 0.0)

    eval_after = validation_loss(trainer.model, val_batches)
    # One untimed pass over exactly one epoch of TRL's train data loader.
    epoch_real = epoch_total = 0
    for batch in trainer.get_train_dataloader():
        s = batch_stats(batch)
        epoch_real += s["real"]
        epoch_total += s["total"]
    batches_per_epoch = len(trainer.get_train_dataloader())
    wall = end - marks["first_batch"]
    real = sum(b["real"] for b in consumed)
    total = sum(b["total"] for b in consumed)
    train_tokens, train_targets = tokens_of(train)
    first_epoch = (sum(b["real"] for b in consumed[:batches_per_epoch])
                   if len(consumed) >= batches_per_epoch else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "row": row, "train_examples": len(train), "trl_rows": len(tds),
        "validation_examples": len(data["validation"]),
        "identical_examples": identical, "train_tokens": train_tokens,
        "train_trained_tokens": train_targets, "longest_example": longest,
        "max_length_passed": max_length, "equivalent_setup": equivalent,
        "padding_free_mask_check": mask_check,
        "batches_per_epoch": batches_per_epoch, "steps": trainer.state.global_step,
        "wall_s": wall, "real_tokens": real, "all_tokens": total,
        "trained_targets": sum(b["targets"] for b in consumed),
        "real_tokens_per_s": real / wall,
        "real_tokens_per_s_after_step_1": after_first(consumed, step_ends[:-1] + [end]),
        "padding_fraction": 1 - real / total,
        "padding_fraction_epoch": 1 - epoch_real / epoch_total,
        "dataloader_epoch_real_tokens": epoch_real,
        "dataloader_epoch_tokens_match": epoch_real == train_tokens,
        "median_step_ms": statistics.median(step_intervals_ms(step_ends))
        if len(step_ends) > 1 else wall * 1000,
        "step_end_s": [round(t - marks["first_batch"], 4) for t in step_ends],
        "first_epoch_real_tokens": first_epoch,
        "first_epoch_tokens_match": None if first_epoch is None else first_epoch == train_tokens,
        "eval_loss_before": eval_before, "eval_loss": eval_after,
        "train_losses": losses, "lrs": lrs,
        "setup_s": setup_s, "train_call_s": t_return - t_call,
        "before_steps_s": marks["first_batch"] - t_call, "after_steps_s": t_return - end,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters()
                                if p.requires_grad),
        "adapted_modules": count_adapters(trainer.model),
        "optimizer": f"{getattr(sft_args.optim, 'value', sft_args.optim)} "
                     f"({type(trainer.optimizer.optimizer).__name__}, "
                     f"fused={trainer.optimizer.optimizer.defaults.get('fused')})",
        "sampling": getattr(sft_args, "train_sampling_strategy", None),
    }


def worker_main(args) -> int:
    import torch

    setup_threads(args)
    quiet_libraries()
    try:
        if args.worker == "ours_epoch":
            out = worker_ours(args, replicate=args.replicate, epoch_fraction=args.epoch_fraction)
        elif args.worker == "ours":
            out = worker_ours(args)
        else:
            out = worker_trl(args, args.worker)
        out["ok"] = True
    except Exception as e:  # recorded in the results, e.g. padding-free not working on CPU
        out = {"row": args.worker, "ok": False, "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-4000:]}
    out["torch_threads"] = torch.get_num_threads()
    print(RESULT_MARK + json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent

SHARED_FLAGS = ("steps", "batch", "lr", "rank", "alpha", "dropout", "warmup_ratio",
                "min_lr_ratio", "max_grad_norm", "max_length", "validation_fraction", "seed",
                "threads", "precision", "model")


def run_worker(args, row: str, replicate: int = 1) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", row]
    for flag in SHARED_FLAGS:
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.data:
        cmd += ["--data", str(args.data)]
    if row == "ours_epoch":
        cmd += ["--replicate", str(replicate), "--epoch-fraction", str(args.epoch_fraction)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        return {"row": row, "ok": False,
                "error": f"worker exited with status {proc.returncode}",
                "traceback": (proc.stderr or proc.stdout)[-4000:]}
    out = json.loads(lines[-1][len(RESULT_MARK):])
    out["process_s"] = time.perf_counter() - t0
    return out


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(row: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return {"row": row, "label": ROW_LABELS[row], "ok": False,
                "error": runs[0].get("error") if runs else "not run",
                "traceback": runs[0].get("traceback") if runs else None}
    keys = ("wall_s", "real_tokens_per_s", "real_tokens_per_s_after_step_1", "median_step_ms", "padding_fraction",
            "padding_fraction_epoch", "eval_loss", "eval_loss_before", "setup_s",
            "train_call_s", "before_steps_s", "after_steps_s", "save_s", "plot_s")
    first = ok[0]
    return {
        "row": row, "label": ROW_LABELS[row], "ok": True, "repeats": len(ok),
        **{k: median_of(ok, k) for k in keys},
        "eval_loss_all": [r["eval_loss"] for r in ok],
        "real_tokens_per_s_all": [r["real_tokens_per_s"] for r in ok],
        "steps": first["steps"], "real_tokens": first["real_tokens"],
        "all_tokens": first["all_tokens"], "trained_targets": first["trained_targets"],
        "train_examples": first["train_examples"], "train_tokens": first["train_tokens"],
        "batches_per_epoch": first["batches_per_epoch"],
        "trainable_params": first["trainable_params"],
        "adapted_modules": first["adapted_modules"], "optimizer": first["optimizer"],
        "torch_threads": first["torch_threads"],
        "first_epoch_tokens_match": [r["first_epoch_tokens_match"] for r in ok],
        "identical_examples": first.get("identical_examples"),
        "dataloader_epoch_tokens_match": first.get("dataloader_epoch_tokens_match"),
        "equivalent_setup": first.get("equivalent_setup", True),
        "padding_free_mask_check": first.get("padding_free_mask_check"),
        "max_length_passed": first.get("max_length_passed"),
        "lrs": first["lrs"], "train_losses": first["train_losses"],
        "failed_repeats": [r.get("error") for r in runs if not r.get("ok")],
        "runs": runs,
    }


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_rate(x):
    return "n/a" if x is None else f"{x:,.0f}"


def markdown(report: dict) -> str:
    env, st = report["environment"], report["settings"]
    rows = report["rows"]
    ours = rows.get("ours", {})
    lines = [
        "# Training loop: ftlab `Trainer` vs TRL `SFTTrainer`",
        "",
        f"{env['date']}, {env['cpu_count']} CPUs ({st['threads']} torch threads in every "
        f"worker), Python {env['python']}, torch {env['torch']}, transformers "
        f"{env['transformers']}, TRL {env['trl']}, PEFT {env['peft']}. "
        f"{DESCRIPTIONS[st.get('model', 'embedded')]}, "
        f"{st['precision']} on CPU (ours: train.precision; TRL: bf16="
        f"{st['precision'] == 'bfloat16'}); {st['train_examples']} training / {st['validation_examples']} "
        f"validation conversations (max_length {st['max_length']}); LoRA r={st['rank']}, "
        f"alpha={st['alpha']:g}, dropout {st['dropout']} on all 7 projections; AdamW lr "
        f"{st['lr']:g}, warm-up {st['warmup_ratio']}, cosine to {st['min_lr_ratio']} x lr, "
        f"clip {st['max_grad_norm']}; batch {st['batch']}, {st['steps']} steps, seed "
        f"{st['seed']}; each run a fresh subprocess, median of {st['repeats']} interleaved "
        "repeats. Produced by `benchmarks/bench_train.py`.",
        "",
        "| trainer | wall s (steps) | median ms/step | real tokens | real tok/s | "
        "ratio ours/this (tok/s) | real tok/s, steps 2..N | padding (consumed) | "
        "padding (1 epoch) | eval loss before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        r = rows.get(row)
        if r is None:
            continue
        if not r["ok"]:
            lines.append(f"| {r['label']} | failed: {r['error'][:160]} | | | | | | | | |")
            continue
        ratio = ("1 (reference)" if row == "ours" else
                 f"**{ours['real_tokens_per_s'] / r['real_tokens_per_s']:.2f}**"
                 if ours.get("ok") else "n/a")
        note = "" if r["equivalent_setup"] else " (NOT equivalent: see notes)"
        lines.append(
            f"| {r['label']}{note} | {r['wall_s']:.2f} | {r['median_step_ms']:.1f} | "
            f"{r['real_tokens']:,} | {r['real_tokens_per_s']:,.0f} | {ratio} | "
            f"{fmt_rate(r['real_tokens_per_s_after_step_1'])} | {pct(r['padding_fraction'])} | {pct(r['padding_fraction_epoch'])} | "
            f"{r['eval_loss_before']:.4f} -> {r['eval_loss']:.4f} |")
    lines += [
        "",
        "Wall s: from the first batch's collation to the end of the last optimizer step "
        "(setup, TRL's `train()` bookkeeping and our final checkpoint/plot excluded; below). "
        "Real tokens: non-padding tokens of the batches each loop trained on, counted from the "
        "batch tensors. Eval loss: `ftlab.train.validation_loss` (token-weighted cross-entropy "
        "over trained tokens) on the same validation batches, after training; 'before' is the "
        "untrained model. Steps 2..N: the same throughput without the first step (first-call "
        "costs).",
        "",
        "| trainer | setup s | train call s | before first batch s | after last step s | "
        "optimizer | trainable params | adapted modules |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in ROWS:
        r = rows.get(row)
        if not r or not r["ok"]:
            continue
        after = f"{r['after_steps_s']:.2f}"
        if row == "ours":
            after += f" (checkpoint {r['save_s']:.2f}, plot {r['plot_s']:.2f})"
        lines.append(
            f"| {row} | {r['setup_s']:.2f} | {r['train_call_s']:.2f} | "
            f"{r['before_steps_s']:.2f} | {after} | {r['optimizer']} | "
            f"{r['trainable_params']:,} | {r['adapted_modules']} |")
    lines += ["", "Checks:", ""]
    for c in report["checks"]:
        lines.append(f"- {c}")
    scaling = report.get("scaling") or []
    if scaling:
        lines += [
            "",
            f"## Time per epoch against data size (ours; {st['epoch_fraction']:g} epoch per "
            "size, scaled to one epoch)",
            "",
            "| replicas | examples | steps | real tokens | s (steps) | s / epoch | "
            "s / 1k examples | ms/step | real tok/s | len(loader) ms (s per epoch) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in scaling:
            if not s.get("ok"):
                lines.append(f"| x{s['replicate']} | failed: {s.get('error', '')[:160]} "
                             "| | | | | | | | |")
                continue
            per_epoch = s["wall_s"] / st["epoch_fraction"]
            lines.append(
                f"| x{s['replicate']} | {s['train_examples']:,} | {s['steps']} | "
                f"{s['real_tokens']:,} | {s['wall_s']:.2f} | {per_epoch:.2f} | "
                f"{per_epoch / s['train_examples'] * 1000:.2f} | {s['median_step_ms']:.1f} | "
                f"{s['real_tokens_per_s']:,.0f} | {s['len_loader_ms']:.2f} "
                f"({s['len_loader_ms'] * s['batches_per_epoch'] / 1000:.2f}) |")
        lines += [
            "",
            "s / 1k examples stays flat when time grows linearly with the data. len(loader) ms: "
            "one `len(trainer.loader)` call, which `fit()` makes on every step for the `epoch` "
            "field of its step record; in brackets, that cost over one epoch of steps (the "
            "loader computes its length once, so it must stay ~0 at any size).",
        ]
    lines.append("")
    return "\n".join(lines)


def build_checks(report: dict) -> list[str]:
    rows, st = report["rows"], report["settings"]
    checks = []
    ok_rows = {k: v for k, v in rows.items() if v["ok"]}
    params = {k: v["trainable_params"] for k, v in ok_rows.items()}
    adapters = {k: v["adapted_modules"] for k, v in ok_rows.items()}
    checks.append(f"Trainable parameters {'equal' if len(set(params.values())) <= 1 else 'DIFFER'}"
                  f" ({', '.join(f'{k} {v:,}' for k, v in params.items())}); adapted modules "
                  f"{', '.join(f'{k} {v}' for k, v in adapters.items())}.")
    for k, v in ok_rows.items():
        if v.get("identical_examples") is not None:
            checks.append(f"{k}: TRL's prepared examples equal ours (input_ids and labels) for "
                          f"{v['identical_examples']}/{v['train_examples']} training examples.")
    if "ours" in ok_rows:
        ref = ok_rows["ours"]["lrs"]
        for k, v in ok_rows.items():
            if k == "ours":
                continue
            n = min(len(ref), len(v["lrs"]))
            diff = max((abs(a - b) for a, b in zip(ref[:n], v["lrs"][:n])), default=math.nan)
            checks.append(f"{k}: learning rate of every step vs ours, largest difference "
                          f"{diff:.2e} over {n} steps.")
    if "ours" in ok_rows:
        match = [r.get("metrics_tokens_match") for r in ok_rows["ours"]["runs"] if r.get("ok")]
        checks.append("ours: the `tokens` of every step record in metrics.jsonl "
                      + ("equal" if all(match) else "DIFFER from")
                      + " the real tokens counted from the consumed batches.")
    before = {k: v["eval_loss_before"] for k, v in ok_rows.items()}
    if before:
        spread = max(before.values()) - min(before.values())
        checks.append(f"Eval loss before training equal on all rows (spread {spread:.2e}): the "
                      "same validation batches.")
    for k, v in ok_rows.items():
        m = v["first_epoch_tokens_match"]
        if all(x is None for x in m):
            txt = (f"fewer steps than one epoch ({v['batches_per_epoch']} batches): one-epoch "
                   "token count not checked on the consumed batches")
        else:
            txt = (f"real tokens of the first epoch's {v['batches_per_epoch']} consumed batches "
                   + ("equal" if all(m) else "DIFFERENT")
                   + f" to the training set's {v['train_tokens']:,}")
        if v.get("dataloader_epoch_tokens_match") is not None:
            txt += ("; TRL's train data loader over one epoch: "
                    + ("equal" if v["dataloader_epoch_tokens_match"] else "DIFFERENT"))
        checks.append(f"{k}: {txt}.")
    for k, v in ok_rows.items():
        if v.get("padding_free_mask_check"):
            mc = v["padding_free_mask_check"]
            checks.append(f"{k}: padding-free vs padded forward of the same 8 examples, loss "
                          f"sums {mc['padding_free_loss_sum']:.4f} vs {mc['padded_loss_sum']:.4f}"
                          f" (relative difference {mc['rel_diff']:.1e}); passed "
                          f"max_length={v['max_length_passed']} (TRL requires it without "
                          f"packing; longest example < {st['max_length']}: "
                          f"{'yes, equivalent' if v['equivalent_setup'] else 'NO'}).")
    for k, v in rows.items():
        if not v["ok"]:
            checks.append(f"{k}: FAILED: {v['error']}")
        elif v["failed_repeats"]:
            checks.append(f"{k}: {len(v['failed_repeats'])} repeat(s) failed: "
                          f"{v['failed_repeats'][0]}")
    losses = {k: v["eval_loss"] for k, v in ok_rows.items()}
    if len(losses) > 1:
        checks.append("Final eval loss range over rows: "
                      f"{min(losses.values()):.4f}-{max(losses.values()):.4f} (same training "
                      "problem; different LoRA init draws, data order and dropout masks).")
    for s in report.get("scaling") or []:
        if s.get("ok") and s.get("first_epoch_tokens_match") is not None:
            checks.append(f"Scaling x{s['replicate']}: real tokens of one epoch "
                          f"{s['first_epoch_real_tokens']:,} "
                          f"{'equal' if s['first_epoch_tokens_match'] else 'DIFFERENT'} to the "
                          f"replicated set's {s['train_tokens']:,}.")
    return checks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60,
                   help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh-subprocess runs per row, interleaved (default: %(default)s)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated rows to run (default: %(default)s)")
    p.add_argument("--sizes", default="1,2,4",
                   help="replication factors of the training set for the time-per-epoch "
                        "part; empty to skip (default: %(default)s)")
    p.add_argument("--epoch-fraction", type=float, default=1.0,
                   help="fraction of an epoch trained per size (default: %(default)s)")
    p.add_argument("--scale-repeats", type=int, default=1,
                   help="runs per size, the median is kept (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every worker (default: the parent's "
                        "torch.get_num_threads())")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="ours: train.precision; TRL: bf16=True for bfloat16")
    p.add_argument("--model", choices=MODELS, default="embedded",
                   help="the model both trainers fine-tune: the embedded base model, or the "
                        "51.6M Llama of bench_lora_step.py (random init; default: %(default)s)")
    p.add_argument("--name", default="train",
                   help="results file name: <out>/<name>.json and <name>.md")
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None,
                   help="SFT data file (default: <data_dir>/sft/messages.jsonl)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 steps, 1 repeat, size 1, a quarter epoch")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder for train.json and train.md (default: %(default)s)")
    p.add_argument("--worker", choices=(*ROWS, "ours_epoch"), help=argparse.SUPPRESS)
    p.add_argument("--replicate", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.sizes, args.epoch_fraction = 5, 1, "1", 0.25
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    start = time.perf_counter()
    rows = [r for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {ROWS}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    log("importing torch / transformers / trl / peft ...")
    import torch

    if not args.threads:
        args.threads = torch.get_num_threads()
    env = environment("transformers", "trl", "peft")
    env["torch_threads"] = args.threads

    runs: dict[str, list[dict]] = {r: [] for r in rows}
    for k in range(args.repeats):
        order = rows if k % 2 == 0 else rows[::-1]
        for row in order:
            log(f"repeat {k + 1}/{args.repeats}: {row} ({args.steps} steps, fresh subprocess)")
            out = run_worker(args, row)
            runs[row].append(out)
            if out.get("ok"):
                log(f"  {row}: {out['wall_s']:.2f} s, {out['real_tokens_per_s']:,.0f} real "
                    f"tok/s, padding {pct(out['padding_fraction'])}, eval loss "
                    f"{out['eval_loss_before']:.4f} -> {out['eval_loss']:.4f}")
            else:
                log(f"  {row}: FAILED: {out.get('error')}")

    scaling = []
    for size in sizes:
        outs = []
        for k in range(args.scale_repeats):
            log(f"time per epoch: ours on the training set x{size}, {args.epoch_fraction:g} "
                f"epoch ({k + 1}/{args.scale_repeats})")
            out = run_worker(args, "ours_epoch", replicate=size)
            outs.append(out)
            if out.get("ok"):
                log(f"  x{size}: {out['steps']} steps, {out['wall_s']:.2f} s, "
                    f"{out['real_tokens_per_s']:,.0f} real tok/s")
            else:
                log(f"  x{size}: FAILED: {out.get('error')}")
        good = [o for o in outs if o.get("ok")]
        if good:
            best = sorted(good, key=lambda o: o["wall_s"])[len(good) // 2]  # the median run
            best["all_wall_s"] = [o["wall_s"] for o in good]
            scaling.append({k: v for k, v in best.items()
                            if k not in ("train_losses", "lrs", "step_end_s")})
        else:
            scaling.append({"replicate": size, "ok": False, "error": outs[0].get("error")})

    summaries = {row: summarize(row, runs[row]) for row in rows}
    ref = next((s for s in summaries.values() if s["ok"]), {})
    report = {
        "environment": env,
        "settings": {"steps": args.steps, "repeats": args.repeats, "rows": rows,
                     "sizes": sizes, "epoch_fraction": args.epoch_fraction,
                     "scale_repeats": args.scale_repeats, "threads": args.threads,
                     "batch": args.batch, "grad_accum": 1, "lr": args.lr, "rank": args.rank,
                     "alpha": args.alpha, "dropout": args.dropout, "precision": args.precision,
                     "model": args.model,
                     "warmup_ratio": args.warmup_ratio, "min_lr_ratio": args.min_lr_ratio,
                     "max_grad_norm": args.max_grad_norm, "weight_decay": 0.0,
                     "max_length": args.max_length,
                     "validation_fraction": args.validation_fraction, "seed": args.seed,
                     "data": str(args.data) if args.data else "<data_dir>/sft/messages.jsonl",
                     "train_examples": ref.get("train_examples"),
                     "train_tokens": ref.get("train_tokens"),
                     "validation_examples": (ref.get("runs") or [{}])[0].get(
                         "validation_examples")},
        "rows": summaries,
        "scaling": scaling,
    }
    ours = summaries.get("ours", {})
    report["ratios_ours_over_trl_tokens_per_s"] = {
        row: ours["real_tokens_per_s"] / s["real_tokens_per_s"]
        for row, s in summaries.items() if row != "ours" and s["ok"] and ours.get("ok")}
    report["ratios_ours_over_trl_tokens_per_s_after_step_1"] = {
        row: ours["real_tokens_per_s_after_step_1"] / s["real_tokens_per_s_after_step_1"]
        for row, s in summaries.items()
        if row != "ours" and s["ok"] and ours.get("ok")
        and ours.get("real_tokens_per_s_after_step_1") and s["real_tokens_per_s_after_step_1"]}
    report["checks"] = build_checks(report)
    report["wall_s"] = round(time.perf_counter() - start, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (args.out / f"{args.name}.md").write_text(md)
    print(md)
    log(f"wrote {args.out / args.name}.json and .md ({report['wall_s']} s)")
    return 0 if all(s["ok"] for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
