"""M2.4 — inject adapters, freeze everything else; the parameter report (given)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from ftlab.lora.layer import LoRALinear


def inject_lora(model: nn.Module, targets: list[str], r: int, alpha: float,
                dropout: float = 0.0) -> nn.Module:
    """Replace each module named in ``targets`` by a :class:`LoRALinear` around it.

    ``targets`` are full names as in ``model.named_modules()`` (a top-level name's parent is
    the model itself). Each becomes ``LoRALinear(module, r, alpha, dropout)`` wrapping that
    very module (not a copy), set on its parent; every other module stays where it was, and
    ``targets`` is not modified. Afterwards exactly the ``lora_A`` / ``lora_B`` parameters
    require gradients: every other parameter of the model (embeddings, norms, LM head, base
    weights) is frozen. Modifies ``model`` in place and returns it. A name not in the model
    raises ``AttributeError`` (as ``model.get_submodule`` does), never a silent skip.
    """
    ### BEGIN SOLUTION M2.4
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return model
    ### END SOLUTION


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every adapter of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block ``model`` computes exactly its base model (every adapter's scaling
    is 0), e.g. the frozen reference of a policy trained with fresh adapters; the scalings
    come back on exit, even after an exception."""
    layers = list(lora_layers(model).values())
    scalings = [layer.scaling for layer in layers]
    for layer in layers:
        layer.scaling = 0.0
    try:
        yield model
    finally:
        for layer, scaling in zip(layers, scalings):
            layer.scaling = scaling


@dataclass
class ParameterReport:
    """Trainable and total parameters, per module type, and a training-memory estimate."""

    trainable: int
    total: int
    by_type: dict[str, tuple[int, int]] = field(default_factory=dict)
    bytes_per_param: int = 4

    @property
    def percent(self) -> float:
        return 100 * self.trainable / max(self.total, 1)

    def memory_mb(self) -> dict[str, float]:
        """Weights (all), gradients and Adam's two states (trainable only), in MB."""
        mb = self.bytes_per_param / 2**20
        return {"weights": self.total * mb, "gradients": self.trainable * mb,
                "adam_states": 2 * self.trainable * mb}

    def summary(self) -> str:
        rows = [f"trainable {self.trainable:,} of {self.total:,} parameters "
                f"({self.percent:.3f}%)"]
        rows += [f"  {kind:<24} {t:>10,} trainable of {n:>12,}"
                 for kind, (t, n) in sorted(self.by_type.items())]
        mem = self.memory_mb()
        rows.append("memory estimate: " + ", ".join(f"{k} {v:.2f} MB" for k, v in mem.items()))
        return "\n".join(rows)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count parameters: trainable / total overall and by the type of module holding them.

    A tied parameter (the LM head sharing the embedding matrix) counts once, under the
    first module that holds it, so the per-type counts add up to the total.
    """
    trainable, total = Counter(), Counter()
    seen: set[int] = set()
    for module in model.modules():
        kind = type(module).__name__
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total[kind] += p.numel()
            trainable[kind] += p.numel() if p.requires_grad else 0
    params = list(model.parameters())
    dtype_bytes = params[0].element_size() if params else 4
    return ParameterReport(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        by_type={k: (trainable[k], total[k]) for k in total},
        bytes_per_param=dtype_bytes,
    )
