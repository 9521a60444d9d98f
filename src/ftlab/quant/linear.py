"""M3.5 — a frozen 4-bit linear layer; quantizing a model and preparing it for QLoRA (given).

QLoRA = LoRA on a 4-bit base: ``LoRALinear(NF4Linear(linear), r, alpha)``. The base keeps
only packed NF4 codes and absmax values (~0.52 bytes per weight with double quantization)
and dequantizes its weight on the fly, in the forward pass and again in the backward pass,
so no full-precision copy of the weight is ever kept.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlab.lora import find_target_modules, inject_lora
from ftlab.quant.blockwise import STORED, NF4Weight, quantize_weight


class NF4Matmul(torch.autograd.Function):
    """``x @ W.T`` for a weight held by an :class:`NF4Linear`; gradient for ``x`` only.

    Saves nothing for backward but the layer itself: the weight is dequantized again to
    compute ``grad_x = grad_y @ W``, so backward memory does not grow with the weights.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.dequantized(x.dtype).T

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_out @ ctx.layer.dequantized(grad_out.dtype), None


class NF4Linear(nn.Module):
    """A frozen linear layer stored in NF4 (``y = x Wᵀ + b`` with W dequantized on the fly).

    Buffers: ``packed`` (uint8, ceil(out*in/2)), then either ``absmax`` (float32, one per
    block) or, with double quantization, ``absmax_codes`` (uint8), ``absmax_scales``
    (float32) and ``absmax_offset`` (float32 scalar); ``bias`` (or None). The layer has no
    parameters: nothing in it trains. ``compute_dtype`` (None: the input's dtype) is the
    dtype the weight is dequantized to and the matmul runs in. Cast a model to its dtype
    before quantizing it, not after (casting would also cast the float32 absmax buffers).
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, double_quant: bool = True,
                 compute_dtype: torch.dtype | None = None) -> None:
        """Quantize ``linear``'s weight and keep it, and a frozen copy of its bias, as buffers.

        Keep nothing else: the float weight must not survive as a parameter or buffer (that
        is the memory QLoRA saves), and no parameter may be left trainable.

        Exactly: the buffers ``quantize_weight(weight, block_size, double_quant).tensors()``
        (this layer's ``block_size`` and ``double_quant``) under those names, persistent (in
        the state dict), and ``bias``: a detached copy of ``linear.bias`` (same dtype, sharing
        no memory with ``linear``, no autograd history), or None when ``linear`` has no bias.
        The layer has no parameters at all, not even frozen ones.
        """
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.compute_dtype = block_size, compute_dtype
        ### BEGIN SOLUTION M3.5
        stored = quantize_weight(linear.weight.detach(), block_size, double_quant)
        for name, tensor in stored.tensors().items():
            self.register_buffer(name, tensor)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)
        ### END SOLUTION

    def quantized(self) -> NF4Weight:
        """The stored weight as an :class:`NF4Weight` (views of the buffers)."""
        stored = {k: self._buffers[k] for k in STORED if self._buffers.get(k) is not None}
        return NF4Weight(shape=(self.out_features, self.in_features), block_size=self.block_size,
                         **stored)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a dense (out_features, in_features) tensor of ``dtype``."""
        return self.quantized().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features), in x's dtype."""
        h = x if self.compute_dtype is None else x.to(self.compute_dtype)
        out = NF4Matmul.apply(h, self)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, double_quant={self.quantized().double_quant}")


def quantize_model(model: nn.Module, targets: list[str], block_size: int = 64,
                   double_quant: bool = True, compute_dtype: torch.dtype | None = None
                   ) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``targets`` by an :class:`NF4Linear`; in place."""
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name} is a {type(layer).__name__}; only nn.Linear is quantized")
        setattr(parent, child, NF4Linear(layer, block_size, double_quant, compute_dtype))
    return model


def prepare_qlora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                  targets: list[str] | None = None, block_size: int = 64,
                  double_quant: bool = True, compute_dtype: torch.dtype | None = None
                  ) -> nn.Module:
    """QLoRA in one call: quantize the target linear layers to NF4 and put LoRA on them.

    ``targets`` are short names (``["q_proj", "v_proj"]``) or None for the architecture's
    defaults (:func:`ftlab.lora.find_target_modules`). Everything but the adapters is frozen.
    """
    names = find_target_modules(model, targets)
    quantize_model(model, names, block_size, double_quant, compute_dtype)
    return inject_lora(model, names, r, alpha, dropout)
