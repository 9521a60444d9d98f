"""M1.2 — rendering a conversation with the tokenizer's chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def render(conversation: list[dict], tokenizer: PreTrainedTokenizerBase,
           generation_prompt: bool = False) -> str:
    """Render ``conversation`` as text with the tokenizer's chat template, applied once.

    ``generation_prompt=False`` (training text): every turn with its markup, each assistant
    turn closed by its end-of-turn token; equals
    ``tokenizer.apply_chat_template(conversation, tokenize=False)``.

    ``generation_prompt=True`` (the text a model continues to answer): every turn except a
    final assistant turn, followed by the template's generation prompt (for ChatML,
    ``<|im_start|>assistant\\n``). A conversation not ending with an assistant turn is
    rendered whole before the generation prompt.
    """
    ### BEGIN SOLUTION M1.2
    if not generation_prompt:
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    turns = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    ### END SOLUTION
