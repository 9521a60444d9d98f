"""What this machine offers: CPU feature flags (CUDA is asked of torch directly)."""

from __future__ import annotations

import os
from functools import cache


@cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from Linux ``/proc/cpuinfo``; empty where that is unavailable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def threads_per_process(processes: int) -> int:
    """Torch (OpenMP) threads for each of ``processes`` running side by side on this machine:
    ``OMP_NUM_THREADS`` when set, else the cores shared out (at least 1). More threads than
    cores in all makes the processes wait for each other: two 2-thread trainings on 2 cores
    ran 5x slower than one."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // processes))
