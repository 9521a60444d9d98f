"""The models benchmarks train (shared): the embedded base model and a 51.6M-parameter Llama."""

from __future__ import annotations

LARGE = {"hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12,
         "num_key_value_heads": 4, "intermediate_size": 2048, "vocab_size": 1658,
         "max_position_embeddings": 512, "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
"""The 51.6M-parameter Llama of ``bench_lora_step.py``'s large case: the embedded model's
vocabulary (so its tokenizer and data fit), where matrix units matter more."""

MODELS = ("embedded", "large")
DESCRIPTIONS = {"embedded": "The embedded 4.6M Llama",
                "large": "A 51.6M Llama (hidden 768, 8 layers, random init, the embedded "
                         "tokenizer)"}
"""How a results table names each model (at the start of a sentence)."""


def benchmark_model(which: str, seed: int):
    """(float32 model, tokenizer): ``embedded`` is the shipped base model; ``large`` a
    random-init :data:`LARGE` Llama drawn from ``seed`` (equal in every process that asks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlab.models import load_base_model, load_tokenizer

    if which == "embedded":
        return load_base_model()
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LARGE)).float(), load_tokenizer()
