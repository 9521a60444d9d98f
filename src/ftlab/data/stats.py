"""Dataset statistics and plots (given infrastructure): token lengths, filter reasons."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt

from ftlab.data.labels import IGNORE_INDEX
from ftlab.data.quality import REASONS, FilterReport


@dataclass(frozen=True)
class LengthStats:
    """Token counts over tokenized examples: totals and trained share."""

    examples: int
    tokens: int
    trained: int
    longest: int
    mean: float

    def summary(self) -> str:
        return (f"{self.examples} examples, {self.tokens} tokens (mean {self.mean:.1f}, "
                f"longest {self.longest}), {self.trained} trained "
                f"({self.trained / max(self.tokens, 1):.1%})")


def length_stats(examples: list[dict[str, list[int]]]) -> LengthStats:
    """Counts over examples with ``input_ids`` and ``labels``."""
    lengths = [len(e["input_ids"]) for e in examples]
    trained = sum(sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples)
    return LengthStats(len(examples), sum(lengths), trained, max(lengths, default=0),
                       sum(lengths) / max(len(lengths), 1))


def plot_lengths(examples: list[dict[str, list[int]]], max_length: int | None = None,
                 ax=None):
    """Histogram of tokens per example, stacked trained / masked; a line at ``max_length``."""
    ax = ax or plt.subplots(figsize=(6, 3.2))[1]
    total = [len(e["input_ids"]) for e in examples]
    trained = [sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples]
    bins = min(40, max(total) - min(total) + 1) if total else 10
    ax.hist([total, trained], bins=bins, label=["all tokens", "trained tokens"],
            color=["#9db4d6", "#3a7d44"])
    if max_length:
        ax.axvline(max_length, color="#b33", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.legend()
    return ax


def plot_filter_reasons(report: FilterReport, ax=None):
    """Bar chart of kept vs. each drop reason of a quality filter run."""
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    names = ["kept", *REASONS]
    counts = [report.kept, *(report.dropped[r] for r in REASONS)]
    bars = ax.bar(names, counts, color=["#3a7d44"] + ["#c44"] * len(REASONS))
    ax.bar_label(bars)
    ax.set_ylabel("conversations")
    ax.set_title(f"quality filter: kept {report.kept} of {report.total}")
    ax.tick_params(axis="x", rotation=20)
    return ax
