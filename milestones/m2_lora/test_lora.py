"""Milestone 2 — LoRA: the layer (M2.1, M2.2), targets (M2.3), injection (M2.4), merge (M2.5).

Each check grades one task: the checks of M2.2, M2.4 and M2.5 build their adapters with
:class:`_Adapter` (known A, B, scaling and dropout, without running your ``__init__``), so a
mistake in M2.1 is reported by M2.1's checks, not by theirs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import ftlab.lora.inject
from ftlab.course.teaching import expect, expect_close, explained
from ftlab.lora import (KNOWN_TARGETS, LoRALinear, find_target_modules, inject_lora,
                        lora_layers, merge_lora, parameter_report)
from ftlab.lora.layer import dense_weight, linear_dims
from ftlab.models.tiny import tiny_model

pytestmark = pytest.mark.m2


class _Adapter(LoRALinear):
    """A LoRALinear set up by the checks (M2.1's contract, not your M2.1 code): frozen base,
    seeded A (r x in) and B (out x r, zero when ``b_std`` is 0) in the base weight's dtype
    (or ``dtype``), scaling alpha / r, dropout. Its ``forward`` (M2.2) and ``delta_weight``
    (M2.5) are yours."""

    def __init__(self, base, r, alpha, dropout=0.0, *, b_std=0.0, seed=0, dtype=None):
        nn.Module.__init__(self)
        fan_in, fan_out = linear_dims(base)
        weight = base.weight if dtype is None else base.weight.to(dtype)
        gen = torch.Generator().manual_seed(seed)
        self.base_layer = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        a = torch.rand(r, fan_in, generator=gen, dtype=torch.float64) * 2 - 1
        b = torch.randn(fan_out, r, generator=gen, dtype=torch.float64) * b_std
        self.lora_A = nn.Parameter((a / math.sqrt(fan_in)).to(weight.dtype))
        self.lora_B = nn.Parameter(b.to(weight.dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()


def _linear(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(24, 16, dtype=dtype)


def _conv1d(seed=0):
    """GPT-2's Conv1D, 24 -> 16: its weight is stored (in, out); a non-zero bias."""
    torch.manual_seed(seed)
    layer = Conv1D(16, 24)
    with torch.no_grad():
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def _adapter(dropout=0.0, b_std=0.2, dtype=torch.float32, base=None, r=4, adapter_dtype=None):
    base = _linear(dtype=dtype) if base is None else base
    return _Adapter(base, r=r, alpha=8.0, dropout=dropout, b_std=b_std, seed=1,
                    dtype=adapter_dtype)


def _dense(layer, x):
    """The slow reference, in float64: x Wᵀ + b + scaling · x Aᵀ Bᵀ (no dropout)."""
    base = layer.base_layer
    w, b = dense_weight(base).detach().double(), base.bias.detach().double()
    a, bb = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    x = x.detach().double()
    return x @ w.T + b + layer.scaling * (x @ a.T @ bb.T)


@contextlib.contextmanager
def _on_meta(**explain):
    """``explained`` for a call on the meta device, where copying data out (``.cpu()``,
    ``.item()``, ``.tolist()``) raises NotImplementedError: that one is a mistake, not a stub
    (a stub's error names its task)."""
    with explained(**explain):
        try:
            yield
        except NotImplementedError as error:
            if re.search(r"\b(M\d+|C)\.\d+\b", str(error)):
                raise
            expect(False, task=explain["task"], what=explain["what"],
                   expected=explain["expected"], got=f"NotImplementedError: {error}",
                   cause=explain["cause"])


# M2.1 — inspected directly: no forward pass (that is M2.2).

def _scaling_causes(r, alpha):
    """What scaling each misreading of "alpha / r" gives, by cause."""
    return {
        "integer division: alpha // r floors (alpha=4, r=8 gives 0, alpha=12.0, r=8 gives "
        "1.0); use true division, alpha / r": alpha // r,
        "scaling rounded to an integer (int() or round()): keep alpha / r as it is":
            (int(alpha / r), round(alpha / r)),
        "scaling alpha instead of alpha / r": alpha,
        "scaling r / alpha: the ratio is upside down; it is alpha / r": r / alpha,
        "scaling alpha / sqrt(r) is rsLoRA's; LoRA (and PEFT's default) uses alpha / r":
            alpha / math.sqrt(r),
    }


def _expect_scaling(layer, r, alpha):
    """layer.scaling == alpha / r, or the misreading(s) of it that give what came back."""
    want, got = alpha / r, layer.scaling
    try:
        value = float(got)
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    fits = [cause for cause, wrong in _scaling_causes(r, alpha).items()
            if any(math.isclose(value, w, rel_tol=1e-9) and not math.isclose(w, want)
                   for w in (wrong if isinstance(wrong, tuple) else (wrong,)))]
    expect(math.isclose(value, want, rel_tol=1e-9), task="M2.1",
           what=f"scaling for r={r}, alpha={alpha!r}", expected=want, got=got,
           cause="; or ".join(fits) or "scaling = alpha / r (true division)")


def test_m2_1_wraps_the_base_and_b_starts_at_zero():
    base = _linear()
    weight = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8.0)
    expect(layer.base_layer is base, task="M2.1", what="layer.base_layer",
           expected="the very module passed in", got=type(layer.base_layer).__name__,
           cause="keep the base layer itself as self.base_layer (no copy, no new layer)")
    expect(torch.equal(base.weight, weight), task="M2.1", what="the base weight after wrapping",
           expected="unchanged", got="changed", cause="wrapping must not modify the base layer")
    b = layer.lora_B.detach()
    nonzero = int((b != 0).sum())
    expect(nonzero == 0, task="M2.1", what="lora_B right after init", expected="all zeros",
           got=f"{nonzero} of {b.numel()} entries non-zero (max |B| {b.abs().max():.3g})",
           cause="B random: B must start at zero so the adapted model equals the base model "
                 "before training")


def test_m2_1_shapes_scaling_and_init():
    layer = LoRALinear(_linear(), r=4, alpha=8.0)
    _expect_scaling(layer, 4, 8.0)
    shapes = (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape))
    expect(shapes == ((4, 24), (16, 4)), task="M2.1", what="shapes of (A, B) for in=24, out=16",
           expected=((4, 24), (16, 4)), got=shapes, cause="A is (r, in) and B is (out, r)")
    bound = 1 / math.sqrt(24)  # kaiming_uniform_(a=sqrt(5)) on fan_in 24
    a = layer.lora_A.detach()
    expect(a.abs().max() <= bound + 1e-7 and a.std() > bound / 3, task="M2.1",
           what="A's initial values", expected=f"uniform in ±{bound:.4f}",
           got=f"max |A| {a.abs().max():.4f}, std {a.std():.4f}",
           cause="initialise A with nn.init.kaiming_uniform_(A, a=math.sqrt(5)), as PEFT does")
    frozen = [n for n, p in layer.base_layer.named_parameters() if p.requires_grad]
    expect(not frozen, task="M2.1", what="trainable parameters of the base layer",
           expected="none", got=f"base parameters trainable: {frozen}",
           cause="freeze the base layer's parameters (every one: weight and bias)")
    params = dict(layer.named_parameters())
    adapters = {n: params[n].requires_grad if n in params else "not a registered Parameter"
                for n in ("lora_A", "lora_B")}
    expect(all(v is True for v in adapters.values()), task="M2.1",
           what="lora_A and lora_B among the layer's parameters, requiring gradients",
           expected={"lora_A": True, "lora_B": True}, got=adapters,
           cause="A and B must be nn.Parameter attributes that require gradients (a plain tensor "
                 "is not registered, so the optimizer never sees it); freeze only the base, "
                 "not the whole layer after creating A and B")


def test_m2_1_dtype_and_dropout_module():
    layer = LoRALinear(_linear(dtype=torch.float64), r=4, alpha=8.0, dropout=0.25)
    dtypes = (layer.lora_A.dtype, layer.lora_B.dtype)
    expect(dtypes == (torch.float64, torch.float64), task="M2.1",
           what="dtypes of (A, B) around a float64 base", expected="(float64, float64)",
           got=dtypes, cause="create A and B with the base weight's dtype and device")
    drop = layer.lora_dropout
    expect(isinstance(drop, nn.Dropout) and drop.p == 0.25, task="M2.1",
           what="lora_dropout for dropout=0.25", expected="nn.Dropout(p=0.25)", got=drop,
           cause="self.lora_dropout is an nn.Dropout of the given probability (it is then "
                 "active in train mode only)")
    none = LoRALinear(_linear(), r=4, alpha=8.0).lora_dropout
    expect(isinstance(none, nn.Identity) or getattr(none, "p", None) == 0, task="M2.1",
           what="lora_dropout for dropout=0", expected="nn.Identity()", got=none,
           cause="without dropout the adapter input passes unchanged")


@pytest.mark.parametrize(("r", "alpha"), [(8, 4), (8, 12.0), (1, 1), (16, 32), (3, 2)],
                         ids=["alpha-below-r", "float-alpha", "r1", "int-alpha", "odd-r"])
def test_m2_1_scaling_is_alpha_over_r(r, alpha):
    with explained(task="M2.1", what=f"LoRALinear(24 -> 16 layer, r={r}, alpha={alpha!r})",
                   expected="a LoRALinear", cause="scaling = alpha / r, whatever r and alpha"):
        layer = LoRALinear(_linear(), r=r, alpha=alpha)
    _expect_scaling(layer, r, alpha)


class _Packed4bit(nn.Module):
    """A stand-in 4-bit base like ftlab's NF4Linear: no float ``weight`` at all, only packed
    codes; ``dequantized()`` gives the float32 (out, in) weight."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", torch.zeros(linear.weight.numel() // 2, dtype=torch.uint8))
        self.bias = None
        self._weight = linear.weight.detach().float()

    def dequantized(self, dtype=torch.float32):
        return self._weight.to(dtype)

    def forward(self, x):
        return x @ self._weight.to(x.dtype).T


@pytest.mark.parametrize("kind", ["conv1d", "4-bit", "meta-bf16"])
def test_m2_1_adapter_follows_the_base_sizes_dtype_and_device(kind):
    base, dtype, device = {
        "conv1d": lambda: (_conv1d(), torch.float32, "cpu"),
        "4-bit": lambda: (_Packed4bit(_linear()), torch.float32, "cpu"),
        "meta-bf16": lambda: (nn.Linear(24, 16, device="meta", dtype=torch.bfloat16),
                              torch.bfloat16, "meta"),
    }[kind]()
    what = {"conv1d": "GPT-2 Conv1D base (weight stored (in, out) = (24, 16))",
            "4-bit": "4-bit base (packed codes, no float weight; dense_weight is float32)",
            "meta-bf16": "bfloat16 base on the meta device"}[kind]
    with _on_meta(task="M2.1", what=f"LoRALinear(24 -> 16 {what}, r=4, alpha=8)",
                  expected="a LoRALinear",
                  cause="take the sizes from linear_dims(base) and dtype and device from the "
                        "given weight = dense_weight(base): base.weight may be transposed "
                        "(Conv1D) or missing (a 4-bit base)"):
        layer = LoRALinear(base, r=4, alpha=8)
    shapes = (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape))
    expect(shapes == ((4, 24), (16, 4)), task="M2.1", what=f"shapes of (A, B) for a {what}",
           expected=((4, 24), (16, 4)), got=shapes,
           cause="take in_features, out_features from linear_dims(base), not base.weight.shape: "
                 "GPT-2's Conv1D stores its weight as (in, out)")
    dtypes = (layer.lora_A.dtype, layer.lora_B.dtype)
    expect(dtypes == (dtype, dtype), task="M2.1", what=f"dtypes of (A, B) for a {what}",
           expected=(dtype, dtype), got=dtypes,
           cause="create A and B with the dtype of weight = dense_weight(base) (float32 for a "
                 "4-bit base)")
    devices = (layer.lora_A.device.type, layer.lora_B.device.type)
    expect(devices == (device, device), task="M2.1", what=f"devices of (A, B) for a {what}",
           expected=(device, device), got=devices,
           cause="create A and B on the base weight's device: torch.empty/zeros(..., "
                 "device=weight.device), or they stay on the CPU while the model is on the GPU")


# M2.2 — the forward of an adapter set up by the checks.

_FORWARD_CAUSE = ("transposes swapped: x @ A.T gives (.., r), then @ B.T gives (.., out); "
                  "A is (r, in) and B is (out, r)")


_IN_PLACE_CAUSE = ("x modified in place: with dropout off (eval, or p = 0) lora_dropout(x) and "
                   "x.to(A.dtype) return x itself, so an in-place op on them (*=, mul_) changes "
                   "the caller's x; use out-of-place ops")


@pytest.mark.parametrize(("make", "shape", "r"), [
    (_linear, (2, 5, 24), 4), (_conv1d, (5, 24), 4), (_linear, (24,), 1)],
    ids=["linear-3d", "conv1d-2d", "r1-1d"])
def test_m2_2_forward_equals_dense_update(make, shape, r):
    layer = _adapter(base=make(), r=r).eval()
    kind = type(layer.base_layer).__name__
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    x_before = x.clone()
    with explained(task="M2.2", what=f"forward of a {shape} batch through a 24 -> 16 {kind} "
                   f"with r={r}", expected=f"a tensor of shape {(*shape[:-1], 16)}",
                   cause=_FORWARD_CAUSE + "; x is (..., in_features), with any leading "
                         "dimensions (none too); compute the base path as self.base_layer(x) "
                         "(a Conv1D or 4-bit base stores its weight differently)"):
        got = layer(x)
    expect(torch.equal(x, x_before), task="M2.2", what="the input x after forward (eval mode)",
           expected="unchanged", got="modified", cause=_IN_PLACE_CAUSE)
    want, s = _dense(layer, x), layer.scaling
    x64 = x.double()
    update = x64 @ layer.lora_A.detach().double().T @ layer.lora_B.detach().double().T
    base = want - s * update
    bias = layer.base_layer.bias.detach().double()
    fits = [cause for cause, wrong in {  # what a misread formula gives
        "the scaling missing: multiply the update by self.scaling": base + update,
        "scaling applied twice: once, on the update only": base + s * s * update,
        "scaling applied to the base output too: only the update is scaled": s * (base + update),
        "the base bias missing: compute the base path as self.base_layer(x)": want - bias,
    }.items() if got.shape == want.shape and torch.allclose(got.double(), wrong, atol=1e-5)]
    expect_close(got, want, task="M2.2",
                 what=f"LoRA forward ({kind} base, r={r}) vs. base(x) + (α/r) x Aᵀ Bᵀ",
                 cause="; or ".join(fits) or _FORWARD_CAUSE + "; or the base path not "
                       "self.base_layer(x)", atol=1e-5)


def test_m2_2_eval_mode_is_deterministic_and_dense():
    layer = _adapter(dropout=0.5).eval()
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(3))
    cause = ("dropout active in eval mode: F.dropout(x, p) defaults to training=True; call "
             "self.lora_dropout(x) (nn.Dropout follows train()/eval()), or pass "
             "training=self.training")
    with explained(task="M2.2", what="eval-mode forward of a (64, 24) batch, dropout 0.5",
                   expected="a tensor of shape (64, 16)", cause=_FORWARD_CAUSE):
        first, second = _seeded(0, lambda: layer(x)), _seeded(1, lambda: layer(x))
    expect(torch.equal(first, second), task="M2.2",
           what="two eval-mode forwards of the same batch (dropout 0.5)",
           expected="identical outputs", got=f"max difference {(first - second).abs().max():.3g}",
           cause=cause)
    expect_close(first, _dense(layer, x), task="M2.2", atol=1e-5,
                 what="eval-mode forward (dropout 0.5) vs. base(x) + (α/r) x Aᵀ Bᵀ", cause=cause)


def test_m2_2_forward_uses_the_layer_scaling():
    layer = _adapter().eval()
    layer.scaling = 0.0  # what adapters_disabled(model) does: the frozen reference model
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(4))
    with explained(task="M2.2", what="forward with layer.scaling set to 0",
                   expected="a tensor of shape (5, 16)", cause=_FORWARD_CAUSE):
        got = layer(x)
    expect_close(got, layer.base_layer(x), task="M2.2", atol=1e-6,
                 what="forward with layer.scaling = 0 (as adapters_disabled sets it) vs. base(x)",
                 cause="multiply by self.scaling, not by alpha / r recomputed: adapters_disabled "
                       "(the frozen reference of DPO and GRPO) sets self.scaling to 0")


def test_m2_2_gradients_reach_x_a_and_b():
    layer = _adapter(dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(3, 16, dtype=torch.float64, generator=gen)
    with explained(task="M2.2", what="backward of (forward(x) * g).sum()",
                   expected="gradients for x, lora_A and lora_B", cause=_FORWARD_CAUSE):
        (layer(x) * weights).sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    a = layer.lora_A.detach().clone().requires_grad_(True)
    b = layer.lora_B.detach().clone().requires_grad_(True)
    base = layer.base_layer
    out = ref_x @ base.weight.T + base.bias + layer.scaling * (ref_x @ a.T @ b.T)
    (out * weights).sum().backward()
    for name, got, want in (("lora_A", layer.lora_A.grad, a.grad),
                            ("lora_B", layer.lora_B.grad, b.grad)):
        expect(got is not None, task="M2.2", what=f"gradient of {name}", expected="a tensor",
               got=None, cause=f"self.{name} used through .data or .detach(), or under "
                               "torch.no_grad(): the adapter must get gradients")
        expect_close(got, want, task="M2.2", what=f"gradient of {name} vs. the dense update's",
                     cause=_FORWARD_CAUSE, atol=1e-9)
    expect(x.grad is not None, task="M2.2", what="gradient of the input x", expected="a tensor",
           got=None, cause="x detached: gradients must flow back to x")
    expect_close(x.grad, ref_x.grad, task="M2.2",
                 what="gradient of the input x vs. the dense update's (Wᵀ + (α/r) Aᵀ Bᵀ) g",
                 cause="base path under torch.no_grad() or x detached on one path: the layers "
                       "below (and their adapters) need the gradient through both the base and "
                       "the adapter path", atol=1e-9)


def test_m2_2_bfloat16_base_with_float32_adapters():
    layer = _adapter(dtype=torch.bfloat16, adapter_dtype=torch.float32).eval()
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(6)).bfloat16()
    with explained(task="M2.2", what="forward of a bfloat16 batch through a bfloat16 base with "
                   "float32 A and B", expected="a bfloat16 tensor of shape (5, 16)",
                   cause="cast x to lora_A's dtype before the adapter matmuls (a bfloat16 base "
                         "may carry float32 adapters)"):
        got = layer(x)
    expect(got.dtype == torch.bfloat16, task="M2.2",
           what="output dtype for a bfloat16 base with float32 adapters",
           expected=torch.bfloat16, got=got.dtype,
           cause="cast the update to the base output's dtype before adding it: bfloat16 + "
                 "float32 gives float32, and the next layer expects bfloat16")
    want = layer.base_layer(x).double() + layer.scaling * (
        x.double() @ layer.lora_A.detach().double().T @ layer.lora_B.detach().double().T)
    expect_close(got, want, task="M2.2", atol=3e-2, rtol=2e-2,
                 what="bfloat16 forward vs. base(x) + (α/r) x Aᵀ Bᵀ (within bfloat16 rounding)",
                 cause=_FORWARD_CAUSE)


def test_m2_2_dropout_only_on_the_adapter_path():
    layer = _adapter(dropout=0.5, b_std=0.0).train()
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(3))
    with explained(task="M2.2", what="train-mode forward of a (64, 24) batch",
                   expected="a tensor of shape (64, 16)", cause=_FORWARD_CAUSE):
        got = layer(x)
    diff = (got - layer.base_layer(x)).abs().max().item()
    expect(diff == 0.0, task="M2.2", what="train-mode output with B = 0 and dropout 0.5",
           expected="exactly base(x)", got=f"max difference {diff:.3g}",
           cause="dropout applied to the base path: only the adapter input is dropped out")


def _seeded(seed, fn):
    torch.manual_seed(seed)
    return fn()


def test_m2_2_train_mode_drops_out_the_adapter_input():
    layer = _adapter(dropout=0.5).train()
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(4))
    base, s = layer.base_layer, layer.scaling
    a, b = layer.lora_A.detach(), layer.lora_B.detach()

    def drop(t):
        return F.dropout(t, 0.5, training=True)

    def base_too():
        dropped = drop(x)
        return base(dropped) + s * (dropped @ a.T @ b.T)

    with torch.no_grad():
        want = _seeded(5, lambda: base(x) + s * (drop(x) @ a.T @ b.T))
        with explained(task="M2.2", what="train-mode forward of a (64, 24) batch",
                       expected="a tensor of shape (64, 16)", cause=_FORWARD_CAUSE):
            got = _seeded(5, lambda: layer(x))
        known = {  # what a wrong placement gives under the same seed
            "dropout applied after B: dropout acts on the adapter's input x, not on its output "
            "(x @ A.T @ B.T)": lambda: base(x) + s * drop(x @ a.T @ b.T),
            "dropout applied between A and B: dropout acts on x before A, not on x @ A.T":
                lambda: base(x) + s * (drop(x @ a.T) @ b.T),
            "dropout applied to the base path: only the adapter input is dropped out": base_too,
            "dropout not applied: call self.lora_dropout(x) (it is active in train mode)":
                lambda: base(x) + s * (x @ a.T @ b.T),
        }
    if got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        return
    fits = [cause for cause, fn in known.items() if got.shape == want.shape
            and torch.allclose(got, _seeded(5, fn), rtol=1e-5, atol=1e-5)]
    cause = "; or ".join(fits) or (
        "the output matches no single misplaced dropout; dropout must act once, on x before A "
        "(scaling * dropout(x) @ A.T @ B.T), and be the only random draw: dropout after B or "
        "between A and B, a second dropout, or another random call first changes the result")
    expect_close(got, want, task="M2.2", atol=1e-5,
                 what="train-mode forward (dropout 0.5, B ≠ 0) vs. base(x) + (α/r) dropout(x) "
                      "Aᵀ Bᵀ with the mask drawn from the same seed", cause=cause)


# M2.3 — target detection (needs nothing from the other tasks).

def _linear_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]


def _head_of(model):
    return getattr(model, "get_output_embeddings", lambda: None)()


def _find(model, names=None):
    """Your find_target_modules, its result checked to be a list of names."""
    with explained(task="M2.3", what=f"find_target_modules({type(model).__name__}, "
                   f"names={names!r})", expected="a list of module names",
                   cause="with names None the LM head is skipped silently (the ValueError is "
                         "for an explicit request only); call model.get_output_embeddings() only "
                         "when the model has that method; an unknown or missing model_type means "
                         "the generic rule (KNOWN_TARGETS.get)"):
        got = find_target_modules(model, names=names)
    expect(isinstance(got, list), task="M2.3", what="type of find_target_modules' result",
           expected="list", got=type(got).__name__,
           cause="return a list of full module names, in named_modules() order")
    return got


class _Generic(nn.Module):
    """A non-transformers model: an embedding, two hidden linears, a norm and an LM head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.lm_head


@pytest.mark.parametrize(("arch", "want"), [
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("gpt2", {"c_attn", "c_proj", "c_fc"}),
    ("phi3", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
])
def test_m2_3_targets_of_known_architectures(arch, want):
    with explained(task="M2.3", what=f"find_target_modules(tiny {arch} model)",
                   expected="a list of module names",
                   cause="look the names up in KNOWN_TARGETS[model.config.model_type]"):
        got = find_target_modules(tiny_model(arch))
    names = {t.rsplit(".", 1)[-1] for t in got}
    expect(names == want and not any("lm_head" in t or "embed" in t for t in got), task="M2.3",
           what=f"target layer names for {arch}", expected=sorted(want), got=sorted(names),
           cause="lm_head or embeddings adapted, or the architecture's projection names unused")


def _match(got, want, what, guesses, cause):
    """Fail unless got == want, naming the misreadings whose result (or one of a tuple of
    results) equals got."""
    fits = [why for why, wrong in guesses.items()
            if any(w != want and got == w
                   for w in (wrong if isinstance(wrong, tuple) else [wrong]))]
    expect(got == want, task="M2.3", what=what, expected=want, got=got,
           cause="; or ".join(fits) or cause)


def _generic_misreadings(linears):
    """What a misread generic rule returns, by cause."""
    return {
        "the LM head adapted: it is whatever model.get_output_embeddings() returns, "
        "whatever its name, tied or not": (linears, [n for n in linears if "lm_head" not in n]),
        "the last linear layer dropped instead of the LM head (the head is "
        "model.get_output_embeddings(), wherever it is registered; a model without that "
        "method has none)": linears[:-1],
        "an unknown (or missing) model_type adapted nothing: it falls back to the generic rule":
            [],
    }


def test_m2_3_generic_rule_skips_the_lm_head():
    got = _find(_Generic())
    _match(got, ["up", "down"], "targets of a generic model",
           _generic_misreadings(_linear_names(_Generic())),
           "lm_head or embeddings adapted: every linear layer but the output projection")


def test_m2_3_explicit_names_are_honoured():
    got = _find(_Generic(), names=["down"])
    expect(got == ["down"], task="M2.3", what="targets of a generic model for names=['down']",
           expected=["down"], got=got,
           cause="with names given, take exactly the linear layers whose last name component "
                 "is in names")


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)


class _CustomHead(nn.Module):
    """A non-transformers model whose LM head is called ``output`` and is registered first
    (so it is neither named lm_head nor the last linear layer), untied."""

    def __init__(self):
        super().__init__()
        self.output = nn.Linear(8, 10)
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def get_output_embeddings(self):
        return self.output


def _with_unknown_type():
    model = _Generic()
    model.config = SimpleNamespace(model_type="not-in-known-targets")
    return model


@pytest.mark.parametrize("model", [_CustomHead, lambda: nn.Sequential(
    nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)), _with_unknown_type],
    ids=["head-named-output-first", "no-output-embeddings", "unknown-model-type"])
def test_m2_3_generic_rule_is_every_linear_but_the_head(model):
    model = model()
    head, linears = _head_of(model), _linear_names(model)
    want = [n for n in linears if model.get_submodule(n) is not head]
    got = _find(model)
    _match(got, want, f"targets of a generic {type(model).__name__} (LM head: "
           f"{next((n for n in linears if model.get_submodule(n) is head), None)})",
           _generic_misreadings(linears), "every linear layer except the LM head "
           "(model.get_output_embeddings()), in named_modules() order")


@pytest.mark.parametrize(("arch", "names"), [
    ("llama", ["down_proj", "q_proj"]), ("phi3", ["up_proj", "o_proj"]), ("llama", ["proj"]),
    ("llama", []), ("generic", ["down", "up"])],
    ids=["llama-two", "phi3-suffix", "llama-substring", "empty", "generic-order"])
def test_m2_3_explicit_names_match_the_last_component_exactly(arch, names):
    model = _Generic() if arch == "generic" else tiny_model(arch)
    head, linears = _head_of(model), _linear_names(model)
    requested = list(names)
    got = _find(model, names=requested)
    expect(requested == names, task="M2.3", what="the names argument after the call",
           expected=names, got=requested, cause="do not modify the caller's list")

    def last(n):
        return n.rsplit(".", 1)[-1]

    known = KNOWN_TARGETS.get(getattr(getattr(model, "config", None), "model_type", None))
    want = [n for n in linears if last(n) in names and model.get_submodule(n) is not head]
    _match(got, want, f"targets of tiny {arch} for names={names!r}", {
        "a name matched as a substring of the module name ('proj' is in 'o_proj'): compare "
        "the last name component for equality": [n for n in linears
                                                  if any(k in n for k in names)],
        "a name matched as a suffix ('up_proj' ends 'gate_up_proj'): compare the last name "
        "component for equality": [n for n in linears if any(n.endswith(k) for k in names)],
        "only the first of the requested names used: honour every name":
            [n for n in linears if names and last(n) == names[0]],
        "the architecture's defaults used although names were given: an explicit request "
        "replaces KNOWN_TARGETS": [n for n in linears if known and last(n) in known],
        "names=[] treated like None: an empty request adapts nothing": [
            n for n in linears if (last(n) in known if known else model.get_submodule(n)
                                   is not head)] if not names else None,
        "results grouped by requested name or sorted: keep named_modules() order":
            sorted(want),
    }, "with names given, take exactly the linear layers whose last name component is in "
       "names, in named_modules() order")


@pytest.mark.parametrize(("model", "names", "head"), [
    (_Generic, ["up_proj", "up", "lm_head"], "lm_head"),
    (lambda: tiny_model("llama"), ["up_proj", "up", "lm_head"], "lm_head"),
    (_CustomHead, ["proj", "output"], "output")], ids=["generic", "llama", "head-named-output"])
def test_m2_3_lm_head_requested_by_name_is_refused(model, names, head):
    what = f"find_target_modules(model, names={names})"
    try:
        got = find_target_modules(model(), names=names)
    except ValueError as error:
        expect(head in str(error), task="M2.3", what=f"the ValueError of {what}",
               expected=f"a message naming {head!r}", got=str(error),
               cause="say which requested layer is the LM head (its full name)")
        return
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:  # noqa: BLE001 - reported as a teaching message
        expect(False, task="M2.3", what=what, expected=f"ValueError naming {head!r}",
               got=f"{type(error).__name__}: {error}",
               cause="refuse an explicitly requested LM head with a ValueError")
    adapted = "adapted" if head in got else "silently dropped"
    expect(False, task="M2.3", what=what, expected=f"ValueError naming {head!r}", got=got,
           cause=f"LM head requested by name {adapted}: an explicit request for the LM head "
                 "(model.get_output_embeddings(), whatever its name) must be refused with a "
                 "ValueError, never dropped silently nor adapted")


# M2.4 — injection, with the checks' adapters standing in for LoRALinear (M2.1).

def _known_targets(model):
    short = KNOWN_TARGETS[model.config.model_type]
    return [n for n, _ in model.named_modules() if n.split(".")[-1] in short]


def test_m2_4_only_adapters_are_trainable(monkeypatch):
    monkeypatch.setattr(ftlab.lora.inject, "LoRALinear", _Adapter)
    model = tiny_model("llama")
    targets = _known_targets(model)
    with explained(task="M2.4", what=f"inject_lora(tiny llama, {len(targets)} targets, r=4)",
                   expected="the model, with each target wrapped",
                   cause="for each full name: parent = model.get_submodule(parent name), then "
                         "setattr(parent, child name, LoRALinear(old child, r, alpha, dropout))"):
        inject_lora(model, targets, r=4, alpha=8)
    wrapped = sorted(lora_layers(model))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    want = sorted(f"{t}.lora_{p}" for t in targets for p in "AB")
    expect(wrapped == sorted(targets), task="M2.4", what="modules wrapped in LoRALinear",
           expected=f"{len(targets)} targets", got=f"{len(wrapped)} wrapped",
           cause="replace each target module on its parent with setattr")
    extra = [n for n in trainable if n not in want][:5]
    missing = [n for n in want if n not in trainable][:5]
    expect(not missing, task="M2.4", what="adapter parameters after injection",
           expected="lora_A and lora_B of each target trainable", got=f"frozen: {missing}",
           cause="freeze the model before wrapping the targets, not after")
    expect(trainable == want, task="M2.4", what="trainable parameters after injection",
           expected="lora_A and lora_B of each target only", got=f"also trainable: {extra}",
           cause="base left trainable, or norms trainable: freeze every parameter first")


@pytest.mark.parametrize(("arch", "targets"), [
    ("llama", ["model.layers.1.mlp.up_proj", "model.layers.0.self_attn.q_proj"]),
    ("gpt2", ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]),
    ("generic", ["down"])], ids=["llama-subset", "gpt2-conv1d", "top-level-name"])
def test_m2_4_wraps_exactly_the_targets_with_the_given_settings(monkeypatch, arch, targets):
    monkeypatch.setattr(ftlab.lora.inject, "LoRALinear", _Adapter)
    model = _Generic() if arch == "generic" else tiny_model(arch)
    before = dict(model.named_modules())
    total = parameter_report(model).total
    requested = list(targets)
    with explained(task="M2.4", what=f"inject_lora({arch} model, {targets}, r=2, alpha=3, "
                   "dropout=0.1)", expected="the model, with each target wrapped",
                   cause="split each full name at its last dot (a top-level name has no parent: "
                         "the parent is the model itself), then setattr(parent, child name, "
                         "LoRALinear(old child, r, alpha, dropout))"):
        returned = inject_lora(model, requested, r=2, alpha=3, dropout=0.1)
    expect(returned is model, task="M2.4", what="the value inject_lora returns",
           expected="the model passed in (modified in place)", got=type(returned).__name__,
           cause="modify the model in place and return it (not a copy, not None)")
    expect(requested == targets, task="M2.4", what="the targets list after injection",
           expected=targets, got=requested,
           cause="do not modify the caller's targets (no pop/remove/sort on it)")
    wrapped = lora_layers(model)
    expect(sorted(wrapped) == sorted(targets), task="M2.4", what="modules wrapped in LoRALinear",
           expected=sorted(targets), got=sorted(wrapped),
           cause="wrap exactly the modules named in targets (full names, compared whole)")
    copies = [n for n in targets if wrapped[n].base_layer is not before[n]]
    expect(not copies, task="M2.4", what="base_layer of each adapter",
           expected="the very module that was at that name", got=f"a different module at {copies}",
           cause="wrap the module itself (LoRALinear(getattr(parent, child), ...)), not a copy")
    settings = {n: (layer.r, layer.alpha, getattr(layer.lora_dropout, "p", 0.0))
                for n, layer in wrapped.items()}
    expect(all(v == (2, 3, 0.1) for v in settings.values()), task="M2.4",
           what="(r, alpha, dropout) of each adapter for r=2, alpha=3, dropout=0.1",
           expected=(2, 3, 0.1), got=settings,
           cause="pass r, alpha and dropout, in LoRALinear's order: LoRALinear(module, r, "
                 "alpha, dropout)")
    after = dict(model.named_modules())
    moved = [n for n, m in before.items() if n not in targets
             and not any(n.startswith(t + ".") for t in targets) and after.get(n) is not m]
    expect(not moved, task="M2.4", what="every module that is not a target",
           expected="the same module under the same name", got=f"changed: {moved[:5]}",
           cause="replace only the targets on their parents; leave the rest of the model as is")
    adapter_params = sum(2 * sum(linear_dims(before[n])) for n in targets)
    report = parameter_report(model)
    counts = (report.trainable, report.total)
    expect(counts == (adapter_params, total + adapter_params), task="M2.4",
           what="parameter_report(model): (trainable, total) after injection",
           expected=(adapter_params, total + adapter_params), got=counts,
           cause="freeze every parameter of the model, then add one adapter (r x in + out x r "
                 "trainable parameters) per target")


def test_m2_4_unknown_target_name_raises(monkeypatch):
    monkeypatch.setattr(ftlab.lora.inject, "LoRALinear", _Adapter)
    model = tiny_model("llama")
    name = "model.layers.0.self_attn.q_prj"
    try:
        inject_lora(model, [name], r=2, alpha=4)
    except (AttributeError, KeyError):
        return
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:  # noqa: BLE001 - reported as a teaching message
        expect(False, task="M2.4", what=f"inject_lora(model, [{name!r}], ...)",
               expected="AttributeError (or KeyError) naming the missing module",
               got=f"{type(error).__name__}: {error}",
               cause="look the module up with model.get_submodule / getattr, which raise "
                     "AttributeError for a name not in the model")
    expect(False, task="M2.4", what=f"inject_lora(model, [{name!r}], ...) (a typo)",
           expected="AttributeError naming the missing module",
           got=f"no error; {len(lora_layers(model))} modules wrapped",
           cause="a target name not in the model skipped silently: look each target up "
                 "(model.get_submodule) so a typo raises instead of training nothing")


# M2.5 — the merge, on adapters set up by the checks (no forward pass involved).

_MERGE_CAUSE = ("delta = (alpha / r) * B @ A: B (out, r) @ A (r, in) gives (out, in), "
                "computed in float32")


def _delta(layer):
    """Your delta_weight() of a 24 -> 16 adapter with r=4, checked for its shape."""
    with explained(task="M2.5", what="delta_weight() of a 24 -> 16 adapter with r=4",
                   expected="a float32 tensor of shape (16, 24) = (out, in)", cause=_MERGE_CAUSE):
        delta = layer.delta_weight()
    expect(tuple(delta.shape) == (16, 24), task="M2.5", what="shape of delta_weight()",
           expected="shape (16, 24) = (out, in)", got=f"shape {tuple(delta.shape)}",
           cause=_MERGE_CAUSE)
    return delta


def test_m2_5_delta_and_merged_weight():
    layer = _adapter()
    delta = _delta(layer)
    a, b = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    expect_close(delta, 2.0 * b @ a, task="M2.5", what="delta_weight() vs (α/r) B A",
                 cause="scale applied twice (or not at all): " + _MERGE_CAUSE, atol=1e-6)
    with explained(task="M2.5", what="merged_weight() (base weight + delta_weight())",
                   expected="shape (16, 24)", cause=_MERGE_CAUSE):
        merged = layer.merged_weight()
    expect_close(merged, layer.base_layer.weight.double() + 2.0 * b @ a, task="M2.5",
                 what="W + (α/r) B A", cause="scale applied twice: " + _MERGE_CAUSE, atol=1e-6)


def test_m2_5_merge_is_computed_in_float32():
    layer = _adapter(dtype=torch.bfloat16)
    delta = _delta(layer)
    expect(delta.dtype == torch.float32, task="M2.5",
           what="dtype of delta_weight() for a bfloat16 adapter", expected=torch.float32,
           got=delta.dtype, cause="compute the merge in float32: cast A and B first")
    a, b = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    want = 2.0 * b @ a
    rounded = torch.allclose(delta.double(), want, rtol=2e-2, atol=1e-3)
    expect_close(delta, want, task="M2.5", what="delta_weight() of a bfloat16 adapter",
                 cause="compute the merge in float32: cast A and B to float32 before the "
                       "product (a bfloat16 product rounds the update)" if rounded else
                       "scale applied twice (or not at all): " + _MERGE_CAUSE,
                 atol=1e-6, rtol=1e-5)


def test_m2_5_uses_the_layer_scaling_and_leaves_the_adapter_unchanged():
    layer = _adapter()
    layer.scaling = 0.5  # not alpha / r: the layer's own scaling is the one that counts
    a, b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    with torch.no_grad():  # as merge_lora calls it
        first, second = _delta(layer), _delta(layer)
    changed = [n for n, p, old in (("lora_A", layer.lora_A, a), ("lora_B", layer.lora_B, b))
               if not torch.equal(p, old)]
    expect(not changed, task="M2.5", what="lora_A and lora_B after two delta_weight() calls",
           expected="unchanged", got=f"changed: {changed}",
           cause="in-place op on A or B: .float() of a float32 tensor is that tensor itself, so "
                 "b = self.lora_B.float(); b *= scaling scales the adapter's own B; multiply "
                 "out of place")
    expect_close(first, 0.5 * b.double() @ a.double(), task="M2.5", atol=1e-6,
                 what="delta_weight() with layer.scaling = 0.5 (alpha / r = 2) vs. 0.5 B A",
                 cause="multiply by self.scaling, not by alpha / r recomputed (adapters_disabled "
                       "and loaded adapters set the layer's scaling)")
    expect_close(second, first, task="M2.5", what="a second delta_weight() call vs. the first",
                 cause="delta_weight must not change the adapter: compute out of place", atol=0)


def test_m2_5_update_stays_on_the_adapter_device():
    layer = _adapter().to("meta")
    with _on_meta(task="M2.5", what="delta_weight() of an adapter on the meta device",
                  expected="a float32 (16, 24) tensor on the meta device",
                  cause="keep the update on the adapter's device: no .cpu(), no .numpy(), and "
                        "any new tensor created with device=self.lora_A.device"):
        delta = layer.delta_weight()
    got = (delta.device.type, delta.dtype, tuple(delta.shape))
    expect(got == ("meta", torch.float32, (16, 24)), task="M2.5",
           what="(device, dtype, shape) of delta_weight() for an adapter on the meta device",
           expected=("meta", torch.float32, (16, 24)), got=got,
           cause="keep the update on the adapter's device (no .cpu()), in float32, (out, in)")


def test_m2_5_merged_model_equals_the_updated_weights():
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    for k, name in enumerate(_known_targets(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = _Adapter(getattr(parent, child), r=4, alpha=8.0, b_std=0.1, seed=k)
        setattr(parent, child, layer)
        with torch.no_grad():
            update = 2.0 * layer.lora_B.double() @ layer.lora_A.double()
            reference.get_submodule(name).weight.add_(update.float())
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    with explained(task="M2.5", what="merge_lora(model) (calls your delta_weight per adapter)",
                   expected="every adapter folded into a weight of shape (out, in)",
                   cause=_MERGE_CAUSE):
        merge_lora(model)
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    expect_close(got, want, task="M2.5", what="logits of the merged model vs. a model whose "
                 "weights were set to W + (α/r) B A", cause="scale applied twice: the merged "
                 "model must equal the adapted one", atol=1e-5)
