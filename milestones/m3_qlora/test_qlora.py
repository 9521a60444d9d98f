"""Milestone 3 — QLoRA: the NF4 codebook (M3.1), blockwise quantization (M3.2),
dequantization (M3.3), double quantization (M3.4), the 4-bit layer (M3.5), bits per
parameter (M3.6). Each checks against bitsandbytes where it defines the answer."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch
from torch import nn

from ftlab.course.teaching import expect, expect_close
from ftlab.lora import LoRALinear
from ftlab.quant import (NF4Linear, dequantize_absmax, dequantize_nf4, double_quantize,
                         dynamic_code, nf4_codebook, quantize_nf4, quantize_weight,
                         stored_bits_per_parameter, theoretical_bits_per_parameter)

pytestmark = pytest.mark.m3

BNB_NF4 = bnbf.get_4bit_type("nf4", device="cpu")


def _weight(shape=(96, 70), seed=0, std=0.02):
    torch.manual_seed(seed)
    return torch.randn(shape) * std


def _bnb(weight, double_quant=False):
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                       compress_statistics=double_quant)
    return packed.reshape(-1), state


def _swap_nibbles(packed):
    return ((packed & 0xF) << 4) | (packed >> 4)


def test_m3_1_codebook_has_exact_zero_and_asymmetric_halves():
    code = nf4_codebook()
    expect(code.shape == (16,) and code.dtype == torch.float32, task="M3.1",
           what="codebook shape and dtype", expected="(16,) float32",
           got=f"{tuple(code.shape)} {code.dtype}", cause="16 levels, one per 4-bit code")
    pos, neg, zero = int((code > 0).sum()), int((code < 0).sum()), int((code == 0).sum())
    expect((pos, neg, zero) == (8, 7, 1), task="M3.1",
           what="levels above, below and exactly at zero", expected="8 positive, 7 negative, 1 zero",
           got=f"{pos} positive, {neg} negative, {zero} zero",
           cause="symmetric 16-level grid without exact zero: zero weights (and padding) must be "
                 "representable exactly; NF4 takes 8 quantiles on the positive side and 7 on the "
                 "negative side, plus 0")
    expect(bool((code[1:] > code[:-1]).all()) and code[0] == -1 and code[-1] == 1, task="M3.1",
           what="order and range", expected="strictly ascending from -1 to 1",
           got=code.tolist(), cause="sort the levels and divide by the largest")


def test_m3_1_codebook_equals_bitsandbytes():
    expect_close(nf4_codebook(), BNB_NF4, task="M3.1", what="our NF4 levels vs bitsandbytes'",
                 cause="levels at normal quantiles ndtri(p), p evenly spaced from NF4_OFFSET to "
                       "0.5 (9 points for the positive side, 8 for the negative, the last "
                       "dropped), normalised by the largest", atol=1e-7, rtol=0)


@pytest.mark.parametrize("shape", [(96, 70), (64, 256)])
def test_m3_2_codes_and_absmax_equal_bitsandbytes(shape):
    weight = _weight(shape)
    packed, absmax = quantize_nf4(weight, block_size=64)
    want_packed, state = _bnb(weight)
    n_blocks = -(-weight.numel() // 64)
    expect(tuple(absmax.shape) == (n_blocks,), task="M3.2",
           what=f"absmax shape for {weight.numel()} values in blocks of 64",
           expected=(n_blocks,), got=tuple(absmax.shape),
           cause="global absmax: each block of 64 consecutive values (row-major, flattened) "
                 "gets its own absmax, the last partial block too")
    expect_close(absmax, state.absmax, task="M3.2", what="absmax per block vs bitsandbytes",
                 cause="absmax is the largest |value| of each block", atol=0, rtol=0)
    expect(tuple(packed.shape) == tuple(want_packed.shape) and packed.dtype == torch.uint8,
           task="M3.2", what="packed codes", expected=f"uint8 {tuple(want_packed.shape)}",
           got=f"{packed.dtype} {tuple(packed.shape)}",
           cause="two 4-bit codes per byte: ceil(n / 2) bytes")
    if torch.equal(_swap_nibbles(packed), want_packed) and not torch.equal(packed, want_packed):
        expect(False, task="M3.2", what="byte layout", expected="element 2i in the high nibble",
               got="element 2i in the low nibble",
               cause="nibble order wrong: bitsandbytes stores (code[2i] << 4) | code[2i+1]")
    same = (packed == want_packed).float().mean().item()
    expect(same == 1.0, task="M3.2", what="packed codes vs bitsandbytes.quantize_4bit (nf4, 64)",
           expected="identical bytes", got=f"{100 * same:.2f}% of bytes identical",
           cause="scale each block by 1 / absmax and take the nearest NF4 level "
                 "(nearest_code); pack two codes per byte, high nibble first")


def test_m3_2_an_outlier_only_coarsens_its_own_block():
    weight = _weight((4, 64))
    weight[0, 3] = 10.0
    packed, absmax = quantize_nf4(weight, block_size=64)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(4, 64).long()
    scale = absmax.reshape(-1, 1) if absmax.numel() == 4 else absmax.reshape(-1)[:1]
    restored = BNB_NF4[codes] * scale
    rel = ((restored - weight)[1:].abs().amax() / weight[1:].abs().amax()).item()
    expect(rel < 0.15, task="M3.2", what="largest error in the three blocks without the outlier, "
           "relative to their largest value", expected="< 0.15 (half the widest NF4 gap)",
           got=f"{rel:.3f}", cause="global absmax: one outlier must only coarsen the 64 values "
                                   "of its own block")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_m3_3_dequantize_equals_bitsandbytes(dtype):
    weight = _weight((96, 70))
    packed, state = _bnb(weight)
    want = bnbf.dequantize_4bit(packed.reshape(-1, 1), state).to(dtype)
    got = dequantize_nf4(packed, state.absmax, (96, 70), block_size=64, dtype=dtype)
    expect(tuple(got.shape) == (96, 70) and got.dtype == dtype, task="M3.3",
           what="dequantized shape and dtype", expected=f"(96, 70) {dtype}",
           got=f"{tuple(got.shape)} {got.dtype}", cause="reshape to `shape`, cast to `dtype` last")
    expect_close(got, want, task="M3.3", what="dequantized weight vs bitsandbytes.dequantize_4bit",
                 cause="code[2i] is the high nibble (byte >> 4), code[2i+1] the low one "
                       "(byte & 0xF); multiply each level by its block's absmax in float32",
                 atol=0, rtol=0)


def test_m3_3_round_trip_error_is_bounded_by_the_level_gaps():
    weight = _weight((64, 256))
    packed, state = _bnb(weight)
    restored = dequantize_nf4(packed, state.absmax, (64, 256))
    blocks = weight.reshape(-1, 64)
    half_gap = (BNB_NF4[1:] - BNB_NF4[:-1]).max() / 2
    err = (restored.reshape(-1, 64) - blocks).abs().amax(1) / blocks.abs().amax(1)
    expect(err.max().item() <= half_gap + 1e-6, task="M3.3",
           what="largest round-trip error relative to the block's absmax",
           expected=f"<= half the widest level gap ({half_gap:.4f})", got=f"{err.max():.4f}",
           cause="each value must come back as its block's absmax times its level")


def _bnb_reference_blockwise(values, block_size=256):
    """bitsandbytes' reference (non-native) blockwise 8-bit quantizer."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, values, dynamic_code(), block_size)


def _absmax(shape=(512, 256)):
    """bitsandbytes' float32 absmax values of a random weight (one per block of 64)."""
    return _bnb(_weight(shape))[1].absmax


def test_m3_4_double_quant_equals_bitsandbytes():
    absmax = _absmax()
    codes, scales, offset = double_quantize(absmax, block_size=256)
    _, state = _bnb(_weight((512, 256)), double_quant=True)
    expect_close(offset, state.offset, task="M3.4", what="offset vs bitsandbytes",
                 cause="mean not subtracted: the offset is the mean of the absmax values, "
                       "subtracted before quantizing", atol=0, rtol=0)
    want_codes, want_scales = _bnb_reference_blockwise(absmax - state.offset)
    expect_close(scales, want_scales, task="M3.4", what="second-level scales (absmax of the "
                 "centred absmax values per block of 256)",
                 cause="block 256 over the centred values, one float32 scale per block",
                 atol=0, rtol=0)
    same = (codes == want_codes).float().mean().item()
    expect(codes.dtype == torch.uint8 and same == 1.0, task="M3.4",
           what="8-bit codes vs bitsandbytes' reference blockwise quantizer",
           expected="identical uint8 codes", got=f"{codes.dtype}, {100 * same:.2f}% identical",
           cause="centred value * (1 / scale) -> nearest level of dynamic_code()")


def test_m3_4_double_quant_saves_bits_and_keeps_absmax_close():
    absmax = _absmax()
    codes, scales, offset = double_quantize(absmax)
    restored = dequantize_absmax(codes, scales, offset)
    rel = ((restored - absmax).abs() / absmax).max().item()
    expect(rel < 0.01, task="M3.4", what="largest relative error of the restored absmax",
           expected="< 1%", got=f"{100 * rel:.2f}%",
           cause="mean not subtracted or the wrong code: centring makes the dynamic code "
                 "spend its fine levels on the spread of the absmax values")


def _layer(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(128, 96, bias=bias)


def test_m3_5_layer_keeps_only_the_packed_weight():
    linear = _layer()
    layer = NF4Linear(linear)
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    expect(not trainable, task="M3.5", what="trainable parameters of NF4Linear", expected="none",
           got=trainable, cause="gradient to the frozen weight: the 4-bit base never trains; keep "
                                "the bias as a buffer (or a frozen tensor), not a trainable "
                                "Parameter")
    big = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()]
           if t.is_floating_point() and t.numel() >= linear.weight.numel() // 2]
    stored = sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])
    expect(not big and stored < 0.6 * linear.weight.numel() + 4 * 96 + 64, task="M3.5",
           what="bytes stored by NF4Linear for a 96 x 128 weight", expected="< 0.6 per weight",
           got=f"{stored / linear.weight.numel():.2f} bytes per weight; large float tensors: {big}",
           cause="weight kept in full precision: store only the NF4Weight tensors "
                 "(quantize_weight(...).tensors()) and drop the float weight")


def test_m3_5_forward_and_backward_use_the_dequantized_weight():
    linear = _layer()
    layer = NF4Linear(linear)
    w = quantize_weight(linear.weight.detach()).dequantize()
    x = torch.randn(3, 5, 128, requires_grad=True)
    y = layer(x)
    expect_close(y, x @ w.T + linear.bias, task="M3.5", what="forward vs x Wq^T + b",
                 cause="store the quantized weight of `linear` and its bias", atol=1e-5)
    y.pow(2).sum().backward()
    x2 = x.detach().requires_grad_()
    (x2 @ w.T + linear.bias).pow(2).sum().backward()
    expect_close(x.grad, x2.grad, task="M3.5", what="gradient reaching the input",
                 cause="the layer must pass gradients through the dequantized weight", atol=1e-4)


def test_m3_5_qlora_gradients_reach_only_the_adapter():
    qlora = LoRALinear(NF4Linear(_layer()), r=4, alpha=8)
    with torch.no_grad():
        qlora.lora_B.normal_(std=0.1)
    qlora(torch.randn(4, 128)).sum().backward()
    got = sorted(n for n, p in qlora.named_parameters() if p.grad is not None)
    expect(got == ["lora_A", "lora_B"], task="M3.5",
           what="parameters with a gradient after backward through LoRA on NF4Linear",
           expected=["lora_A", "lora_B"], got=got,
           cause="gradient to the frozen weight: only the adapter trains in QLoRA")


def test_m3_6_theoretical_bits():
    cases = {(64, False): 4.5, (64, True): 4 + 8 / 64 + 32 / (64 * 256), (128, False): 4.25}
    for (block, dq), want in cases.items():
        got = theoretical_bits_per_parameter(block, dq)
        expect(abs(got - want) < 1e-9, task="M3.6",
               what=f"bits per weight, block {block}, double quant {dq}",
               expected=f"{want:.4f}", got=f"{got:.4f}",
               cause="4 bits per code plus the absmax's share: 32 bits per block, or with double "
                     "quantization 8 bits per block plus 32 bits per 256 blocks")


def test_m3_6_theory_matches_the_stored_tensors():
    for dq in (False, True):
        layer = NF4Linear(nn.Linear(256, 688), double_quant=dq)
        measured, theory = stored_bits_per_parameter(layer), theoretical_bits_per_parameter(64, dq)
        expect(abs(measured / theory - 1) < 0.01, task="M3.6",
               what=f"theory vs bits measured from the stored tensors (double quant {dq})",
               expected=f"within 1% of {measured:.4f}", got=f"{theory:.4f}",
               cause="count every stored tensor: the 4-bit codes and the absmax (or its codes "
                     "and scales)")
