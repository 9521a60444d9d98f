"""Milestone 3 — QLoRA: the NF4 codebook (M3.1), blockwise quantization (M3.2),
dequantization (M3.3), double quantization (M3.4), the 4-bit layer (M3.5), bits per
parameter (M3.6). Each checks against bitsandbytes where it defines the answer.

Each check grades one task: where a task builds on another, bitsandbytes stands in for the
other task's function (fixtures ``bnb_nf4_table`` and ``bnb_kernels``), so a mistake in M3.1
is reported by M3.1's checks, not by M3.2's.
"""

from __future__ import annotations

import math
from fractions import Fraction

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
    ascending = bool((code[1:] > code[:-1]).all())
    near = ascending and code[-1] == 1 and abs(code[0].item() + 1) < 1e-5
    expect(ascending and code[0] == -1 and code[-1] == 1, task="M3.1",
           what="order and range", expected="strictly ascending from -1 to 1",
           got=code.tolist(),
           cause="the lowest level is -ndtri(p) of the same first point NF4_OFFSET as the highest, "
                 "so it is exactly -1: compute both sides alike (float64 quantiles of the same "
                 "float32 linspace points)" if near else
                 "sort the levels and divide by the largest")


def test_m3_1_codebook_equals_bitsandbytes_bit_for_bit():
    code = nf4_codebook()
    zero = code[(code == 0)]
    expect(not bool(torch.signbit(zero).any()), task="M3.1", what="sign of the zero level",
           expected="+0.0", got=zero.tolist(),
           cause="zero level is -0.0 (from -ndtri(0.5), p = 0.5 kept on the negative side): "
                 "drop p = 0.5 from both sides (linspace(...)[:-1]) and add an exact +0.0")
    if code.shape != BNB_NF4.shape or code.dtype != torch.float32:
        return  # shape and dtype are reported by test_m3_1_codebook_has_exact_zero_...
    off = (code.double() - BNB_NF4.double()).abs().max().item()
    expect(torch.equal(code, BNB_NF4), task="M3.1",
           what="NF4 levels vs bitsandbytes' table, bit for bit",
           expected="identical float32 values",
           got=f"{int((code != BNB_NF4).sum())} of 16 levels differ, by up to {off:.3g}",
           cause="rounding order: compute the quantiles in float64 (ndtri of .double() "
                 "points), cast the 16 values to float32, sort, then divide by the maximum in "
                 "float32 (quantiles in float32, or the division in float64, are off by an ulp)"
           if off < 1e-6 else
           "levels at normal quantiles ndtri(p), p evenly spaced from NF4_OFFSET to 0.5 (9 "
           "points for the positive side, 8 for the negative, the last dropped), normalised by "
           "the largest")


def test_m3_1_codebook_equals_bitsandbytes():
    expect_close(nf4_codebook(), BNB_NF4, task="M3.1", what="our NF4 levels vs bitsandbytes'",
                 cause="levels at normal quantiles ndtri(p), p evenly spaced from NF4_OFFSET to "
                       "0.5 (9 points for the positive side, 8 for the negative, the last "
                       "dropped), normalised by the largest", atol=1e-7, rtol=0)


_QUANTIZE_CAUSE = ("return (packed, absmax): packed uint8 (ceil(n / 2),), two codes per byte; "
                   "absmax float32, one per block of 64")


def _quantize(weight):
    n, before = weight.numel(), weight.clone()
    with explained(task="M3.2", what=f"quantize_nf4 of a {tuple(weight.shape)} weight ({n} values)",
                   expected=f"(packed uint8 ({(n + 1) // 2},), absmax float32 ({-(-n // 64)},))",
                   cause=_QUANTIZE_CAUSE):
        packed, absmax = quantize_nf4(weight, block_size=64)
    expect(torch.equal(weight, before), task="M3.2", what="the weight passed to quantize_nf4",
           expected="left unmodified", got="changed", cause=_IN_PLACE_CAUSE)
    return torch.as_tensor(packed), torch.as_tensor(absmax)


_IN_PLACE_CAUSE = ("input modified in place (mul_, div_, *=, /= on a view of the weight): scale "
                   "a float32 copy")


def _absmax_causes(absmax, weight, block_size=64):
    """Likely causes of wrong absmax values, judged from the values that came back."""
    flat, b = weight.reshape(-1).float(), block_size
    n, got = flat.numel(), absmax.reshape(-1).float()
    if got.numel() == 1 and n > b or (got.numel() > 1 and bool((got == flat.abs().max()).all())):
        return [f"global absmax: each block of {b} consecutive values (row-major, flattened) "
                "gets its own absmax"]
    causes = []
    if weight.dim() == 2 and got.numel() == weight.shape[0] and weight.shape[1] != b:
        causes.append(f"absmax per row: a block is {b} consecutive values of the flattened "
                      "weight, running across rows")
    if n % b and got.numel() == n // b:
        causes.append("last partial block dropped: it gets its own absmax too")
    if got.numel() == -(-n // b):
        blocks = F.pad(flat, (0, -n % b)).view(-1, b)
        if torch.equal(got, blocks.amax(1)):
            causes.append("absmax is the largest |value| of a block, not its largest value")
        elif bool((got != blocks.abs().amax(1))[blocks.abs().amax(1) < 1e-6].any()):
            causes.append("the stored absmax is the block's largest |value|, 0 for an all-zero "
                          "block: clamp only the divisor (to TINY), not the absmax kept")
    return causes or [f"absmax is the largest |value| of each block of {b} consecutive values "
                      "of the flattened weight"]


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


def _spec_quantize(values, block_size, levels, divide=False):
    """The docstrings' blockwise quantization, one block at a time, of float32 ``values``:
    ``(codes int64 (n,), absmax float32 (n_blocks,))``. Each block is multiplied by
    ``1 / max(absmax, TINY)`` in float32 (or, ``divide``, divided: a wrong answer to recognise);
    a value's code is the number of level midpoints strictly below it (the nearest level, a tie
    going to the lower one)."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    codes, absmax = [], []
    for start in range(0, values.numel(), block_size):
        block = values[start:start + block_size]
        top = block.abs().max()
        divisor = top.clamp(min=blockwise.TINY)
        scaled = block / divisor if divide else block * (1.0 / divisor)
        codes.append((scaled.unsqueeze(1) > midpoints).sum(1))
        absmax.append(top)
    return torch.cat(codes), torch.stack(absmax)


def _unpack(packed, n):
    """The n codes of packed bytes (high nibble first) and the padding nibble (or None)."""
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    return codes[:n], (int(codes[n]) if codes.numel() > n else None)


def _rounding_sensitive(top, levels):
    """Values in (-top, top) whose code differs between x * (1 / top) and x / top: the float32
    neighbours of each level midpoint times ``top`` where the two round to different sides."""
    top = torch.tensor(top)
    midpoints = (levels[:-1] + levels[1:]) / 2
    found, x = [], midpoints * top
    for direction in (float("inf"), float("-inf")):
        near = x
        for _ in range(4):
            keep = ((near * (1.0 / top) > midpoints) != (near / top > midpoints))
            found.append(near[keep & (near.abs() < top)])
            near = torch.nextafter(near, torch.full_like(near, direction))
    return torch.cat(found)


def _call_quantize(weight, block_size, what):
    n = weight.numel()
    with explained(task="M3.2", what=f"quantize_nf4 of {what}, block_size={block_size}",
                   expected=f"(packed uint8 ({(n + 1) // 2},), absmax float32 "
                            f"({-(-n // block_size)},))",
                   cause="flatten with weight.reshape(-1) (the weight may be a non-contiguous "
                         "view, such as a transpose); blocks of block_size values, the last one "
                         "zero-padded; return (packed uint8 (ceil(n / 2),), absmax float32 "
                         "(ceil(n / block_size),))"):
        return quantize_nf4(weight, block_size=block_size)


def _expect_quantized(weight, block_size, what, *, cause, special=()):
    """Quantize ``weight`` with quantize_nf4 and compare everything with the slow spec.

    ``special``: pairs (boolean mask (n,), cause) of the values this case is about: a mismatch
    there is reported with that cause, one elsewhere with ``cause``, unless the codes are those
    of a recognised mistake (nibbles swapped, division)."""
    before = weight.detach().clone()
    n, n_blocks = weight.numel(), -(-weight.numel() // block_size)
    packed, absmax = _call_quantize(weight, block_size, what)
    expect(torch.equal(weight.detach(), before), task="M3.2", what=f"{what}: the weight passed in",
           expected="left unmodified", got="changed by quantize_nf4", cause=_IN_PLACE_CAUSE)
    expect(isinstance(packed, torch.Tensor) and isinstance(absmax, torch.Tensor), task="M3.2",
           what=f"{what}: types returned", expected="(torch.Tensor, torch.Tensor)",
           got=f"({type(packed).__name__}, {type(absmax).__name__})", cause=_QUANTIZE_CAUSE)
    dtype_cause = {weight.dtype: f"absmax left in the weight's dtype ({weight.dtype}): convert "
                   "the weight to float32 first (weight.float()); all the maths is float32",
                   torch.float64: "absmax in float64: the maths is float32 (weight.float())"}
    expect(absmax.dtype == torch.float32 and packed.dtype == torch.uint8, task="M3.2",
           what=f"{what}: dtypes", expected="packed uint8, absmax float32",
           got=f"packed {packed.dtype}, absmax {absmax.dtype}",
           cause=dtype_cause.get(absmax.dtype, "codes packed into uint8 bytes; absmax float32"))
    expect(absmax.grad_fn is None and not absmax.requires_grad, task="M3.2",
           what=f"{what}: autograd history of absmax", expected="none (a plain tensor)",
           got=f"requires_grad={absmax.requires_grad}, grad_fn={absmax.grad_fn}",
           cause="weight not detached: quantize weight.detach(); the absmax must not carry the "
                 "weight's graph (it would keep the full-precision weight alive)")
    flat, as_float = weight.detach().reshape(-1).float(), weight.detach().float()
    expect(tuple(absmax.shape) == (n_blocks,), task="M3.2",
           what=f"{what}: absmax shape, {n} values in blocks of {block_size}",
           expected=(n_blocks,), got=tuple(absmax.shape),
           cause=f"block_size ignored (64 hard-coded?): blocks of block_size={block_size}"
           if block_size != 64 and absmax.numel() == -(-n // 64) else
           "; or ".join(_absmax_causes(absmax, as_float, block_size)))
    expect(tuple(packed.shape) == ((n + 1) // 2,), task="M3.2", what=f"{what}: packed shape",
           expected=((n + 1) // 2,), got=tuple(packed.shape),
           cause="two 4-bit codes per byte: ceil(n / 2) bytes, one dimension")
    want_codes, want_absmax = _spec_quantize(flat, block_size, BNB_NF4)
    zero = want_absmax == 0
    same = torch.where(zero, absmax <= blockwise.TINY, absmax == want_absmax)
    expect(bool(same.all()), task="M3.2", what=f"{what}: absmax per block",
           expected=want_absmax[~same][:4].tolist(), got=absmax[~same][:4].tolist(),
           cause="; or ".join(_absmax_causes(absmax, as_float, block_size)))
    codes, pad = _unpack(packed, n)
    wrong = codes != want_codes
    if not bool(wrong.any()):
        expect(n % 2 == 0 or pad == ZERO_CODE, task="M3.2", what=f"{what}: the padding nibble "
               f"of the last byte (odd n = {n})", expected=ZERO_CODE, got=pad,
               cause=f"odd-size padding nibble wrong: it holds {ZERO_CODE}, the code of the "
                     "zero level, as if the last block were padded with 0.0")
        return
    if torch.equal(_swap_nibbles(packed)[: n // 2], _pack(want_codes)[: n // 2]):
        why = ("nibble order wrong: element 2i in the high nibble, (code[2i] << 4) | "
               "code[2i+1]")
    elif torch.equal(codes, _spec_quantize(flat, block_size, BNB_NF4, divide=True)[0]):
        why = _DIVIDE_CAUSE
    else:
        why = next((why for mask, why in special if bool(wrong[mask].any())), cause)
    where = wrong.nonzero().flatten()[:6].tolist()
    expect(False, task="M3.2", what=f"{what}: codes", expected=want_codes[where].tolist(),
           got=f"{codes[where].tolist()} at elements {where} ({int(wrong.sum())} of {n} differ)",
           cause=why)


def _pack(codes):
    codes = F.pad(codes, (0, codes.numel() % 2), value=ZERO_CODE).to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2]


_DIVIDE_CAUSE = ("divided by the absmax: scale by multiplying with 1 / absmax (float32), as "
                 "bitsandbytes does; x / a and x * (1 / a) can round to opposite sides of a "
                 "level boundary")


def _normal(shape, seed, dtype=torch.float32):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)


_SPEC_CASES = {
    "block 32, 135 values": (lambda: _normal((5, 27), 1), 32),
    "block 128, 135 values": (lambda: _normal((5, 27), 2), 128),
    "block 2, 15 values": (lambda: _normal((3, 5), 3), 2),
    "exactly one block (64 values)": (lambda: _normal((64,), 4), 64),
    "a (2, 3, 11) tensor": (lambda: _normal((2, 3, 11), 5), 64),
    "a bfloat16 weight": (lambda: _normal((6, 40), 6, torch.bfloat16), 64),
    "a float16 weight, block 32": (lambda: _normal((6, 41), 7, torch.float16), 32),
    "a transposed (non-contiguous) weight": (lambda: _normal((40, 6), 8).T, 64),
    "a weight that requires grad": (lambda: nn.Parameter(_normal((3, 50), 9)), 64),
}


@pytest.mark.parametrize("case", list(_SPEC_CASES))
def test_m3_2_quantizes_any_shape_dtype_and_block_size_by_the_spec(case, bnb_nf4_table):
    make, block_size = _SPEC_CASES[case]
    weight = make()
    cause = ("in float32 whatever the weight's dtype: weight.float() first, then scale each "
             "block by 1 / its absmax and take nearest_code" if weight.dtype != torch.float32
             else f"blocks of block_size={block_size} consecutive values (the last one "
                  "partial), each scaled by 1 / its own absmax, nearest_code")
    _expect_quantized(weight, block_size, case, cause=cause)


def test_m3_2_ties_go_to_the_lower_level(bnb_nf4_table):
    midpoints = (BNB_NF4[:-1] + BNB_NF4[1:]) / 2
    up = torch.nextafter(midpoints, torch.ones(15))
    down = torch.nextafter(midpoints, -torch.ones(15))
    block = torch.cat([torch.tensor([1.0, -1.0, 0.0, -0.0]), midpoints, up, down, BNB_NF4[1:]])
    tie = torch.zeros(64, dtype=torch.bool)
    tie[4:19] = True
    _expect_quantized(block, 64, "a block of absmax 1 holding every level midpoint, its float32 "
                      "neighbours, the levels and +-0", special=[(tie, _TIE_CAUSE)],
                      cause="scale each block by 1 / its absmax (float32), then nearest_code")


_TIE_CAUSE = ("a value exactly halfway between two levels gets the lower code (nearest_code "
              "compares with the midpoints; argmin |x - level| or bucketize(right=True) round "
              "some ties up)")


def test_m3_2_scale_multiplies_by_the_reciprocal(bnb_nf4_table):
    parts = []
    for top in (0.9, 3.3):
        tricky = _rounding_sensitive(top, BNB_NF4).unique()[:40]
        filler = _normal((64 - 1 - tricky.numel(),), 10).clamp(-top / 2, top / 2)
        parts += [torch.tensor([top]), tricky, filler]
    _expect_quantized(torch.cat(parts), 64, "two blocks with values where x / absmax and "
                      "x * (1 / absmax) round to different codes",
                      cause="scale each block by multiplying with 1 / its absmax (float32), "
                            "then nearest_code")


def test_m3_2_all_zero_and_tiny_blocks(bnb_nf4_table):
    zero = torch.zeros(64)
    tiny = _normal((64,), 11) * 1e-28
    weight = torch.cat([_normal((64,), 12), zero, tiny, torch.tensor([0.5, -0.0]), zero[:62],
                        zero[:9]])
    zeros, tinies = torch.zeros((2, weight.numel()), dtype=torch.bool)
    zeros[64:128] = zeros[192:] = True
    tinies[128:192] = True
    _expect_quantized(weight, 64, "blocks of zeros (a full and a partial one) and a block of "
                      "values near 1e-30", special=[
                          (zeros, "an all-zero block gets absmax 0 and the zero level's code 7: "
                                  "0 * (1 / 0) is NaN, divide by absmax.clamp(min=TINY)"),
                          (tinies, "a block of tiny values is scaled like any other: an epsilon "
                                   "larger than TINY (clamped or added) changes its codes")],
                      cause="scale each block by 1 / max(absmax, TINY), then nearest_code")


def _on_meta(task, what, call, expected, cause):
    """``call()`` on meta tensors; skipped when the code uses an operation the meta device
    cannot run (a value read with .item(), an op without a meta kernel)."""
    try:
        with explained(task=task, what=what, expected=expected, cause=cause):
            return call()
    except NotImplementedError as error:
        if "meta" not in str(error).lower():
            raise
        pytest.skip(f"an operation without a meta kernel: {error}")
    except AssertionError as error:
        if "item()" in str(error) or "data-dependent" in str(error):
            pytest.skip("a value is read with .item(): the device check needs meta tensors")
        raise


_DEVICE_CAUSE = ("a tensor made on the CPU: create every tensor on the input's device "
                 "(device=weight.device, or .to(packed.device) for the codebook)")


def test_m3_2_outputs_stay_on_the_weight_device(bnb_nf4_table):
    weight = torch.empty(5, 13, device="meta")
    out = _on_meta("M3.2", "quantize_nf4 of a (5, 13) weight on the meta device",
                   lambda: quantize_nf4(weight, 64), "packed and absmax on the meta device",
                   _DEVICE_CAUSE)
    got = [t.device.type for t in out]
    expect(got == ["meta", "meta"], task="M3.2", what="devices of packed and absmax",
           expected=["meta", "meta"], got=got, cause=_DEVICE_CAUSE)


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


def _spec_dequantize(packed, absmax, shape, block_size, dtype, *, low_first=False,
                     multiply_in=torch.float32, levels=BNB_NF4):
    """dequantize_nf4 as its docstring says it, element by element: element i is the level of
    nibble i (high nibble first) times the absmax of block i // block_size, in float32, cast to
    ``dtype`` last. ``low_first`` / ``multiply_in``: wrong answers to recognise."""
    i = torch.arange(math.prod(shape))
    byte = packed.long()[i // 2]
    first, second = (byte & 0xF, byte >> 4) if low_first else (byte >> 4, byte & 0xF)
    levels = levels[torch.where(i % 2 == 0, first, second)]
    return (levels.to(multiply_in) * absmax[i // block_size].to(multiply_in)).to(dtype
                                                                               ).reshape(shape)


_DEQUANT_CASES = {
    "block 32, (5, 27)": ((5, 27), 32, torch.float32),
    "block 128, (5, 27)": ((5, 27), 128, torch.float32),
    "block 2, (3, 5)": ((3, 5), 2, torch.float32),
    "exactly one block, (64,)": ((64,), 64, torch.float32),
    "1-D, (135,)": ((135,), 64, torch.float32),
    "3-D, (2, 3, 11), bfloat16": ((2, 3, 11), 64, torch.bfloat16),
    "float16, block 32, (6, 41)": ((6, 41), 32, torch.float16),
}


@pytest.mark.parametrize("case", list(_DEQUANT_CASES))
def test_m3_3_dequantizes_any_shape_dtype_and_block_size_by_the_spec(case, bnb_nf4_table):
    shape, block_size, dtype = _DEQUANT_CASES[case]
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(n + block_size)
    packed = torch.randint(0, 256, ((n + 1) // 2,), generator=gen, dtype=torch.uint8)
    absmax = torch.rand(-(-n // block_size), generator=gen) * 3
    absmax[0] = 0.0
    inputs = (packed.clone(), absmax.clone())
    with explained(task="M3.3", what=f"dequantize_nf4 of random codes, {case}",
                   expected=f"a {dtype} tensor of shape {shape}",
                   cause=f"unpack two codes per byte, look them up, multiply by the absmax of "
                         f"their block of block_size={block_size}, keep the first n values, "
                         "reshape to `shape`"):
        got = dequantize_nf4(packed, absmax, shape, block_size=block_size, dtype=dtype)
    expect(torch.equal(packed, inputs[0]) and torch.equal(absmax, inputs[1]), task="M3.3",
           what=f"{case}: packed and absmax passed in", expected="left unmodified",
           got=f"packed {tuple(packed.shape)}, absmax {tuple(absmax.shape)}, values changed: "
               f"{not (packed.shape == inputs[0].shape and absmax.shape == inputs[1].shape)}",
           cause="input modified in place (unsqueeze_, mul_, ...): work on new tensors")
    expect(tuple(got.shape) == shape and got.dtype == dtype, task="M3.3",
           what=f"{case}: shape and dtype", expected=f"{shape} {dtype}",
           got=f"{tuple(got.shape)} {got.dtype}",
           cause="reshape to exactly `shape` (any number of dimensions), cast to `dtype` last")
    want = _spec_dequantize(packed, absmax, shape, block_size, dtype)
    if torch.equal(got, want):
        return
    causes = []
    if block_size < 64 or -(-n // 64) <= absmax.numel():
        if torch.equal(got, _spec_dequantize(packed, absmax, shape, 64, dtype)):
            causes.append(f"block_size ignored (64 hard-coded?): absmax[i // {block_size}] "
                          "scales element i")
    if torch.equal(got, _spec_dequantize(packed, absmax, shape, block_size, dtype,
                                         low_first=True)):
        causes.append("nibbles unpacked low first: code[2i] is the high nibble (byte >> 4)")
    if dtype != torch.float32 and torch.equal(
            got, _spec_dequantize(packed, absmax, shape, block_size, dtype, multiply_in=dtype)):
        causes.append(f"multiplied in {dtype}: multiply level by absmax in float32, cast to "
                      "dtype last")
    if dtype != torch.float32 and torch.equal(got, _spec_dequantize(
            packed, absmax, shape, block_size, dtype, levels=BNB_NF4.to(dtype).float())):
        causes.append(f"codebook cast to {dtype} before multiplying: look the levels up in "
                      "float32, cast to dtype last")
    wrong = (got != want).reshape(-1).nonzero().flatten()[:5]
    expect(False, task="M3.3", what=f"{case}: dequantized values",
           expected=want.reshape(-1)[wrong].tolist(),
           got=f"{got.reshape(-1)[wrong].tolist()} at elements {wrong.tolist()}",
           cause="; or ".join(causes) or "element i = level of nibble i (high nibble first) times "
                 f"absmax[i // {block_size}], in float32, cast to dtype last")


def test_m3_3_output_stays_on_the_packed_device(bnb_nf4_table):
    packed = torch.empty(33, dtype=torch.uint8, device="meta")
    absmax = torch.empty(2, device="meta")
    got = _on_meta("M3.3", "dequantize_nf4 of meta tensors, shape (5, 13), bfloat16",
                   lambda: dequantize_nf4(packed, absmax, (5, 13), 64, torch.bfloat16),
                   "a (5, 13) bfloat16 tensor on the meta device", _DEVICE_CAUSE)
    expect(got.device.type == "meta" and tuple(got.shape) == (5, 13), task="M3.3",
           what="device and shape of the output", expected="meta (5, 13)",
           got=f"{got.device.type} {tuple(got.shape)}", cause=_DEVICE_CAUSE)


def _absmax(shape=(512, 256)):
    """bitsandbytes' float32 absmax values of a random weight (one per block of 64)."""
    return _bnb(_weight(shape))[1].absmax


def _double_quantize(absmax):
    with explained(task="M3.4", what=f"double_quantize of {absmax.numel()} absmax values",
                   expected=f"(codes uint8 ({absmax.numel()},), scales float32 "
                            f"({-(-absmax.numel() // 256)},), offset float32 scalar)",
                   cause="subtract the mean, then quantize blocks of 256 with dynamic_code()"):
        before = absmax.clone()
        codes, scales, offset = double_quantize(absmax, block_size=256)
    expect(torch.equal(absmax, before), task="M3.4", what="the absmax passed to double_quantize",
           expected="left unmodified", got="changed",
           cause="input modified in place (absmax -= mean, sub_): subtract into a new tensor")
    return torch.as_tensor(codes), torch.as_tensor(scales), torch.as_tensor(offset)


def test_m3_4_double_quant_equals_bitsandbytes():
    absmax = _absmax()
    codes, scales, offset = _double_quantize(absmax)
    _, state = _bnb(_weight((512, 256)), double_quant=True)
    expect(offset.shape == () and offset.dtype == torch.float32, task="M3.4",
           what="offset shape and dtype", expected="a float32 scalar tensor, shape ()",
           got=f"{offset.dtype} shape {tuple(offset.shape)}",
           cause="one offset, the mean of every absmax value (not one per block), a float32 "
                 "scalar tensor")
    close = abs(offset.item() - state.offset.item()) <= 1e-6 * state.offset.item()
    expect_close(offset, state.offset, task="M3.4", what="offset vs bitsandbytes",
                 cause="offset = absmax.mean() in float32, as bitsandbytes (a mean in float64 "
                       "differs in the last bits)" if close else
                       "mean not subtracted: the offset is the mean of the absmax values, "
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


_DOUBLE_CAUSE = ("offset = absmax.mean() (a float32 scalar tensor); the centred values "
                 "absmax - offset, zero-padded to whole blocks of block_size, each block times "
                 "1 / its absmax (float32), nearest level of dynamic_code(); one uint8 code per "
                 "value")


def _grid_absmax(n, seed):
    """n positive absmax-like values on a grid of 2**-18: their float32 sums are exact in any
    order, so every correct mean is the same float32 number."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2**11, 2**13, (n,), generator=gen).float() * 2.0**-18


def _expect_double_quantized(absmax, block_size, what):
    n, n_blocks = absmax.numel(), -(-absmax.numel() // block_size)
    before = absmax.clone()
    with explained(task="M3.4", what=f"double_quantize of {what}, block_size={block_size}",
                   expected=f"(codes uint8 ({n},), scales float32 ({n_blocks},), offset "
                            "float32 scalar)", cause=_DOUBLE_CAUSE):
        codes, scales, offset = double_quantize(absmax, block_size=block_size)
    expect(torch.equal(absmax, before), task="M3.4", what=f"{what}: the absmax passed in",
           expected="left unmodified", got="changed by double_quantize",
           cause="input modified in place (absmax -= mean, sub_): subtract into a new tensor")
    expect(isinstance(offset, torch.Tensor) and offset.dtype == torch.float32
           and offset.shape == (), task="M3.4", what=f"{what}: the offset",
           expected="a float32 tensor of shape () (one mean for all values)",
           got=f"{type(offset).__name__} " + (f"{offset.dtype} shape {tuple(offset.shape)}"
                                              if isinstance(offset, torch.Tensor) else ""),
           cause="offset as a Python number (.item()): return the tensor absmax.mean()"
           if isinstance(offset, float) else
           "one offset, the mean of every absmax value (not one per block), a float32 scalar "
           "tensor")
    mean = absmax.mean()
    blocks = F.pad(absmax, (0, -n % block_size)).view(-1, block_size)
    expect(abs(offset.item() - mean.item()) <= 1e-6 * mean.item(), task="M3.4",
           what=f"{what}: the offset", expected=f"{mean.item():.8g} (the mean of the {n} values)",
           got=f"{offset.item():.8g}",
           cause="mean over the padding: the offset is the mean of the n absmax values, not of "
                 "the zero-padded blocks" if abs(offset.item() - blocks.mean().item()) < 1e-9
           else "mean not subtracted: the offset is the mean of the absmax values"
           if offset.item() == 0 else "offset = absmax.mean()")
    for name, got, dtype, want_shape in (("codes", codes, torch.uint8, (n,)),
                                         ("scales", scales, torch.float32, (n_blocks,))):
        size = got.numel() if isinstance(got, torch.Tensor) else -1
        expect(size >= 0 and got.dtype == dtype and tuple(got.shape) == want_shape,
               task="M3.4", what=f"{what}: {name}", expected=f"{dtype} {want_shape}",
               got=f"{got.dtype} {tuple(got.shape)}" if size >= 0 else type(got).__name__,
               cause=f"block_size ignored (256 hard-coded?): one scale per {block_size} values"
               if name == "scales" and block_size != 256 and size == -(-n // 256) else
               "codes of the padding kept: one code per absmax value, drop the rest"
               if name == "codes" and size == n_blocks * block_size else _DOUBLE_CAUSE)
    centred = absmax - offset
    want_codes, want_scales = _spec_quantize(centred, block_size, dynamic_code())
    padded_first = (F.pad(absmax, (0, -n % block_size)) - offset).view(-1, block_size)
    padded_after = F.pad(centred, (0, -n % block_size)).view(-1, block_size)
    expect(torch.equal(scales, want_scales), task="M3.4",
           what=f"{what}: scales (the largest |centred value| of each block)",
           expected=want_scales[:4].tolist(), got=scales[:4].tolist(),
           cause="padded before subtracting the mean: pad the centred values with zeros (a "
                 "padding of -offset sets the last block's scale)"
           if torch.equal(scales, padded_first.abs().amax(1)) else
           "the largest |centred value| of each block, not its largest value"
           if torch.equal(scales, padded_after.amax(1)) else _DOUBLE_CAUSE)
    wrong = codes.long() != want_codes
    if not bool(wrong.any()):
        return
    divided = _spec_quantize(centred, block_size, dynamic_code(), divide=True)[0]
    flat_scale = want_scales.repeat_interleave(block_size)[:n]
    midpoints = (dynamic_code()[:-1] + dynamic_code()[1:]) / 2
    at_midpoint = ((centred * (1.0 / flat_scale.clamp(min=blockwise.TINY))).unsqueeze(1)
                   == midpoints).any(1)
    where = wrong.nonzero().flatten()[:6]
    expect(False, task="M3.4", what=f"{what}: codes", expected=want_codes[where].tolist(),
           got=f"{codes[where].tolist()} at {where.tolist()} ({int(wrong.sum())} of {n} differ)",
           cause="a block whose centred values are all 0 has scale 0, and 0 * (1 / 0) is NaN: "
                 "divide by scales.clamp(min=TINY); its codes are those of 0"
           if bool((flat_scale[wrong] == 0).all()) else
           "divided by the scale: multiply the centred values by 1 / scale (float32), as "
           "bitsandbytes does; x / s and x * (1 / s) can round to opposite sides of a level "
           "boundary" if torch.equal(codes.long(), divided) else
           _TIE_CAUSE if bool(at_midpoint[wrong].all()) else _DOUBLE_CAUSE)


_DOUBLE_CASES = {"300 values (a partial last block)": (300, 256),
                 "exactly one block of 256": (256, 256),
                 "5 values (one partial block)": (5, 256),
                 "1000 values, block 128": (1000, 128),
                 "700 values, block 512": (700, 512)}


@pytest.mark.parametrize("case", list(_DOUBLE_CASES))
def test_m3_4_double_quantizes_any_count_and_block_size_by_the_spec(case):
    n, block_size = _DOUBLE_CASES[case]
    _expect_double_quantized(_grid_absmax(n, seed=n), block_size, case)


def test_m3_4_ties_and_scaling_round_like_quantize_nf4():
    """256 values K +- d, d = j * 2**-21, around K = 2**-6, so every correct mean is exactly K
    and the centred values are exactly +-d; the j are chosen where d * (1 / D) (D the largest
    d) is exactly a midpoint between two levels, or where d / D rounds to another code."""
    step, top = 2.0**-21, 16320
    d = torch.arange(1, top) * step
    scale = torch.tensor(top * step)
    code = dynamic_code()
    midpoints = (code[:-1] + code[1:]) / 2
    scaled = d * (1.0 / scale)
    tie = d[(scaled.unsqueeze(1) == midpoints).any(1)]
    tricky = d[(scaled.unsqueeze(1) > midpoints).sum(1)
               != ((d / scale).unsqueeze(1) > midpoints).sum(1)]
    chosen = torch.cat([tie[:30], tricky[:60], scale.reshape(1)])
    filler = torch.arange(1, 128 - chosen.numel() + 1) * 97 * step
    offsets = torch.cat([chosen, filler])
    absmax = torch.cat([2.0**-6 + offsets, 2.0**-6 - offsets])
    _expect_double_quantized(absmax, 256, "256 absmax values whose centred values fall exactly "
                             "on level midpoints, or where x / s and x * (1 / s) round to "
                             "different codes")


@pytest.mark.parametrize("n", [300, 1])
def test_m3_4_equal_absmax_values_quantize_to_the_zero_code(n):
    absmax = torch.full((n,), 2.0**-6)
    _expect_double_quantized(absmax, 256, f"{n} equal absmax values")


def test_m3_4_outputs_stay_on_the_absmax_device():
    absmax = torch.empty(300, device="meta")
    out = _on_meta("M3.4", "double_quantize of 300 absmax values on the meta device",
                   lambda: double_quantize(absmax, 256), "codes, scales, offset on meta",
                   _DEVICE_CAUSE)
    got = [getattr(t, "device", type(t).__name__) for t in out]
    expect(all(getattr(d, "type", None) == "meta" for d in got), task="M3.4",
           what="devices of codes, scales and offset", expected=["meta"] * 3,
           got=[str(d) for d in got], cause=_DEVICE_CAUSE)


def _layer(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(128, 96, bias=bias)


def _nf4_linear(linear, **kwargs):
    with explained(task="M3.5", what="NF4Linear(nn.Linear(128, 96))",
                   expected="a layer holding the NF4Weight tensors as buffers",
                   cause="stored = quantize_weight(weight, block_size, double_quant); register "
                         "each of stored.tensors() and a frozen copy of the bias as buffers "
                         "(bias None when the linear has none)"):
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


_LAYER_CASES = {
    "block 64, double quant, bias": dict(block_size=64, double_quant=True, bias=True),
    "block 128, no double quant, bias": dict(block_size=128, double_quant=False, bias=True),
    "block 32, double quant, no bias, compute bfloat16": dict(
        block_size=32, double_quant=True, bias=False, compute_dtype=torch.bfloat16),
}


def _shares_memory(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("case", list(_LAYER_CASES))
def test_m3_5_layer_stores_exactly_the_quantized_weight_and_bias(case, bnb_kernels):
    args = dict(_LAYER_CASES[case])
    bias = args.pop("bias")
    linear = _layer(seed=3, bias=bias)
    layer = _nf4_linear(linear, **args)
    params = [name for name, _ in layer.named_parameters()]
    expect(not params, task="M3.5", what=f"{case}: parameters of NF4Linear", expected="none",
           got=params, cause="register the NF4 tensors and the bias with register_buffer: a "
                             "frozen nn.Parameter is still a parameter (optimizers, "
                             "model.to(dtype) and parameter counts treat it as a weight)")
    stored = quantize_weight(linear.weight.detach(), args["block_size"], args["double_quant"])
    want = {**stored.tensors(), **({"bias": linear.bias.detach()} if bias else {})}
    got = dict(layer.named_buffers())
    extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    causes = []
    if ("absmax" in got) != ("absmax" in want):
        causes.append(f"double_quant ignored: quantize_weight(weight, block_size, double_quant) "
                      f"with the layer's double_quant={args['double_quant']}")
    if "bias" in extra:
        causes.append("a linear without bias keeps bias None (a zero bias is an extra tensor)")
    expect(not extra and not missing, task="M3.5", what=f"{case}: buffers of NF4Linear",
           expected=sorted(want), got=sorted(got),
           cause="; or ".join(causes) or "keep nothing but the NF4Weight tensors "
                 "(quantize_weight(...).tensors()) and a copy of the bias")
    expect(not bias or layer.bias is not None, task="M3.5", what=f"{case}: layer.bias",
           expected="the bias", got=None, cause="register the bias copy as 'bias'")
    for name, tensor in want.items():
        ok = got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)
        expect(ok, task="M3.5", what=f"{case}: buffer {name!r}",
               expected=f"{tensor.dtype} {tuple(tensor.shape)}, equal to quantize_weight's",
               got=f"{got[name].dtype} {tuple(got[name].shape)}" + ("" if got[name].shape !=
                                                                  tensor.shape else ", differs"),
               cause=f"block_size ignored: quantize with the layer's block_size="
                     f"{args['block_size']} (quantize_weight(weight, block_size, double_quant))"
               if name != "bias" else "bias: a frozen copy of linear.bias, same dtype")
    graph = [name for name, t in got.items() if t.requires_grad or t.grad_fn is not None]
    expect(not graph, task="M3.5", what=f"{case}: buffers with autograd history",
           expected="none", got=graph,
           cause="bias not detached: linear.bias.detach().clone(); a bias that requires grad "
                 "sends gradients back to the original layer")
    kept = sorted(set(got) - set(layer.state_dict()))
    expect(not kept, task="M3.5", what=f"{case}: buffers missing from state_dict()",
           expected="none", got=kept,
           cause="registered with persistent=False: the quantized weight must be saved and "
                 "loaded with the model (register_buffer(name, tensor))")
    plain = [name for name, value in vars(layer).items() if isinstance(value, torch.Tensor)
             and value.is_floating_point() and value.numel() >= linear.weight.numel() // 2]
    expect(not plain, task="M3.5", what=f"{case}: tensors kept as plain attributes",
           expected="none", got=plain,
           cause="weight kept in full precision as a plain attribute: drop the float weight "
                 "once quantized")
    shared = [name for name, t in got.items() if _shares_memory(t, linear.weight)
              or (bias and _shares_memory(t, linear.bias))]
    expect(not shared, task="M3.5", what=f"{case}: buffers sharing memory with the nn.Linear",
           expected="none", got=shared,
           cause="bias not copied: keep linear.bias.detach().clone(), so changing the original "
                 "layer does not change this one")
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(4))
    w = stored.dequantize(args.get("compute_dtype") or torch.float32)
    h = x.to(w.dtype)
    want_y = (h @ w.T + (linear.bias.detach().to(w.dtype) if bias else 0)).float()
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        with explained(task="M3.5", what=f"{case}: forward of a (2, 3, 128) batch in {mode} "
                       "mode", expected="shape (2, 3, 96)",
                       cause="register the buffers under the names NF4Weight uses (STORED)"):
            y = layer(x)
        expect_close(y, want_y, task="M3.5", what=f"{case}: forward in {mode} mode vs "
                     "x Wq^T + b", cause="store the quantized weight of `linear` with the "
                     "layer's block_size and double_quant, and its bias (None when it has none)",
                     atol=1e-5)


def _bits(block, double_quant, second):
    """Exact bits per weight: 4 per code plus the absmax's share."""
    share = Fraction(8, block) + Fraction(32, block * second) if double_quant else Fraction(32, block)
    return 4 + share


@pytest.mark.parametrize("double_quant", [False, True])
def test_m3_6_bits_for_any_block_sizes(double_quant):
    for block, second in [(16, 256), (32, 64), (64, 128), (128, 256), (256, 1024), (64, 256)]:
        want = _bits(block, double_quant, second)
        with explained(task="M3.6", what=f"theoretical_bits_per_parameter({block}, "
                       f"{double_quant}, {second})", expected=f"{float(want):.6f}",
                       cause="bits per weight from block_size, double_quant, absmax_block_size"):
            got = theoretical_bits_per_parameter(block, double_quant, second)
            by_name = theoretical_bits_per_parameter(block_size=block, double_quant=double_quant,
                                                     absmax_block_size=second)
        what = f"bits per weight, block {block}, double quant {double_quant}, absmax block {second}"
        formula = (f"4 + 8/{block} + 32/({block}*{second})" if double_quant else
                   f"4 + 32/{block}")
        causes = ["a float (true division /, not //)"] if isinstance(got, int) else []
        if got == float(_bits(block, double_quant, 256)) and second != 256 and double_quant:
            causes.append("absmax_block_size ignored (256 hard-coded?): one float32 scale per "
                          "absmax_block_size absmax codes")
        if block != 64 and got in (float(_bits(64, double_quant, second)),
                                   float(4 + Fraction(8, 64) + Fraction(32, block * second))):
            causes.append("block_size ignored (64 hard-coded?): one absmax per block_size "
                          "weights, 8 bits each with double quantization")
        expect(isinstance(got, float) and abs(got - float(want)) < 1e-12 and by_name == got,
               task="M3.6", what=what, expected=f"float {float(want):.6f} = {formula}",
               got=f"{type(got).__name__} {got!r}" + ("" if by_name == got else
                                                       f" (by keyword: {by_name!r})"),
               cause="; or ".join(causes) or "4 bits per code plus the absmax's share: 32 "
               "bits per block, or with double quantization 8 bits per block plus 32 bits per "
               "absmax_block_size blocks")


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
