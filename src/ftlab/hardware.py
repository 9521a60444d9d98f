"""What this machine offers: CPU model and feature flags (CUDA is asked of torch directly)."""

from __future__ import annotations

import os
import platform
from functools import cache

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
"""CPU features that change ftlab's speed or results: bf16 matmuls are fast only with
avx512_bf16 or AMX (``train.precision: auto`` measures them), and bitsandbytes' CPU 4-bit
kernels take other paths with and without AVX-512."""


def _cpuinfo(key: str) -> str | None:
    """The first ``key : value`` of Linux ``/proc/cpuinfo``; None where unavailable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from Linux ``/proc/cpuinfo``; empty where that is unavailable."""
    return frozenset((_cpuinfo("flags") or "").split())


@cache
def cpu_model() -> str:
    """The CPU's model name (``Intel(R) Xeon(R) Processor``); the platform's processor
    string where ``/proc/cpuinfo`` is unavailable."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_description() -> dict:
    """What a benchmark result records about the CPU: model, cores, which of
    :data:`SPEED_FLAGS` it has, and the kernel set torch picked
    (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ``DEFAULT``;
    ``ATEN_CPU_CAPABILITY`` lowers it)."""
    import torch

    return {"model": cpu_model(), "cores": os.cpu_count(),
            "flags": [f for f in SPEED_FLAGS if f in cpu_flags()],
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def threads_per_process(processes: int) -> int:
    """Torch (OpenMP) threads for each of ``processes`` running side by side on this machine:
    ``OMP_NUM_THREADS`` when set, else the cores shared out (at least 1). More threads than
    cores in all makes the processes wait for each other: two 2-thread trainings on 2 cores
    ran 5x slower than one."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // processes))
