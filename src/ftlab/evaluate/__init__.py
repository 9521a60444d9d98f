"""Milestone 5 — evaluation: perplexity, greedy answers and task metrics, base vs tuned.

Tasks (solution regions): M5.1 :func:`perplexity` (token-weighted, response-only or all
tokens), M5.2 :func:`greedy_decode` (new tokens only, stopping at the end-of-turn token).
Given: chat answers, judged exact match per fact kind through a local ``evaluate`` metric
module, the base-vs-tuned comparison with bootstrap intervals, general-text perplexity.
"""

from ftlab.evaluate.generate import answer_questions, greedy_decode
from ftlab.evaluate.perplexity import Perplexity, all_token_labels, perplexity
from ftlab.evaluate.report import (Row, compare, comparison_markdown, forgetting_markdown,
                                   general_perplexity, plot_comparison)
from ftlab.evaluate.tasks import TaskResult, evaluate_questions, load_metric

__all__ = [
    "Perplexity", "Row", "TaskResult", "all_token_labels", "answer_questions", "compare",
    "comparison_markdown", "evaluate_questions", "forgetting_markdown", "general_perplexity",
    "greedy_decode", "load_metric", "perplexity", "plot_comparison",
]
