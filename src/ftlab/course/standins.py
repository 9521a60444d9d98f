"""Stand-ins for prerequisite tasks in milestone checks (given; not exercises).

A check grades one task. When it needs what another task produces — a padded batch for
the training step (M4.2) or for perplexity (M5.1) — it builds that input with a stand-in
here instead of calling the learner's version of the other task, so a bug in M1.6 is
reported against M1.6, never against M4.2.
"""

from __future__ import annotations

import torch


def right_pad(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """``{"input_ids", "labels", "attention_mask"}`` of ``examples`` right-padded to the
    longest: ids with ``pad_id``, labels with -100, mask 1 on real tokens; each (B, T)."""
    lengths = [len(e["input_ids"]) for e in examples]
    gaps = [max(lengths) - n for n in lengths]
    width = max(lengths)
    return {"input_ids": torch.tensor([e["input_ids"] + [pad_id] * g
                                       for e, g in zip(examples, gaps)]),
            "labels": torch.tensor([e["labels"] + [-100] * g for e, g in zip(examples, gaps)]),
            "attention_mask": torch.tensor([[1] * (width - g) + [0] * g for g in gaps])}
