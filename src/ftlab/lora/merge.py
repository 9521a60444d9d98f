"""Merging adapters into the base (given around task M2.5)."""

from __future__ import annotations

import torch
from torch import nn

from ftlab.lora.inject import lora_layers
from ftlab.lora.layer import is_quantized, linear_dims


def _float_linear(base: nn.Module, device: torch.device) -> nn.Linear:
    """A float32 ``nn.Linear`` of ``base``'s shape carrying its bias (weight to be filled)."""
    in_features, out_features = linear_dims(base)
    linear = nn.Linear(in_features, out_features, bias=base.bias is not None, device=device)
    if base.bias is not None:
        linear.bias.copy_(base.bias.float())
    return linear


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (in float32) and unwrap it; in place.

    The merged weight is cast back to the base weight's dtype; GPT-2 ``Conv1D`` weights
    are stored transposed, as the layer expects. A 4-bit base (QLoRA) is never merged into:
    re-quantizing would lose most of the update. It is replaced by an ``nn.Linear`` holding
    the dequantized weight plus the update, in float32.
    """
    for name, layer in lora_layers(model).items():
        base = layer.base_layer
        merged = layer.merged_weight()
        if is_quantized(base):
            base = _float_linear(base, merged.device)
        elif type(base).__name__ == "Conv1D":
            merged = merged.T
        base.weight.copy_(merged.to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model
