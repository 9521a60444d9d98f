"""Training metrics (given): the JSONL log, throughput and MFU estimates, plots.

The log ``metrics.jsonl`` has one JSON object per line: a *step* record after every
optimizer step (``kind: "step"``: step, epoch, loss, lr, grad_norm, stepped, tokens,
targets, tokens_per_s, mfu, memory_mb) and an *eval* record after every evaluation
(``kind: "eval"``: step, val_loss, best). A resumed run first drops records past its
checkpoint, so the log always describes one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import cache
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from ftlab.lora.layer import linear_dims


class MetricsLog:
    """Append-only JSONL file of training records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """Every complete record (a last line cut short by a crash is dropped)."""
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep only records of steps up to ``step`` (atomically)."""
        kept = [r for r in self.records() if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def read_metrics(path: Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file; an unparsable last line (crash) is skipped."""
    if not Path(path).exists():
        return []
    records = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise
    return records


def _matmul_leaves(model: nn.Module) -> list[nn.Module]:
    def is_linear(m):
        try:
            linear_dims(m)
            return True
        except TypeError:
            return False
    linear = {id(m) for m in model.modules() if is_linear(m)}
    return [m for m in model.modules() if id(m) in linear
            and not any(id(c) in linear for c in m.modules() if c is not m)]


def flops_per_token(model: nn.Module) -> float:
    """Estimated training FLOPs per token: ``2N`` forward + ``2N`` backward to the inputs +
    ``2N_trainable`` for weight gradients, where ``N`` counts the weights of every matmul
    (linear layers and the LM head, 4-bit ones included; embedding lookups and attention
    scores excluded). Full fine-tuning gives the usual ``6N``."""
    n = sum(a * b for a, b in map(linear_dims, _matmul_leaves(model)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * n + 2 * min(trainable, n) if trainable else 4 * n


@cache
def matmul_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32,
                      size: int = 1024, repeats: int = 5) -> float:
    """Measured peak FLOP/s of ``size`` x ``size`` matmuls on ``device`` in ``dtype`` with
    torch's current thread count: one untimed warm-up call (kernel selection, page faults),
    then the best of ``repeats`` timed calls. The reference MFU divides by, since a CPU's
    nominal peak is rarely known. On a 2-core AMX CPU 1024² reached what 2048² and 4096²
    reach, within the machine's noise, at an eighth of the cost (measured once per process
    and dtype; ``benchmarks/bench_precision.py``)."""
    a = torch.full((size, size), 0.5, device=device, dtype=dtype)  # no RNG draw: runs
    b = torch.full((size, size), 0.25, device=device, dtype=dtype)  # stay reproducible
    best = math.inf
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def plot_training(records: list[dict], path: Path | None = None):
    """Loss (train per step, validation per evaluation), learning rate and pre-clip gradient
    norm against the step; skipped steps marked. Saves a PNG when ``path`` is given and
    returns the figure."""
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    x = [r["step"] for r in steps]
    axes[0].plot(x, [r["loss"] for r in steps], lw=1, label="train")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-",
                     label="validation")
        best = [r for r in evals if r.get("best")]
        if best:
            axes[0].axvline(best[-1]["step"], color="grey", ls=":", label="best")
    skipped = [r for r in steps if not r["stepped"]]
    for r in skipped:
        for ax in axes:
            ax.axvline(r["step"], color="red", alpha=0.3)
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend()
    axes[1].plot(x, [r["lr"] for r in steps])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(x, [r["grad_norm"] for r in steps])
    axes[2].set(title="gradient norm (before clipping)", xlabel="step", yscale="log")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
    return fig
