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
from ftlab.data.mixture import MixtureReport, load_data
from ftlab.data.quality import FilterReport, quality_filter
from ftlab.data.split import train_val_split
from ftlab.errors import DataError


@dataclass
class PreparedData:
    """Tokenized examples (``{"input_ids", "labels"}``) and the reports of each stage."""

    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    load_report: LoadReport | MixtureReport
    filter_report: FilterReport | None

    def summary(self) -> str:
        return (f"{len(self.train)} training and {len(self.validation)} validation examples "
                f"({self.filter_report.summary() if self.filter_report else 'no filter'})")


def prepare_sft(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, filter, split and tokenize the data ``config`` names.

    With ``config.dedupe`` off, only the per-record checks of the filter run (empty and
    short responses). Raises :class:`DataError` when nothing is left to train on.
    """
    examples, load_report = load_data(config)
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
                        "loading and filtering; see the load report")
    train, validation = train_val_split(kept, config.validation_fraction, config.seed)
    tokenize = lambda convs: [tokenize_with_labels(c, tokenizer, config.max_length)  # noqa: E731
                              for c in convs]
    return PreparedData(tokenize(train), tokenize(validation), load_report, filter_report)
