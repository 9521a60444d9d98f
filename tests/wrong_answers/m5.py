"""Plausible wrong answers to milestone 5 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="M5.3", label="merging into a 4-bit weight",
                message_contains=("merging into a 4-bit weight",),
                code='''
                    from ftlab.lora.layer import is_quantized
                    from ftlab.quant import quantize_model

                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    four_bit = [n for n, layer in lora_layers(model).items()
                                if is_quantized(layer.base_layer)]
                    merged = quantize_model(merge_lora(copy.deepcopy(model)), four_bit).eval()
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.3", label="merged in place", message_contains=("merged in place",),
                code=variant(ROOT, "M5.3", "merge_lora(copy.deepcopy(model))", "merge_lora(model)")),
]
