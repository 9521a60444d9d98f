"""Plausible wrong answers to milestone 1 (CURRICULUM.md); each must fail with a teaching message."""

from ftlab.course.wrong import WrongAnswer

WRONG_ANSWERS = [
    WrongAnswer(
        task="M1.1", label="alpaca input dropped", message_contains=("input",),
        code='''
            if fmt == "messages":
                return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
            if fmt == "sharegpt":
                return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                        for t in record["conversations"]]
            if fmt == "alpaca":
                system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
                return system + [{"role": "user", "content": record["instruction"]},
                                 {"role": "assistant", "content": record["output"]}]
            prompt, response = {"prompt_completion": ("prompt", "completion"),
                                "question_answer": ("question", "answer")}[fmt]
            return [{"role": "user", "content": record[prompt]},
                    {"role": "assistant", "content": record[response]}]
        '''),
    WrongAnswer(
        task="M1.1", label="alpaca input before the instruction", message_contains=("input",),
        code='''
            if fmt == "messages":
                return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
            if fmt == "sharegpt":
                return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                        for t in record["conversations"]]
            if fmt == "alpaca":
                user = record["instruction"]
                if record.get("input"):
                    user = record["input"] + ALPACA_SEPARATOR + user
                system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
                return system + [{"role": "user", "content": user},
                                 {"role": "assistant", "content": record["output"]}]
            prompt, response = {"prompt_completion": ("prompt", "completion"),
                                "question_answer": ("question", "answer")}[fmt]
            return [{"role": "user", "content": record[prompt]},
                    {"role": "assistant", "content": record[response]}]
        '''),
    WrongAnswer(
        task="M1.1", label="system message lost", message_contains=("system message lost",),
        code='''
            if fmt == "messages":
                return [{"role": m["role"], "content": m["content"]} for m in record["messages"]
                        if m["role"] != "system"]
            if fmt == "sharegpt":
                return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                        for t in record["conversations"] if t["from"] != "system"]
            if fmt == "alpaca":
                user = record["instruction"]
                if record.get("input"):
                    user = user + ALPACA_SEPARATOR + record["input"]
                return [{"role": "user", "content": user},
                        {"role": "assistant", "content": record["output"]}]
            prompt, response = {"prompt_completion": ("prompt", "completion"),
                                "question_answer": ("question", "answer")}[fmt]
            return [{"role": "user", "content": record[prompt]},
                    {"role": "assistant", "content": record[response]}]
        '''),
    WrongAnswer(
        task="M1.2", label="generation prompt missing", message_contains=("generation prompt missing",),
        code='''
            turns = conversation[:-1] if generation_prompt and conversation[-1]["role"] == "assistant" else conversation
            return tokenizer.apply_chat_template(turns, tokenize=False)
        '''),
    WrongAnswer(
        task="M1.2", label="template applied twice", message_contains=("applied twice",),
        code='''
            turns = conversation[:-1] if generation_prompt and conversation[-1]["role"] == "assistant" else conversation
            text = tokenizer.apply_chat_template(turns, tokenize=False)
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=generation_prompt)
        '''),
    WrongAnswer(
        task="M1.3", label="EOS masked", message_contains=("EOS masked",),
        code='''
            text = render(conversation, tokenizer)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = [(s, e - len(tokenizer.eos_token)) for s, e in assistant_spans(conversation, tokenizer)]
            ids = enc["input_ids"]
            labels = [tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX
                      for tok, (a, b) in zip(ids, enc["offset_mapping"])]
            return {"input_ids": ids[-max_length:], "labels": labels[-max_length:]}
        '''),
    WrongAnswer(
        task="M1.3", label="prompt tokens trained", message_contains=("prompt tokens trained",),
        code='''
            ids = tokenizer(render(conversation, tokenizer), add_special_tokens=False)["input_ids"]
            return {"input_ids": ids[-max_length:], "labels": list(ids[-max_length:])}
        '''),
    WrongAnswer(
        task="M1.3", label="off-by-one at the boundary (labels shifted left)",
        message_contains=("off-by-one",),
        code='''
            text = render(conversation, tokenizer)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = assistant_spans(conversation, tokenizer)
            ids = enc["input_ids"]
            inside = [any(s <= a and b <= e for s, e in spans) for a, b in enc["offset_mapping"]]
            labels = [ids[i + 1] if i + 1 < len(ids) and inside[i + 1] else IGNORE_INDEX
                      for i in range(len(ids))]
            return {"input_ids": ids[-max_length:], "labels": labels[-max_length:]}
        '''),
    WrongAnswer(
        task="M1.3", label="truncation drops the response (keeps the start)",
        message_contains=("dropped the response",),
        code='''
            text = render(conversation, tokenizer)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = assistant_spans(conversation, tokenizer)
            ids = enc["input_ids"]
            labels = [tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX
                      for tok, (a, b) in zip(ids, enc["offset_mapping"])]
            return {"input_ids": ids[:max_length], "labels": labels[:max_length]}
        '''),
    WrongAnswer(
        task="M1.4", label="duplicates differing in white space or case survive",
        message_contains=("whitespace/case",),
        code='''
            report = FilterReport(total=len(conversations))
            kept, seen = [], set()
            for conv in conversations:
                response = conv[-1]["content"].strip()
                key = tuple((m["role"], m["content"]) for m in conv)
                if not response:
                    reason = "empty_response"
                elif len(response) < min_response_chars:
                    reason = "short_response"
                elif max_chars is not None and sum(len(m["content"]) for m in conv) > max_chars:
                    reason = "too_long"
                elif key in seen:
                    reason = "duplicate"
                else:
                    seen.add(key)
                    kept.append(conv)
                    continue
                report.dropped[reason] += 1
            report.kept = len(kept)
            return kept, report
        '''),
    WrongAnswer(
        task="M1.5", label="random split leaking the same prompt",
        message_contains=("leaking the same prompt",),
        code='''
            import random
            order = list(range(len(conversations)))
            random.Random(seed).shuffle(order)
            chosen = set(order[: round(validation_fraction * len(conversations))])
            train = [c for i, c in enumerate(conversations) if i not in chosen]
            validation = [c for i, c in enumerate(conversations) if i in chosen]
            return train, validation
        '''),
    WrongAnswer(
        task="M1.6", label="padding labels left as pad id", message_contains=("pad id",),
        code='''
            width = max(len(e["input_ids"]) for e in examples)
            batch = {"input_ids": [], "labels": [], "attention_mask": []}
            for e in examples:
                pad = width - len(e["input_ids"])
                batch["input_ids"].append(e["input_ids"] + [pad_id] * pad)
                batch["labels"].append(e["labels"] + [pad_id] * pad)
                batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
            return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        '''),
]
