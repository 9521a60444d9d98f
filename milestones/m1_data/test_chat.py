"""M1.2 — the chat template, applied once, for training text and for generation prompts."""

from __future__ import annotations

import copy

import pytest

from ftlab.course.teaching import expect, explained
from ftlab.data.chat import render

pytestmark = pytest.mark.m1
TASK = "M1.2"


def test_m1_2_training_text_is_the_template_applied_once(tokenizer, multi_turn):
    got = render(multi_turn, tokenizer)
    want = tokenizer.apply_chat_template(multi_turn, tokenize=False)
    prompted = tokenizer.apply_chat_template(multi_turn, tokenize=False,
                                             add_generation_prompt=True)
    expect(got.count("<|im_start|>") == len(multi_turn), task=TASK,
           what="turn markers in the training text", expected=len(multi_turn),
           got=got.count("<|im_start|>"),
           cause="a generation prompt appended to the training text: add_generation_prompt "
                 "only when generation_prompt=True" if got == prompted else
                 "template applied twice (rendered text fed back in as a message) or turns lost")
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


OTHER_TEMPLATE = (
    "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + m['content'] + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
"""A Llama 3 style template: another markup and another generation prompt than ChatML."""


@pytest.fixture(scope="module")
def other_tokenizer(tokenizer):
    """The embedded tokenizer with :data:`OTHER_TEMPLATE` as its chat template."""
    other = copy.deepcopy(tokenizer)
    other.chat_template = OTHER_TEMPLATE
    return other


def _turn(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "two-answers": [_turn("system", "Be brief."), _turn("user", "What is 2 plus 2?"),
                    _turn("assistant", "4."), _turn("user", "And 3 plus 3?"),
                    _turn("assistant", "6.")],
    "answered-then-asked": [_turn("system", "Be brief."), _turn("user", "What is 2 plus 2?"),
                            _turn("assistant", "4."), _turn("user", "And 3 plus 3?")],
    "one-answer": [_turn("user", "Hi?"), _turn("assistant", "Hello.")],
    "one-question": [_turn("user", "Hi?")],
}


def _template(tok, turns, generation_prompt):
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def _render_causes(got, conv, tok, generation_prompt):
    """Which misreading of the spec gives ``got`` (the spec's answer is not ``got``)."""
    last_answer = conv[-1]["role"] == "assistant"
    want_turns = conv[:-1] if last_answer else conv
    if not isinstance(got, str):
        return ["return the text (tokenize=False), not token ids"]
    training_text = not generation_prompt
    if training_text:
        if got == _template(tok, conv, True):
            return ["a generation prompt appended to the training text: "
                    "add_generation_prompt only when generation_prompt=True"]
        return ["render with the tokenizer's own chat template, applied once: "
                "tokenizer.apply_chat_template(conversation, tokenize=False), not a "
                "hand-written format"]
    guesses = [
        ([m for m in conv if m["role"] != "assistant"],
         "earlier assistant turns dropped: only a final assistant turn is left out; "
         "every earlier turn stays"),
        (conv[:-2] if last_answer else conv[:-1],
         "only a final assistant turn is dropped: a user turn stays (here the "
         + ("question before the final answer" if last_answer else "final question") + ")"),
        (conv, "the final assistant turn kept: leave it out before adding the generation "
               "prompt"),
    ]
    for turns, cause in guesses:
        if turns and turns != want_turns and got == _template(tok, turns, True):
            return [cause]
    body = _template(tok, want_turns, False)
    if got == body:
        return ["generation prompt missing: pass add_generation_prompt=True"]
    if got.startswith(body):
        tail = _template(tok, want_turns, True)[len(body):]
        return [f"the template's generation prompt ({tail!r} for this template) comes from "
                "add_generation_prompt=True, not from a string appended by hand: templates "
                "differ"]
    return ["every turn but a final assistant turn, rendered with the tokenizer's chat "
            "template and add_generation_prompt=True"]


@pytest.mark.parametrize("template", ["chatml", "llama3-style"])
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_m1_2_render_follows_the_spec(tokenizer, other_tokenizer, template, case):
    tok = tokenizer if template == "chatml" else other_tokenizer
    conv = CONVERSATIONS[case]
    for generation_prompt in (False, True):
        given = copy.deepcopy(conv)
        what = (f"render(generation_prompt={generation_prompt}) of the {case} conversation "
                f"with a {template} template")
        with explained(task=TASK, what=what, expected="a str",
                       cause="render with tokenizer.apply_chat_template(..., tokenize=False)"):
            got = render(given, tok, generation_prompt=generation_prompt)
        expect(given == conv, task=TASK, what=f"the conversation after {what}", expected=conv,
               got=given, cause="the conversation was modified (a turn popped or removed): "
                                "leave the caller's list alone; conversation[:-1] is a new list")
        turns = conv[:-1] if generation_prompt and conv[-1]["role"] == "assistant" else conv
        want = _template(tok, turns, generation_prompt)
        expect(got == want, task=TASK, what=what, expected=repr(want), got=repr(got),
               cause="; ".join(_render_causes(got, conv, tok, generation_prompt)))
