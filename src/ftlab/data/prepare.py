"""From a data config to tokenized training and validation examples (given infrastructure).

:func:`prepare_sft` chains milestone 1: load (one file or a mixture, with per-record
accounting) → quality filter (M1.4) → leak-free split (M1.5) → tokens and labels (M1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ftlab.config import DataConfig
from ftlab.data.labels import tokenize_with_labels
from ftlab.data.loading import LoadReport
from ftlab.data.mixture import MixtureReport, load_data, records_of
from ftlab.data.quality import FilterReport, quality_filter
from ftlab.data.replay import replay_count, replay_examples
from ftlab.data.split import train_val_split
from ftlab.errors import ConfigError, DataError
from ftlab.paths import data_dir

REPLAY_TEXT = "corpus/train.txt"
"""The embedded replay text, relative to the data folder."""


@dataclass
class PreparedData:
    """Tokenized examples (``{"input_ids", "labels"}``) and the reports of each stage."""

    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    load_report: LoadReport | MixtureReport
    filter_report: FilterReport | None
    replayed: int = 0
    """How many of ``train`` (the last ones) are general-text replay blocks."""

    @property
    def records(self) -> LoadReport:
        """The account of every record read (for a mixture, of all its files)."""
        return records_of(self.load_report)

    def summary(self) -> str:
        replay = f", {self.replayed} of them general-text replay" if self.replayed else ""
        return (f"{len(self.train)} training{replay} and {len(self.validation)} validation "
                f"examples ({self.filter_report.summary() if self.filter_report else 'no filter'})")


def prepare_sft(config: DataConfig, tokenizer: PreTrainedTokenizerBase,
                extra: list[list[dict]] | None = None) -> PreparedData:
    """Load, filter, split and tokenize the data ``config`` names; then add
    ``replay_fraction`` general-text blocks (:mod:`ftlab.data.replay`) to the training set.

    ``extra``: conversations to train on besides the data (a teacher's replies), added to the
    training split after filtering and splitting (never validation), before the replay blocks
    are counted, so ``replay_fraction`` stays the share of the whole training set.

    With ``config.dedupe`` off, only the per-record checks of the filter run (empty and
    short responses). Raises :class:`DataError` when nothing is left to train on.
    """
    if config.format == "preference":
        raise ConfigError("data.format: preference records ({prompt, chosen, rejected}) are for "
                          "dpo stages; an sft stage reads conversations (messages, alpaca, ...)")
    examples, load_report = load_data(config)
    records = records_of(load_report)
    records.refuse_above(config.max_rejected_fraction)
    conversations = [e.conversation for e in examples]
    if config.dedupe:
        kept, filter_report = quality_filter(conversations,
                                             min_response_chars=config.min_response_chars)
    else:
        kept = [c for c in conversations
                if quality_filter([c], min_response_chars=config.min_response_chars)[0]]
        filter_report = None
    if not kept:
        raise DataError(f"{config.path or 'the mixture'}: no usable conversation left after "
                        f"loading and filtering\n{records.brief()}\nfilter: "
                        f"{filter_report.summary() if filter_report else 'dedupe off'}")
    train, validation = train_val_split(kept, config.validation_fraction, config.seed)
    tokenize = lambda convs: [tokenize_with_labels(c, tokenizer, config.max_length)  # noqa: E731
                              for c in convs]
    train_examples = tokenize(train + list(extra or []))
    replay = []
    if config.replay_fraction:
        replay = replay_examples(config.replay_path or data_dir() / REPLAY_TEXT, tokenizer,
                                 replay_count(len(train_examples), config.replay_fraction),
                                 config.max_length, config.seed)
    return PreparedData(train_examples + replay, tokenize(validation), load_report,
                        filter_report, replayed=len(replay))
