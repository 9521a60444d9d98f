"""PEFT-format adapters (given): our adapters load in PEFT with identical logits, and back.

An adapter folder holds ``adapter_config.json`` (a valid PEFT ``LoraConfig``) and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``, exactly as ``peft.PeftModel.save_pretrained`` writes them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ftlab.errors import ArtifactError
from ftlab.lora.inject import inject_lora, lora_layers

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def save_adapter(model: nn.Module, folder: Path, base_model_name_or_path: str | None = None
                 ) -> Path:
    """Write the adapters of ``model`` (injected by :func:`inject_lora`) as a PEFT folder."""
    layers = lora_layers(model)
    if not layers:
        raise ArtifactError("the model has no LoRA adapters to save")
    first = next(iter(layers.values()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.r, "lora_alpha": first.alpha,
        "lora_dropout": getattr(first.lora_dropout, "p", 0.0),
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}),
        "bias": "none", "fan_in_fan_out": any(type(m.base_layer).__name__ == "Conv1D"
                                               for m in layers.values()),
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """Inject adapters into ``model`` as described by a PEFT folder and load their weights.

    Works for folders written by :func:`save_adapter` or by PEFT (LoRA, no DoRA, rsLoRA or
    rank/alpha patterns). Every adapter tensor must be used and every adapter filled.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{folder}: not a readable PEFT adapter folder ({e})") from None
    unsupported = [k for k in ("use_dora", "use_rslora") if config.get(k)]
    if config.get("peft_type") != "LORA" or unsupported or config.get("rank_pattern") or \
            config.get("alpha_pattern"):
        raise ArtifactError(f"{folder / CONFIG}: only plain LoRA adapters are supported "
                            f"(peft_type {config.get('peft_type')}, {unsupported})")
    names = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    inject_lora(model, names, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    for name, layer in lora_layers(model).items():
        with torch.no_grad():
            layer.lora_A.copy_(tensors.pop(f"{PREFIX}{name}.lora_A.weight"))
            layer.lora_B.copy_(tensors.pop(f"{PREFIX}{name}.lora_B.weight"))
    if tensors:
        raise ArtifactError(f"{folder / WEIGHTS}: unused tensors {sorted(tensors)[:3]}")
    return model


PEFT_NOTICE = r"`is_gradient_checkpointing` is deprecated"
"""transformers 5 warns (FutureWarning) when PEFT 0.21 reads this property while loading an
adapter: a notice about PEFT's own code that no ftlab user can act on."""


def load_in_peft(model: nn.Module, folder: Path):
    """An adapter folder loaded by PEFT itself: ``peft.PeftModel.from_pretrained(model, folder)``.

    Exactly PEFT's loader; only the FutureWarning :data:`PEFT_NOTICE` it triggers inside
    transformers is silenced (every other warning still shows).
    """
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_NOTICE, category=FutureWarning)
        return PeftModel.from_pretrained(model, str(folder))
