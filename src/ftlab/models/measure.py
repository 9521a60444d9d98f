"""Measurements of the embedded base model: corpus loss, cloze accuracy, chat exact match.

These are the provenance numbers of the base model (they must work in the learner
edition, before any milestone is implemented, so they use no exercise code).

Plain text is fed as the model saw it in pretraining: each document follows a
``<|endoftext|>`` separator. Chat prompts are rendered with the tokenizer's chat template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftlab.models.tokenizer import DOC_SEP, IM_END
from ftlab.world import Fact, check_answer


def pack_documents(
    tokenizer: PreTrainedTokenizerBase, lines: list[str], seq_len: int
) -> torch.Tensor:
    """Concatenate ``<|endoftext|>`` + document for each line; cut into rows.

    Returns a LongTensor of shape (n_blocks, seq_len); the tail shorter than a block is
    dropped.
    """
    sep = tokenizer.convert_tokens_to_ids(DOC_SEP)
    stream: list[int] = []
    for enc in tokenizer(lines, add_special_tokens=False).input_ids:
        stream.append(sep)
        stream.extend(enc)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def corpus_loss(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over every predicted token of ``blocks``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i : i + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum"
        ).item()
        count += target.numel()
    return total / count


@torch.no_grad()
def greedy_complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of ``prompts`` (already rendered text), special tokens kept.

    Generation stops at ``<|im_end|>`` or ``<|endoftext|>``; prompts are left-padded.
    """
    model.eval()
    stop = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(DOC_SEP)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc.input_ids.shape[1]:]
            out += [t.replace(tokenizer.pad_token, "") for t in tokenizer.batch_decode(new)]
        return out
    finally:
        tokenizer.padding_side = side


def plain_prompt(text: str) -> str:
    """A plain-text prompt as pretraining saw documents: after the document separator."""
    return DOC_SEP + text


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """``question`` as one user turn, rendered with the generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def chat_reply(generated: str) -> str:
    """The reply part of a generation: the text before ``<|im_end|>`` or ``<|endoftext|>``."""
    return generated.split(IM_END)[0].split(DOC_SEP)[0]


def first_sentence(text: str) -> str:
    """Text up to the first sentence end, newline or special token."""
    for stop in (DOC_SEP, IM_END, "\n", "."):
        text = text.split(stop)[0]
    return text


@dataclass(frozen=True)
class ChatScore:
    """Exact match and end-of-turn rate of chat answers, with every response kept."""

    exact_match: float
    ends_at_end_of_turn: float
    responses: list[str]
    correct: list[bool]


def cloze_correct(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[tuple[Fact, str]]
) -> list[bool]:
    """Per (fact, prompt) pair: does the greedy plain-text continuation state the answer?

    The continuation is cut at its first sentence end and judged by
    :func:`ftlab.world.check_answer`.
    """
    outs = greedy_complete(model, tokenizer, [plain_prompt(p) for _, p in items], max_new_tokens=8)
    return [check_answer(f, first_sentence(o)) for (f, _), o in zip(items, outs)]


def rates_by_kind(facts: list[Fact], flags: list[bool]) -> dict[str, float]:
    """Share of true ``flags`` per fact kind (sorted by kind), plus ``macro``: the unweighted
    mean over kinds, so a kind with many questions (capitals) does not dominate."""
    kinds: dict[str, list[bool]] = {}
    for fact, flag in zip(facts, flags):
        kinds.setdefault(fact.kind, []).append(bool(flag))
    rates = {kind: sum(v) / len(v) for kind, v in sorted(kinds.items())}
    return {**rates, "macro": sum(rates.values()) / len(rates)} if rates else {}


def chat_exact_match(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[tuple[Fact, str]]
) -> ChatScore:
    """Ask each (fact, question) as a single user turn; judge the reply up to ``<|im_end|>``."""
    prompts = [chat_prompt(tokenizer, q) for _, q in items]
    outs = greedy_complete(model, tokenizer, prompts, max_new_tokens=32)
    replies = [chat_reply(o) for o in outs]
    correct = [check_answer(f, r) for (f, _), r in zip(items, replies)]
    ended = sum(IM_END in o for o in outs)
    return ChatScore(sum(correct) / len(items), ended / len(items), replies, correct)


def perplexity(loss: float) -> float:
    """exp(loss) for a loss in nats per token."""
    return math.exp(loss)
