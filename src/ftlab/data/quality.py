"""M1.4 — quality filter: drop empty, short, over-long and duplicate conversations."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

REASONS = ("empty_response", "short_response", "too_long", "duplicate")
"""Why a conversation is dropped, in the order the checks run (the first match counts)."""


@dataclass
class FilterReport:
    """How many conversations came in and were kept, and how many were dropped for each reason."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = ", ".join(f"{r} {self.dropped[r]}" for r in REASONS if self.dropped[r])
        return f"kept {self.kept} of {self.total}" + (f"; dropped: {parts}" if parts else "")


def normalize_text(text: str) -> str:
    """Case-folded text with runs of white space collapsed to one space and the ends stripped."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def dedupe_key(conversation: list[dict]) -> tuple[tuple[str, str], ...]:
    """Conversations with equal keys are duplicates: same roles, same normalized contents."""
    return tuple((m["role"], normalize_text(m["content"])) for m in conversation)


def quality_filter(conversations: list[dict], *, min_response_chars: int = 1,
                   max_chars: int | None = None) -> tuple[list[list[dict]], FilterReport]:
    """Keep the conversations worth training on, in input order.

    Checks, in :data:`REASONS` order, the first failing one naming the reason counted in
    the report (one reason per dropped conversation): ``empty_response`` — the last
    (assistant) turn, ``conversation[-1]``, is empty or white space; ``short_response`` —
    it has fewer than ``min_response_chars`` characters after stripping (exactly
    ``min_response_chars`` is kept); ``too_long`` — all contents together (system, user and
    assistant, counted as they are, white space included) exceed ``max_chars`` characters
    (exactly ``max_chars`` is kept; ``0`` is a limit too; no limit only when None);
    ``duplicate`` — an earlier *kept* conversation has the same :func:`dedupe_key`, i.e.
    every turn's role and normalized content match (so copies differing only in case or
    white space are duplicates and the first is kept; the same prompt with another answer
    is not a duplicate; a conversation dropped for another reason does not count).
    ``report.total == report.kept + sum(report.dropped.values())``. Returns a new list;
    ``conversations`` is not modified. No conversations: ``([], report)`` with total 0.
    """
    ### BEGIN SOLUTION M1.4
    report = FilterReport(total=len(conversations))
    kept, seen = [], set()
    for conv in conversations:
        response = conv[-1]["content"].strip()
        key = dedupe_key(conv)
        if not response:
            reason = "empty_response"
        elif len(response) < min_response_chars:
            reason = "short_response"
        elif max_chars is not None and sum(len(m["content"]) for m in conv) > max_chars:
            reason = "too_long"
        elif key in seen:
            reason = "duplicate"
        else:
            seen.add(key)
            kept.append(conv)
            continue
        report.dropped[reason] += 1
    report.kept = len(kept)
    return kept, report
    ### END SOLUTION
