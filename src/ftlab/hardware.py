"""What this machine offers: CPU feature flags (CUDA is asked of torch directly)."""

from __future__ import annotations

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
