"""Sampling groups of completions for GRPO (given): M5.2's key/value-cache decoding with a
temperature / top-p chooser, seeded, and the tensors the loss needs.

Layout (the one TRL's ``GRPOTrainer`` uses): prompts left-padded, completions right-padded,
so ``torch.cat([prompt_ids, completion_ids], 1)`` is one batch whose last ``C`` positions
are the completions. A completion's mask is 1 up to and including its first stop token
(end of turn or end of text) and 0 after; a completion that never stopped is truncated
and counts all its tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.evaluate.generate import END_OF_TURN, greedy_decode
from ftlab.models.measure import chat_prompt


def sampler(temperature: float, top_p: float = 1.0, generator: torch.Generator | None = None
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A chooser for :func:`ftlab.evaluate.greedy_decode`'s ``pick``: (B, vocab) logits ->
    (B,) token ids drawn from ``softmax(logits / temperature)`` restricted to the smallest
    set of most likely tokens whose probability reaches ``top_p`` (nucleus sampling; the
    most likely token always stays). ``generator`` seeds the draws (None: torch's global
    RNG, as transformers' ``generate(do_sample=True)`` uses, which it then equals token for
    token with ``top_k=0``). ``temperature`` 0 means greedy."""
    def pick(logits: torch.Tensor) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        scores = logits.float() / temperature
        if top_p < 1.0:
            ascending, order = scores.sort(dim=-1)
            below = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
            below[..., -1] = False
            scores = scores.masked_fill(below.scatter(-1, order, below), float("-inf"))
        return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return pick


@dataclass
class Rollouts:
    """``G`` sampled completions for each of ``P`` prompts, group by group: rows
    ``g*G .. g*G+G-1`` answer prompt ``g``.

    ``prompt_ids`` / ``prompt_mask``: (P*G, Tp), left-padded; ``completion_ids`` /
    ``completion_mask``: (P*G, C), right-padded, mask 1 through the first stop token;
    ``texts``: each completion's reply (text before the stop token, special tokens
    dropped, surrounding whitespace stripped); ``ended``: whether it stopped by itself within
    the token budget; ``raw_texts``: the replies as decoded, not stripped (a leading space
    stays): what TRL's trainers hand their reward models.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    ended: list[bool]
    raw_texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        """Completion tokens per row (the stop token included), (P*G,)."""
        return self.completion_mask.sum(-1)


def joined(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
           completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, position ids), each (B, Tp + C): every row's left-padded prompt then its
    right-padded completion, positions counting each row's real tokens from 0 as
    :func:`ftlab.evaluate.greedy_decode` gave them while sampling."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The id that ends an assistant turn: ``<|im_end|>`` where the vocabulary has it,
    else the tokenizer's end-of-sequence id."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return [end if end is not None and end != tokenizer.unk_token_id else tokenizer.eos_token_id]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module | None = None
                   ) -> list[int]:
    """The ids sampling stops at: the end of turn, the tokenizer's end of sequence and,
    given ``model``, its generation config's end-of-sequence ids (the embedded model's
    end of text among them) — the set transformers' ``generate`` and TRL stop at."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    more = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted({*end_of_turn_ids(tokenizer), tokenizer.eos_token_id, *more} - {None})


@torch.no_grad()
def sample_groups(model: nn.Module, tokenizer: PreTrainedTokenizerBase, questions: list[str],
                  group_size: int, max_new_tokens: int, temperature: float, top_p: float,
                  generator: torch.Generator | None) -> Rollouts:
    """Ask each question as one user turn (chat template, generation prompt) and sample
    ``group_size`` completions of at most ``max_new_tokens`` tokens each, all in one batch
    (:func:`ftlab.evaluate.greedy_decode` with :func:`sampler`). The model's train/eval
    mode is restored afterwards."""
    was_training = model.training
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        prompts = [chat_prompt(tokenizer, q) for q in questions for _ in range(group_size)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    new = greedy_decode(model, ids, mask, max_new_tokens, stops, tokenizer.pad_token_id,
                        pick=sampler(temperature, top_p, generator))
    model.train(was_training)
    is_stop = torch.isin(new, torch.tensor(stops, device=device))
    ended = is_stop.any(-1)
    first_stop = torch.where(ended, is_stop.int().argmax(-1), new.shape[1] - 1)
    completion_mask = (torch.arange(new.shape[1], device=device)[None] <= first_stop[:, None]).long()
    raw = [tokenizer.decode(row[:int(n) - int(e)], skip_special_tokens=True)
           for row, n, e in zip(new.tolist(), completion_mask.sum(-1), ended)]
    return Rollouts(ids, mask, new, completion_mask, [t.strip() for t in raw], ended.tolist(),
                    raw)
