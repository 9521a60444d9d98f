"""Milestone 2 — LoRA: the layer (M2.1, M2.2), targets (M2.3), injection (M2.4), merge (M2.5).

Each check grades one task: the checks of M2.2, M2.4 and M2.5 build their adapters with
:class:`_Adapter` (known A, B, scaling and dropout, without running your ``__init__``), so a
mistake in M2.1 is reported by M2.1's checks, not by theirs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ftlab.lora.inject
from ftlab.course.teaching import expect, expect_close, explained
from ftlab.lora import (KNOWN_TARGETS, LoRALinear, find_target_modules, inject_lora,
                        lora_layers, merge_lora)
from ftlab.lora.layer import linear_dims
from ftlab.models.tiny import tiny_model

pytestmark = pytest.mark.m2


class _Adapter(LoRALinear):
    """A LoRALinear set up by the checks (M2.1's contract, not your M2.1 code): frozen base,
    seeded A (r x in) and B (out x r, zero when ``b_std`` is 0), scaling alpha / r, dropout.
    Its ``forward`` (M2.2) and ``delta_weight`` (M2.5) are yours."""

    def __init__(self, base, r, alpha, dropout=0.0, *, b_std=0.0, seed=0):
        nn.Module.__init__(self)
        fan_in, fan_out = linear_dims(base)
        weight = base.weight
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


def _adapter(dropout=0.0, b_std=0.2, dtype=torch.float32):
    return _Adapter(_linear(dtype=dtype), r=4, alpha=8.0, dropout=dropout, b_std=b_std, seed=1)


# M2.1 — inspected directly: no forward pass (that is M2.2).

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
    expect(layer.scaling == 2.0, task="M2.1", what="scaling for r=4, alpha=8", expected=2.0,
           got=layer.scaling, cause="scaling alpha instead of alpha / r")
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
    expect(not frozen and layer.lora_A.requires_grad and layer.lora_B.requires_grad,
           task="M2.1", what="trainable parameters of the layer", expected="lora_A and lora_B only",
           got=f"base parameters trainable: {frozen}", cause="freeze the base layer's parameters")


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


# M2.2 — the forward of an adapter set up by the checks.

_FORWARD_CAUSE = ("transposes swapped: x @ A.T gives (.., r), then @ B.T gives (.., out); "
                  "A is (r, in) and B is (out, r)")


def test_m2_2_forward_equals_dense_update():
    layer = _adapter().eval()
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2))
    w, b = layer.base_layer.weight, layer.base_layer.bias
    a, bb = layer.lora_A.detach(), layer.lora_B.detach()
    want = x @ w.T + b + layer.scaling * (x @ a.T @ bb.T)
    with explained(task="M2.2", what="forward of a (2, 5, 24) batch through a 24 -> 16 layer "
                   "with r=4", expected="a tensor of shape (2, 5, 16)", cause=_FORWARD_CAUSE):
        got = layer(x)
    expect_close(got, want, task="M2.2", what="LoRA forward vs. x Wᵀ + b + (α/r) x Aᵀ Bᵀ",
                 cause=_FORWARD_CAUSE + "; or the scaling missing", atol=1e-5)


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


def test_m2_3_generic_rule_skips_the_lm_head():
    got = find_target_modules(_Generic())
    expect(got == ["up", "down"], task="M2.3", what="targets of a generic model",
           expected=["up", "down"], got=got,
           cause="lm_head or embeddings adapted: every linear layer but the output projection")


def test_m2_3_explicit_names_are_honoured():
    got = find_target_modules(_Generic(), names=["down"])
    expect(got == ["down"], task="M2.3", what="targets of a generic model for names=['down']",
           expected=["down"], got=got,
           cause="with names given, take exactly the linear layers whose last name component "
                 "is in names")


@pytest.mark.parametrize("model", [_Generic, lambda: tiny_model("llama")],
                         ids=["generic", "llama"])
def test_m2_3_lm_head_requested_by_name_is_refused(model):
    what = "find_target_modules(model, names=['up_proj', 'up', 'lm_head'])"
    try:
        got = find_target_modules(model(), names=["up_proj", "up", "lm_head"])
    except ValueError as error:
        expect("lm_head" in str(error), task="M2.3", what=f"the ValueError of {what}",
               expected="a message naming 'lm_head'", got=str(error),
               cause="say which requested layer is the LM head")
        return
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:  # noqa: BLE001 - reported as a teaching message
        expect(False, task="M2.3", what=what, expected="ValueError naming 'lm_head'",
               got=f"{type(error).__name__}: {error}",
               cause="refuse an explicitly requested LM head with a ValueError")
    head = "adapted" if any(t.endswith("lm_head") for t in got) else "silently dropped"
    expect(False, task="M2.3", what=what, expected="ValueError naming 'lm_head'", got=got,
           cause=f"LM head requested by name {head}: an explicit request for the LM head "
                 "(model.get_output_embeddings()) must be refused with a ValueError, never "
                 "dropped silently nor adapted")


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
