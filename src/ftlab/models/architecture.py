"""The embedded base model's architecture: a tiny Llama with grouped-query attention.

Defaults (about 4.6M parameters with the ~1.6k-token vocabulary): hidden size 256,
6 layers, 8 query heads sharing 2 key/value heads, SwiGLU MLP of width 688, RoPE,
RMSNorm, input and output embeddings tied. Small enough to pretrain on 2 CPU cores in
minutes, the same architecture family as Llama 3, SmolLM2 and Qwen2.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from transformers import LlamaConfig, PreTrainedTokenizerBase

from ftlab.models.tokenizer import DOC_SEP


class ArchitectureConfig(BaseModel):
    """Dimensions of the tiny Llama (see module docstring for the defaults' rationale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(256, ge=8)
    num_hidden_layers: int = Field(6, ge=1)
    num_attention_heads: int = Field(8, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(688, ge=8)
    max_position_embeddings: int = Field(512, ge=16)
    rope_theta: float = Field(10_000.0, gt=0)


PRESETS = {
    "base": ArchitectureConfig(),
    "student": ArchitectureConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=1, intermediate_size=344),
}
"""Named architectures ``ftlab base-model build --preset`` builds. ``student``: the
distillation track's smaller model (about 0.9M parameters, a fifth of the base's) with the
base model's tokenizer, so both give logits over the same vocabulary, position for position;
same family (Llama, GQA, SwiGLU, tied embeddings), half the width, two thirds of the depth."""

def llama_config(arch: ArchitectureConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """A ``LlamaConfig`` for ``arch`` whose special-token ids come from ``tokenizer``."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(DOC_SEP),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
