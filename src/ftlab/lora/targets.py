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

    The LM head is the module ``model.get_output_embeddings()`` returns (none when the model
    has no such method). It is never adapted: its weight is usually tied to the input
    embeddings, so an update merged into it would change the embeddings too.

    ``names`` None: the model's architecture decides: ``KNOWN_TARGETS[model.config.model_type]``
    when known; for any other model every linear layer except the LM head.

    ``names`` given (an explicit request, which replaces ``KNOWN_TARGETS``): every linear
    layer whose last name component is in ``names``, honoured as asked, except that a
    request matching the LM head is refused loudly: ``ValueError`` naming the LM head's full
    name (``["lm_head"]`` alone or among others, or whatever the head is called; never a
    silent drop). Each name is compared whole with the last component: ``"proj"`` matches no
    Llama layer and ``"up_proj"`` not Phi-3's ``gate_up_proj``. Every name counts; names
    matching no linear layer add nothing; ``names=[]`` gives ``[]``. ``names`` is not modified.

    A model without ``get_output_embeddings`` (or whose method returns None) has no LM head
    to skip; a model without ``config``, or whose ``model_type`` is not in ``KNOWN_TARGETS``,
    follows the generic rule. Returns a list without duplicates (``[]`` when nothing matches).
    Embeddings and norms are not linear layers and are never returned.
    """
    ### BEGIN SOLUTION M2.3
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    explicit = names is not None
    if names is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        names = KNOWN_TARGETS.get(model_type)
    targets = []
    for name, module in model.named_modules():
        if not is_linear(module) or (names is not None and name.rsplit(".", 1)[-1] not in names):
            continue
        if module is head:
            if explicit:
                raise ValueError(f"'{name}' is the LM head (output projection), which LoRA "
                                 "never adapts; remove it from the requested names")
            continue
        targets.append(name)
    return targets
    ### END SOLUTION
