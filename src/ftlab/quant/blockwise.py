"""M3.2–M3.4 — blockwise NF4 quantization, dequantization and double quantization.

A weight is flattened row-major and cut into blocks of ``block_size`` values (64 in QLoRA).
Each block is divided by its absolute maximum (its *absmax*), so it lies in [-1, 1], and each
value is replaced by the index of the nearest NF4 level. Two 4-bit indices share a byte:
the first value in the high nibble, the second in the low nibble (bitsandbytes' layout).
Double quantization stores the float32 absmax values themselves in 8 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftlab.quant.codebook import dynamic_code, nearest_code, nf4_codebook

TINY = 1e-38
"""Smallest absmax divided by; an all-zero block then quantizes to the zero level."""

STORED = ("packed", "absmax", "absmax_codes", "absmax_scales", "absmax_offset")
"""Names of the tensors an :class:`NF4Weight` stores (and an ``NF4Linear`` keeps as buffers)."""


def as_blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """A 1-D tensor zero-padded to whole blocks and viewed as (n_blocks, block_size)."""
    pad = (-flat.numel()) % block_size
    return (F.pad(flat, (0, pad)) if pad else flat).view(-1, block_size)


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax NF4 quantization of any tensor, bit for bit as bitsandbytes.

    Returns ``(packed, absmax)``: ``packed`` uint8 of shape (ceil(n / 2),) holding two codes
    per byte (element 2i in the high nibble, 2i+1 in the low nibble), ``absmax`` float32 of
    shape (ceil(n / block_size),), one per block of the row-major flattened ``weight``
    (n = weight.numel()). A last partial block uses its own absmax. Values are scaled by
    multiplying with ``1 / absmax`` (in float32) and mapped with :func:`nearest_code` onto
    :func:`nf4_codebook`. ``block_size`` must be even.

    Odd n: the last byte has no element n for its low nibble. It holds 7, the code of NF4's
    exact zero level, as if the last block were padded with 0.0 and the padding quantized
    like any value (what bitsandbytes stores), so the last byte is ``code[n-1] << 4 | 7``.

    Edge cases: ``weight`` may have any shape, be a non-contiguous view, be bfloat16 or
    float16 (converted to float32 first: all the maths is float32) and require grad (it is
    detached: the outputs carry no autograd history); it is never modified. Any even
    ``block_size`` is honoured. Only the divisor is clamped to :data:`TINY`: an all-zero block
    stores absmax 0 and codes 7, and a block of tiny values is scaled like any other. A value
    exactly halfway between two levels gets the lower code (:func:`nearest_code`). Both
    outputs are on ``weight``'s device.
    """
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be an even number >= 2, got {block_size}")
    n = weight.numel()
    ### BEGIN SOLUTION M3.2
    blocks = as_blocks(weight.detach().reshape(-1).float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks * (1.0 / absmax.clamp(min=TINY)).unsqueeze(1)
    codes = nearest_code(scaled.reshape(-1), nf4_codebook())
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed[: (n + 1) // 2], absmax
    ### END SOLUTION


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...],
                   block_size: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4`: a tensor of ``shape`` and ``dtype``.

    Each code (high nibble first) is looked up in :func:`nf4_codebook` and multiplied by its
    block's absmax in float32; the result is cast to ``dtype`` at the end. So element ``i``
    (row-major) is ``level[code i] * absmax[i // block_size]``, for any ``block_size`` and a
    ``shape`` of any number of dimensions; for odd n the last byte's low nibble is ignored.
    The inputs are not modified; the output is on ``packed``'s device.
    """
    n = math.prod(shape)
    ### BEGIN SOLUTION M3.3
    code = nf4_codebook().to(packed.device)
    byte = torch.arange(256, device=packed.device)
    pairs = torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1)  # byte -> its two levels
    levels = as_blocks(pairs.index_select(0, packed.int()).reshape(-1)[:n], block_size)
    return (levels * absmax.unsqueeze(1)).reshape(-1)[:n].reshape(shape).to(dtype)
    ### END SOLUTION


def double_quantize(absmax: torch.Tensor, block_size: int = 256
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize float32 absmax values to 8 bits: ``(codes, scales, offset)``.

    The mean of ``absmax`` is subtracted first (``offset``, a float32 scalar tensor): absmax
    values are all positive and similar, so centring them spends the code on their spread.
    The centred values are then quantized blockwise like :func:`quantize_nf4` but with
    ``block_size`` 256 and the 8-bit :func:`dynamic_code`, one uint8 code per value (no
    packing). ``codes`` is uint8 (n,), ``scales`` float32 (ceil(n / block_size),).

    Edge cases: n need not be a multiple of ``block_size`` (use ``block_size`` as given): the
    *centred* values are zero-padded to whole blocks, and the padding's codes are dropped.
    ``offset`` is the mean of the n values (not of any padding), a 0-d float32 tensor, never a
    Python number. As in :func:`quantize_nf4`, each block is multiplied by
    ``1 / max(scale, TINY)``: a block whose centred values are all 0 (equal absmax values) gets
    scale 0 and the code of 0.0 (index 127). ``absmax`` is not modified; the outputs are on
    its device.
    """
    ### BEGIN SOLUTION M3.4
    offset = absmax.mean()
    blocks = as_blocks(absmax - offset, block_size)
    scales = blocks.abs().amax(dim=1)
    scaled = blocks * (1.0 / scales.clamp(min=TINY)).unsqueeze(1)
    codes = nearest_code(scaled.reshape(-1)[: absmax.numel()], dynamic_code())
    return codes, scales, offset
    ### END SOLUTION


def dequantize_absmax(codes: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor,
                      block_size: int = 256) -> torch.Tensor:
    """Inverse of :func:`double_quantize`: float32 absmax values of shape ``codes.shape``."""
    levels = as_blocks(dynamic_code().to(codes.device)[codes.long()], block_size)
    return (levels * scales.unsqueeze(1)).reshape(-1)[: codes.numel()] + offset


@dataclass
class NF4Weight:
    """A weight stored in NF4: the packed codes and the (possibly double-quantized) absmax.

    Exactly one of ``absmax`` (float32) or the triple ``absmax_codes`` / ``absmax_scales`` /
    ``absmax_offset`` (double quantization) is set.
    """

    packed: torch.Tensor
    shape: tuple[int, ...]
    block_size: int = 64
    absmax: torch.Tensor | None = None
    absmax_codes: torch.Tensor | None = None
    absmax_scales: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    absmax_block_size: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax is None

    def absmax_values(self) -> torch.Tensor:
        """The float32 absmax per block (dequantized first when double-quantized)."""
        if not self.double_quant:
            return self.absmax
        return dequantize_absmax(self.absmax_codes, self.absmax_scales, self.absmax_offset,
                                 self.absmax_block_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a dense tensor of :attr:`shape` and ``dtype``."""
        return dequantize_nf4(self.packed, self.absmax_values(), self.shape, self.block_size, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (what a module keeps as buffers)."""
        return {k: getattr(self, k) for k in STORED if getattr(self, k) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes actually stored for this weight."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def quantize_weight(weight: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                    absmax_block_size: int = 256) -> NF4Weight:
    """Quantize ``weight`` to :class:`NF4Weight`, optionally double-quantizing the absmax."""
    packed, absmax = quantize_nf4(weight, block_size)
    stored = NF4Weight(packed=packed, shape=tuple(weight.shape), block_size=block_size,
                       absmax_block_size=absmax_block_size)
    if double_quant:
        codes, scales, offset = double_quantize(absmax, absmax_block_size)
        stored.absmax_codes, stored.absmax_scales, stored.absmax_offset = codes, scales, offset
    else:
        stored.absmax = absmax
    return stored
