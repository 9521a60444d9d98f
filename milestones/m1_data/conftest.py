"""Fixtures of the milestone 1 checks: the embedded tokenizer and sample conversations."""

from __future__ import annotations

import pytest

from ftlab.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded ChatML tokenizer (EOS ``<|im_end|>``, pad ``<|pad|>``)."""
    return load_tokenizer()


@pytest.fixture()
def multi_turn():
    """A system prompt and two user/assistant exchanges."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Sure! The capital of France is Paris."},
        {"role": "user", "content": "And the capital of Italy?"},
        {"role": "assistant", "content": "Of course! The capital of Italy is Rome."},
    ]
