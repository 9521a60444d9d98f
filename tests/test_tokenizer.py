"""The embedded tokenizer: round trips, special tokens, chat rendering, assistant masks."""

from __future__ import annotations

import pytest

from ftlab.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from ftlab.world.build import world_files

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Sure! The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def test_special_tokens_have_fixed_ids_and_pad_is_not_eos(tokenizer):
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines  ",
    "Unseen words: Ouagadougou, Zürich, 東京, emoji 🙂, math ∑ x².",
    "",
])
def test_any_text_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def test_corpus_round_trips_and_compresses(tokenizer, data):
    lines = (data / "corpus/validation.txt").read_text().splitlines()[:200]
    enc = tokenizer(lines, add_special_tokens=False).input_ids
    assert [tokenizer.decode(ids) for ids in enc] == lines
    chars_per_token = sum(map(len, lines)) / sum(map(len, enc))
    assert chars_per_token > 3.5, "BPE should merge the corpus' few distinct words"


def test_chat_template_renders_chatml(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nSure! The capital of France is Paris.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\nRome.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                           "<|im_start|>assistant\n")


def test_special_tokens_in_rendered_text_are_single_tokens(tokenizer):
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True).input_ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5
    assert ids.count(tokenizer.eos_token_id) == 5


def test_generation_markers_mask_exactly_assistant_content_and_end_of_turn(tokenizer):
    enc = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(enc.input_ids, enc.assistant_masks) if m]
    expected = []
    for turn in ("Sure! The capital of France is Paris.", "Rome."):
        expected += tokenizer(turn, add_special_tokens=False).input_ids
        expected.append(tokenizer.eos_token_id)
    assert trained == expected
    assert "{% generation %}" in CHAT_TEMPLATE.replace("{%- generation %}", "{% generation %}")


def test_training_is_deterministic_on_the_same_text():
    lines = world_files(0)["corpus/train.txt"].decode().splitlines()[:3000]
    a, b = train_tokenizer(lines), train_tokenizer(lines)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_committed_tokenizer_is_what_training_on_the_corpus_gives(tokenizer, data):
    lines = (data / "corpus/train.txt").read_text().splitlines()
    assert train_tokenizer(lines).get_vocab() == tokenizer.get_vocab()
