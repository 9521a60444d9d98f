"""Measuring a model between stages (given): what the report compares stage by stage.

:func:`measure` answers the held-out chat questions greedily (exact match, preferred style,
stopping at the end-of-turn token, per fact kind), scores general-text perplexity
(forgetting) and the raw preference of held-out style pairs, and keeps a few sample replies.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.align.objective import pair_logprobs
from ftlab.align.preferences import load_pairs, tokenize_pair
from ftlab.config import EvalConfig
from ftlab.evaluate.report import general_perplexity
from ftlab.evaluate.tasks import evaluate_questions
from ftlab.models.build import eval_items, question_items
from ftlab.models.measure import cloze_correct, rates_by_kind
from ftlab.paths import data_dir
from ftlab.progress import progress_bar

SAMPLE_KINDS = ("capital", "legs", "sum", "day_after")
"""Fact kinds whose first held-out question the report shows, with its reply, after every stage."""

HELDOUT_PAIRS = "preferences/heldout.jsonl"
MEASURED_DATA = ("eval/heldout_chat.jsonl", "eval/seen_chat.jsonl", "eval/cloze.jsonl",
                 "corpus/validation.txt", HELDOUT_PAIRS)
"""Every embedded data file :func:`measure` reads (question sets, cloze prompts, held-out
corpus text, preference pairs), relative to the data folder: the base row's cache
(:mod:`ftlab.pipeline.baseline`) keys on their contents. Add a file here when measure reads it."""
"""Held-out preference pairs of the embedded world, relative to the data folder."""


def heldout_pairs(config: EvalConfig, tokenizer: PreTrainedTokenizerBase,
                  max_length: int = 256) -> list[dict]:
    """Tokenized held-out preference pairs (``config.preference_path`` or the embedded ones),
    each with its ``pair_type`` (``style``: polite vs terse or rude; ``entity``: right vs
    wrong answer) and fact ``kind`` (from an ``id`` such as ``capital:France``; ``""``
    without one)."""
    pairs, _ = load_pairs(config.preference_path or data_dir() / HELDOUT_PAIRS)
    fact = lambda p: str(p.info.get("id", ""))  # noqa: E731
    return [{**tokenize_pair(p, tokenizer, max_length), "pair_type": p.info.get("pair_type", ""),
             "kind": fact(p).split(":", 1)[0] if ":" in fact(p) else ""} for p in pairs]


def measure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: EvalConfig,
            pairs: list[dict], progress: bool = False
            ) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(figures, sample replies) of ``model`` (eval mode, no gradients).

    Figures: ``exact_match``, ``polite``, ``ended`` (shares of held-out questions),
    ``exact_match/<kind>`` and ``exact_match/macro`` (the mean over kinds), the same under the
    strict grader (``strict``, ``strict/<kind>``, ``strict/macro``) and ``lenient_only`` (how
    many replies the lenient grader accepts and the strict one rejects), ``cloze/<kind>``
    and ``cloze/macro`` (plain-form completion of the held-out facts), ``general_ppl`` and
    ``preference_accuracy`` (share of held-out style pairs whose chosen reply is likelier
    than the rejected one). Samples: ``{question, reply, kind, correct, strict}`` for the first
    question of each kind in :data:`SAMPLE_KINDS`. ``progress``: a bar over the four parts
    (answers, perplexity, cloze, preferences) with its ETA.
    """
    model.eval()
    bar = progress_bar(total=4, desc="measure", unit="part", disable=not progress)
    items = [item for name in config.sets for item in question_items(data_dir(), name)]
    result = evaluate_questions(model, tokenizer, items, config.max_new_tokens, config.batch_size)
    bar.update()
    figures = {"exact_match": result.rate("correct"), "strict": result.rate("strict"),
               "lenient_only": float(sum(result.correct) - sum(result.strict)),
               "polite": result.rate("polite"),
               "ended": result.rate("ended"), "general_ppl": general_perplexity(model, tokenizer)}
    bar.update()
    figures |= {f"exact_match/{kind}": rate
                for kind, rate in rates_by_kind(result.facts, result.correct).items()}
    figures |= {f"strict/{kind}": rate
                for kind, rate in rates_by_kind(result.facts, result.strict).items()}
    cloze = eval_items(data_dir())["cloze_heldout"]
    figures |= {f"cloze/{kind}": rate for kind, rate in
                rates_by_kind([f for f, _ in cloze], cloze_correct(model, tokenizer, cloze)).items()}
    bar.update()
    style = [p for p in pairs if p["pair_type"] == "style"]
    if style:
        chosen, rejected = pair_logprobs(model, style, tokenizer.pad_token_id)
        figures["preference_accuracy"] = float((chosen > rejected).double().mean())
    bar.update()
    bar.close()
    first = {}
    for fact, question, reply, right, strict in zip(result.facts, result.questions,
                                                    result.replies, result.correct, result.strict):
        first.setdefault(fact.kind, {"question": question, "reply": reply, "kind": fact.kind,
                                     "correct": bool(right), "strict": bool(strict)})
    samples = [first[kind] for kind in SAMPLE_KINDS if kind in first]
    return figures, samples


def file_size_mb(path: Path) -> float:
    """Size of a file, or of every file under a folder, in MB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
