"""Quality and size of one model stored seven ways (given; used by notebook 03 and the benchmark).

Variants: fp32, bf16, ftlab NF4, ftlab NF4 + double quantization, and through
transformers + bitsandbytes: NF4 + double quantization, FP4, and LLM.int8().
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ftlab.lora import find_target_modules
from ftlab.quant.bnb import load_quantized, quiet_int8
from ftlab.quant.linear import quantize_model
from ftlab.quant.memory import MB, tensor_bytes

VARIANTS = ("fp32", "bf16", "nf4 (ftlab)", "nf4 + dq (ftlab)", "nf4 + dq (bitsandbytes)",
            "fp4 (bitsandbytes)", "int8 (bitsandbytes)")


def load_variant(path: str | Path, variant: str) -> nn.Module:
    """The causal LM in ``path`` stored as ``variant`` (one of :data:`VARIANTS`), eval mode."""
    from transformers import AutoModelForCausalLM

    if variant in ("fp32", "bf16", "nf4 (ftlab)", "nf4 + dq (ftlab)"):
        dtype = torch.bfloat16 if variant == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if "ftlab" in variant:
            quantize_model(model, find_target_modules(model), double_quant="dq" in variant)
    elif variant == "nf4 + dq (bitsandbytes)":
        model = load_quantized(path, quant_type="nf4", double_quant=True)
    elif variant == "fp4 (bitsandbytes)":
        model = load_quantized(path, quant_type="fp4", double_quant=False)
    elif variant == "int8 (bitsandbytes)":
        model = load_quantized(path, bits=8)
    else:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    return model.eval()


def stored_mb(model: nn.Module) -> float:
    """MB the model's weights occupy: parameters and buffers (:func:`tensor_bytes`) plus
    bitsandbytes' quantization statistics, which live outside both."""
    total = sum(tensor_bytes(model).values())
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        state2 = getattr(state, "state2", None)
        for extra in (getattr(state, "absmax", None), getattr(state2, "absmax", None),
                      getattr(p, "SCB", None)):
            if extra is not None:
                total += extra.numel() * extra.element_size()
    return total / MB


def quality_table(path: str | Path, loss_fn, variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """One row per variant: ``variant``, ``loss`` (``loss_fn(model)``, nats/token),
    ``perplexity`` and ``weights_mb`` (:func:`stored_mb`)."""
    rows = []
    for variant in variants:
        with quiet_int8():
            model = load_variant(path, variant)
            with torch.no_grad():
                loss = loss_fn(model)
        rows.append({"variant": variant, "loss": loss, "perplexity": math.exp(loss),
                     "weights_mb": stored_mb(model)})
        del model
    return rows
