"""Milestone 5 — merging for export (M5.3): a float32 merge, into dequantized weights for a
4-bit base, verified by the largest logit difference against the adapted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftlab.course.teaching import expect
from ftlab.export.merge import merge_and_verify
from ftlab.lora import find_target_modules, inject_lora, lora_layers
from ftlab.lora.layer import is_quantized
from ftlab.models.tiny import tiny_model
from ftlab.quant import prepare_qlora

pytestmark = pytest.mark.m5

IDS = torch.randint(4, 96, (2, 12), generator=torch.Generator().manual_seed(0))


def _adapted(four_bit: bool):
    model = tiny_model("llama")
    torch.manual_seed(0)
    if four_bit:
        prepare_qlora(model, r=4, alpha=8)
    else:
        inject_lora(model, find_target_modules(model), r=4, alpha=8)
    for layer in lora_layers(model).values():  # a trained-looking update, so merging matters
        nn.init.normal_(layer.lora_B, std=0.2)
    return model.eval()


@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_m5_3_merged_copy_equals_the_adapted_model(four_bit):
    model = _adapted(four_bit)
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    result = merge_and_verify(model, IDS)
    expect(len(lora_layers(model)) > 0, task="M5.3", what="the model passed in, after merging",
           expected="still adapted (LoRA layers in place)", got="its adapters are gone",
           cause="merged in place: merge a copy (copy.deepcopy) — the adapted model is the "
                 "reference the merge is verified against, and the caller may keep training it")
    leftovers = [n for n, m in result.model.named_modules() if is_quantized(m)
                 or n in lora_layers(result.model)]
    expect(not leftovers, task="M5.3", what="layers of the merged model",
           expected="plain float layers only", got=f"4-bit or adapted layers: {leftovers[:3]}",
           cause="merging into a 4-bit weight: re-quantizing W + BA to 4 bits rounds most of "
                 "the small update away; merge into the dequantized weight in float32 and keep "
                 "it as a float nn.Linear")
    with torch.no_grad():
        got = result.model(input_ids=IDS).logits
    diff = float((got - want).abs().max())
    expect(diff <= 1e-4, task="M5.3", what="merged vs adapted logits (max |difference|)",
           expected="<= 1e-4", got=f"{diff:.3g}",
           cause="merging into a 4-bit weight, or the update folded with the wrong scale: the "
                 "merged layer must compute exactly base(x) + (alpha/r) x A^T B^T")
    expect(abs(result.max_logit_diff - diff) <= 1e-6, task="M5.3",
           what="the reported max logit difference", expected=f"{diff:.3g} (measured here)",
           got=f"{result.max_logit_diff:.3g}",
           cause="compute the reference logits from the adapted model before merging, then "
                 "compare the merged copy's logits with them (float32, max absolute difference)")
    expect(all(p.dtype == torch.float32 for p in result.model.parameters()), task="M5.3",
           what="dtype of the merged float32 model's parameters", expected="float32",
           got=sorted({str(p.dtype) for p in result.model.parameters()}),
           cause="merge in float32")
