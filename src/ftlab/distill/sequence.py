"""Sequence-level distillation (given): the teacher answers questions, the world's verifier
keeps the right replies, and the student is fine-tuned on them (Kim & Rush 2016's
sequence-level knowledge distillation, filtered by rejection sampling as chain-of-thought
distillation is).

The kept replies are chat records ``{"messages": [user, assistant], "id", "kind"}``; a reply
is kept when it stopped by itself (within ``max_new_tokens``) and the verifier accepts it;
one copy of each distinct (question, reply) pair is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ftlab.rl.rewards import correct, correct_strict
from ftlab.rl.sampling import sample_groups

VERIFIERS = {"correct": correct, "correct_strict": correct_strict}
"""``distill.verifier``'s choices: the GRPO reward functions of the same names."""


@dataclass
class KeptReplies:
    """The teacher's verified replies and the count of each outcome per fact kind."""

    records: list[dict] = field(default_factory=list)
    asked: dict[str, int] = field(default_factory=dict)     # replies sampled
    right: dict[str, int] = field(default_factory=dict)     # ended and accepted
    kept: dict[str, int] = field(default_factory=dict)      # right and not a repeat

    def figures(self) -> dict[str, float]:
        """Report figures: ``sequence/kept`` and ``sequence/right_share`` overall and per kind."""
        out = {"sequence/kept": float(len(self.records)),
               "sequence/right_share": sum(self.right.values()) / max(1, sum(self.asked.values()))}
        for kind in sorted(self.asked):
            out[f"sequence/kept/{kind}"] = float(self.kept.get(kind, 0))
            out[f"sequence/right_share/{kind}"] = self.right.get(kind, 0) / self.asked[kind]
        return out

    def summary(self) -> str:
        """One line per outcome: ``kept 412 of 864 sampled replies (capital 60/144, ...)``."""
        per_kind = ", ".join(f"{k} {self.kept.get(k, 0)}/{n}" for k, n in sorted(self.asked.items()))
        return (f"kept {len(self.records)} of {sum(self.asked.values())} sampled replies "
                f"(right and distinct, per kind: {per_kind})")


@torch.no_grad()
def verified_replies(teacher: nn.Module, tokenizer, prompts: list[dict], samples: int,
                     temperature: float, max_new_tokens: int, verifier: str,
                     generator: torch.Generator, questions_per_batch: int = 16,
                     on_batch: Callable[[int], None] | None = None) -> KeptReplies:
    """Sample ``samples`` replies of ``teacher`` to each prompt record's ``question`` (records
    with a world fact's ``id`` and a ``kind``), ``questions_per_batch`` questions at a time,
    and keep the ones ``verifier`` accepts (see module doc). ``generator`` seeds the draws;
    ``on_batch(n)`` hears of each batch of ``n`` questions done."""
    accept = VERIFIERS[verifier]
    out, seen = KeptReplies(), set()
    for start in range(0, len(prompts), questions_per_batch):
        batch = prompts[start:start + questions_per_batch]
        rollouts = sample_groups(teacher, tokenizer, [r["question"] for r in batch], samples,
                                 max_new_tokens, temperature, 1.0, generator)
        records = [r for r in batch for _ in range(samples)]
        verdicts = accept([r["question"] for r in records], rollouts.texts,
                          id=[r["id"] for r in records])
        for record, reply, ended, ok in zip(records, rollouts.texts, rollouts.ended, verdicts):
            kind = record.get("kind", "?")
            out.asked[kind] = out.asked.get(kind, 0) + 1
            if not (ended and ok and reply):
                continue
            out.right[kind] = out.right.get(kind, 0) + 1
            if (record["question"], reply) in seen:
                continue
            seen.add((record["question"], reply))
            out.kept[kind] = out.kept.get(kind, 0) + 1
            out.records.append({"messages": [{"role": "user", "content": record["question"]},
                                             {"role": "assistant", "content": reply}],
                                "id": record["id"], "kind": kind})
        if on_batch:
            on_batch(len(batch))
    return out
