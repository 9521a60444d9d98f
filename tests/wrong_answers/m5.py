"""Plausible wrong answers to milestone 5 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="M5.1", label="mean of batch means", message_contains=("mean of batch means",),
                code=variant(ROOT, "M5.1",
                             "nll -= float(log_probs[scored].sum())\n"
                             "    count += int(scored.sum())\nloss = nll / count",
                             "nll -= float(log_probs[scored].sum()) / int(scored.sum())\n"
                             "    count += int(scored.sum())\nloss = nll / len(batches)")),
    WrongAnswer(task="M5.2", label="prompt echoed into the answer",
                message_contains=("prompt echoed into the answer",),
                code=variant(ROOT, "M5.2", "return torch.stack(new, dim=1)",
                             "return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)")),
    WrongAnswer(task="M5.2", label="finished rows not padded",
                message_contains=("keep the stop token, then pad",),
                code=variant(ROOT, "M5.2", "pick(out.logits[:, -1]).masked_fill(done, pad_id)", "pick(out.logits[:, -1])")),
    WrongAnswer(task="M5.2", label="position ids as the spec read: cumsum - 1, not clamped",
                message_contains=("IndexError", "position ids", "clamp"),
                code=variant(ROOT, "M5.2", "positions = (mask.cumsum(-1) - 1).clamp(min=0)",
                             "positions = mask.cumsum(-1) - 1")),
    WrongAnswer(task="M5.2", label="position ids ignore the padding (0..T-1 for every row)",
                message_contains=("only left-padded rows differ", "position ids"),
                code=variant(ROOT, "M5.2", "positions = (mask.cumsum(-1) - 1).clamp(min=0)",
                             "positions = torch.arange(mask.shape[1]).expand_as(mask)")),
    WrongAnswer(task="M5.2", label="no position ids passed (the model counts the padding)",
                message_contains=("only left-padded rows differ", "position ids"),
                code=variant(ROOT, "M5.2", "attention_mask=mask, position_ids=positions,",
                             "attention_mask=mask,")),
    WrongAnswer(task="M5.2", label="whole sequence re-fed with the cache",
                message_contains=("the first tokens match", "newest token"),
                code=variant(ROOT, "M5.2",
                             "step_ids, positions = token[:, None], positions[:, -1:] + 1",
                             "step_ids = torch.cat([input_ids, torch.stack(new, 1)], 1)\n"
                             "    positions = torch.cat([positions, positions[:, -1:] + 1], 1)")),
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
    WrongAnswer(task="M5.3", label="update folded transposed (A.T @ B.T: shape mismatch)",
                message_contains=("RuntimeError", "scaling * B @ A", "(out, in)"),
                code='''
                    from ftlab.lora.layer import dense_weight

                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = copy.deepcopy(model).eval()
                    for name, layer in lora_layers(merged).items():
                        update = layer.scaling * layer.lora_A.float().T @ layer.lora_B.float().T
                        plain = nn.Linear(update.shape[1], update.shape[0], bias=False)
                        plain.weight.data.copy_(dense_weight(layer.base_layer).float() + update)
                        parent, _, child = name.rpartition(".")
                        setattr(merged.get_submodule(parent), child, plain)
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.3", label="update folded without the alpha / r scaling",
                message_contains=("wrong scale",),
                code='''
                    from ftlab.lora.layer import dense_weight

                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = copy.deepcopy(model).eval()
                    for name, layer in lora_layers(merged).items():
                        weight = dense_weight(layer.base_layer).float()
                        weight = weight + layer.lora_B.float() @ layer.lora_A.float()
                        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                        plain.weight.data.copy_(weight)
                        parent, _, child = name.rpartition(".")
                        setattr(merged.get_submodule(parent), child, plain)
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.4", label="unpermuted Q/K", message_contains=("unpermuted Q/K",),
                code=variant(ROOT, "M5.4", "per_head.transpose(1, 2).reshape(rows, cols)",
                             "per_head.reshape(rows, cols)")),
    WrongAnswer(task="M5.4", label="k_proj permuted with num_attention_heads (GQA ignored)",
                message_contains=("num_key_value_heads for k_proj",),
                code=variant(ROOT, "M5.4", '"self_attn.k_proj": config.num_key_value_heads',
                             '"self_attn.k_proj": config.num_attention_heads')),
    WrongAnswer(task="M5.4", label="inverse permutation (the GGUF -> HF direction)",
                message_contains=("not into llama.cpp's layout",),
                code=variant(ROOT, "M5.4",
                             "per_head = tensor.reshape(heads, 2, rows // heads // 2, cols)",
                             "per_head = tensor.reshape(heads, rows // heads // 2, 2, cols)")),
    WrongAnswer(task="M5.4", label="attn_q misspelt", message_contains=("misspelt",),
                code=variant(ROOT, "M5.4", '"attn_q"', '"attn_query"')),
    WrongAnswer(task="M5.4", label="attn_norm and ffn_norm swapped", message_contains=("swapped",),
                code=variant(ROOT, "M5.4",
                             '"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"',
                             '"input_layernorm": "ffn_norm", "post_attention_layernorm": "attn_norm"')),
    WrongAnswer(task="M5.4", label="layer index lost", message_contains=("layer index lost",),
                code=variant(ROOT, "M5.4", 'f"blk.{block}.{in_block[module]}.weight"',
                             'f"blk.{in_block[module]}.weight"')),
]
