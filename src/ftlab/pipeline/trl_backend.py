"""The ``trl`` backend of the training stages (given): TRL's trainers on the same data.

SFT: ``trl.SFTTrainer`` is given our tokenized examples (``input_ids`` + ``labels``, replay
included), so both backends train exactly the same tokens. DPO: ``trl.DPOTrainer`` is given
the preference records and tokenizes them itself (its completion also scores the newline the
chat template puts after ``<|im_end|>``; ours stops at the end-of-turn token the model
generates — one token per reply). Reward models: ``trl.RewardTrainer`` on the same records. Both train a PEFT ``LoraConfig`` equal to the stage's
``lora`` section; the adapter is saved in PEFT format. TRL runs are not resumable mid-stage
(a rerun of the stage starts over). Their progress is ftlab's (a bar, or a few lines in a
log) and the libraries' warnings are kept in ``<stage>/train/warnings.txt``, not printed.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from ftlab.config import DPOConfig, LoRAConfig, TrainConfig
from ftlab.progress import progress_bar
from ftlab.train.distributed import launched_world_size, ranks


def training_arguments(config: TrainConfig, folder: Path, progress: bool, evaluate: bool) -> dict:
    """transformers ``TrainingArguments`` keywords equal to our ``train`` section
    (``evaluate``: there is a validation set to score every ``eval_every`` steps)."""
    steps = {"max_steps": config.max_steps} if config.max_steps else {
        "num_train_epochs": config.epochs}
    return dict(
        output_dir=str(folder / "trl"),
        # train.batch_size is the micro-batch over all processes, as for our Trainer
        per_device_train_batch_size=config.batch_size // launched_world_size(),
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_ratio, seed=config.seed,
        use_cpu=not torch.cuda.is_available(), bf16=trl_bf16(config.precision), fp16=False,
        gradient_checkpointing=False, eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_every,
        save_strategy="no", logging_strategy="steps", logging_steps=1, report_to=[],
        disable_tqdm=not progress, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        **steps)


def trl_bf16(precision: str) -> bool:
    """Whether TRL trains in bf16 (``TrainingArguments(bf16=...)``) for ``train.precision``:
    as asked, and for ``auto`` on a GPU that supports bf16. On a CPU ``auto`` is float32
    here: TRL has no step to time, which is how our Trainer decides there."""
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bfloat16"


def lora_config(lora: LoRAConfig, targets: list[str]):
    """A PEFT ``LoraConfig`` equal to the stage's ``lora`` section on ``targets``."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def write_log(history: list[dict], folder: Path) -> None:
    """TRL's log history as our metrics log (``folder/train/metrics.jsonl``)."""
    path = folder / "train" / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in history:
        if "loss" in entry:
            lines.append({"kind": "step", "step": entry["step"], "loss": entry["loss"],
                          "lr": entry.get("learning_rate", math.nan),
                          "epoch": entry.get("epoch", math.nan)})
        if "eval_loss" in entry:
            lines.append({"kind": "eval", "step": entry["step"], "val_loss": entry["eval_loss"]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


class ProgressLine(TrainerCallback):
    """Shows a transformers/TRL training as ftlab's own progress
    (:func:`~ftlab.progress.progress_bar`: a bar, or a few lines in a log) with the loss and
    learning rate as its postfix, instead of TRL's raw per-step dicts."""

    def __init__(self, progress: bool) -> None:
        self.progress, self.bar = progress, None

    def on_train_begin(self, args, state, control, **kwargs):
        shown = self.progress and state.is_world_process_zero
        self.bar = progress_bar(total=state.max_steps, initial=state.global_step, desc="train",
                                unit="step", disable=not shown)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: f"{logs[k]:.3g}" for k in ("loss", "learning_rate", "eval_loss")
                 if isinstance((logs or {}).get(k), int | float)}
        if shown and self.bar is not None:
            self.bar.set_postfix(**shown)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


@contextmanager
def library_warnings(folder: Path) -> Iterator[None]:
    """Warnings transformers, TRL and PEFT raise while the block runs (deprecations,
    notices) go to ``folder/train/warnings.txt``, one per line, each once, instead of the
    console; their own loggers say only errors and ``datasets`` shows no bars."""
    from transformers.utils import logging as hf_logging

    from datasets.utils import logging as datasets_logging

    verbosity, bars = hf_logging.get_verbosity(), datasets_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    datasets_logging.disable_progress_bar()  # TRL's "Truncating train dataset" and the like
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                datasets_logging.enable_progress_bar()
            if caught and ranks().is_main:
                lines = dict.fromkeys(f"{w.category.__name__}: {w.message} "
                                      f"({Path(w.filename).name}:{w.lineno})" for w in caught)
                (folder / "train").mkdir(parents=True, exist_ok=True)
                (folder / "train" / "warnings.txt").write_text("\n".join(lines) + "\n")


def _finish(trainer, folder: Path, progress: bool, adapter: str = "adapter") -> dict[str, float]:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # TRL's raw dicts, tqdm's own bar
        trainer.remove_callback(noisy)
    trainer.add_callback(ProgressLine(progress))
    trainer.train()
    if ranks().is_main:  # under accelerate launch every process trains; rank 0 writes
        write_log(trainer.state.log_history, folder)
        trainer.model.save_pretrained(str(folder / adapter))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    return {"steps": trainer.state.global_step, "final_loss": losses[-1] if losses else math.nan,
            **({"best_val_loss": min(evals)} if evals else {})}


def _quiet(train_fn):
    """Run a ``train_*`` function inside :func:`library_warnings` of its ``folder``."""
    @functools.wraps(train_fn)
    def run(*args, **kwargs):
        folder = inspect.signature(train_fn).bind(*args, **kwargs).arguments["folder"]
        with library_warnings(folder):
            return train_fn(*args, **kwargs)
    return run


@_quiet
def train_sft(model: nn.Module, tokenizer: PreTrainedTokenizerBase, train: list[dict],
              validation: list[dict], config: TrainConfig, lora: LoRAConfig,
              targets: list[str], folder: Path, max_length: int, progress: bool
              ) -> dict[str, float]:
    """SFT with ``trl.SFTTrainer``; writes ``folder/adapter``; returns its figures."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    columns = lambda rows: Dataset.from_list(  # noqa: E731
        [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in rows])
    args = SFTConfig(**training_arguments(config, folder, progress, bool(validation)),
                     max_length=max_length, packing=config.packing, assistant_only_loss=False, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=columns(train),
                         eval_dataset=columns(validation) if validation else None,
                         processing_class=tokenizer,
                         peft_config=lora_config(lora, targets))
    return _finish(trainer, folder, progress)


@_quiet
def train_dpo(model: nn.Module, tokenizer: PreTrainedTokenizerBase, train: list[dict],
              validation: list[dict], config: TrainConfig, lora: LoRAConfig, dpo: DPOConfig,
              targets: list[str], folder: Path, max_length: int, progress: bool
              ) -> dict[str, float]:
    """DPO (+ SFT term) with ``trl.DPOTrainer`` on preference records (TRL's format);
    writes ``folder/adapter``; returns its figures."""
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    losses = ["sigmoid", "sft"] if dpo.sft_weight else ["sigmoid"]
    weights = [1.0, dpo.sft_weight] if dpo.sft_weight else [1.0]
    arguments = training_arguments(config, folder, progress, bool(validation))
    # transformers groups by the "input_ids" length, which DPO's pair datasets do not have
    arguments["train_sampling_strategy"] = "random"
    args = TRLDPOConfig(**arguments, beta=dpo.beta, loss_type=losses, loss_weights=weights, max_length=max_length)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(validation) if validation else None,
                         processing_class=tokenizer,
                         peft_config=lora_config(lora, targets))
    return _finish(trainer, folder, progress)


def _named(fn, name: str):
    """``fn`` under ``name`` (TRL names a reward's log after its function)."""
    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    call.__name__ = name
    return call


@_quiet
def train_grpo(model: nn.Module, tokenizer: PreTrainedTokenizerBase, train: list[dict],
               validation: list[dict], rewards: dict, config: TrainConfig, lora: LoRAConfig,
               grpo, targets: list[str], folder: Path, progress: bool) -> dict[str, float]:
    """GRPO with ``trl.GRPOTrainer`` on prompt records (``question`` + reward fields) with
    the same reward functions and weights; writes ``folder/adapter``; returns its figures.

    ``train.batch_size`` counts prompts, as for our objective: TRL's batch counts
    completions, so it gets ``batch_size x group_size``. Its metrics log keeps TRL's mean
    reward per step as ``reward``. No validation pass (TRL's GRPO evaluation samples). With
    ``train.epochs`` (not ``max_steps``) and ``grpo.iterations`` > 1 TRL counts steps its own
    way (each batch repeated, a partial last batch dropped): give ``max_steps`` for runs
    that compare step for step."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    names = list(rewards)
    arguments = training_arguments(config, folder, progress, False)
    arguments["per_device_train_batch_size"] = config.batch_size * grpo.group_size
    arguments["train_sampling_strategy"] = "random"
    args = TRLGRPOConfig(
        **arguments, num_generations=grpo.group_size, max_completion_length=grpo.max_new_tokens,
        temperature=grpo.temperature, top_p=grpo.top_p, top_k=0, beta=grpo.beta,
        use_bias_correction_kl=grpo.kl_correction,
        epsilon=grpo.epsilon, epsilon_high=grpo.epsilon_high or grpo.epsilon,
        num_iterations=grpo.iterations, loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards, reward_weights=[grpo.weights.get(n, 0.0) for n in names],
        log_completions=False)
    dataset = lambda rows: Dataset.from_list(  # noqa: E731
        [{**{k: v for k, v in r.items() if k != "question"},
          "prompt": [{"role": "user", "content": r["question"]}]} for r in rows])
    functions = [_named(rewards[name], name) for name in names]  # TRL logs rewards/<name>
    trainer = GRPOTrainer(model=model, reward_funcs=functions, args=args,
                          train_dataset=dataset(train), processing_class=tokenizer,
                          peft_config=lora_config(lora, targets))
    figures = _finish(trainer, folder, progress)
    if ranks().is_main:  # the sampled completions' mean reward per step, for the curves
        path = folder / "train" / "metrics.jsonl"
        reward = {e["step"]: e["reward"] for e in trainer.state.log_history if "reward" in e}
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**line, "reward": reward[line["step"]]}
                                           if line["kind"] == "step" and line["step"] in reward
                                           else line) + "\n" for line in lines))
    return figures


@_quiet
def train_reward(model: nn.Module, tokenizer: PreTrainedTokenizerBase, train: list[dict],
                 validation: list[dict], config: TrainConfig, lora: LoRAConfig,
                 targets: list[str], center_coefficient: float | None, folder: Path,
                 max_length: int, progress: bool) -> dict[str, float]:
    """A reward model with ``trl.RewardTrainer`` on preference records (TRL's format, an
    optional ``margin``): ``model`` is the sequence-classification model (``num_labels=1``),
    trained with a PEFT ``LoraConfig`` (task ``SEQ_CLS``, the ``score`` head in
    ``modules_to_save``); writes the PEFT folder to ``folder/trl_adapter``; returns its
    figures."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    arguments = training_arguments(config, folder, progress, bool(validation))
    arguments["train_sampling_strategy"] = "random"  # pair datasets have no input_ids length
    args = RewardConfig(**arguments, max_length=max_length,
                        center_rewards_coefficient=center_coefficient or None)
    peft = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, bias="none", task_type="SEQ_CLS",
                      modules_to_save=["score"])
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                            eval_dataset=Dataset.from_list(validation) if validation else None,
                            processing_class=tokenizer, peft_config=peft)
    figures = _finish(trainer, folder, progress, adapter="trl_adapter")
    accuracy = [e["accuracy"] for e in trainer.state.log_history if "accuracy" in e]
    return figures | ({"accuracy": accuracy[-1]} if accuracy else {})
