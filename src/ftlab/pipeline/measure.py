"""Measuring a model between stages (given): what the report compares stage by stage.

:func:`measure` answers the held-out chat questions greedily (exact match, preferred style,
stopping at the end-of-turn token, per fact kind), scores general-text perplexity
(forgetting) and the raw preference of held-out style pairs, and keeps a few sample replies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.align.logprobs import response_logprobs
from ftlab.align.objective import collate_pairs
from ftlab.align.preferences import load_pairs, tokenize_pair
from ftlab.config import EvalConfig
from ftlab.evaluate.report import general_perplexity
from ftlab.evaluate.tasks import evaluate_questions
from ftlab.models.build import read_jsonl
from ftlab.paths import data_dir
from ftlab.world import Fact, all_facts

SAMPLE_KINDS = ("capital", "legs", "sum", "day_after")
"""Fact kinds whose first held-out question the report shows, with its reply, after every stage."""

HELDOUT_PAIRS = "preferences/heldout.jsonl"
"""Held-out preference pairs of the embedded world, relative to the data folder."""


def question_items(name: str) -> list[tuple[Fact, str]]:
    """(fact, question) pairs of the embedded question set ``data/eval/<name>.jsonl``."""
    facts = {f.id: f for f in all_facts()}
    return [(facts[r["id"]], r["question"]) for r in read_jsonl(data_dir() / f"eval/{name}.jsonl")]


def heldout_pairs(config: EvalConfig, tokenizer: PreTrainedTokenizerBase,
                  max_length: int = 256) -> list[dict]:
    """Tokenized held-out preference pairs (``config.preference_path`` or the embedded ones),
    each with its ``pair_type`` (``style``: polite vs terse or rude; ``entity``: right vs
    wrong answer)."""
    pairs, _ = load_pairs(config.preference_path or data_dir() / HELDOUT_PAIRS)
    return [{**tokenize_pair(p, tokenizer, max_length), "pair_type": p.info.get("pair_type", "")}
            for p in pairs]


@torch.no_grad()
def pair_logprobs(model: nn.Module, pairs: list[dict], pad_id: int, batch_size: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (C.1) of the chosen and the rejected replies, each (pairs,)."""
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in
                 collate_pairs(pairs[start:start + batch_size], pad_id).items()}
        c, r = response_logprobs(model, batch).double().cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def measure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: EvalConfig,
            pairs: list[dict]) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(figures, sample replies) of ``model`` (eval mode, no gradients).

    Figures: ``exact_match``, ``polite``, ``ended`` (shares of held-out questions),
    ``exact_match/<kind>``, ``general_ppl`` and ``preference_accuracy`` (share of held-out
    style pairs whose chosen reply is likelier than the rejected one).
    """
    model.eval()
    items = [item for name in config.sets for item in question_items(name)]
    result = evaluate_questions(model, tokenizer, items, config.max_new_tokens, config.batch_size)
    figures = {"exact_match": result.rate("correct"), "polite": result.rate("polite"),
               "ended": result.rate("ended"), "general_ppl": general_perplexity(model, tokenizer)}
    figures |= {f"exact_match/{kind}": result.rate("correct", kind) for kind in result.kinds}
    style = [p for p in pairs if p["pair_type"] == "style"]
    if style:
        chosen, rejected = pair_logprobs(model, style, tokenizer.pad_token_id)
        figures["preference_accuracy"] = float((chosen > rejected).double().mean())
    first = {}
    for fact, question, reply in zip(result.facts, result.questions, result.replies):
        first.setdefault(fact.kind, {"question": question, "reply": reply})
    samples = [first[kind] for kind in SAMPLE_KINDS if kind in first]
    return figures, samples


def file_size_mb(path: Path) -> float:
    """Size of a file, or of every file under a folder, in MB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
