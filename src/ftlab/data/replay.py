"""Replay of general text during fine-tuning: the course's answer to forgetting (given).

Fine-tuning only on chat answers moves the whole next-token distribution; general-text
perplexity of the embedded model rises 4-7x after LoRA SFT. Mixing a share of plain text,
trained on every token the way the model was pretrained, holds it near the base. The text is
a plain file with one document per line (the embedded corpus: ``corpus/train.txt``).
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ftlab.errors import DataError

REPLAY_SOURCE = "replay"
"""The ``source`` of replay examples (examples without one are the task's own)."""


def replay_count(train_examples: int, fraction: float) -> int:
    """How many replay examples make ``fraction`` of a training set that has
    ``train_examples`` task examples: ``round(n * f / (1 - f))`` (0 for ``f == 0``)."""
    return round(train_examples * fraction / (1 - fraction)) if fraction else 0


def replay_examples(path: str | Path, tokenizer: PreTrainedTokenizerBase, count: int,
                    max_length: int, seed: int = 0,
                    separator: str | None = None) -> list[dict[str, list[int]]]:
    """``count`` blocks of ``max_length`` tokens of the text at ``path``, every token trained.

    Each block starts at a line drawn with ``random.Random(f"replay:{seed}")`` and continues
    through the following lines (wrapping round), each preceded by ``separator`` (the
    tokenizer's document separator ``<|endoftext|>`` when it has one, else its EOS token), the
    way the embedded model was pretrained. Output ``{"input_ids", "labels", "source"}`` with
    equal lists (labels = ids) and ``source`` = ``"replay"`` (the Trainer logs how many of a
    step's trained tokens come from each source, so the report plots them apart). Raises DataError for a missing or empty file.
    """
    if count == 0:
        return []
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read replay text ({e})") from None
    if not lines:
        raise DataError(f"{path}: replay text file has no non-empty line")
    if separator is None:
        separator = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    sep = tokenizer.convert_tokens_to_ids(separator)
    rng = random.Random(f"replay:{seed}")
    examples = []
    for _ in range(count):
        line = rng.randrange(len(lines))
        ids: list[int] = []
        for _ in range(len(lines)):
            if len(ids) >= max_length:
                break
            ids += [sep, *tokenizer(lines[line], add_special_tokens=False).input_ids]
            line = (line + 1) % len(lines)
        examples.append({"input_ids": ids[:max_length], "labels": ids[:max_length],
                         "source": REPLAY_SOURCE})
    return examples
