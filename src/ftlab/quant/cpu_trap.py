"""The bitsandbytes CPU repack trap (see DESIGN.md, "Traps already known").

bitsandbytes >= 0.49 on CPUs with avx512_bf16 repacks a ``Linear4bit`` weight on its first
eval-mode forward; LoRA gradients then stop silently. This module says whether the trap
applies on this machine.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from ftlab.hardware import cpu_flags

FIRST_AFFECTED = Version("0.49")


def bitsandbytes_version() -> str | None:
    """Installed bitsandbytes version, or None."""
    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def cpu_has_avx512_bf16() -> bool:
    """Whether the CPU advertises avx512_bf16."""
    return "avx512_bf16" in cpu_flags()


def repack_trap_applies() -> bool:
    """True when the installed bitsandbytes and this CPU together have the repack trap."""
    installed = bitsandbytes_version()
    return installed is not None and Version(installed) >= FIRST_AFFECTED and cpu_has_avx512_bf16()
