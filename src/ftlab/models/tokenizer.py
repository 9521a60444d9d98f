"""The embedded tokenizer: byte-level BPE trained on the corpus, with a ChatML template.

Special tokens (ids 0-3, in this order):
  ``<|endoftext|>`` separates pretraining documents (and starts a plain-text prompt);
  ``<|im_start|>`` / ``<|im_end|>`` open and close a chat turn; ``<|im_end|>`` is the
  tokenizer's EOS, the token a chat model must learn to emit to stop;
  ``<|pad|>`` pads batches. It is never EOS, so masking padding never masks EOS.

The chat template wraps each assistant turn's content and its ``<|im_end|>`` in
``{% generation %}`` markers, so ``apply_chat_template(..., return_assistant_tokens_mask=True)``
and TRL's ``assistant_only_loss`` see exactly the tokens an assistant produces.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

DOC_SEP = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (DOC_SEP, IM_START, IM_END, PAD)
VOCAB_SIZE = 2048
"""Upper bound; BPE stops earlier when the corpus has no more pairs worth merging."""
MAX_LENGTH = 512

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Any string encodes (byte fallback through the 256-symbol byte alphabet) and decodes
    back exactly. Training is single-threaded work on sorted word counts, so the same
    texts give the same vocabulary and merges.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
