"""M1.6 — batching tokenized examples: right padding, masked labels, attention mask."""

from __future__ import annotations

import torch

from ftlab.data.labels import IGNORE_INDEX


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack examples of unequal length into a batch.

    Input: at least one dict with ``input_ids`` and ``labels`` (equal-length int lists);
    the examples are not modified (no ``+=`` or ``extend`` on their lists).
    Output: a dict of exactly three LongTensors (``torch.long``) of shape (batch, longest
    example): ``input_ids`` right-padded with ``pad_id``; ``labels`` right-padded with
    ``IGNORE_INDEX`` (padding is never trained, whatever ``pad_id`` is); ``attention_mask``
    1 on real tokens and 0 on padding. ``pad_id`` may be a real token's id (``pad == eos``
    in many tokenizers): padding is known by position (past each example's length), never
    by comparing ids with ``pad_id``, so a real token equal to ``pad_id`` keeps its label
    and mask 1. A single example or examples of equal length need no padding.
    """
    ### BEGIN SOLUTION M1.6
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        batch["input_ids"].append(e["input_ids"] + [pad_id] * pad)
        batch["labels"].append(e["labels"] + [IGNORE_INDEX] * pad)
        batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    ### END SOLUTION
