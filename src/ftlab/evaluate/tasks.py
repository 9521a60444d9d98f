"""Task metrics on the held-out chat sets (given): answers judged per fact, per kind.

Exact match goes through the project's local ``evaluate`` metric module
(``metrics/fact_exact_match``, loaded by path: ``evaluate.load("accuracy")`` would need the
Hub), so the numbers are the ones any ``evaluate`` user reproduces with the same module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import evaluate
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.evaluate.generate import answer_questions
from ftlab.world import Fact, check_answer, is_polite

METRICS = Path(__file__).with_name("metrics")


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """A metric module shipped in ``ftlab/evaluate/metrics/<name>/``, loaded offline."""
    folder = METRICS / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(f"no local metric {name!r}; have {sorted(p.name for p in METRICS.iterdir() if p.is_dir())}")
    return evaluate.load(str(folder))


@dataclass
class TaskResult:
    """Per question: the fact, question, reply, whether it is right (``correct``; ``strict``:
    right under :func:`~ftlab.world.check_answer`'s strict reading too), polite, and ended at
    the end-of-turn token."""

    facts: list[Fact]
    questions: list[str]
    replies: list[str]
    correct: list[bool] = field(default_factory=list)
    strict: list[bool] = field(default_factory=list)
    polite: list[bool] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)

    def rate(self, what: str, kind: str | None = None) -> float:
        """Share of ``what`` ("correct", "strict", "polite", "ended") overall or for one fact kind."""
        values = [v for f, v in zip(self.facts, getattr(self, what))
                  if kind is None or f.kind == kind]
        return sum(values) / len(values) if values else float("nan")

    @property
    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.facts})


def evaluate_questions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                       items: list[tuple[Fact, str]], max_new_tokens: int = 32,
                       batch_size: int = 16) -> TaskResult:
    """Answer each (fact, question) greedily and judge it. The overall exact match equals
    ``load_metric("fact_exact_match")`` on the same replies (checked)."""
    facts, questions = [f for f, _ in items], [q for _, q in items]
    replies, ended = answer_questions(model, tokenizer, questions, max_new_tokens, batch_size)
    result = TaskResult(facts, questions, replies,
                        correct=[check_answer(f, r) for f, r in zip(facts, replies)],
                        strict=[check_answer(f, r, strict=True) for f, r in zip(facts, replies)],
                        polite=[is_polite(r) for r in replies], ended=ended)
    metric = load_metric("fact_exact_match").compute(
        predictions=replies, references=[f.id for f in facts])["fact_exact_match"]
    if abs(metric - result.rate("correct")) > 1e-12:
        raise RuntimeError(f"metric module {metric} != judged {result.rate('correct')}")
    return result
