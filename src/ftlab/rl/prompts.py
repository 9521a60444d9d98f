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

from ftlab.errors import ConfigError
from ftlab.world import all_facts

MAX_LISTED = 5
"""Problems listed one per line before the rest are counted."""

RESERVED = frozenset({"prompt", "prompts", "completions", "completion_ids", "trainer_state",
                      "log_extra", "log_metric", "environments"})
"""Names a prompt file's columns may not take: the arguments reward functions receive from
ftlab or TRL besides the columns."""


_FACT_IDS: set[str] = set()


def names_fact(record: dict) -> bool:
    """Whether a prompt record's ``id`` names a fact of the embedded world."""
    if not _FACT_IDS:
        _FACT_IDS.update(f.id for f in all_facts())
    return isinstance(record.get("id"), str) and record["id"] in _FACT_IDS


def prompt_problems(path: Path, needs_fact: bool) -> tuple[list[dict], list[str]]:
    """(records, problems) of a prompt file: every line that is not a JSON object with a
    non-empty string ``question`` is a problem ``<file>:<line>: ...``; so is, when
    ``needs_fact``, a record whose ``id`` names no fact of the embedded world."""
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
            problems.append(f"{where}: the 'correct' reward needs an 'id' naming a fact of the "
                            f"world (e.g. 'capital:France'), got {record.get('id')!r}")
            continue
        records.append(record)
    if not records and not problems:
        problems.append(f"{path}: no prompts")
    return records, problems


def load_prompts(path: Path, needs_fact: bool) -> list[dict]:
    """The records of a prompt file; :class:`ConfigError` listing its problems (the first
    :data:`MAX_LISTED` with file:line, then how many more)."""
    records, problems = prompt_problems(path, needs_fact)
    if problems:
        more = len(problems) - MAX_LISTED
        raise ConfigError("\n".join(problems[:MAX_LISTED]
                                    + ([f"... and {more} more"] if more > 0 else [])))
    return records


def split_prompts(records: list[dict], validation_fraction: float, seed: int
                  ) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded shuffle, the validation share taken from the front
    (at least one prompt when the fraction is above 0 and there are two or more)."""
    order = list(range(len(records)))
    random.Random(f"prompts:{seed}").shuffle(order)
    n_val = min(len(records) - 1, max(1, round(validation_fraction * len(records)))
                ) if validation_fraction > 0 else 0
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]
