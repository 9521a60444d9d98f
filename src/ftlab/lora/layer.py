"""M2.1, M2.2, M2.5 — a LoRA adapter around a frozen linear layer.

``y = base(x) + (alpha / r) * dropout(x) @ A.T @ B.T`` with A (r x in) and B (out x r).
B starts at zero, so at initialisation the adapted layer equals the base layer exactly.
Attribute names follow PEFT (``base_layer``, ``lora_A``, ``lora_B``) so adapters map 1:1 to
PEFT's files. The base may be ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored in x out) or a
4-bit layer (ftlab's ``NF4Linear``, bitsandbytes' ``Linear4bit``): QLoRA is LoRA on a 4-bit base.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear layer: ``nn.Linear`` (bitsandbytes'
    ``Linear4bit`` included), GPT-2's ``Conv1D`` or ftlab's ``NF4Linear``."""
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    if isinstance(getattr(module, "in_features", None), int):
        return module.in_features, module.out_features
    raise TypeError(f"{type(module).__name__} is not a linear layer LoRA can adapt")


def is_quantized(module: nn.Module) -> bool:
    """True for a 4-bit base: ftlab's ``NF4Linear`` or bitsandbytes' ``Linear4bit``."""
    return hasattr(module, "dequantized") or hasattr(getattr(module, "weight", None),
                                                     "quant_state")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The base weight as (out_features, in_features), whatever the layer stores.

    4-bit bases are dequantized to float32 (a new tensor; the stored weight is untouched).
    """
    if hasattr(module, "dequantized"):
        return module.dequantized()
    if hasattr(module.weight, "quant_state"):
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    return module.weight.T if type(module).__name__ == "Conv1D" else module.weight


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    Attributes: ``base_layer`` (frozen), ``lora_A`` (Parameter, r x in), ``lora_B``
    (Parameter, out x r), ``scaling`` (alpha / r), ``lora_dropout`` (nn.Dropout, or
    nn.Identity when dropout is 0), ``r``, ``alpha``.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        """Wrap ``base``; A ~ kaiming-uniform(a=sqrt(5)), B = 0; freeze every base parameter.

        Sets ``base_layer`` (``base`` itself, not a copy), ``lora_A`` (r x in), ``lora_B``
        (out x r, all zeros), ``scaling`` = alpha / r and ``lora_dropout``: ``nn.Dropout(dropout)``
        when dropout > 0, else ``nn.Identity()``. Raises ValueError for r < 1.

        - ``scaling`` is the true quotient for any int or float alpha and r: alpha=4, r=8
          gives 0.5 and alpha=12.0, r=8 gives 1.5 (never ``alpha // r``, never rounded).
        - A and B are ``nn.Parameter`` attributes that require gradients; every parameter of
          the base (weight and bias) is frozen, and nothing else.
        - Sizes come from ``in_features, out_features`` above (``linear_dims``; GPT-2's
          ``Conv1D`` stores its weight as (in, out), so ``base.weight.shape`` misleads).
        - A and B take the dtype and device of ``weight`` above (``dense_weight(base)``:
          float32 for a 4-bit base, which has no float weight; the base's device, ``meta``
          included).
        """
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        in_features, out_features = linear_dims(base)
        weight = dense_weight(base)
        self.r, self.alpha = r, alpha
        ### BEGIN SOLUTION M2.1
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=weight.dtype,
                                               device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=weight.dtype,
                                               device=weight.device))
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base_layer(x) + scaling * lora_dropout(x) @ lora_A.T @ lora_B.T``.

        x: (..., in_features) -> (..., out_features). Dropout touches only the adapter path,
        and there only its input: the base path sees x unchanged, and neither ``x @ A.T`` nor
        the update after B is dropped out. ``lora_dropout`` is called exactly once, on x, and
        is the only random draw, so in train mode the output is reproducible from the seed:
        after ``torch.manual_seed(s)`` the mask is the one ``F.dropout(x, p)`` draws after the
        same seed. In eval mode dropout does nothing (``nn.Dropout`` follows
        ``train()``/``eval()``; ``F.dropout`` would need ``training=self.training``).

        The base path is ``self.base_layer(x)`` (a Conv1D or 4-bit base stores its weight
        differently). The update is multiplied by ``self.scaling`` as it is at call time
        (``adapters_disabled`` sets it to 0), never by alpha / r recomputed. x may have any
        number of leading dimensions, none included, and is left unmodified: with dropout off
        ``lora_dropout(x)`` (and ``.to`` of the same dtype) is x itself, so no in-place ops on
        it. Gradients reach x through both paths, and A and B (no ``torch.no_grad``,
        ``.detach()`` or ``.data``).

        The adapter computes in A's dtype (x is cast to it: a bfloat16 base may carry float32
        adapters) and the update joins the base output in that output's dtype. Under autocast
        the matmuls pick their dtype themselves, so x is not cast: casting a bf16 activation to
        float32 only for autocast to cast it back cost ~10% of a bf16 training step.

        Where ``scaling`` multiplies does not change the result (beyond float rounding; not
        at all when it is a power of two), but its cost: on the rank-``r`` tensor ``x @ A.T``
        it is ``r`` multiplications per token instead of ``out_features``, forward and
        backward (about 5% of a training step of the embedded model).
        """
        ### BEGIN SOLUTION M2.2
        result = self.base_layer(x)
        adapter_input = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):
            adapter_input = adapter_input.to(self.lora_A.dtype)
        low_rank = (adapter_input @ self.lora_A.T) * self.scaling
        return result + (low_rank @ self.lora_B.T).to(result.dtype)
        ### END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` as a float32 (out, in) tensor on the adapter's device.

        A and B are cast to float32 before multiplying (in bfloat16 the product would lose
        the small update); the result is float32 whatever the adapter's dtype. ``scaling`` is
        ``self.scaling`` as it is (not alpha / r recomputed). A and B are left unchanged:
        ``.float()`` of a float32 tensor is that tensor itself, so no in-place ops on it.
        """
        ### BEGIN SOLUTION M2.5
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())
        ### END SOLUTION

    def merged_weight(self) -> torch.Tensor:
        """Base weight plus :meth:`delta_weight`, as float32 (out, in)."""
        return dense_weight(self.base_layer).float() + self.delta_weight()
