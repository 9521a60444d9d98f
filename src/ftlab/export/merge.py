"""M5.3 — merging adapters for export, verified against the unmerged model.

Exported artifacts (HF folder, GGUF) hold plain weights: every LoRA update must be folded
into its base in float32 — into *dequantized* weights for a 4-bit (QLoRA) base, never back
into 4 bits, where re-quantizing would erase most of a small update. The merge is only
trusted once the merged model's logits are shown to match the adapted model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.errors import ArtifactError
from ftlab.lora import lora_layers, merge_lora

TOLERANCE = 1e-4
"""Largest logit difference accepted between a merged float32 model and the adapted one."""


@dataclass(frozen=True)
class MergeResult:
    """A merged copy of a model and how far its logits are from the adapted original's."""

    model: nn.Module
    max_logit_diff: float


@torch.no_grad()
def merge_and_verify(model: nn.Module, input_ids: torch.Tensor) -> MergeResult:
    """Merge a *copy* of ``model``'s adapters into its base weights and measure the merge.

    ``model``: a model with LoRA adapters (``ftlab.lora``; plain or 4-bit bases, float32 or
    bfloat16, ``nn.Linear`` or GPT-2 ``Conv1D``), possibly in train mode with dropout. Its
    weights and adapters are left as they are (it is only switched to eval mode): it is the
    reference the merge is checked against. ``input_ids``: (batch, length) token ids to
    compare on.

    Returns the merged copy, in eval mode — every adapted layer replaced by its base layer
    holding ``W + (alpha/r) B A`` computed in float32 and cast back once to the base
    layer's dtype (same layer type; a ``Conv1D`` keeps its transposed (in, out) storage), or
    for a 4-bit base a float32 ``nn.Linear`` holding the dequantized ``W`` plus the update; no
    adapters and no 4-bit layers left — and ``max_logit_diff``, a Python ``float``: the
    largest absolute difference ``max |merged - adapted|`` over every position and every
    vocabulary entry of the float32 logits of the merged copy and of the adapted ``model`` on
    ``input_ids``, both in eval mode (not a mean, not a signed max).
    """
    ### BEGIN SOLUTION M5.3
    model.eval()
    reference = model(input_ids=input_ids).logits.float()
    merged = merge_lora(copy.deepcopy(model)).eval()
    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
    return MergeResult(merged, float(diff))
    ### END SOLUTION


def merge_for_export(model: nn.Module, input_ids: torch.Tensor,
                     tolerance: float = TOLERANCE) -> MergeResult:
    """:func:`merge_and_verify`, refusing a merge whose logits differ by more than
    ``tolerance`` (:class:`ArtifactError` with the measured difference)."""
    if not lora_layers(model):
        raise ArtifactError("the model has no LoRA adapters to merge")
    result = merge_and_verify(model, input_ids)
    if not result.max_logit_diff <= tolerance:
        raise ArtifactError(f"merged logits differ from the adapted model's by "
                            f"{result.max_logit_diff:.3g} (> {tolerance:g}): the merge is "
                            "wrong; nothing was exported")
    return result
