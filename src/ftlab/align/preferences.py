"""Preference pairs for DPO: load, check, split and tokenize (given infrastructure).

A record is TRL's preference format, conversational or plain::

    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", ...}],
     "rejected": [{"role": "assistant", ...}]}
    {"prompt": "...", "chosen": "...", "rejected": "..."}

Extra keys (``pair_type``, ``id`` …) are kept for reporting. Every record that is not a
valid pair is reported with its file and line; nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ftlab.data.formats import check_conversation, check_fields
from ftlab.data.labels import IGNORE_INDEX, tokenize_with_labels
from ftlab.data.loading import LoadReport, load_records
from ftlab.data.split import train_val_split
from ftlab.config import DataConfig
from ftlab.errors import ConfigError, DataError

PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (a conversation ending with a user turn) and two assistant replies."""

    prompt: list[dict]
    chosen: str
    rejected: str
    info: dict
    """The record's other keys (``pair_type``, ``id``, ...)."""

    def conversation(self, which: str) -> list[dict]:
        """The prompt followed by the ``"chosen"`` or ``"rejected"`` reply."""
        return [*self.prompt, {"role": "assistant", "content": getattr(self, which)}]


def _turns(value: object, key: str, role: str) -> list[dict]:
    """``value`` as a list of turns (a plain string becomes one ``role`` turn)."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise DataError(f"field '{key}' must be a string or a list of turns")
    try:
        check_fields({"messages": value}, "messages")
    except DataError as e:
        raise DataError(str(e).replace("messages", key, 1)) from None
    return value


def _pair(record: dict) -> PreferencePair:
    """A checked :class:`PreferencePair`; raises DataError with the reason."""
    missing = [k for k in PAIR_KEYS if k not in record]
    if missing:
        raise DataError(f"missing {missing}; a preference record has keys {list(PAIR_KEYS)}")
    prompt = _turns(record["prompt"], "prompt", "user")
    replies = {}
    for key in ("chosen", "rejected"):
        turns = _turns(record[key], key, "assistant")
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise DataError(f"field '{key}' must be one assistant reply")
        replies[key] = turns[0]["content"]
    check_conversation([*prompt, {"role": "assistant", "content": replies["chosen"]}])
    if replies["chosen"] == replies["rejected"]:
        raise DataError("chosen and rejected replies are identical")
    info = {k: v for k, v in record.items() if k not in PAIR_KEYS}
    return PreferencePair(prompt, replies["chosen"], replies["rejected"], info)


def load_pairs(path: str | Path) -> tuple[list[PreferencePair], LoadReport]:
    """Every valid pair of the file at ``path`` and the load report (bad records with their
    line and reason). Raises DataError when no valid pair is left."""
    records, report = load_records(path)
    pairs = []
    for record in records:
        try:
            pairs.append(_pair(record.data))
        except DataError as e:
            report.reject(record.where, str(e))
    if not pairs:
        raise DataError(f"{path}: no valid preference pair\n{report.summary()}")
    return pairs, report


def split_pairs(pairs: list[PreferencePair], validation_fraction: float, seed: int
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Train/validation split with M1.5's rule on the prompts: pairs sharing a prompt stay
    on one side."""
    conversations = [p.conversation("chosen") for p in pairs]
    train, validation = train_val_split(conversations, validation_fraction, seed)
    by_conversation = {id(c): p for c, p in zip(conversations, pairs)}
    return [by_conversation[id(c)] for c in train], [by_conversation[id(c)] for c in validation]


def response_only(labels: list[int]) -> list[int]:
    """``labels`` with every trained run but the last set to ``IGNORE_INDEX``: only the
    final assistant reply (and its end-of-turn token) is scored, even after a multi-turn
    prompt with earlier assistant turns."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:end] + [IGNORE_INDEX] * (len(labels) - end)


def tokenize_pair(pair: PreferencePair, tokenizer: PreTrainedTokenizerBase, max_length: int
                  ) -> dict[str, list[int]]:
    """Token ids and response-only labels of both conversations.

    Output: ``input_ids`` / ``labels`` (prompt + chosen) and ``rejected_input_ids`` /
    ``rejected_labels`` (prompt + rejected), each at most ``max_length`` (the start of the
    prompt is cut first, as in :func:`ftlab.data.tokenize_with_labels`).
    """
    chosen = tokenize_with_labels(pair.conversation("chosen"), tokenizer, max_length)
    rejected = tokenize_with_labels(pair.conversation("rejected"), tokenizer, max_length)
    return {"input_ids": chosen["input_ids"], "labels": response_only(chosen["labels"]),
            "rejected_input_ids": rejected["input_ids"],
            "rejected_labels": response_only(rejected["labels"])}


@dataclass
class PreparedPairs:
    """Tokenized pairs for DPO and where they came from."""

    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    train_pairs: list[PreferencePair]
    validation_pairs: list[PreferencePair]
    load_report: LoadReport

    def summary(self) -> str:
        return (f"{len(self.train)} training and {len(self.validation)} validation pairs "
                f"({len(self.load_report.rejected)} records rejected)")


def prepare_dpo(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedPairs:
    """Load, check, split and tokenize the preference file ``config.path``.

    ``config.format`` must be ``auto`` or ``preference``; mixtures are not supported for
    pairs. ``validation_fraction``, ``seed`` and ``max_length`` apply as for SFT.
    """
    if config.path is None or config.format not in ("auto", "preference"):
        raise ConfigError("a dpo or reward stage reads one preference file: set data.path to a JSONL of "
                          "{prompt, chosen, rejected} records and data.format to auto or "
                          f"preference (got path {config.path}, format {config.format!r})")
    pairs, report = load_pairs(config.path)
    report.refuse_above(config.max_rejected_fraction)
    train, validation = split_pairs(pairs, config.validation_fraction, config.seed)
    tokenize = lambda ps: [tokenize_pair(p, tokenizer, config.max_length)  # noqa: E731
                           for p in ps]
    return PreparedPairs(tokenize(train), tokenize(validation), train, validation, report)
