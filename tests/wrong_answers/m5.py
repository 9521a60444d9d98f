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
    # Round 3 (issue #30): properties over the whole input domain, not one worked example.
    WrongAnswer(task="M5.1", label="model left in train mode (dropout active)",
                message_contains=("dropout still active", "model.eval()"),
                code=variant(ROOT, "M5.1", "model.eval()\n", "")),
    WrongAnswer(task="M5.1", label="log_softmax in bfloat16 (logits not cast to float32)",
                message_contains=("log-probabilities in bfloat16",),
                code=variant(ROOT, "M5.1", "logits[:, :-1].float()", "logits[:, :-1]")),
    WrongAnswer(task="M5.1", label="per-batch mean times count (NaN for a batch with no target)",
                message_contains=("0/0 = NaN",),
                code=variant(ROOT, "M5.1", "nll -= float(log_probs[scored].sum())",
                             "nll -= float(log_probs[scored].mean()) * int(scored.sum())")),
    WrongAnswer(task="M5.1", label="the model's own mean loss times the count",
                message_contains=("0/0 = NaN",),
                code='''
                    model.eval()
                    nll, count = 0.0, 0
                    for batch in batches:
                        labels = batch["labels"] if response_only else all_token_labels(batch)
                        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
                        scored = int((labels[:, 1:] != IGNORE_INDEX).sum())
                        nll += float(model(**inputs, labels=labels, use_cache=False).loss) * scored
                        count += scored
                    loss = nll / count
                    return Perplexity(loss=loss, perplexity=math.exp(loss), tokens=count)
                '''),
    WrongAnswer(task="M5.1", label="ignored labels overwritten in the caller's batch",
                message_contains=("labels written in place",),
                code=variant(ROOT, "M5.1", "log_probs = logits.log_softmax(-1).gather(-1, "
                             "targets.clamp(min=0)[..., None])[..., 0]",
                             "targets[~scored] = 0\n"
                             "    log_probs = logits.log_softmax(-1).gather(-1, "
                             "targets[..., None])[..., 0]")),
    WrongAnswer(task="M5.1", label="loss kept as a tensor", message_contains=("tensors returned",),
                code=variant(ROOT, "M5.1", "nll -= float(log_probs[scored].sum())",
                             "nll -= log_probs[scored].sum()")),
    WrongAnswer(task="M5.1", label="mean of per-sequence means",
                message_contains=("mean of per-sequence means",),
                code='''
                    model.eval()
                    means, count = [], 0
                    for batch in batches:
                        labels = batch["labels"] if response_only else all_token_labels(batch)
                        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
                        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
                        targets = labels[:, 1:]
                        scored = targets != IGNORE_INDEX
                        log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
                        for row, keep in zip(log_probs, scored):
                            if keep.any():
                                means.append(-float(row[keep].mean()))
                        count += int(scored.sum())
                    loss = sum(means) / len(means)
                    return Perplexity(loss=loss, perplexity=math.exp(loss), tokens=count)
                '''),
    WrongAnswer(task="M5.1", label="all tokens: padding scored (input_ids as labels)",
                message_contains=("score every non-padding token",),
                code=variant(ROOT, "M5.1", "else all_token_labels(batch)",
                             'else batch["input_ids"]')),
    WrongAnswer(task="M5.2", label="only the first stop id honoured",
                message_contains=("only the first stop id",),
                code=variant(ROOT, "M5.2", "done |= torch.isin(token, stops)",
                             "done |= token == stop_ids[0]")),
    WrongAnswer(task="M5.2", label="stop ids compared element by element (token == stops)",
                message_contains=("element by element", "torch.isin"),
                code=variant(ROOT, "M5.2", "done |= torch.isin(token, stops)",
                             "done |= token == stops")),
    WrongAnswer(task="M5.2", label="pick ignored (always argmax)", message_contains=("pick ignored",),
                code=variant(ROOT, "M5.2", "token = pick(out.logits[:, -1])",
                             "token = out.logits[:, -1].argmax(-1)")),
    WrongAnswer(task="M5.2", label="prompt mask rebuilt from input_ids != pad_id",
                message_contains=("never from input_ids != pad_id",),
                code=variant(ROOT, "M5.2", "mask = attention_mask\n",
                             "mask = (input_ids != pad_id).long()\n")),
    WrongAnswer(task="M5.2", label="grown mask 0 where the new token equals pad_id",
                message_contains=("column of ones",),
                code=variant(ROOT, "M5.2",
                             "mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)",
                             "mask = torch.cat([mask, (token != pad_id).long()[:, None]], dim=1)")),
    WrongAnswer(task="M5.2", label="stop ids in the prompt finish the row",
                message_contains=("only generated tokens stop a row",),
                code=variant(ROOT, "M5.2", "done = torch.zeros(len(input_ids), dtype=torch.bool, "
                             "device=input_ids.device)",
                             "done = torch.isin(input_ids, stops).any(-1)")),
    WrongAnswer(task="M5.2", label="a prompt ending with a stop id counts as finished",
                message_contains=("only generated tokens stop a row",),
                code=variant(ROOT, "M5.2", "done = torch.zeros(len(input_ids), dtype=torch.bool, "
                             "device=input_ids.device)",
                             "done = torch.isin(input_ids[:, -1], stops)")),
    WrongAnswer(task="M5.2", label="model left in train mode (dropout active)",
                message_contains=("dropout still active", "model.eval()"),
                code=variant(ROOT, "M5.2", "model.eval()\n", "")),
    WrongAnswer(task="M5.2", label="done checked before the step's tokens are appended",
                message_contains=("the last stop token dropped",),
                code=variant(ROOT, "M5.2",
                             "new.append(token)\n    done |= torch.isin(token, stops)\n"
                             "    if done.all():\n        break",
                             "done |= torch.isin(token, stops)\n    if done.all():\n"
                             "        break\n    new.append(token)")),
    WrongAnswer(task="M5.2", label="always max_new_tokens columns (no early end)",
                message_contains=("decoding went on after every row had stopped",),
                code=variant(ROOT, "M5.2", "if done.all():\n        break", "pass")),
    WrongAnswer(task="M5.2", label="token ids returned as floats", message_contains=("torch.int64",),
                code=variant(ROOT, "M5.2", "return torch.stack(new, dim=1)",
                             "return torch.stack(new, dim=1).float()")),
    WrongAnswer(task="M5.2", label="done overwritten each step (= instead of |=)",
                message_contains=("keep the stop token, then pad",),
                code=variant(ROOT, "M5.2", "done |= torch.isin(token, stops)",
                             "done = torch.isin(token, stops)")),
    WrongAnswer(task="M5.3", label="adapted model measured in train mode (dropout active)",
                message_contains=("dropout still active", "eval mode"),
                code=variant(ROOT, "M5.3", "model.eval()\n", "")),
    WrongAnswer(task="M5.3", label="max logit difference returned as a tensor",
                message_contains=("a tensor returned",),
                code=variant(ROOT, "M5.3", "MergeResult(merged, float(diff))",
                             "MergeResult(merged, diff)")),
    WrongAnswer(task="M5.3", label="mean logit difference reported", message_contains=("not the max",),
                code=variant(ROOT, "M5.3", "- reference).abs().max()",
                             "- reference).abs().mean()")),
    WrongAnswer(task="M5.3", label="signed max difference (no abs)",
                message_contains=("the absolute value missing",),
                code=variant(ROOT, "M5.3", "- reference).abs().max()", "- reference).max()")),
    WrongAnswer(task="M5.3", label="merged in the base dtype (bfloat16 arithmetic)",
                message_contains=("merge in float32",),
                code='''
                    from ftlab.lora.layer import dense_weight

                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = copy.deepcopy(model).eval()
                    for name, layer in lora_layers(merged).items():
                        base = layer.base_layer
                        if type(base) is nn.Linear:
                            base.weight.data = base.weight + layer.scaling * (layer.lora_B @ layer.lora_A)
                        else:
                            weight = dense_weight(base).float() + layer.delta_weight()
                            base = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                            base.weight.data.copy_(weight)
                        parent, _, child = name.rpartition(".")
                        setattr(merged.get_submodule(parent), child, base)
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.3", label="updates added to the adapted model's own weights",
                message_contains=("the adapted model was changed",),
                code='''
                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = merge_lora(copy.deepcopy(model)).eval()
                    for name, layer in lora_layers(model).items():
                        if type(layer.base_layer) is nn.Linear:
                            layer.base_layer.weight.copy_(merged.get_submodule(name).weight)
                            layer.scaling = 0.0
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.3", label="GPT-2 Conv1D merged as if (out, in)", message_contains=("Conv1D",),
                code='''
                    from ftlab.lora.layer import dense_weight

                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = copy.deepcopy(model).eval()
                    for name, layer in lora_layers(merged).items():
                        base = layer.base_layer
                        if hasattr(base, "dequantized"):
                            weight = dense_weight(base).float() + layer.delta_weight()
                            base = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                            base.weight.data.copy_(weight)
                        else:
                            weight = base.weight.float() + layer.delta_weight()
                            base.weight.copy_(weight.to(base.weight.dtype))
                        parent, _, child = name.rpartition(".")
                        setattr(merged.get_submodule(parent), child, base)
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.4", label="k_proj permuted with the group size (heads // kv heads)",
                message_contains=("not the group size", "num_key_value_heads for k_proj"),
                code=variant(ROOT, "M5.4", '"self_attn.k_proj": config.num_key_value_heads',
                             '"self_attn.k_proj": config.num_attention_heads // '
                             'config.num_key_value_heads')),
    WrongAnswer(task="M5.4", label="q_proj permuted with num_key_value_heads",
                message_contains=("num_attention_heads for q_proj",),
                code=variant(ROOT, "M5.4", '"self_attn.q_proj": config.num_attention_heads',
                             '"self_attn.q_proj": config.num_key_value_heads')),
    WrongAnswer(task="M5.4", label="head_dim taken as hidden_size // num_attention_heads",
                message_contains=("rows // n",),
                code=variant(ROOT, "M5.4", "rows // heads // 2, cols)",
                             "config.hidden_size // config.num_attention_heads // 2, cols)")),
    WrongAnswer(task="M5.4", label="layer index read as one digit",
                message_contains=("layer index lost",),
                code=variant(ROOT, "M5.4", r'r"model\.layers\.(\d+)\.(.+)\.weight"',
                             r'r"model\.layers\.(\d)\d*\.(.+)\.weight"')),
    WrongAnswer(task="M5.4", label="Q/K rows permuted in place in the caller's tensor",
                message_contains=("changed in place",),
                code=variant(ROOT, "M5.4", "tensor = per_head.transpose(1, 2).reshape(rows, cols)",
                             "tensor = tensor.copy_(per_head.transpose(1, 2).reshape(rows, cols)"
                             ".clone())")),
    WrongAnswer(task="M5.4", label="Q/K converted to float32", message_contains=("same dtype",),
                code=variant(ROOT, "M5.4", "tensor = per_head.transpose(1, 2).reshape(rows, cols)",
                             "tensor = per_head.transpose(1, 2).reshape(rows, cols).float()")),
    WrongAnswer(task="M5.4", label="heads and halves axes confused (2, n, d/2)",
                message_contains=("not into llama.cpp's layout",),
                code=variant(ROOT, "M5.4",
                             "per_head = tensor.reshape(heads, 2, rows // heads // 2, cols)\n"
                             "    tensor = per_head.transpose(1, 2).reshape(rows, cols)",
                             "per_head = tensor.reshape(2, heads, rows // heads // 2, cols)\n"
                             "    tensor = per_head.permute(1, 2, 0, 3).reshape(rows, cols)")),
    WrongAnswer(task="M5.4", label="v_proj permuted too", message_contains=("only q_proj and k_proj",),
                code=variant(ROOT, "M5.4", '"self_attn.k_proj": config.num_key_value_heads}',
                             '"self_attn.k_proj": config.num_key_value_heads, '
                             '"self_attn.v_proj": config.num_key_value_heads}')),
    WrongAnswer(task="M5.4", label="norm names matched by suffix (layer norms become output_norm)",
                message_contains=("exact names",),
                code=variant(ROOT, "M5.4", "if name in outside_blocks:",
                             'if name.endswith("norm.weight"):\n'
                             '    return "output_norm.weight", tensor\n'
                             'if name in outside_blocks:')),
    WrongAnswer(task="M5.3", label="MLP adapters unwrapped without folding their update",
                message_contains=("merge every adapted layer",),
                code='''
                    model.eval()
                    reference = model(input_ids=input_ids).logits.float()
                    merged = copy.deepcopy(model).eval()
                    for name, layer in lora_layers(merged).items():
                        if ".mlp." in name:
                            layer.scaling = 0.0
                    merged = merge_lora(merged)
                    diff = (merged(input_ids=input_ids).logits.float() - reference).abs().max()
                    return MergeResult(merged, float(diff))
                '''),
    WrongAnswer(task="M5.1", label="targets found as labels > 0 (a real token 0 dropped)",
                message_contains=("a real target, not padding",),
                code=variant(ROOT, "M5.1", "scored = targets != IGNORE_INDEX",
                             "scored = targets > 0")),
]
