"""Reward models (given): a language model with a scalar head, scored with C.6, trained with C.7.

A reward model here is ``AutoModelForSequenceClassification`` with ``num_labels=1`` built on
a causal language model's body (:func:`scalar_head_model`): the same transformer, its
vocabulary head replaced by ``score``, one linear map from the hidden state to a number. It
trains with LoRA adapters on the body and the head in full (PEFT's ``modules_to_save``), and
is saved as a PEFT folder (task ``SEQ_CLS``) that ``AutoPeftModelForSequenceClassification``
loads (:func:`save_reward_model`, :func:`load_reward_model`).
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from ftlab.align.objective import collate_pairs, score_pairs
from ftlab.lora import combine_adapters, load_adapter, merge_lora, save_adapter
from ftlab.lora.peft_io import read_adapter
from ftlab.reward.loss import last_token_rewards, reward_loss
from ftlab.train.step import Accumulated

HEAD = "score"
"""The scalar head's module name in transformers' sequence-classification models (Llama,
Qwen2, Mistral, Gemma …), and the module PEFT saves whole."""


def _quiet_loading():
    """transformers lists the vocabulary head it leaves out and the new scalar head it
    initialises: expected when a causal model becomes a reward model, so not shown."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return level


def scalar_head_model(causal: PreTrainedModel, pad_token_id: int, seed: int) -> PreTrainedModel:
    """A reward model on ``causal``'s body: a sequence-classification model of the same
    architecture with ``num_labels=1`` and ``pad_token_id`` set, its body's weights copied from
    ``causal`` (``causal`` is not modified) and its head initialised under ``seed`` as
    transformers initialises it. Same dtype as ``causal``, eval mode."""
    config = copy.deepcopy(causal.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    model.base_model.load_state_dict(causal.base_model.state_dict())
    if not isinstance(getattr(model, HEAD, None), nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear '{HEAD}' head")
    return model.eval()


def sequence_rewards(model: PreTrainedModel, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) reward of each sequence: the head's score at every position, read at the last
    real token by C.6 (:func:`last_token_rewards`), in the model's dtype, with its graph."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return last_token_rewards(getattr(model, HEAD)(hidden), attention_mask)


def pair_rewards(model: PreTrainedModel, pairs: list[dict], pad_id: int, batch_size: int = 16,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected reply of tokenized ``pairs``
    (:func:`ftlab.align.tokenize_pair`), each a float64 CPU tensor (pairs,)
    (:func:`~ftlab.align.objective.score_pairs`)."""
    return score_pairs(model, pairs, pad_id,
                       lambda m, b: sequence_rewards(m, b["input_ids"], b["attention_mask"]),
                       batch_size, progress, "pair rewards")


def score_texts(model: PreTrainedModel, tokenizer, texts: Sequence[str], batch_size: int = 16
                ) -> torch.Tensor:
    """(len(texts),) float64 rewards of whole texts (a chat already rendered by the template),
    tokenized without special tokens and right-padded: what TRL's ``GRPOTrainer`` does with a
    reward model. Eval mode, no gradients."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt",
                              padding=True, padding_side="right", add_special_tokens=False)
            out.append(sequence_rewards(model, batch["input_ids"].to(device),
                                        batch["attention_mask"].to(device)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class RewardObjective:
    """C.7 on C.6's rewards of tokenized preference pairs (chosen rows stacked on rejected,
    :func:`~ftlab.align.objective.collate_pairs`), for milestone 4's Trainer.

    A pair's ``margin`` (when every example carries one, as TRL reads a ``margin`` column) is
    passed to the loss. The step's loss is the mean over all its pairs: each micro-batch's
    mean is weighted by its share of the step's pairs, so the gradient does not depend on the
    split. Figures: loss, accuracy (chosen scored higher), mean reward difference. One
    process (the reward stage refuses ``--nproc``).
    """

    name = "reward"
    supports_packing = False
    repeatable_steps = True

    def __init__(self, center_coefficient: float | None = None) -> None:
        self.center_coefficient = center_coefficient

    def settings(self) -> dict:
        return {"center_coefficient": self.center_coefficient}

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate_pairs(examples, pad_id)
        with_margin = sum("margin" in e for e in examples)
        if 0 < with_margin < len(examples):
            raise ValueError("some preference pairs carry a 'margin' and others do not: give "
                             "every pair one (0 for none) or none at all")
        if with_margin:
            batch["margin"] = torch.tensor([float(e["margin"]) for e in examples])
        return batch

    def _rewards(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        return sequence_rewards(model, batch["input_ids"], batch["attention_mask"]).chunk(2)

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        pairs = sum(len(b["input_ids"]) // 2 for b in micro_batches)
        loss = correct = difference = 0.0
        for batch in micro_batches:
            chosen, rejected = self._rewards(model, batch)
            part = reward_loss(chosen, rejected, batch.get("margin"), self.center_coefficient)
            (part * len(chosen) / pairs).backward()
            loss += float(part.detach()) * len(chosen) / pairs
            gap = (chosen - rejected).detach()
            correct += float((gap > 0).sum())
            difference += float(gap.sum())
        return Accumulated(loss=loss, targets=pairs,
                           metrics={"accuracy": correct / pairs, "margin": difference / pairs})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        losses, right, count = 0.0, 0.0, 0
        for batch in batches:
            chosen, rejected = self._rewards(model, batch)
            losses += float(reward_loss(chosen, rejected, batch.get("margin"),
                                        self.center_coefficient)) * len(chosen)
            right += float((chosen > rejected).sum())
            count += len(chosen)
        model.train(was_training)
        if not count:
            return {"val_loss": math.nan}
        return {"val_loss": losses / count, "val_accuracy": right / count}


def save_reward_model(model: PreTrainedModel, folder: Path, base_model_name_or_path: str,
                      earlier: Sequence[Path] = ()) -> Path:
    """Write ``model``'s adapters and whole scalar head as a PEFT ``SEQ_CLS`` folder over
    ``base_model_name_or_path`` (resolvable: an absolute folder or a Hub id). ``earlier``:
    adapter folders the body already had merged (the policy's SFT adapter), combined into
    the saved one so the folder stands for the whole reward model over the base."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        own = save_adapter(model, Path(tmp) / "own", base_model_name_or_path, "SEQ_CLS", (HEAD,))
        combine_adapters([*map(Path, earlier), own], folder, base_model_name_or_path)
    return folder


def load_reward_model(folder: Path, pad_token_id: int, dtype: torch.dtype = torch.float32
                      ) -> PreTrainedModel:
    """The reward model a :func:`save_reward_model` folder (or PEFT's ``save_pretrained`` of a
    ``SEQ_CLS`` LoRA model) stands for: its base as a sequence-classification model with
    ``num_labels=1``, the head and adapters loaded, the adapters merged; eval mode."""
    config, _ = read_adapter(folder)
    level = _quiet_loading()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            config["base_model_name_or_path"], num_labels=1, pad_token_id=pad_token_id,
            dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    merge_lora(load_adapter(model, folder))
    return model.to(dtype).eval()
