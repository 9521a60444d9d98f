"""Milestone 5 — merging for export (M5.3): a float32 merge, into dequantized weights for a
4-bit base, verified by the largest logit difference against the adapted model.

The adapters come from milestone 2 (and the 4-bit base from milestone 3): these checks are
blocked until those are done. When the merged logits are off, the check compares each merged
weight with ``LoRALinear.merged_weight()`` to say whether the merge or milestone 2 is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from ftlab.course.teaching import expect, explained
from ftlab.export.merge import merge_and_verify
from ftlab.lora import inject_lora, lora_layers
from ftlab.lora.layer import dense_weight, is_quantized
from ftlab.models.tiny import tiny_config, tiny_model
from ftlab.quant import prepare_qlora

pytestmark = pytest.mark.m5

IDS = torch.randint(4, 96, (2, 12), generator=torch.Generator().manual_seed(0))
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _adapted(four_bit: bool):
    model = tiny_model("llama")
    torch.manual_seed(0)
    if four_bit:
        prepare_qlora(model, r=4, alpha=8)
    else:
        inject_lora(model, [n for n, m in model.named_modules()
                            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in PROJECTIONS],
                    r=4, alpha=8)
    for layer in lora_layers(model).values():  # a trained-looking update, so merging matters
        nn.init.normal_(layer.lora_B, std=0.2)
    return model.eval()


MERGE_HINT = ("the update of each adapted layer is scaling * B @ A: (out, r) @ (r, in) = "
              "(out, in), the weight's shape (A @ B, or A.T @ B.T, is a shape mismatch); for a "
              "4-bit base, add it to the dequantized weight (dense_weight), not to the packed "
              "4-bit storage; merge_lora does all this on a copy.deepcopy of the model")


@torch.no_grad()
def _weights_cause(model, merged):
    """Why the merged logits differ: each merged weight against the adapted layer's
    ``merged_weight()`` (its base weight plus ``delta_weight()``, float32)."""
    errors, scales = [], []
    for name, layer in lora_layers(model).items():
        want, base = layer.merged_weight(), dense_weight(layer.base_layer).float()
        try:
            got = dense_weight(merged.get_submodule(name)).float()
        except (AttributeError, TypeError):
            return f"the merged copy has no plain layer {name}: " + MERGE_HINT
        if got.shape != want.shape:
            return f"{name} has shape {tuple(got.shape)}, not {tuple(want.shape)}: " + MERGE_HINT
        errors.append(float((got - want).abs().max()))
        update, folded = want - base, got - base
        scales.append(float((folded * update).sum() / (update * update).sum()))
    if max(errors) <= 1e-5:
        return ("every merged weight equals W + delta_weight(), yet the logits differ from the "
                "adapted model's: LoRALinear.forward (M2.2) and delta_weight (M2.5) disagree — "
                "run the milestone 2 checks (pytest milestones -m m2)")
    if all(abs(s) < 1e-3 for s in scales):
        return "the update was not folded in: the merged weights equal the base weights"
    skipped = [name for name, s in zip(lora_layers(model), scales) if abs(s) < 1e-3]
    if skipped:
        return (f"some updates not folded in ({len(skipped)} of {len(scales)} layers, e.g. "
                f"{skipped[0]}): merge every adapted layer — lora_layers(model) lists them all, "
                "whatever their names")
    if all(abs(s - scales[0]) < 1e-3 for s in scales):
        return (f"the update folded with the wrong scale ({scales[0]:.3g} times scaling * B @ A):"
                " the merged layer must compute exactly base(x) + (alpha/r) x A^T B^T")
    return ("merging into a 4-bit weight, or the update folded wrongly: each merged weight must "
            "be W + (alpha/r) B @ A in float32 (dequantized W for a 4-bit base), which is "
            "LoRALinear.merged_weight()")


@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_m5_3_merged_copy_equals_the_adapted_model(four_bit):
    model = _adapted(four_bit)
    kind = "4-bit (QLoRA)" if four_bit else "float"
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    with explained(task="M5.3", what=f"merge_and_verify on a tiny Llama with LoRA on a {kind} "
                   "base", expected="MergeResult(merged copy, max |logit difference|)",
                   cause=MERGE_HINT):
        result = merge_and_verify(model, IDS)
    expect(len(lora_layers(model)) > 0, task="M5.3", what="the model passed in, after merging",
           expected="still adapted (LoRA layers in place)", got="its adapters are gone",
           cause="merged in place: merge a copy (copy.deepcopy) — the adapted model is the "
                 "reference the merge is verified against, and the caller may keep training it")
    four_bit_left = [n for n, m in result.model.named_modules() if is_quantized(m)]
    adapters_left = list(lora_layers(result.model))
    expect(not four_bit_left and not adapters_left, task="M5.3",
           what="layers of the merged model", expected="plain float layers only",
           got=f"4-bit layers {four_bit_left[:3]}, adapted layers {adapters_left[:3]}",
           cause="merging into a 4-bit weight: re-quantizing W + BA to 4 bits rounds most of "
                 "the small update away; merge into the dequantized weight in float32 and keep "
                 "it as a float nn.Linear" if four_bit_left else
                 "adapters left in the merged copy: fold each update into its base weight and "
                 "put the plain base layer back in the adapter's place (merge_lora)")
    with torch.no_grad(), explained(task="M5.3", what="a forward of the merged copy",
                                    expected="logits of shape (2, 12, vocab)", cause=MERGE_HINT):
        got = result.model(input_ids=IDS).logits
    diff = float((got - want).abs().max())
    expect(diff <= 1e-4, task="M5.3", what="merged vs adapted logits (max |difference|)",
           expected="<= 1e-4", got=f"{diff:.3g}",
           cause="" if diff <= 1e-4 else _weights_cause(model, result.model))
    expect(abs(result.max_logit_diff - diff) <= 1e-6, task="M5.3",
           what="the reported max logit difference", expected=f"{diff:.3g} (measured here)",
           got=f"{result.max_logit_diff:.3g}",
           cause="compute the reference logits from the adapted model before merging, then "
                 "compare the merged copy's logits with them (float32, max absolute difference)")
    expect(all(p.dtype == torch.float32 for p in result.model.parameters()), task="M5.3",
           what="dtype of the merged float32 model's parameters", expected="float32",
           got=sorted({str(p.dtype) for p in result.model.parameters()}),
           cause="merge in float32")


MERGE_CASES = ("a float base passed in train mode (LoRA and attention dropout 0.5)",
               "a bfloat16 base", "GPT-2 (Conv1D layers)")


def _merge_case(case):
    """An adapted model for ``case`` with a trained-looking update, in the mode the case names."""
    arch = "gpt2" if case.startswith("GPT-2") else "llama"
    config = tiny_config(arch)
    dropout = 0.5 if "train mode" in case else 0.0
    if arch == "llama":
        config.attention_dropout = dropout
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if "bfloat16" in case:
        model = model.to(torch.bfloat16)
    kinds = (nn.Linear,) if arch == "llama" else (Conv1D,)
    inject_lora(model, [n for n, m in model.named_modules()
                        if isinstance(m, kinds) and "lm_head" not in n], r=4, alpha=8,
                dropout=dropout)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora_B, std=0.2)
    return model.train(dropout > 0)


@torch.no_grad()
def _merged_layer_problem(model, merged):
    """The first adapted layer whose merged counterpart is not W + (alpha/r) B A in float32,
    rounded once to the base layer's dtype and kept in the base layer's type: a message."""
    for name, layer in lora_layers(model).items():
        base = layer.base_layer
        got = merged.get_submodule(name)
        if type(got) is not type(base) or got.weight.dtype != base.weight.dtype:
            return (f"{name} became {type(got).__name__} {got.weight.dtype}, the base was "
                    f"{type(base).__name__} {base.weight.dtype}: keep the base layer (its type "
                    "and dtype; Conv1D stores its weight transposed) and copy the merged weight "
                    "into it, cast back to the base dtype")
        exact = dense_weight(base).double() + layer.scaling * (
            layer.lora_B.double() @ layer.lora_A.double())
        rounded = exact.to(base.weight.dtype)
        if torch.equal(dense_weight(got), dense_weight(base)):
            return (f"{name}: its update was not folded in (the merged weight is the base "
                    "weight): merge every adapted layer — lora_layers(model) lists them all")
        off = float((dense_weight(got) != rounded).double().mean())
        if base.weight.dtype == torch.float32:
            off = float((dense_weight(got).double() - exact).abs().max() > 1e-6)
        if off > 0.01:
            return (f"{name}: {off:.0%} of the merged weights differ from W + (alpha/r) B A "
                    f"computed exactly and rounded once to {base.weight.dtype}: merge in "
                    "float32 — W.float() + scaling * (B.float() @ A.float()), then cast back "
                    "(LoRALinear.merged_weight()); in bfloat16 every step rounds and a small "
                    "update is lost")
    return None


@pytest.mark.parametrize("case", MERGE_CASES)
def test_m5_3_merge_follows_the_spec(case):
    model = _merge_case(case)
    train_mode = model.training
    with torch.no_grad():
        want = model.eval()(input_ids=IDS).logits.float()
    model.train(train_mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with explained(task="M5.3", what=f"merge_and_verify on {case}",
                   expected="MergeResult(merged copy, max |logit difference|)",
                   cause=MERGE_HINT + ("; GPT-2's Conv1D stores its weight as (in, out): "
                                       "fold the transposed update" if "GPT-2" in case else "")):
        result = merge_and_verify(model, IDS)
    after = model.state_dict()
    changed = sorted(k for k in before.keys() | after.keys()
                     if k not in before or k not in after or not torch.equal(before[k], after[k]))
    expect(not changed, task="M5.3", what="the adapted model's weights after merge_and_verify",
           expected="unchanged", got=f"changed: {changed[:3]} ({len(changed)} tensors)",
           cause="the adapted model was changed: fold the updates into the weights of a copy "
                 "(copy.deepcopy) only, never into the model passed in — it is the reference "
                 "the merge is verified against")
    training = [n or "<model>" for n, m in result.model.named_modules() if m.training]
    expect(not training, task="M5.3", what="mode of the returned merged copy",
           expected="eval mode", got=f"train mode in {training[:2]}",
           cause="dropout still active: the merged copy (and the adapted model) must be measured "
                 "in eval mode, and the copy is returned in eval mode — copy.deepcopy keeps the "
                 "train mode of the model passed in; call .eval()")
    with explained(task="M5.3", what=f"the merged copy of {case}",
                   expected="plain layers with merged weights", cause=MERGE_HINT):
        problem = _merged_layer_problem(model, result.model)
    expect(problem is None, task="M5.3", what=f"merged weights of {case}",
           expected="W + (alpha/r) B A, in float32, in the base layer's type and dtype",
           got=problem, cause=problem or "")
    with torch.no_grad():
        got = result.model.eval()(input_ids=IDS).logits.float()
    diff = (got - want).abs()
    reported = result.max_logit_diff
    expect(type(reported) is float, task="M5.3", what="type of max_logit_diff",
           expected="float", got=type(reported).__name__,
           cause="a tensor returned: convert the max difference with float(...)")
    expect(abs(reported - diff.max().item()) <= 1e-6 + 1e-5 * diff.max().item(), task="M5.3",
           what=f"the reported max logit difference on {case}",
           expected=f"{diff.max().item():.4g} = max |merged - adapted| (measured here)",
           got=f"{reported:.4g}",
           cause="the mean difference, not the max: report the largest |difference|"
           if abs(reported - diff.mean().item()) <= 1e-6 else
           "the absolute value missing: report max |merged - adapted|, not max(merged - adapted)"
           if abs(reported - (got - want).max().item()) <= 1e-6 else
           "dropout still active: put the adapted model in eval mode (model.eval()) before "
           "computing its reference logits — in train mode dropout changes them at random"
           if train_mode else
           "compare both models in eval mode on input_ids: float32 logits of the adapted model "
           "(before merging) and of the merged copy, max absolute difference")
