"""The ``data`` section: training data files, mixtures and tokenization limits (milestone 1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftlab.config.fields import DATA_FILE_HINT, DataFile, Section, hint


class MixtureSource(Section):
    """One data file in a weighted mixture."""

    path: DataFile = Field(
        description="Data file (JSON, JSONL, CSV or Parquet), relative to the config file's folder.",
        json_schema_extra=hint(DATA_FILE_HINT),
    )
    rate: float = Field(
        gt=0,
        description="Relative sampling weight of this source; rates are normalised to sum to 1 "
        "(e.g. 3 and 1 give 75% / 25%).",
    )


class DataConfig(Section):
    """Where training data comes from and how it becomes examples (milestone 1).

    Exactly one of ``path`` and ``mixture`` is set.
    """

    path: DataFile | None = Field(
        None,
        description="Data file (JSON, JSONL, CSV or Parquet), relative to the config file's folder. "
        "Omit it when `mixture` is given.",
        json_schema_extra=hint(DATA_FILE_HINT),
    )
    format: Literal["auto", "alpaca", "prompt_completion", "question_answer", "messages", "sharegpt",
                    "preference"] = Field(
        "auto",
        description="Record schema; 'auto' detects it from the keys of the first record. dpo stages "
        "read 'preference' records ({prompt, chosen, rejected}, TRL's format).",
    )
    max_length: int = Field(
        256,
        ge=16,
        description="Maximum example length in tokens (prompt + response); longer examples are "
        "truncated. Typical 256 for the embedded model, 1024-4096 for real models.",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Fraction of records held out for validation loss (0.1 = 10%); 0 disables it.",
    )
    min_response_chars: int = Field(
        1,
        ge=0,
        description="Records whose response has fewer characters are dropped (0 keeps empty responses).",
    )
    dedupe: bool = Field(True, description="Drop exact duplicate records before splitting.")
    seed: int = Field(0, ge=0, description="Seed of the shuffle and train/validation split.")
    mixture: list[MixtureSource] | None = Field(
        None,
        min_length=1,
        description="Weighted list of data files to mix instead of a single `path`.",
    )
    replay_fraction: float = Field(
        0.0,
        ge=0,
        le=0.9,
        description="Share of SFT training examples that are blocks of general text trained on every "
        "token (replay against forgetting); 0 disables it. 0.5 keeps the embedded model's general-text "
        "perplexity near the base.",
    )
    replay_path: DataFile | None = Field(
        None,
        description="Plain text file, one document per line, for replay; unset uses the embedded "
        "corpus (data/corpus/train.txt).",
        json_schema_extra=hint(DATA_FILE_HINT),
    )
    max_rejected_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A stage refuses to train when more than this share of its data file's records "
        "cannot be read (bad JSON, missing fields, wrong format; each reported with file:line). "
        "0 tolerates no bad record, 1 trains on whatever loads.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        """Exactly one of ``path`` and ``mixture`` must be given."""
        if (self.path is None) == (self.mixture is None):
            raise ValueError("give exactly one of 'path' (one data file) or 'mixture' (a list of files with rates)")
        return self
