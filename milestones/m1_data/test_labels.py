"""M1.3 — labels: the assistant's tokens and each end-of-turn are trained, nothing else."""

from __future__ import annotations

import json

import pytest

from ftlab.course.teaching import expect
from ftlab.data.labels import IGNORE_INDEX, tokenize_with_labels
from ftlab.paths import data_dir

pytestmark = pytest.mark.m1
TASK = "M1.3"


def _oracle(conv, tokenizer):
    """The template's own assistant mask ({% generation %} markers): an independent answer."""
    enc = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return enc["input_ids"], [i if m else IGNORE_INDEX
                              for i, m in zip(enc["input_ids"], enc["assistant_masks"])]


def _embedded(n=40):
    lines = (data_dir() / "sft/messages.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["messages"] for line in lines]


def test_m1_3_every_end_of_turn_is_trained(tokenizer, multi_turn):
    ex = tokenize_with_labels(multi_turn, tokenizer, max_length=512)
    eos = tokenizer.eos_token_id
    trained_eos = sum(label == eos for label in ex["labels"])
    expect(trained_eos == 2, task=TASK, what="trained <|im_end|> tokens in a two-answer conversation",
           expected=2, got=trained_eos,
           cause="EOS masked: the model never learns to stop; each assistant turn's end-of-turn "
                 "token is a target")


def test_m1_3_no_prompt_token_is_trained(tokenizer, multi_turn):
    ex = tokenize_with_labels(multi_turn, tokenizer, max_length=512)
    ids, want = _oracle(multi_turn, tokenizer)
    extra = [tokenizer.decode([t]) for t, lab, ok in zip(ex["input_ids"], ex["labels"], want)
             if lab != IGNORE_INDEX and ok == IGNORE_INDEX]
    expect(not extra and ex["input_ids"] == ids, task=TASK, what="tokens trained outside replies",
           expected="none", got=extra[:12],
           cause="prompt tokens trained: system, user and markup tokens get IGNORE_INDEX (-100)")


def test_m1_3_labels_equal_the_templates_assistant_mask(tokenizer, multi_turn):
    for conv in [multi_turn] + _embedded():
        ex = tokenize_with_labels(conv, tokenizer, max_length=512)
        ids, want = _oracle(conv, tokenizer)
        got_text = tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
        want_text = tokenizer.decode([t for t in want if t != IGNORE_INDEX])
        expect(ex["labels"] == want and ex["input_ids"] == ids, task=TASK,
               what="labels of one conversation", expected=repr(want_text), got=repr(got_text),
               cause="off-by-one at the boundary: the first reply token or the end-of-turn "
                     "token is misaligned (labels are not shifted; the model shifts them)")


def test_m1_3_truncation_keeps_the_response_and_its_eos(tokenizer):
    long_prompt = " ".join(["The capital of France is Paris."] * 60)
    conv = [{"role": "user", "content": long_prompt},
            {"role": "assistant", "content": "Sure! The capital of France is Paris."}]
    full = tokenize_with_labels(conv, tokenizer, max_length=4096)
    ex = tokenize_with_labels(conv, tokenizer, max_length=64)
    trained_full = [t for t in full["labels"] if t != IGNORE_INDEX]
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    expect(len(ex["input_ids"]) == 64 and trained == trained_full, task=TASK,
           what="64-token truncation of a long prompt with a short answer",
           expected=f"64 tokens, all {len(trained_full)} reply tokens trained",
           got=f"{len(ex['input_ids'])} tokens, {len(trained)} trained",
           cause="truncation dropped the response: cut the start of the prompt instead")
    reply = [{"role": "user", "content": "Say it."},
             {"role": "assistant", "content": long_prompt}]
    ex = tokenize_with_labels(reply, tokenizer, max_length=32)
    expect(len(ex["labels"]) == 32 and ex["labels"][-1] == tokenizer.eos_token_id, task=TASK,
           what="a response longer than max_length", expected="32 tokens ending with a trained EOS",
           got=f"{len(ex['labels'])} tokens, last label {ex['labels'][-1]}",
           cause="keep the window that ends with the last trained token")
