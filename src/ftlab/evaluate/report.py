"""Base-vs-tuned comparison (given): per fact kind, with paired bootstrap confidence
intervals, and general-text perplexity next to it (forgetting)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import matplotlib.pyplot as plt
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.evaluate.tasks import TaskResult
from ftlab.models.build import measure_validation_loss
from ftlab.models.measure import perplexity as exp_loss
from ftlab.paths import data_dir

GENERAL_SEQ_LEN = 256
"""Block length of held-out corpus text for general-text perplexity (the pretraining length)."""


@dataclass(frozen=True)
class Row:
    """One line of a comparison: a fact kind (or ``all``), its questions, both rates, the
    difference and its 95% bootstrap interval."""

    kind: str
    n: int
    base: float
    tuned: float
    delta: float
    low: float
    high: float


def compare(base: TaskResult, tuned: TaskResult, what: str = "correct",
            samples: int = 1000, seed: int = 0) -> list[Row]:
    """Rates of ``what`` before and after: over all questions, macro-averaged over fact kinds
    (each kind weighs the same), then per kind.

    Both results must hold the same questions in the same order (paired). The interval
    resamples questions with replacement ``samples`` times (seeded) and takes the 2.5th and
    97.5th percentiles of the difference; ``samples=0`` gives no interval (nan).
    """
    if base.questions != tuned.questions:
        raise ValueError("compare results on the same questions in the same order")
    rows = []
    for kind in [None, *base.kinds]:
        idx = [i for i, f in enumerate(base.facts) if kind is None or f.kind == kind]
        before = [float(getattr(base, what)[i]) for i in idx]
        after = [float(getattr(tuned, what)[i]) for i in idx]
        deltas, rng = [], random.Random(seed)
        for _ in range(samples):
            pick = [rng.randrange(len(idx)) for _ in idx]
            deltas.append(sum(after[j] - before[j] for j in pick) / len(idx))
        deltas.sort()
        low, high = ((deltas[int(0.025 * samples)], deltas[min(samples - 1, int(0.975 * samples))])
                     if samples else (float("nan"), float("nan")))
        b, t = sum(before) / len(idx), sum(after) / len(idx)
        rows.append(Row(kind or "all", len(idx), b, t, t - b, low, high))
    rows.insert(1, _macro_row(base, tuned, what, samples, seed))
    return rows


def _macro_row(base: TaskResult, tuned: TaskResult, what: str, samples: int, seed: int) -> Row:
    """The unweighted mean over fact kinds (each kind counts the same, however many
    questions it has), with a bootstrap that resamples questions within each kind."""
    groups = [[i for i, f in enumerate(base.facts) if f.kind == kind] for kind in base.kinds]
    pairs = [[(float(getattr(base, what)[i]), float(getattr(tuned, what)[i])) for i in g]
             for g in groups]
    b = sum(sum(x for x, _ in g) / len(g) for g in pairs) / len(pairs)
    t = sum(sum(y for _, y in g) / len(g) for g in pairs) / len(pairs)
    deltas, rng = [], random.Random(seed)
    for _ in range(samples):
        deltas.append(sum(sum(g[j][1] - g[j][0] for j in (rng.randrange(len(g)) for _ in g))
                          / len(g) for g in pairs) / len(pairs))
    deltas.sort()
    low, high = ((deltas[int(0.025 * samples)], deltas[min(samples - 1, int(0.975 * samples))])
                 if samples else (float("nan"), float("nan")))
    return Row("macro over kinds", len(base.facts), b, t, t - b, low, high)


def comparison_markdown(rows: list[Row], what: str = "exact match") -> str:
    """A markdown table of :func:`compare` rows (percentages; delta in points)."""
    lines = [f"| fact kind | questions | {what} base | {what} tuned | delta (points) | 95% CI |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.n} | {r.base:.1%} | {r.tuned:.1%} | {100 * r.delta:+.1f} | "
                     f"[{100 * r.low:+.1f}, {100 * r.high:+.1f}] |")
    return "\n".join(lines)


def general_perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> float:
    """Perplexity on held-out pretraining-corpus text (``corpus/validation.txt``): what a
    fine-tune may forget while it gains its task."""
    return exp_loss(measure_validation_loss(model, tokenizer, data_dir(), GENERAL_SEQ_LEN))


def forgetting_markdown(base_perplexity: float, tuned_perplexity: float) -> str:
    """One-line table: general-text perplexity before, after, and the ratio."""
    return ("| general-text perplexity | base | tuned | ratio |\n|---|---:|---:|---:|\n"
            f"| held-out corpus text | {base_perplexity:.3f} | {tuned_perplexity:.3f} | "
            f"{tuned_perplexity / base_perplexity:.2f}x |")


def plot_comparison(rows: list[Row], what: str = "exact match"):
    """Bars per fact kind, base vs tuned, with the interval of the difference on the tuned bar."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r.base for r in rows], 0.4, label="base")
    ax.bar([i + 0.2 for i in x], [r.tuned for r in rows], 0.4, label="tuned",
           yerr=[[max(0.0, r.tuned - (r.base + r.low)) for r in rows],
                 [max(0.0, r.base + r.high - r.tuned) for r in rows]], capsize=3)
    ax.set_xticks(list(x), [r.kind for r in rows])
    ax.set(ylabel=what, ylim=(0, 1.05), title=f"{what}: base vs tuned (95% CI of the gain)")
    ax.legend()
    fig.tight_layout()
    return fig
