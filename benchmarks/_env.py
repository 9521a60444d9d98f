"""The environment a benchmark ran in, recorded next to its results (shared by all benchmarks)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment(*packages: str) -> dict:
    """Date, Python, platform, CPU (model, cores, speed-relevant flags, torch's kernel set),
    torch threads, git commit and each package's version."""
    import torch

    from ftlab.hardware import cpu_description

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # informational only
        commit = None
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "cpu": cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit, **{name: version(name) for name in ("torch", *packages)},
    }
