"""PEFT-format adapters (given): our adapters load in PEFT with identical logits, and back.

An adapter folder holds ``adapter_config.json`` (a valid PEFT ``LoraConfig``) and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``, exactly as ``peft.PeftModel.save_pretrained`` writes them. Modules trained
in full beside the adapters (a reward model's scalar head: PEFT's ``modules_to_save``) are
listed in the config and stored whole as ``base_model.model.<module>.<parameter>``.
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


def _is_lora(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def save_adapter(model: nn.Module, folder: Path, base_model_name_or_path: str | None = None,
                 task_type: str = "CAUSAL_LM", modules_to_save: tuple[str, ...] = ()) -> Path:
    """Write the adapters of ``model`` (injected by :func:`inject_lora`) as a PEFT folder,
    with the whole parameters of the ``modules_to_save`` (module names such as ``score``)
    and PEFT's ``task_type`` (``SEQ_CLS`` for a reward model)."""
    layers = lora_layers(model)
    if not layers:
        raise ArtifactError("the model has no LoRA adapters to save")
    first = next(iter(layers.values()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": task_type, "r": first.r, "lora_alpha": first.alpha,
        "lora_dropout": getattr(first.lora_dropout, "p", 0.0),
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}),
        "bias": "none", "fan_in_fan_out": any(type(m.base_layer).__name__ == "Conv1D"
                                               for m in layers.values()),
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": list(modules_to_save) or None,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    for module in modules_to_save:
        for name, param in model.get_submodule(module).named_parameters():
            tensors[f"{PREFIX}{module}.{name}"] = param.detach().float().contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a plain-LoRA PEFT folder; ``ArtifactError`` for anything else
    (unreadable, DoRA, rsLoRA, rank or alpha patterns)."""
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
    return config, tensors


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """Inject adapters into ``model`` as described by a PEFT folder and load their weights.

    Works for folders written by :func:`save_adapter` or by PEFT (LoRA, no DoRA, rsLoRA or
    rank/alpha patterns). The parameters of ``modules_to_save`` are copied into ``model``'s
    (in place). Every tensor must be used and every adapter filled.
    """
    folder = Path(folder)
    config, tensors = read_adapter(folder)
    whole = _whole_modules(model, config, tensors, folder)
    with torch.no_grad():
        for key, param in whole.items():
            param.copy_(tensors.pop(key))
    names = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    inject_lora(model, names, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    for name, layer in lora_layers(model).items():
        with torch.no_grad():
            layer.lora_A.copy_(tensors.pop(f"{PREFIX}{name}.lora_A.weight"))
            layer.lora_B.copy_(tensors.pop(f"{PREFIX}{name}.lora_B.weight"))
    if tensors:
        raise ArtifactError(f"{folder / WEIGHTS}: unused tensors {sorted(tensors)[:3]}")
    return model


def _whole_modules(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor],
                   folder: Path) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` the folder's whole-module tensors replace, by key, all
    checked before anything is copied: every non-LoRA key must lie under a module listed in
    ``modules_to_save`` that ``model`` has, with the parameter's shape, and every parameter
    of such a module must be in the folder (a head left at its random start would score at
    random). Modules the config lists but the model lacks are skipped (PEFT lists
    ``classifier`` and ``score`` for every SEQ_CLS model)."""
    listed = [m for m in config.get("modules_to_save") or [] if _has_module(model, m)]
    found = {}
    for key in (k for k in tensors if not _is_lora(k)):
        name = key[len(PREFIX):] if key.startswith(PREFIX) else None
        if name is None or not any(name.startswith(f"{m}.") for m in listed):
            raise ArtifactError(f"{folder / WEIGHTS}: {key} is neither a LoRA tensor nor part of "
                                f"a module in modules_to_save ({config.get('modules_to_save')})")
        param = model.get_parameter(name)
        if param.shape != tensors[key].shape:
            raise ArtifactError(f"{folder / WEIGHTS}: {key} has shape {tuple(tensors[key].shape)}"
                                f", the model's {name} {tuple(param.shape)} (another num_labels?)")
        found[key] = param
    for module in listed:
        for name, _ in model.get_submodule(module).named_parameters():
            if f"{PREFIX}{module}.{name}" not in found:
                raise ArtifactError(f"{folder / WEIGHTS}: lacks {PREFIX}{module}.{name}, which "
                                    "modules_to_save says the folder holds")
    return found


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def combine_adapters(folders: list[Path], out: Path, base_model_name_or_path: str) -> Path:
    """Write one PEFT folder whose update equals the stacked updates of ``folders``.

    Adapters trained one after another (each on the model with the earlier ones merged)
    add up: ``W + s_1 B_1 A_1 + s_2 B_2 A_2 + …``. Per module the combined adapter has
    ``A = [A_1; A_2; …]`` (rows) and ``B = [s_1 B_1 | s_2 B_2 | …]`` (columns), rank the
    sum of the ranks and ``lora_alpha`` equal to that rank, so PEFT's scaling is 1 and
    ``B A`` is exactly the sum (float32 rounding aside). A module one adapter leaves out gets
    zero rows and columns there. All folders must adapt the same base (same
    ``fan_in_fan_out``). Whole modules (``modules_to_save``) are taken from the last folder
    that has them, with its ``task_type``. ``base_model_name_or_path`` is written as given:
    make it resolvable (an absolute folder or a Hub id), since PEFT's loaders look it up.
    """
    if not folders:
        raise ValueError("combine_adapters needs at least one adapter folder")
    read = [read_adapter(f) for f in folders]
    dims: dict[str, tuple[int, int]] = {}  # module -> (in_features, out_features)
    whole: dict[str, torch.Tensor] = {}
    for _, tensors in read:
        whole |= {k: t for k, t in tensors.items() if not _is_lora(k)}
        for key, t in ((k, t) for k, t in tensors.items() if _is_lora(k)):
            name, part = key[len(PREFIX):].rsplit(".lora_", 1)
            old = dims.get(name, (0, 0))
            dims[name] = (t.shape[1], old[1]) if part.startswith("A") else (old[0], t.shape[0])
    combined: dict[str, torch.Tensor] = {}
    for name, (n_in, n_out) in sorted(dims.items()):
        a_parts, b_parts = [], []
        for config, tensors in read:
            r, scaling = config["r"], config["lora_alpha"] / config["r"]
            a_parts.append(tensors.get(f"{PREFIX}{name}.lora_A.weight", torch.zeros(r, n_in)).float())
            b = tensors.get(f"{PREFIX}{name}.lora_B.weight", torch.zeros(n_out, r)).float()
            b_parts.append(b * scaling)
        combined[f"{PREFIX}{name}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        combined[f"{PREFIX}{name}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    names = sorted(dims)
    rank = sum(config["r"] for config, _ in read)
    combined |= whole
    saving = next((c for c, t in reversed(read) if any(not _is_lora(k) for k in t)), read[-1][0])
    config = {**read[-1][0], "task_type": saving.get("task_type"),
              "modules_to_save": saving.get("modules_to_save"),
              "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "target_modules": names,  # full names: exactly these modules, none more
              "base_model_name_or_path": base_model_name_or_path, "inference_mode": True}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(combined, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


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
