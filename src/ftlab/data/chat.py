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
    final assistant turn (earlier assistant turns stay), followed by the template's own
    generation prompt, ``add_generation_prompt=True`` (for ChatML
    ``<|im_start|>assistant\\n``; other templates have others, so never append it by
    hand). A conversation not ending with an assistant turn (a final user question) is
    rendered whole before the generation prompt.

    Returns a ``str``. ``conversation`` is not modified (take ``conversation[:-1]``, a new
    list; do not ``pop()``).
    """
    ### BEGIN SOLUTION M1.2
    if not generation_prompt:
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    turns = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    ### END SOLUTION
