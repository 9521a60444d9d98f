"""Prompt files of a grpo stage (given): JSON lines of chat questions and the fields their
rewards verify.

Each line is an object with a ``question`` (the user turn) and any other fields, which reach
the reward functions as keyword arguments. The built-in ``correct`` reward needs ``id``: the
fact of the embedded world the question asks about (``capital:France``). Every problem is
reported with its file:line before anything is loaded or trained.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ftlab.errors import ConfigError
from ftlab.world.facts import fact_by_id

MAX_LISTED = 5
"""Problems listed one per line before the rest are counted."""

RESERVED = frozenset({"prompt", "prompts", "completions", "completion_ids", "trainer_state",
                      "log_extra", "log_metric", "environments", "pairs"})
"""Names a prompt file's columns may not take: the arguments reward functions (and judges:
``pairs``) receive from ftlab or TRL besides the columns."""


def names_fact(record: dict) -> bool:
    """Whether a prompt record's ``id`` names a fact of the embedded world."""
    if not isinstance(record.get("id"), str):
        return False
    try:
        fact_by_id(record["id"])
    except KeyError:
        return False
    return True


def prompt_problems(path: Path, needs_fact: bool) -> tuple[list[tuple[int, dict]], list[str]]:
    """(numbered records, problems) of a prompt file: ``(line, record)`` for every usable
    line; every line that is not a JSON object with a non-empty string ``question`` is a
    problem ``<file>:<line>: ...``; so is, when ``needs_fact``, a record whose ``id`` names
    no fact of the embedded world."""
    records, problems = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not JSON ({e.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("question"), str) \
                or not record["question"].strip():
            problems.append(f"{where}: a prompt needs a non-empty 'question' string")
            continue
        clash = sorted(RESERVED & set(record))
        if clash:
            problems.append(f"{where}: column(s) {', '.join(clash)} would clash with the "
                            "reward functions' own arguments; rename them")
            continue
        if needs_fact and not names_fact(record):
            problems.append(f"{where}: the world's verifier (the 'correct' rewards, the "
                            "verifier judges) needs an 'id' naming a fact of the world (e.g. "
                            f"'capital:France'), got {record.get('id')!r}")
            continue
        records.append((number, record))
    if not records and not problems:
        problems.append(f"{path}: no prompts")
    return records, problems


def _listed(problems: list[str]) -> str:
    more = len(problems) - MAX_LISTED
    return "\n".join(problems[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))


def load_prompts(path: Path, needs_fact: bool) -> list[tuple[int, dict]]:
    """The numbered records of a prompt file; :class:`ConfigError` listing its problems (the
    first :data:`MAX_LISTED` with file:line, then how many more)."""
    records, problems = prompt_problems(path, needs_fact)
    if problems:
        raise ConfigError(_listed(problems))
    return records


def duplicates(records: list[tuple[int, dict]]) -> list[tuple[int, int]]:
    """``(line, line of its first copy)`` of every record whose question and id an earlier
    line already has (exact text)."""
    first: dict[tuple, int] = {}
    found = []
    for line, record in records:
        key = (record["question"], str(record.get("id")))
        if key in first:
            found.append((line, first[key]))
        first.setdefault(key, line)
    return found


def long_prompts(path: Path, records: list[tuple[int, dict]], tokenizer,
                 limit: int) -> list[tuple[int, int]]:
    """``(line, tokens)`` of every question longer than ``limit`` tokens of ``tokenizer``."""
    lengths = [(line, len(tokenizer(record["question"], add_special_tokens=False).input_ids))
               for line, record in records]
    return [(line, n) for line, n in lengths if n > limit]


def long_prompt_problems(path: Path, over: list[tuple[int, int]], limit: int,
                         section: str = "grpo") -> list[str]:
    """One ``<file>:<line>: ...`` problem per question of :func:`long_prompts`, naming the
    ``section`` whose ``max_prompt_length`` it is over."""
    fix = (", or set grpo.long_prompts: truncate" if section == "grpo" else "")
    return [f"{path}:{line}: the question is {n} tokens, over {section}.max_prompt_length "
            f"({limit}); shorten it or raise the limit{fix}" for line, n in over]


def prepare_prompts(path: Path, records: list[tuple[int, dict]], tokenizer, limit: int,
                    long: str, repeats: str) -> tuple[list[dict], dict[str, int]]:
    """The records a stage trains on, and what was done to get them.

    ``long``: ``error`` raises :class:`ConfigError` naming each question over ``limit``
    tokens with its file:line; ``truncate`` keeps its last ``limit`` tokens (as TRL
    truncates from the left). ``repeats``: ``drop`` keeps the first of lines with the same
    question and id, ``keep`` keeps them all. Returns ``(records, counts)`` with counts
    ``{"prompts/truncated", "prompts/duplicates"}`` (duplicates found, dropped or kept).
    """
    over = long_prompts(path, records, tokenizer, limit)
    if over and long == "error":
        raise ConfigError(_listed(long_prompt_problems(path, over, limit)))
    cut = {line for line, _ in over}
    repeated = duplicates(records)
    dropped = {line for line, _ in repeated} if repeats == "drop" else set()
    out = []
    for line, record in records:
        if line in dropped:
            continue
        if line in cut:
            ids = tokenizer(record["question"], add_special_tokens=False).input_ids[-limit:]
            record = {**record, "question": tokenizer.decode(ids)}
        out.append(record)
    return out, {"prompts/truncated": len(cut), "prompts/duplicates": len(repeated)}


def split_prompts(records: list[dict], validation_fraction: float, seed: int
                  ) -> tuple[list[dict], list[dict]]:
    """(train, validation) with every prompt of one fact (one ``id``; a record without one
    stands alone) on the same side, so no copy or rephrasing of a validation question is
    trained on: a seeded shuffle of the facts, the validation share (of prompts, at least
    one fact when the fraction is above 0 and there are two or more) taken from the front."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(str(record["id"]) if "id" in record else f"#{i}", []).append(i)
    keys = list(groups)
    random.Random(f"prompts:{seed}").shuffle(keys)
    want = max(1, round(validation_fraction * len(records))) if validation_fraction > 0 else 0
    val: list[int] = []
    for key in keys[:-1]:  # the last fact always trains
        if len(val) >= want:
            break
        val += groups[key]
    chosen = set(val)
    return ([records[i] for i in range(len(records)) if i not in chosen],
            [records[i] for i in sorted(chosen)])


def prompt_examples(tokenizer, prompts: list[dict], indices) -> list[dict]:
    """Trainer examples of the prompt records at ``indices`` (GRPO, online DPO): the question's
    token ids (for length grouping) and the record's index."""
    return [{"input_ids": tokenizer(prompts[i]["question"]).input_ids, "index": i}
            for i in indices]


def collate_prompt_indices(examples: list[dict]) -> dict[str, torch.Tensor]:
    """A micro-batch of :func:`prompt_examples`: ``prompt_index`` and the questions' token
    count (``real_tokens``, for throughput)."""
    return {"prompt_index": torch.tensor([e["index"] for e in examples]),
            "real_tokens": torch.tensor(sum(len(e["input_ids"]) for e in examples))}
