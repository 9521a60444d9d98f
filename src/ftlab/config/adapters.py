"""The ``lora`` and ``quant`` sections: adapters (milestone 2) and the 4-bit base (milestone 3)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from ftlab.config.fields import Section, auto_or_module_names, hint, power_of_two


class LoRAConfig(Section):
    """Low-rank adapters (milestone 2): W' = W + (alpha / r) * B @ A."""

    r: int = Field(
        16,
        ge=1,
        description="Adapter rank (inner dimension of A and B). Typical 8-64.",
        json_schema_extra=hint("the LoRA rank is a positive integer; typical values are 8-64"),
    )
    alpha: float = Field(
        32,
        gt=0,
        description="Scaling numerator: the update is multiplied by alpha / r. Typical 1-2x r.",
    )
    dropout: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Dropout probability on the adapter input. Typical 0.0-0.1.",
        json_schema_extra=hint("dropout is a probability in [0, 1); typical values are 0.0-0.1"),
    )
    target_modules: Annotated[Literal["auto"] | list[str], BeforeValidator(auto_or_module_names)] = Field(
        "auto",
        description="Linear layers that get adapters: 'auto' (attention and MLP projections found "
        "by name) or a list such as ['q_proj', 'v_proj'].",
    )
    bias: Literal["none"] = Field("none", description="Bias training; only 'none' (biases stay frozen).")


class QuantConfig(Section):
    """4-bit quantization of the frozen base for QLoRA (milestone 3)."""

    enabled: bool = Field(False, description="Quantize the frozen base weights to 4 bits.")
    backend: Literal["ftlab", "bitsandbytes"] = Field(
        "ftlab",
        description="'ftlab': the course's own pure-PyTorch 4-bit linear; 'bitsandbytes': Linear4bit.",
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4",
        description="4-bit code: nf4 (normal-float, best for normally distributed weights) or fp4.",
    )
    double_quant: bool = Field(
        True,
        description="Also quantize the per-block absmax scales to 8 bits (saves about 0.37 bits/weight).",
    )
    block_size: Annotated[int, AfterValidator(power_of_two)] = Field(
        64,
        ge=32,
        le=4096,
        description="Weights per quantization block (one absmax scale each). Power of two; typical 64.",
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of the dequantized matmul; 'auto' uses the model dtype.",
    )
