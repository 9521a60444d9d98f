"""Plausible wrong answers to milestone 1 (CURRICULUM.md); each must fail with a teaching message.

Each is the reference solution with one mistake (``variant``), so the catalogue follows the
code it mutates and fails loudly when that code changes.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(
        task="M1.1", label="alpaca input dropped", message_contains=("input",),
        code=variant(ROOT, "M1.1", "user = user + ALPACA_SEPARATOR + record[\"input\"]",
                     "pass")),
    WrongAnswer(
        task="M1.1", label="alpaca input before the instruction", message_contains=("input",),
        code=variant(ROOT, "M1.1", "user = user + ALPACA_SEPARATOR + record[\"input\"]",
                     "user = record[\"input\"] + ALPACA_SEPARATOR + user")),
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
        task="M1.6", label="padding labels left as pad id", message_contains=("pad id",),
        code=variant(ROOT, "M1.6", "e[\"labels\"] + [IGNORE_INDEX] * pad",
                     "e[\"labels\"] + [pad_id] * pad")),
]
