"""Milestone 2 — LoRA: the layer (M2.1, M2.2), targets (M2.3), injection (M2.4), merge (M2.5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ftlab.course.teaching import expect, expect_close
from ftlab.lora import LoRALinear, find_target_modules, inject_lora, lora_layers, merge_lora
from ftlab.models.tiny import tiny_model

pytestmark = pytest.mark.m2


def _layer(r=4, alpha=8.0, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return LoRALinear(nn.Linear(24, 16), r=r, alpha=alpha, dropout=dropout)


def _randomize_b(layer, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.2)


def test_m2_1_adapted_layer_equals_base_at_init():
    layer = _layer()
    x = torch.randn(3, 24)
    got = (layer(x) - layer.base_layer(x)).abs().max().item()
    expect(got == 0.0, task="M2.1", what="max |adapted - base| right after init", expected=0.0,
           got=got, cause="B random: B must start at zero so the adapted model equals the base "
                          "model before training")


def test_m2_1_shapes_scaling_and_init():
    layer = _layer(r=4, alpha=8.0)
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


def test_m2_2_forward_equals_dense_update():
    layer = _layer()
    _randomize_b(layer)
    x = torch.randn(2, 5, 24)
    w, b = layer.base_layer.weight, layer.base_layer.bias
    want = x @ w.T + b + layer.scaling * (x @ layer.lora_A.T @ layer.lora_B.T)
    try:
        got = layer.eval()(x)
    except RuntimeError as e:
        expect(False, task="M2.2", what="forward of a (2, 5, 24) batch", expected="shape (2, 5, 16)",
               got=f"RuntimeError: {e}", cause="transposes swapped: x @ A.T gives (.., r), then "
                                               "@ B.T gives (.., out)")
    expect_close(got, want, task="M2.2", what="LoRA forward vs. x Wᵀ + b + (α/r) x Aᵀ Bᵀ",
                 cause="transposes swapped or the scaling missing", atol=1e-5)


def test_m2_2_dropout_only_on_the_adapter_path():
    layer = _layer(dropout=0.5).train()
    x = torch.randn(64, 24)
    got = (layer(x) - layer.base_layer(x)).abs().max().item()
    expect(got == 0.0, task="M2.2", what="train-mode output with B = 0 and dropout 0.5",
           expected="exactly base(x)", got=f"max difference {got:.3g}",
           cause="dropout applied to the base path: only the adapter input is dropped out")


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


def test_m2_4_only_adapters_are_trainable():
    model = tiny_model("llama")
    targets = find_target_modules(model)
    inject_lora(model, targets, r=4, alpha=8)
    wrapped = sorted(lora_layers(model))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    want = sorted(f"{t}.lora_{p}" for t in targets for p in "AB")
    expect(wrapped == sorted(targets), task="M2.4", what="modules wrapped in LoRALinear",
           expected=f"{len(targets)} targets", got=f"{len(wrapped)} wrapped",
           cause="replace each target module on its parent with setattr")
    extra = [n for n in trainable if n not in want][:5]
    expect(trainable == want, task="M2.4", what="trainable parameters after injection",
           expected="lora_A and lora_B of each target only", got=f"also trainable: {extra}",
           cause="base left trainable, or norms trainable: freeze every parameter first")


def test_m2_5_merged_weight_and_merged_model():
    layer = _layer(r=4, alpha=8.0)
    _randomize_b(layer)
    want = layer.base_layer.weight + 2.0 * layer.lora_B @ layer.lora_A
    expect_close(layer.merged_weight(), want, task="M2.5", what="W + (α/r) B A",
                 cause="scale applied twice (or not at all): delta = (alpha / r) * B @ A, in fp32",
                 atol=1e-6)
    expect(layer.delta_weight().dtype == torch.float32, task="M2.5", what="dtype of the update",
           expected=torch.float32, got=layer.delta_weight().dtype,
           cause="compute the merge in float32")
    model = tiny_model("llama")
    inject_lora(model, find_target_modules(model), r=4, alpha=8)
    for lay in lora_layers(model).values():
        _randomize_b(lay)
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    merge_lora(model)
    expect_close(model(ids).logits, before, task="M2.5", what="merged vs. unmerged logits",
                 cause="scale applied twice: the merged model must equal the adapted one",
                 atol=1e-5)
