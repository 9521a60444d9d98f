"""M5.2 — greedy decoding with a key/value cache, stopping at the end-of-turn token, and the
chat answers built on it (given)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.models.measure import chat_prompt

END_OF_TURN = "<|im_end|>"


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  max_new_tokens: int, stop_ids: list[int], pad_id: int,
                  pick: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The greedy continuation of each left-padded prompt — the new tokens only.

    ``input_ids``, ``attention_mask``: (B, T), prompts padded on the left (mask 0 there).
    The first step feeds the whole prompt with position ids that count each row's real
    tokens from 0: ``attention_mask.cumsum(-1) - 1``, which is -1 on the left padding, so
    set it to 0 there, as transformers' ``generate`` does (``.clamp(min=0)``; any valid id
    would do, padding is masked out). Left at -1 it indexes no position: GPT-2's learned
    position table raises ``IndexError``. Each later step feeds only the newest token (B, 1)
    with the cache of the previous steps (``past_key_values``, ``use_cache=True``), the mask
    grown by one column of ones, and each row's position id one more than its last,
    and appends ``pick(last logits)`` — ``argmax`` when ``pick`` is None; sampling
    (:func:`ftlab.rl.sampler`) passes its own (B, vocab) -> (B,) chooser. A row that has produced a token of ``stop_ids``
    keeps that token and is padded with ``pad_id`` afterwards; decoding ends when every row has
    stopped or after ``max_new_tokens`` (>= 1) steps. Returns (B, N) new token ids, int64 like
    ``input_ids``, N <= max_new_tokens — never the prompt; N < max_new_tokens exactly when every
    row stopped earlier. Equal to ``model.generate(..., do_sample=False)``'s new tokens.

    Edge cases: *every* id of ``stop_ids`` (a list of any length, in any order) ends a row —
    test membership (``torch.isin``), not equality with one id or element by element. Only
    generated tokens stop a row: stop ids inside the prompt (a chat prompt holds the
    end-of-turn token of every earlier turn; a prompt may even end with one) do not. A stop
    token produced at the last allowed step is kept. ``pad_id`` may also be an ordinary token
    (inside a prompt, or generated): the prompt mask is ``attention_mask``, never
    ``input_ids != pad_id``, and each step grows it by a column of ones. The model is switched
    to eval mode (``model.eval()``: no dropout); callers restore their mode. ``input_ids`` and
    ``attention_mask`` are not modified.
    """
    ### BEGIN SOLUTION M5.2
    model.eval()
    pick = pick or (lambda logits: logits.argmax(-1))
    stops = torch.tensor(stop_ids, device=input_ids.device)
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_ids, past, new = input_ids, None, []
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = pick(out.logits[:, -1]).masked_fill(done, pad_id)
        new.append(token)
        done |= torch.isin(token, stops)
        if done.all():
            break
        step_ids, positions = token[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
    return torch.stack(new, dim=1)
    ### END SOLUTION


def answer_questions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                     questions: list[str], max_new_tokens: int = 32,
                     batch_size: int = 16) -> tuple[list[str], list[bool]]:
    """Ask each question as one user turn (chat template with the generation prompt) and
    decode greedily. Returns the replies (text before the end-of-turn token, special tokens
    dropped) and, per reply, whether it ended with the end-of-turn token."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    stop_ids = sorted({end, tokenizer.eos_token_id} - {None})
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    replies, ended = [], []
    try:
        for i in range(0, len(questions), batch_size):
            prompts = [chat_prompt(tokenizer, q) for q in questions[i:i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            new = greedy_decode(model, enc.input_ids.to(device), enc.attention_mask.to(device),
                                max_new_tokens, stop_ids, tokenizer.pad_token_id)
            for row in new.tolist():
                cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
                ended.append(cut is not None)
                replies.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return replies, ended
