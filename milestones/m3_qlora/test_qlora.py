"""Milestone 3 — QLoRA: the NF4 codebook (M3.1), blockwise quantization (M3.2),
dequantization (M3.3), double quantization (M3.4), the 4-bit layer (M3.5), bits per
parameter (M3.6). Each checks against bitsandbytes where it defines the answer.

Each check grades one task: where a task builds on another, bitsandbytes stands in for the
other task's function (fixtures ``bnb_nf4_table`` and ``bnb_kernels``), so a mistake in M3.1
is reported by M3.1's checks, not by M3.2's.
"""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ftlab.quant
import ftlab.quant.blockwise as blockwise
import ftlab.quant.codebook as codebook
from ftlab.course.teaching import expect, expect_close, explained
from ftlab.quant import (NF4Linear, dequantize_absmax, dequantize_nf4, double_quantize,
                         dynamic_code, nf4_codebook, quantize_nf4, quantize_weight,
                         theoretical_bits_per_parameter)

pytestmark = pytest.mark.m3

BNB_NF4 = bnbf.get_4bit_type("nf4", device="cpu")
ZERO_CODE = 7
"""Index of NF4's exact zero level."""


def _weight(shape=(96, 70), seed=0, std=0.02):
    torch.manual_seed(seed)
    return torch.randn(shape) * std


def _bnb(weight, double_quant=False, block_size=64):
    packed, state = bnbf.quantize_4bit(weight, blocksize=block_size, quant_type="nf4",
                                       compress_statistics=double_quant)
    return packed.reshape(-1), state


def _bnb_dequantize(packed, absmax, shape, block_size=64):
    """bitsandbytes' reference (non-native) NF4 dequantization kernel, float32."""
    op = torch.ops.bitsandbytes.dequantize_4bit.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, packed.reshape(-1, 1), absmax, block_size, "nf4", list(shape),
                         torch.float32)


def _bnb_reference_blockwise(values, block_size=256):
    """bitsandbytes' reference (non-native) blockwise 8-bit quantizer."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, values, dynamic_code(), block_size)


def _swap_nibbles(packed):
    return ((packed & 0xF) << 4) | (packed >> 4)


@pytest.fixture
def bnb_nf4_table(monkeypatch):
    """bitsandbytes' NF4 table in place of your nf4_codebook() (M3.1) while M3.2 and M3.3
    are graded."""
    for module in (codebook, blockwise, ftlab.quant):
        monkeypatch.setattr(module, "nf4_codebook", lambda: BNB_NF4.clone())


@pytest.fixture
def bnb_kernels(monkeypatch, bnb_nf4_table):
    """bitsandbytes in place of your quantize_nf4 (M3.2), dequantize_nf4 (M3.3) and
    double_quantize (M3.4) while M3.5 and M3.6 are graded."""

    def quantize(weight, block_size=64):
        packed, state = _bnb(weight.detach().float(), block_size=block_size)
        return packed, state.absmax

    def dequantize(packed, absmax, shape, block_size=64, dtype=torch.float32):
        return _bnb_dequantize(packed, absmax, shape, block_size).to(dtype)

    def double(absmax, block_size=256):
        centre = absmax.mean()
        codes, scales = _bnb_reference_blockwise(absmax - centre, block_size)
        return codes, scales, centre

    for module in (blockwise, ftlab.quant):
        monkeypatch.setattr(module, "quantize_nf4", quantize)
        monkeypatch.setattr(module, "dequantize_nf4", dequantize)
        monkeypatch.setattr(module, "double_quantize", double)


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


_QUANTIZE_CAUSE = ("return (packed, absmax): packed uint8 (ceil(n / 2),), two codes per byte; "
                   "absmax float32, one per block of 64")


def _quantize(weight):
    n = weight.numel()
    with explained(task="M3.2", what=f"quantize_nf4 of a {tuple(weight.shape)} weight ({n} values)",
                   expected=f"(packed uint8 ({(n + 1) // 2},), absmax float32 ({-(-n // 64)},))",
                   cause=_QUANTIZE_CAUSE):
        packed, absmax = quantize_nf4(weight, block_size=64)
        return torch.as_tensor(packed), torch.as_tensor(absmax)


def _absmax_causes(absmax, weight):
    """Likely causes of wrong absmax values, judged from the values that came back."""
    flat = weight.reshape(-1)
    n, got = flat.numel(), absmax.reshape(-1).float()
    if got.numel() == 1 or (got.numel() > 1 and bool((got == flat.abs().max()).all())):
        return ["global absmax: each block of 64 consecutive values (row-major, flattened) gets "
                "its own absmax"]
    causes = []
    if weight.dim() == 2 and got.numel() == weight.shape[0] and weight.shape[1] != 64:
        causes.append("absmax per row: a block is 64 consecutive values of the flattened "
                      "weight, running across rows")
    if n % 64 and got.numel() == n // 64:
        causes.append("last partial block dropped: it gets its own absmax too")
    if got.numel() == -(-n // 64):
        blocks = F.pad(flat, (0, -n % 64)).view(-1, 64)
        if torch.equal(got, blocks.amax(1)):
            causes.append("absmax is the largest |value| of a block, not its largest value")
    return causes or ["absmax is the largest |value| of each block of 64 consecutive values of "
                      "the flattened weight"]


def _packed_causes(packed, want, n):
    """Likely causes of wrong packed bytes (same shape as bitsandbytes'), from what came back."""
    body = slice(0, n // 2)  # the bytes holding two values
    body_ok = torch.equal(packed[body], want[body])
    swapped = not body_ok and torch.equal(_swap_nibbles(packed[body]), want[body])
    causes = []
    if swapped:
        causes.append("nibble order wrong: bitsandbytes stores (code[2i] << 4) | code[2i+1], "
                      "element 2i in the high nibble")
    codes_ok = body_ok or swapped
    if n % 2:
        last, last_want = int(packed[-1]), int(want[-1])
        data, pad = (last & 0xF, last >> 4) if swapped else (last >> 4, last & 0xF)
        codes_ok = codes_ok and data == last_want >> 4
        if pad != ZERO_CODE:
            causes.append(f"odd-size padding nibble wrong: the last byte's second nibble holds "
                          f"{pad}, but bitsandbytes stores {ZERO_CODE}, the code of the zero level "
                          f"(the last block is padded with 0.0, quantized like any value)")
    if not codes_ok:
        causes.append("codes differ: scale each block by 1 / absmax (its own) and take the "
                      "nearest NF4 level with nearest_code")
    return causes


@pytest.mark.parametrize("shape", [(96, 70), (64, 256), (7, 9), (5, 13)])
def test_m3_2_codes_and_absmax_equal_bitsandbytes(shape, bnb_nf4_table):
    weight = _weight(shape)
    n = weight.numel()
    packed, absmax = _quantize(weight)
    want_packed, state = _bnb(weight)
    n_blocks = -(-n // 64)
    expect(tuple(absmax.shape) == (n_blocks,), task="M3.2",
           what=f"absmax shape for {n} values in blocks of 64", expected=(n_blocks,),
           got=tuple(absmax.shape), cause="; or ".join(_absmax_causes(absmax, weight)))
    expect(torch.equal(absmax.float(), state.absmax), task="M3.2",
           what="absmax per block vs bitsandbytes", expected=state.absmax[:4].tolist(),
           got=absmax[:4].tolist(), cause="; or ".join(_absmax_causes(absmax, weight)))
    size = {n: "one code per byte: pack two codes into each byte",
            n_blocks * 64 // 2: "padding bytes kept: keep the first ceil(n / 2) bytes"}
    expect(tuple(packed.shape) == tuple(want_packed.shape) and packed.dtype == torch.uint8,
           task="M3.2", what=f"packed codes of {n} values",
           expected=f"uint8 {tuple(want_packed.shape)}",
           got=f"{packed.dtype} {tuple(packed.shape)}",
           cause=size.get(packed.numel(), "two 4-bit codes per byte: ceil(n / 2) bytes, uint8"))
    if torch.equal(packed, want_packed):
        return
    same = (packed == want_packed).float().mean().item()
    got = f"{100 * same:.2f}% of bytes identical"
    if n % 2:
        got += f"; last byte 0x{int(packed[-1]):02x}, bitsandbytes' 0x{int(want_packed[-1]):02x}"
    expect(False, task="M3.2", what=f"packed codes of a {shape} weight vs "
           "bitsandbytes.quantize_4bit (nf4, block 64)", expected="identical bytes", got=got,
           cause="; or ".join(_packed_causes(packed, want_packed, n)))


def _relative_error(packed, scale, weight, high_first=True):
    """Largest error of the blocks without the outlier (rows 1-3), relative to their largest
    value, decoding each byte's nibbles in the given order."""
    first, second = (packed >> 4, packed & 0xF) if high_first else (packed & 0xF, packed >> 4)
    codes = torch.stack([first, second], dim=1).reshape(4, 64).long()
    restored = BNB_NF4[codes] * scale
    return ((restored - weight)[1:].abs().amax() / weight[1:].abs().amax()).item()


def test_m3_2_an_outlier_only_coarsens_its_own_block(bnb_nf4_table):
    weight = _weight((4, 64))
    weight[0, 3] = 10.0
    packed, absmax = _quantize(weight)
    expect(packed.numel() == 128, task="M3.2", what="packed codes of 256 values",
           expected="128 bytes", got=f"{packed.numel()} bytes",
           cause="two 4-bit codes per byte: ceil(n / 2) bytes")
    got = absmax.reshape(-1).float()
    scale = got.reshape(-1, 1) if got.numel() == 4 else got[:1]
    rel = _relative_error(packed, scale, weight)
    if rel < 0.15:
        return
    if got.numel() == 1 or bool((got[-3:] == 10.0).all()):
        causes = ["global absmax: one outlier must only coarsen the 64 values of its own block"]
    elif got.numel() == 4 and _relative_error(packed, scale, weight, high_first=False) < 0.15:
        causes = ["nibble order wrong: element 2i goes in the high nibble (the absmax values "
                  "are right)"]
    else:
        causes = _absmax_causes(absmax, weight) if got.numel() != 4 else [
            "values not scaled by their own block's absmax, or codes not the nearest level"]
    expect(False, task="M3.2", what="largest error in the three blocks without the outlier, "
           "relative to their largest value", expected="< 0.15 (half the widest NF4 gap)",
           got=f"{rel:.3f} (absmax {[round(v, 3) for v in got[:4].tolist()]})",
           cause="; or ".join(causes))


@pytest.mark.parametrize(("shape", "dtype"), [((96, 70), torch.float32),
                                              ((96, 70), torch.bfloat16),
                                              ((7, 9), torch.float32)])
def test_m3_3_dequantize_equals_bitsandbytes(shape, dtype, bnb_nf4_table):
    weight = _weight(shape)
    packed, state = _bnb(weight)
    want = _bnb_dequantize(packed, state.absmax, shape).to(dtype)
    with explained(task="M3.3", what=f"dequantize_nf4 of bitsandbytes' codes for a {shape} weight",
                   expected=f"a {dtype} tensor of shape {shape}",
                   cause="unpack two codes per byte, look them up, multiply by each block's "
                         "absmax, keep the first n values, reshape to `shape`"):
        got = dequantize_nf4(packed, state.absmax, shape, block_size=64, dtype=dtype)
    expect(tuple(got.shape) == shape and got.dtype == dtype, task="M3.3",
           what="dequantized shape and dtype", expected=f"{shape} {dtype}",
           got=f"{tuple(got.shape)} {got.dtype}", cause="reshape to `shape`, cast to `dtype` last")
    low_first = _bnb_dequantize(_swap_nibbles(packed), state.absmax, shape).to(dtype)
    cause = ("nibbles unpacked low first: code[2i] is the high nibble (byte >> 4), code[2i+1] "
             "the low one (byte & 0xF)" if torch.equal(got, low_first) else
             "code[2i] is the high nibble (byte >> 4), code[2i+1] the low one (byte & 0xF); "
             "multiply each level by its block's absmax in float32, cast to dtype last")
    expect_close(got, want, task="M3.3", what="dequantized weight vs bitsandbytes' dequantize_4bit",
                 cause=cause, atol=0, rtol=0)


def test_m3_3_round_trip_error_is_bounded_by_the_level_gaps(bnb_nf4_table):
    weight = _weight((64, 256))
    packed, state = _bnb(weight)
    with explained(task="M3.3", what="dequantize_nf4 of bitsandbytes' codes for a (64, 256) weight",
                   expected="a float32 tensor of shape (64, 256)",
                   cause="unpack two codes per byte, look them up, multiply by each block's "
                         "absmax"):
        restored = dequantize_nf4(packed, state.absmax, (64, 256))
    expect(tuple(restored.shape) == (64, 256), task="M3.3", what="dequantized shape",
           expected=(64, 256), got=tuple(restored.shape), cause="reshape to `shape`")
    blocks = weight.reshape(-1, 64)
    half_gap = (BNB_NF4[1:] - BNB_NF4[:-1]).max() / 2
    err = (restored.reshape(-1, 64) - blocks).abs().amax(1) / blocks.abs().amax(1)
    low_first = _bnb_dequantize(_swap_nibbles(packed), state.absmax, (64, 256))
    expect(err.max().item() <= half_gap + 1e-6, task="M3.3",
           what="largest round-trip error relative to the block's absmax",
           expected=f"<= half the widest level gap ({half_gap:.4f})", got=f"{err.max():.4f}",
           cause="nibbles unpacked low first: code[2i] is the high nibble (byte >> 4)"
                 if torch.equal(restored, low_first) else
                 "each value must come back as its block's absmax times its level")


def _absmax(shape=(512, 256)):
    """bitsandbytes' float32 absmax values of a random weight (one per block of 64)."""
    return _bnb(_weight(shape))[1].absmax


def _double_quantize(absmax):
    with explained(task="M3.4", what=f"double_quantize of {absmax.numel()} absmax values",
                   expected=f"(codes uint8 ({absmax.numel()},), scales float32 "
                            f"({-(-absmax.numel() // 256)},), offset float32 scalar)",
                   cause="subtract the mean, then quantize blocks of 256 with dynamic_code()"):
        codes, scales, offset = double_quantize(absmax, block_size=256)
        return torch.as_tensor(codes), torch.as_tensor(scales), torch.as_tensor(offset)


def test_m3_4_double_quant_equals_bitsandbytes():
    absmax = _absmax()
    codes, scales, offset = _double_quantize(absmax)
    _, state = _bnb(_weight((512, 256)), double_quant=True)
    expect_close(offset, state.offset, task="M3.4", what="offset vs bitsandbytes",
                 cause="mean not subtracted: the offset is the mean of the absmax values, "
                       "subtracted before quantizing", atol=0, rtol=0)
    want_codes, want_scales = _bnb_reference_blockwise(absmax - state.offset)
    expect_close(scales, want_scales, task="M3.4", what="second-level scales (absmax of the "
                 "centred absmax values per block of 256)",
                 cause="block 256 over the centred values, one float32 scale per block",
                 atol=0, rtol=0)
    same = (codes == want_codes).float().mean().item() if codes.shape == want_codes.shape else 0.0
    expect(codes.dtype == torch.uint8 and same == 1.0, task="M3.4",
           what="8-bit codes vs bitsandbytes' reference blockwise quantizer",
           expected=f"identical uint8 codes, shape {tuple(want_codes.shape)}",
           got=f"{codes.dtype} {tuple(codes.shape)}, {100 * same:.2f}% identical",
           cause="centred value * (1 / scale) -> nearest level of dynamic_code()")


def test_m3_4_double_quant_saves_bits_and_keeps_absmax_close():
    absmax = _absmax()
    codes, scales, offset = _double_quantize(absmax)
    with explained(task="M3.4", what="dequantize_absmax(codes, scales, offset) (given)",
                   expected=f"{absmax.numel()} absmax values",
                   cause="codes: one uint8 per absmax value; scales: one float32 per block of 256"):
        restored = dequantize_absmax(codes, scales, offset)
    rel = ((restored - absmax).abs() / absmax).max().item()
    centred = abs(offset.item() - absmax.mean().item()) <= 1e-6 * absmax.mean().item()
    expect(rel < 0.01, task="M3.4", what="largest relative error of the restored absmax",
           expected="< 1%", got=f"{100 * rel:.2f}% (offset {offset.item():.4g})",
           cause="the wrong code or block: each centred value * (1 / its block's scale) -> "
                 "nearest level of dynamic_code()" if centred else
                 "mean not subtracted: centring makes the dynamic code spend its fine levels on "
                 "the spread of the absmax values")


def _layer(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(128, 96, bias=bias)


def _nf4_linear(linear, **kwargs):
    with explained(task="M3.5", what="NF4Linear(nn.Linear(128, 96))",
                   expected="a layer holding the NF4Weight tensors as buffers",
                   cause="stored = quantize_weight(weight, block_size, double_quant); register "
                         "each of stored.tensors() and a frozen copy of the bias as buffers"):
        return NF4Linear(linear, **kwargs)


def test_m3_5_layer_keeps_only_the_packed_weight(bnb_kernels):
    linear = _layer()
    layer = _nf4_linear(linear)
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


def test_m3_5_forward_and_backward_use_the_dequantized_weight(bnb_kernels):
    linear = _layer()
    layer = _nf4_linear(linear)
    w = quantize_weight(linear.weight.detach()).dequantize()
    x = torch.randn(3, 5, 128, requires_grad=True)
    with explained(task="M3.5", what="forward of a (3, 5, 128) batch", expected="shape (3, 5, 96)",
                   cause="register the buffers under the names NF4Weight uses (STORED)"):
        y = layer(x)
    expect_close(y, x @ w.T + linear.bias, task="M3.5", what="forward vs x Wq^T + b",
                 cause="store the quantized weight of `linear` and its bias", atol=1e-5)
    y.pow(2).sum().backward()
    x2 = x.detach().requires_grad_()
    (x2 @ w.T + linear.bias).pow(2).sum().backward()
    expect_close(x.grad, x2.grad, task="M3.5", what="gradient reaching the input",
                 cause="the layer must pass gradients through the dequantized weight", atol=1e-4)


class _Adapted(nn.Module):
    """A frozen base plus a trainable low-rank update ``x Aᵀ Bᵀ``, written here (not M2's
    LoRALinear) so that M3.5 is graded on its own."""

    def __init__(self, base):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(4, base.in_features, generator=gen) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, 4, generator=gen) * 0.1)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B)


def test_m3_5_qlora_gradients_reach_only_the_adapter(bnb_kernels):
    qlora = _Adapted(_nf4_linear(_layer()))
    with explained(task="M3.5", what="backward through an adapter on NF4Linear",
                   expected="gradients for the adapter only",
                   cause="the layer's forward runs on its buffers; nothing in it trains"):
        qlora(torch.randn(4, 128)).sum().backward()
    got = sorted(n for n, p in qlora.named_parameters() if p.grad is not None)
    expect(got == ["lora_A", "lora_B"], task="M3.5",
           what="parameters with a gradient after backward through an adapter on NF4Linear",
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
    weight = _weight((688, 256))
    for dq in (False, True):
        packed, state = _bnb(weight, double_quant=dq)
        stored = [packed, state.absmax] + ([state.state2.absmax, state.offset] if dq else [])
        measured = 8 * sum(t.numel() * t.element_size() for t in stored) / weight.numel()
        theory = theoretical_bits_per_parameter(64, dq)
        expect(abs(measured / theory - 1) < 0.01, task="M3.6",
               what=f"theory vs bits measured from bitsandbytes' stored tensors "
                    f"(double quant {dq})",
               expected=f"within 1% of {measured:.4f}", got=f"{theory:.4f}",
               cause="count every stored tensor: the 4-bit codes and the absmax (or its codes "
                     "and scales)")
