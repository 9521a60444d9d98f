"""Merging adapters into the base (given around task M2.5)."""

from __future__ import annotations

import torch
from torch import nn

from ftlab.lora.inject import lora_layers


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (in float32) and unwrap it; in place.

    The merged weight is cast back to the base weight's dtype; GPT-2 ``Conv1D`` weights
    are stored transposed, as the layer expects.
    """
    for name, layer in lora_layers(model).items():
        base = layer.base_layer
        merged = layer.merged_weight()
        if type(base).__name__ == "Conv1D":
            merged = merged.T
        base.weight.copy_(merged.to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model
