"""M1.3 — token ids and labels: train on what the assistant says, and on its end of turn."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ftlab.data.chat import render

IGNORE_INDEX = -100
"""Label of a token that is not trained (PyTorch's cross-entropy ignore index)."""


def assistant_spans(conversation: list[dict], tokenizer: PreTrainedTokenizerBase
                    ) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` in ``render(conversation)`` that are trained.

    One span per assistant turn: its content followed by the tokenizer's EOS (end-of-turn)
    token. Found by rendering prefixes: the turn starts where the generation prompt of the
    conversation up to it ends. Given infrastructure; assumes, as ChatML, Llama 3 and
    most templates do, that the end-of-turn token follows the content directly.
    """
    spans = []
    for i, message in enumerate(conversation):
        if message["role"] == "assistant":
            start = len(render(conversation[: i + 1], tokenizer, generation_prompt=True))
            spans.append((start, start + len(message["content"]) + len(tokenizer.eos_token)))
    return spans


def tokenize_with_labels(conversation: list[dict], tokenizer: PreTrainedTokenizerBase,
                         max_length: int) -> dict[str, list[int]]:
    """Token ids of the rendered conversation and their labels.

    Output ``{"input_ids": [...], "labels": [...]}``, equal lengths, at most ``max_length``.
    ``labels[i] == input_ids[i]`` for a token inside an assistant span (see
    :func:`assistant_spans`: the reply and its end-of-turn token), else ``IGNORE_INDEX``.
    Labels are not shifted: the model shifts them when computing the loss.

    Tokenize the rendered text once without adding special tokens, with offsets
    (``return_offsets_mapping=True``); a token is trained when its character range lies
    inside a span. Add no token of your own (no BOS, no extra EOS) and let the tokenizer add
    none either, even one that adds a BOS by default (as Llama's does): the rendered text
    already holds every special token, and each turn's end-of-turn is trained once; an
    end-of-turn that closes a system or user turn is not trained. When it fits
    (``len(input_ids) <= max_length``: exactly ``max_length`` tokens fit), keep every token;
    when too long, keep exactly the ``max_length`` tokens that end with the last trained
    token (the final end-of-turn): the start of the prompt is cut, never the end of the
    response, and a response longer than ``max_length`` keeps its tail and its EOS.
    ``conversation`` is not modified.
    """
    ### BEGIN SOLUTION M1.3
    text = render(conversation, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(conversation, tokenizer)
    ids = enc["input_ids"]
    labels = [
        tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX
        for tok, (a, b) in zip(ids, enc["offset_mapping"])
    ]
    if len(ids) <= max_length:
        return {"input_ids": ids, "labels": labels}
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    end = trained[-1] + 1 if trained else max_length
    start = max(0, end - max_length)
    return {"input_ids": ids[start:end], "labels": labels[start:end]}
    ### END SOLUTION
