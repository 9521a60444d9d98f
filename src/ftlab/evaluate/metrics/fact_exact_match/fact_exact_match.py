"""Fact exact match: a local `evaluate` metric module (loads offline by path).

Judges each reply against the world fact it answers with ``ftlab.world.check_answer``: the
expected answer appears (whole words, any case) and no other answer of the same kind does.
"""

import datasets
import evaluate

from ftlab.world import all_facts
from ftlab.world import check_answer

_DESCRIPTION = "Share of replies that give their fact's answer and no competing answer."
_KWARGS = """
Args:
    predictions (list of str): model replies.
    references (list of str): fact ids (`kind:subject`, e.g. `capital:France`).
Returns:
    fact_exact_match (float): share of correct replies, 0..1.
"""


class FactExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        facts = {fact.id: fact for fact in all_facts()}
        unknown = sorted({r for r in references if r not in facts})
        if unknown:
            raise ValueError(f"unknown fact ids: {unknown[:5]}")
        correct = [check_answer(facts[r], p) for p, r in zip(predictions, references)]
        return {"fact_exact_match": sum(correct) / len(correct) if correct else 0.0}
