"""M3.6 — bits per parameter in theory and as stored; memory of a training step (given).

Stored NF4 costs 4 bits per weight plus its share of the scales: a float32 absmax per block
of 64 (0.5 bits), or with double quantization an 8-bit absmax code per block plus a float32
scale per 256 blocks (0.125 + 0.002 bits).
"""

from __future__ import annotations

import ctypes
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ftlab.quant.linear import NF4Linear

MB = 2**20


def theoretical_bits_per_parameter(block_size: int = 64, double_quant: bool = True,
                                   absmax_block_size: int = 256) -> float:
    """Bits stored per weight by NF4 with one absmax per ``block_size`` weights.

    Without double quantization each absmax is float32; with it, each absmax is an 8-bit code
    and every ``absmax_block_size`` absmax codes share one float32 scale. (The single float32
    offset per tensor is negligible and not counted.) 64 / no double quant: 4.5 bits;
    64 / 256 with double quant: 4.127 bits. Returns a float for any ``block_size`` and
    ``absmax_block_size`` (which only matters with double quantization), e.g. 128 / no
    double quant: 4.25 bits; 32 / 128 with double quant: 4 + 8/32 + 32/(32*128) bits.
    """
    ### BEGIN SOLUTION M3.6
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * absmax_block_size)
    ### END SOLUTION


def nf4_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every :class:`~ftlab.quant.linear.NF4Linear` of ``model`` (itself included) by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NF4Linear)}


def stored_bits_per_parameter(model: nn.Module) -> float:
    """Bits actually stored per quantized weight, over every NF4 layer of ``model`` (or
    ``model`` itself when it is one), measured from the tensors' sizes (bias excluded)."""
    layers = nf4_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no NF4Linear layer")
    stored = sum(layer.quantized().nbytes for layer in layers.values())
    weights = sum(layer.in_features * layer.out_features for layer in layers.values())
    return 8 * stored / weights


def tensor_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes the model holds: ``frozen`` (parameters and buffers not trained, tied
    parameters once) and ``trainable`` (parameters that require gradients)."""
    seen: set[int] = set()
    sizes = {"frozen": 0, "trainable": 0}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        sizes["trainable" if t.requires_grad else "frozen"] += t.numel() * t.element_size()
    return sizes


def training_state_theory(model: nn.Module, optimizer_states: int = 2) -> dict[str, float]:
    """Memory a training step needs besides activations, in MB, from the model's tensors:
    weights (frozen + trainable), gradients (one per trainable value, same dtype) and
    ``optimizer_states`` float32 states per trainable value (Adam: 2). ``total`` sums them."""
    sizes = tensor_bytes(model)
    trainable_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    theory = {"weights": (sizes["frozen"] + sizes["trainable"]) / MB,
              "gradients": sizes["trainable"] / MB,
              "optimizer": optimizer_states * 4 * trainable_values / MB}
    theory["total"] = sum(theory.values())
    return theory


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def rss_mb() -> float:
    """Resident memory of this process now, in MB (0 where /proc is unavailable)."""
    return _status_kb("VmRSS") / 1024


@contextmanager
def peak_memory(device: torch.device | str = "cpu") -> Iterator[dict[str, float]]:
    """Measure the peak memory of the enclosed block.

    Yields a dict filled on exit: ``rss_start_mb`` and ``rss_peak_mb`` (process resident
    memory when the block started and its high-water mark during the block — Linux resets
    the mark through /proc/self/clear_refs), and on CUDA ``cuda_peak_mb`` (peak allocated).
    Free heap memory is first returned to the system (glibc ``malloc_trim``), so a new
    allocation in the block cannot hide in pages that are resident but free.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then be underestimated
        pass
    result: dict[str, float] = {"rss_start_mb": rss_mb()}
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        result["rss_peak_mb"] = _status_kb("VmHWM") / 1024
        if cuda:
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
