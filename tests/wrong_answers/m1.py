"""Plausible wrong answers to milestone 1 (CURRICULUM.md); each must fail with a teaching message.

Each is the reference solution with one mistake (``variant``), so the catalogue follows the
code it mutates and fails loudly when that code changes.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]


def variants(task: str, *changes: tuple[str, str]) -> str:
    """``task``'s reference with several mistakes (old -> new), each checked like
    :func:`variant`."""
    code = variant(ROOT, task, *changes[0])
    for old, new in changes[1:]:
        if old not in code:
            raise ValueError(f"{task}: {old!r} is not in the reference solution; update the "
                             "wrong answer")
        code = code.replace(old, new, 1)
    return code

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
        code=variants("M1.6",
                      ('e["input_ids"] + [pad_id] * pad', '[pad_id] * pad + e["input_ids"]'),
                      ('e["labels"] + [IGNORE_INDEX] * pad', '[IGNORE_INDEX] * pad + e["labels"]'),
                      ('[1] * len(e["input_ids"]) + [0] * pad',
                       '[0] * pad + [1] * len(e["input_ids"])'))),
    WrongAnswer(
        task="M1.6", label="attention_mask missing from the batch",
        message_contains=("attention_mask", "missing key"),
        code=variants("M1.6",
                      ('"labels": [], "attention_mask": []}', '"labels": []}'),
                      ('batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)',
                       "pass"))),
]
