"""Milestone 5 — merging for export (M5.3): a float32 merge, into dequantized weights for a
4-bit base, verified by the largest logit difference against the adapted model.

The adapters come from milestone 2 (and the 4-bit base from milestone 3): these checks are
blocked until those are done. When the merged logits are off, the check compares each merged
weight with ``LoRALinear.merged_weight()`` to say whether the merge or milestone 2 is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftlab.course.teaching import expect, explained
from ftlab.export.merge import merge_and_verify
from ftlab.lora import inject_lora, lora_layers
from ftlab.lora.layer import dense_weight, is_quantized
from ftlab.models.tiny import tiny_model
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
