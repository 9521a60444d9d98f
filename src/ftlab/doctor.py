"""``ftlab doctor``: what a bug report should include, and whether this machine is ready."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

from ftlab.errors import FtlabError
from ftlab.hardware import SPEED_FLAGS, cpu_flags, cpu_model
from ftlab.paths import base_model_dir, data_dir
from ftlab.quant.cpu_trap import cpu_has_avx512_bf16, repack_trap_applies

PACKAGES = ("ftlab", "torch", "transformers", "tokenizers", "peft", "trl", "bitsandbytes",
            "accelerate", "datasets", "evaluate", "gguf", "safetensors", "numpy", "pydantic")
def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _embedded_model() -> str:
    from ftlab.models.provenance import verify_files

    try:
        problems = verify_files(base_model_dir(), data_dir())
    except FtlabError as e:
        return f"NOT OK: {e}"
    return "verifies" if not problems else "NOT OK: " + "; ".join(problems)


def report() -> list[tuple[str, str]]:
    """(label, value) rows: platform, package versions, CPU, CUDA, embedded model, traps."""
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    rows += [(name, _version(name)) for name in PACKAGES]
    rows += [
        ("cpu", f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, torch "
                f"threads {torch.get_num_threads()}, torch kernels "
                f"{torch.backends.cpu.get_cpu_capability()}"),
        ("cpu features", ", ".join(f for f in SPEED_FLAGS if f in cpu_flags())
         or "none of " + ", ".join(SPEED_FLAGS)),
        ("cuda", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
                 if torch.cuda.is_available() else "not available (CPU only)"),
        ("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset")),
        ("embedded model", _embedded_model()),
        ("bitsandbytes CPU repack trap",
         "APPLIES: after one eval-mode forward, 4-bit LoRA gradients stop unless the "
         "repack is disabled before loading (see README, Troubleshooting)"
         if repack_trap_applies()
         else "does not apply" + ("" if cpu_has_avx512_bf16() else " (no avx512_bf16)")),
    ]
    return rows


def render(rows: list[tuple[str, str]]) -> str:
    """Rows as aligned ``label : value`` lines."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}} : {value}" for label, value in rows)
