"""M2.3 — which layers get adapters, per architecture."""

from __future__ import annotations

from torch import nn

KNOWN_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
"""model_type -> the names (last component) of the projections adapted by default."""


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D`` (a linear layer stored transposed)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def find_target_modules(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Full names (as in ``model.named_modules()``, in that order) of the layers to adapt.

    ``names`` given: every linear layer whose last name component is in ``names``.
    Otherwise the model's architecture decides: ``KNOWN_TARGETS[model.config.model_type]``
    when known; for any other model every linear layer except the output projection
    (``model.get_output_embeddings()``, the LM head). Embeddings, norms and the LM head are
    never adapted.
    """
    ### BEGIN SOLUTION M2.3
    if names is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        names = KNOWN_TARGETS.get(model_type)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name for name, module in model.named_modules()
        if is_linear(module) and module is not head
        and (names is None or name.rsplit(".", 1)[-1] in names)
    ]
    ### END SOLUTION
