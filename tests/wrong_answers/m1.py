"""Plausible wrong answers to milestone 1 (CURRICULUM.md); each must fail with a teaching message.

Each is the reference solution with one mistake (``variant``), so the catalogue follows the
code it mutates and fails loudly when that code changes.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant, variants

ROOT = Path(__file__).resolve().parents[2]


WRONG_ANSWERS = [
    WrongAnswer(
        task="M1.1", label="alpaca input dropped", message_contains=("input dropped",),
        code=variant(ROOT, "M1.1", "user = user + ALPACA_SEPARATOR + extra", "pass")),
    WrongAnswer(
        task="M1.1", label="alpaca input before the instruction",
        message_contains=("input before the instruction",),
        code=variant(ROOT, "M1.1", "user = user + ALPACA_SEPARATOR + extra",
                     "user = extra + ALPACA_SEPARATOR + user")),
    WrongAnswer(
        task="M1.1", label="white-space-only alpaca input appended",
        message_contains=("white-space-only input",),
        code=variant(ROOT, "M1.1", "if extra.strip():", "if extra:")),
    WrongAnswer(
        task="M1.1", label="white-space-only alpaca system kept",
        message_contains=("white-space-only system",),
        code=variant(ROOT, "M1.1", "if system.strip() else []", "if system else []")),
    WrongAnswer(
        task="M1.1", label="kept alpaca input stripped", message_contains=("verbatim",),
        code=variant(ROOT, "M1.1", "user = user + ALPACA_SEPARATOR + extra",
                     "user = user + ALPACA_SEPARATOR + extra.strip()")),
    WrongAnswer(
        task="M1.1", label="an input of None crashes (record.get with a default)",
        message_contains=("None",),
        code=variant(ROOT, "M1.1", 'record.get("input") or ""', 'record.get("input", "")')),
    WrongAnswer(
        task="M1.1", label="system message lost", message_contains=("system message lost",),
        code=variant(ROOT, "M1.1", "for m in record[\"messages\"]]",
                     "for m in record[\"messages\"] if m[\"role\"] != \"system\"]")),
    WrongAnswer(
        task="M1.2", label="generation prompt missing",
        message_contains=("generation prompt missing",),
        code=variant(ROOT, "M1.2", "add_generation_prompt=True", "add_generation_prompt=False")),
    WrongAnswer(
        task="M1.2", label="template applied twice", message_contains=("applied twice",),
        code=variant(ROOT, "M1.2", "return tokenizer.apply_chat_template(conversation, tokenize=False)",
                     "text = tokenizer.apply_chat_template(conversation, tokenize=False)\n"
                     "    return tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": text}],"
                     " tokenize=False)")),
    WrongAnswer(
        task="M1.3", label="EOS masked", message_contains=("EOS masked",),
        code=variant(ROOT, "M1.3", "spans = assistant_spans(conversation, tokenizer)",
                     "spans = [(s, e - len(tokenizer.eos_token))"
                     " for s, e in assistant_spans(conversation, tokenizer)]")),
    WrongAnswer(
        task="M1.3", label="prompt tokens trained", message_contains=("prompt tokens trained",),
        code=variant(ROOT, "M1.3", "tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX",
                     "tok")),
    WrongAnswer(
        task="M1.3", label="off-by-one at the boundary (span starts one character early)",
        message_contains=("off-by-one",),
        code=variant(ROOT, "M1.3", "any(s <= a and b <= e for s, e in spans)",
                     "any(s - 1 <= a and b <= e for s, e in spans)")),
    WrongAnswer(
        task="M1.3", label="EOS trained twice (an EOS appended after the template's)",
        message_contains=("EOS trained twice",),
        code=variant(ROOT, "M1.3", "if len(ids) <= max_length:",
                     "eos = tokenizer.eos_token_id\n"
                     "ids, labels = ids + [eos], labels + [eos]\nif len(ids) <= max_length:")),
    WrongAnswer(
        task="M1.3", label="labels shifted by one (pre-shifted for the loss)",
        message_contains=("shifted by one",),
        code=variant(ROOT, "M1.3", "if len(ids) <= max_length:",
                     "labels = labels[1:] + [IGNORE_INDEX]\nif len(ids) <= max_length:")),
    WrongAnswer(
        task="M1.3", label="BOS added in front (bos_token_id, None for this tokenizer)",
        message_contains=("BOS added",),
        code=variant(ROOT, "M1.3", 'ids = enc["input_ids"]',
                     'ids = [tokenizer.bos_token_id] + enc["input_ids"]')),
    WrongAnswer(
        task="M1.3", label="BOS added in front (<|endoftext|>, untrained)",
        message_contains=("BOS",),
        code=variant(ROOT, "M1.3", "if len(ids) <= max_length:",
                     'ids = [tokenizer.convert_tokens_to_ids("<|endoftext|>")] + ids\n'
                     "labels = [IGNORE_INDEX] + labels\nif len(ids) <= max_length:")),
    WrongAnswer(
        task="M1.3", label="truncation drops the response (keeps the start)",
        message_contains=("dropped the response",),
        code=variant(ROOT, "M1.3", "start = max(0, end - max_length)",
                     "start, end = 0, max_length")),
    WrongAnswer(
        task="M1.4", label="duplicates differing in white space or case survive",
        message_contains=("whitespace/case",),
        code=variant(ROOT, "M1.4", "key = dedupe_key(conv)",
                     "key = tuple((m[\"role\"], m[\"content\"]) for m in conv)")),
    WrongAnswer(
        task="M1.5", label="random split leaking the same prompt",
        message_contains=("leaking the same prompt",),
        code="""
import random
order = list(range(len(conversations)))
random.Random(seed).shuffle(order)
chosen = set(order[: round(validation_fraction * len(conversations))])
train = [c for i, c in enumerate(conversations) if i not in chosen]
validation = [c for i, c in enumerate(conversations) if i in chosen]
return train, validation
"""),
    WrongAnswer(
        task="M1.5", label="groups ordered by Python's hash() (salted per process)",
        message_contains=("hash()", "PYTHONHASHSEED"),
        code=variant(ROOT, "M1.5", 'hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()',
                     'hash(f"{seed}:{k}")')),
    WrongAnswer(
        task="M1.5", label="a group that does not fit stops the selection",
        message_contains=("ended the selection",),
        code=variant(ROOT, "M1.5",
                     "if len(chosen) + len(groups[key]) <= budget:\n"
                     "        chosen.update(groups[key])",
                     "if len(chosen) + len(groups[key]) > budget:\n"
                     "        break\n"
                     "    chosen.update(groups[key])")),
    WrongAnswer(
        task="M1.6", label="padding labels left as pad id", message_contains=("pad id",),
        code=variant(ROOT, "M1.6", "e[\"labels\"] + [IGNORE_INDEX] * pad",
                     "e[\"labels\"] + [pad_id] * pad")),
    WrongAnswer(
        task="M1.6", label="left padding", message_contains=("left padding",),
        code=variants(ROOT, "M1.6",
                      ('e["input_ids"] + [pad_id] * pad', '[pad_id] * pad + e["input_ids"]'),
                      ('e["labels"] + [IGNORE_INDEX] * pad', '[IGNORE_INDEX] * pad + e["labels"]'),
                      ('[1] * len(e["input_ids"]) + [0] * pad',
                       '[0] * pad + [1] * len(e["input_ids"])'))),
    WrongAnswer(
        task="M1.6", label="attention_mask missing from the batch",
        message_contains=("attention_mask", "missing key"),
        code=variants(ROOT, "M1.6",
                      ('"labels": [], "attention_mask": []}', '"labels": []}'),
                      ('batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)',
                       "pass"))),
    # Round 3 (issue #30): properties of the spec over its input domain.
    WrongAnswer(
        task="M1.1", label="messages contents stripped", message_contains=("verbatim",),
        code=variant(ROOT, "M1.1", '{"role": m["role"], "content": m["content"]}',
                     '{"role": m["role"], "content": m["content"].strip()}')),
    WrongAnswer(
        task="M1.1", label="alpaca instruction stripped", message_contains=("verbatim",),
        code=variant(ROOT, "M1.1", 'user, extra = record["instruction"], record.get("input")',
                     'user, extra = record["instruction"].strip(), record.get("input")')),
    WrongAnswer(
        task="M1.1", label="sharegpt speakers mapped by a hand-written dict (no user/assistant)",
        message_contains=("SHAREGPT_ROLES",),
        code=variant(ROOT, "M1.1", 'SHAREGPT_ROLES[t["from"]]',
                     '{"human": "user", "gpt": "assistant", "system": "system"}[t["from"]]')),
    WrongAnswer(
        task="M1.1", label="multi-turn messages keep the system and the last exchange only",
        message_contains=("every turn", "multi-turn"),
        code=variant(ROOT, "M1.1",
                     'for m in record["messages"]]',
                     'for m in (record["messages"][:1] + record["messages"][-2:]'
                     ' if record["messages"][0]["role"] == "system"'
                     ' else record["messages"][-2:])]')),
    WrongAnswer(
        task="M1.1", label="alpaca record modified (blank input written back)",
        message_contains=("record was modified",),
        code=variant(ROOT, "M1.1", 'user, extra = record["instruction"], record.get("input") or ""',
                     'record["input"] = record.get("input") or ""\n'
                     '    user, extra = record["instruction"], record["input"]')),
    WrongAnswer(
        task="M1.1", label="messages: the record's own turn dicts returned",
        message_contains=("own dicts",),
        code=variant(ROOT, "M1.1",
                     'return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]',
                     'return [m if set(m) == {"role", "content"} else {"role": m["role"], '
                     '"content": m["content"]} for m in record["messages"]]')),
    WrongAnswer(
        task="M1.2", label="generation prompt drops every assistant turn",
        message_contains=("earlier assistant turns dropped",),
        code=variant(ROOT, "M1.2",
                     'turns = conversation[:-1] if conversation[-1]["role"] == "assistant" '
                     'else conversation',
                     'turns = [m for m in conversation if m["role"] != "assistant"]')),
    WrongAnswer(
        task="M1.2", label="generation prompt drops the last turn whatever its role",
        message_contains=("only a final assistant turn is dropped",),
        code=variant(ROOT, "M1.2",
                     'turns = conversation[:-1] if conversation[-1]["role"] == "assistant" '
                     'else conversation',
                     'turns = conversation[:-1] if len(conversation) > 1 else conversation')),
    WrongAnswer(
        task="M1.2", label="the caller's conversation modified (final answer popped)",
        message_contains=("conversation was modified",),
        code=variant(ROOT, "M1.2",
                     'turns = conversation[:-1] if conversation[-1]["role"] == "assistant" '
                     'else conversation',
                     'if conversation[-1]["role"] == "assistant":\n'
                     '    conversation.pop()\n'
                     'turns = conversation')),
    WrongAnswer(
        task="M1.2", label="generation prompt hard-coded as ChatML",
        message_contains=("template's generation prompt", "not from a string appended by hand"),
        code=variant(ROOT, "M1.2",
                     "return tokenizer.apply_chat_template(turns, tokenize=False, "
                     "add_generation_prompt=True)",
                     'return tokenizer.apply_chat_template(turns, tokenize=False) '
                     '+ "<|im_start|>assistant\\n"')),
    WrongAnswer(
        task="M1.2", label="training text with a generation prompt appended",
        message_contains=("generation prompt appended to the training text",),
        code=variant(ROOT, "M1.2",
                     "return tokenizer.apply_chat_template(conversation, tokenize=False)",
                     "return tokenizer.apply_chat_template(conversation, tokenize=False, "
                     "add_generation_prompt=True)")),
    WrongAnswer(
        task="M1.3", label="a conversation exactly max_length long is truncated",
        message_contains=("exactly max_length tokens fits",),
        code=variant(ROOT, "M1.3", "if len(ids) <= max_length:", "if len(ids) < max_length:")),
    WrongAnswer(
        task="M1.3", label="every EOS id trained (also those closing system and user turns)",
        message_contains=("every <|im_end|> trained",),
        code=variant(ROOT, "M1.3",
                     "tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX",
                     "tok if any(s <= a and b <= e for s, e in spans) "
                     "or tok == tokenizer.eos_token_id else IGNORE_INDEX")),
    WrongAnswer(
        task="M1.3", label="the tokenizer's own BOS added (add_special_tokens left at its default)",
        message_contains=("BOS", "add_special_tokens=False"),
        code=variant(ROOT, "M1.3", "tokenizer(text, add_special_tokens=False, "
                                   "return_offsets_mapping=True)",
                     "tokenizer(text, return_offsets_mapping=True)")),
    WrongAnswer(
        task="M1.3", label="truncation keeps the last max_length tokens (trailing newline too)",
        message_contains=("end it with the last trained token",),
        code=variant(ROOT, "M1.3", "start = max(0, end - max_length)",
                     "start, end = len(ids) - max_length, len(ids)")),
    WrongAnswer(
        task="M1.3", label="EOS of the final assistant turn only",
        message_contains=("EOS masked", "1 of 2"),
        code=variant(ROOT, "M1.3", "spans = assistant_spans(conversation, tokenizer)",
                     "spans = [(s, e - len(tokenizer.eos_token))"
                     " for s, e in assistant_spans(conversation, tokenizer)]\n"
                     "spans[-1] = (spans[-1][0], spans[-1][1] + len(tokenizer.eos_token))")),
    WrongAnswer(
        task="M1.4", label="dedupe on the response only",
        message_contains=("duplicates only when every turn matches",),
        code=variant(ROOT, "M1.4", "key = dedupe_key(conv)",
                     'key = normalize_text(conv[-1]["content"])')),
    WrongAnswer(
        task="M1.4", label="dedupe on the last exchange (system message ignored)",
        message_contains=("system included",),
        code=variant(ROOT, "M1.4", "key = dedupe_key(conv)", "key = dedupe_key(conv[-2:])")),
    WrongAnswer(
        task="M1.4", label="dedupe with lower() instead of casefold()",
        message_contains=("casefold",),
        code=variant(ROOT, "M1.4", "key = dedupe_key(conv)",
                     'key = tuple((m["role"], " ".join(m["content"].lower().split()))'
                     " for m in conv)")),
    WrongAnswer(
        task="M1.4", label="short response measured before stripping",
        message_contains=("measured after stripping",),
        code=variant(ROOT, "M1.4", "elif len(response) < min_response_chars",
                     'elif len(conv[-1]["content"]) < min_response_chars')),
    WrongAnswer(
        task="M1.4", label="a response exactly min_response_chars long is short (<=)",
        message_contains=("exactly min_response_chars",),
        code=variant(ROOT, "M1.4", "elif len(response) < min_response_chars",
                     "elif len(response) <= min_response_chars")),
    WrongAnswer(
        task="M1.4", label="a total exactly max_chars long is too long (>=)",
        message_contains=("exactly max_chars is kept",),
        code=variant(ROOT, "M1.4", 'sum(len(m["content"]) for m in conv) > max_chars',
                     'sum(len(m["content"]) for m in conv) >= max_chars')),
    WrongAnswer(
        task="M1.4", label="too_long on the response alone",
        message_contains=("all contents together",),
        code=variant(ROOT, "M1.4", 'sum(len(m["content"]) for m in conv) > max_chars',
                     'len(conv[-1]["content"]) > max_chars')),
    WrongAnswer(
        task="M1.4", label="max_chars=0 taken as no limit (truthiness)",
        message_contains=("max_chars=0 is a limit",),
        code=variant(ROOT, "M1.4", "max_chars is not None and", "max_chars and")),
    WrongAnswer(
        task="M1.4", label="a dropped conversation makes its later copy a duplicate",
        message_contains=("earlier *kept* conversation",),
        code=variants(ROOT, "M1.4", ("key = dedupe_key(conv)",
                               "key = dedupe_key(conv)\n    dup = key in seen\n    seen.add(key)"),
                      ("elif key in seen:", "elif dup:"))),
    WrongAnswer(
        task="M1.4", label="duplicates checked before the other reasons",
        message_contains=("REASONS order",),
        code=variant(ROOT, "M1.4", "if not response:",
                     'if key in seen:\n        reason = "duplicate"\n    elif not response:')),
    WrongAnswer(
        task="M1.4", label="the first assistant turn judged, not the last",
        message_contains=("conversation[-1]",),
        code=variant(ROOT, "M1.4", 'response = conv[-1]["content"].strip()',
                     'response = next(m for m in conv if m["role"] == "assistant")'
                     '["content"].strip()')),
    WrongAnswer(
        task="M1.4", label="the input list filtered in place",
        message_contains=("input list was modified",),
        code=variants(ROOT, "M1.4", ("for conv in conversations:", "for conv in list(conversations):"),
                      ("report.dropped[reason] += 1",
                       "report.dropped[reason] += 1\n    conversations.remove(conv)"))),
    WrongAnswer(
        task="M1.5", label="validation budget truncated with int()",
        message_contains=("Python's round",),
        code=variant(ROOT, "M1.5", "budget = round(validation_fraction * len(conversations))",
                     "budget = int(validation_fraction * len(conversations))")),
    WrongAnswer(
        task="M1.5", label="validation budget rounded half up (int(x + 0.5))",
        message_contains=("Python's round", "2.5 -> 2"),
        code=variant(ROOT, "M1.5", "budget = round(validation_fraction * len(conversations))",
                     "budget = int(validation_fraction * len(conversations) + 0.5)")),
    WrongAnswer(
        task="M1.5", label="at least one validation conversation",
        message_contains=("minimum of one",),
        code=variant(ROOT, "M1.5", "budget = round(validation_fraction * len(conversations))",
                     "budget = max(1, round(validation_fraction * len(conversations)))")),
    WrongAnswer(
        task="M1.5", label="validation budget counted in groups",
        message_contains=("counts conversations (not groups)",),
        code=variant(ROOT, "M1.5", "budget = round(validation_fraction * len(conversations))",
                     "budget = round(validation_fraction * len(groups))")),
    WrongAnswer(
        task="M1.5", label="grouped by the last user turn (system and earlier turns ignored)",
        message_contains=("group by prompt_key",),
        code=variant(ROOT, "M1.5", "groups.setdefault(prompt_key(conv), [])",
                     'groups.setdefault(normalize_text(conv[-2]["content"]), [])')),
    WrongAnswer(
        task="M1.6", label="attention mask from input_ids != pad_id (pad == eos)",
        message_contains=("input_ids != pad_id", "pad == eos"),
        code=variant(ROOT, "M1.6", '[1] * len(e["input_ids"]) + [0] * pad',
                     '[int(t != pad_id) for t in e["input_ids"]] + [0] * pad')),
    WrongAnswer(
        task="M1.6", label="labels padded with pad_id, then every pad_id label masked",
        message_contains=("labels masked by value",),
        code=variants(ROOT, "M1.6", ('e["labels"] + [IGNORE_INDEX] * pad', 'e["labels"] + [pad_id] * pad'),
                      ("return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}",
                       "out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}\n"
                       'out["labels"][out["labels"] == pad_id] = IGNORE_INDEX\n'
                       "return out"))),
    WrongAnswer(
        task="M1.6", label="examples padded in place with +=",
        message_contains=("examples were modified",),
        code=variants(ROOT, "M1.6",
                      ('pad = width - len(e["input_ids"])',
                       'pad = width - len(e["input_ids"])\n    n = len(e["input_ids"])\n'
                       '    e["input_ids"] += [pad_id] * pad\n'
                       '    e["labels"] += [IGNORE_INDEX] * pad'),
                      ('batch["input_ids"].append(e["input_ids"] + [pad_id] * pad)',
                       'batch["input_ids"].append(e["input_ids"])'),
                      ('batch["labels"].append(e["labels"] + [IGNORE_INDEX] * pad)',
                       'batch["labels"].append(e["labels"])'),
                      ('[1] * len(e["input_ids"]) + [0] * pad', '[1] * n + [0] * pad'))),
    WrongAnswer(
        task="M1.6", label="attention mask from the labels (prompt tokens not attended)",
        message_contains=("attention mask taken from the labels",),
        code=variant(ROOT, "M1.6", '[1] * len(e["input_ids"]) + [0] * pad',
                     '[int(t != IGNORE_INDEX) for t in e["labels"]] + [0] * pad')),
    WrongAnswer(
        task="M1.6", label="pad_sequence without batch_first (sequence-first tensors)",
        message_contains=("batch first",),
        code="""
from torch.nn.utils.rnn import pad_sequence
ids = pad_sequence([torch.tensor(e["input_ids"]) for e in examples], padding_value=pad_id)
labels = pad_sequence([torch.tensor(e["labels"]) for e in examples],
                      padding_value=IGNORE_INDEX)
mask = pad_sequence([torch.ones(len(e["input_ids"]), dtype=torch.long) for e in examples])
return {"input_ids": ids, "labels": labels, "attention_mask": mask}
"""),
]
