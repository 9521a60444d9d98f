"""Tiny random models of each supported architecture, built offline (for tests and demos)."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig,
                          MistralConfig, Phi3Config, PretrainedConfig, Qwen2Config)

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2")
_COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(arch: str) -> PretrainedConfig:
    """A 2-layer, 32-wide config of ``arch`` (one of :data:`ARCHITECTURES`)."""
    if arch == "gpt2":
        return GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                          bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0)
    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig,
               "gemma": GemmaConfig, "phi3": Phi3Config}
    if arch not in configs:
        raise ValueError(f"unknown architecture {arch!r}; one of {ARCHITECTURES}")
    extra = {"head_dim": 8} if arch == "gemma" else {}
    return configs[arch](num_key_value_heads=2, **_COMMON, **extra)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised float32 model of ``arch`` in eval mode (seeded)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def tiny_examples(n: int, seed: int = 0, lengths: tuple[int, int] = (8, 48),
                  tokens: tuple[int, int] = (4, 96)) -> list[dict[str, list[int]]]:
    """``n`` tokenized examples for a tiny model: random ids in ``range(*tokens)``, a length
    drawn from ``range(*lengths)``, the first third a prompt (labels ``-100``), the rest a
    response ending with the EOS id 2 as a target — like ``tokenize_with_labels`` output."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(*lengths, (1,), generator=g))
        ids = torch.randint(*tokens, (length,), generator=g).tolist()
        ids[-1] = 2
        prompt = max(1, length // 3)
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples
