"""M1.2 — the chat template, applied once, for training text and for generation prompts."""

from __future__ import annotations

import pytest

from ftlab.course.teaching import expect
from ftlab.data.chat import render

pytestmark = pytest.mark.m1
TASK = "M1.2"


def test_m1_2_training_text_is_the_template_applied_once(tokenizer, multi_turn):
    got = render(multi_turn, tokenizer)
    want = tokenizer.apply_chat_template(multi_turn, tokenize=False)
    expect(got.count("<|im_start|>") == len(multi_turn), task=TASK,
           what="turn markers in the training text", expected=len(multi_turn),
           got=got.count("<|im_start|>"),
           cause="template applied twice (rendered text fed back in as a message) or turns lost")
    expect(got == want, task=TASK, what="training text", expected=repr(want), got=repr(got),
           cause="render with tokenizer.apply_chat_template(conversation, tokenize=False)")


def test_m1_2_generation_prompt_ends_where_the_answer_starts(tokenizer, multi_turn):
    got = render(multi_turn, tokenizer, generation_prompt=True)
    expect(got.endswith("<|im_start|>assistant\n"), task=TASK, what="end of the generation prompt",
           expected=repr("...<|im_start|>assistant\n"), got=repr(got[-40:]),
           cause="generation prompt missing: pass add_generation_prompt=True")
    expect(multi_turn[-1]["content"] not in got and multi_turn[1]["content"] in got, task=TASK,
           what="generation prompt content", expected="every turn but the final answer",
           got=repr(got), cause="drop the final assistant turn before adding the generation prompt")


def test_m1_2_generation_prompt_of_an_open_conversation(tokenizer):
    conv = [{"role": "user", "content": "What is 2 plus 2?"}]
    got = render(conv, tokenizer, generation_prompt=True)
    want = "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    expect(got == want, task=TASK, what="generation prompt of a conversation ending with the user",
           expected=repr(want), got=repr(got),
           cause="only a final assistant turn is dropped; a user turn stays")
