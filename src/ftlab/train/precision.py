"""Training precision (given): float32, or bfloat16 autocast, chosen by measurement.

``train.precision`` is one of :data:`PRECISIONS`:

* ``float32`` — every op in float32 (the weights' own dtype).
* ``bfloat16`` — the forward and backward run under ``torch.autocast(dtype=bfloat16)``:
  matmuls take bf16 inputs (native matrix units: AMX / AVX512-BF16 on CPUs, tensor cores on
  GPUs) while weights, gradients, the optimizer and the loss reductions stay float32, so
  no loss scaling is needed. On the CPU, attention is kept in float32
  (:func:`float32_attention`): torch's CPU flash-attention backward in bf16 is ~10x slower
  than in float32 and erases the gain of the matmuls.
* ``auto`` — bfloat16 on a GPU that supports it, float32 on a CPU without native bf16
  instructions (emulated bf16 is slower), and on a CPU with them the faster of the two,
  measured on the run itself (:func:`measure_speedup`): forward + backward passes of the
  run's first batch in each precision, interleaved, for about half a second. bf16 is
  chosen only when it is at least :data:`AUTO_MIN_SPEEDUP` times faster; small models (the
  embedded 4.6M one) gain little or nothing, since their time goes to op launches rather
  than to the matmuls.

The Trainer resolves ``auto`` once per run, logs the decision with its timings and keeps it in
its checkpoints, so a resumed run continues in the precision it started with. It times only
single-process runs of objectives without state: a data-parallel run's processes would time
different numbers of collective steps, and a step of an objective that samples (GRPO) calls
the reward functions; those runs keep float32 on the CPU under ``auto``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.hardware import cpu_flags

PRECISIONS = ("auto", "float32", "bfloat16")
AUTO_MIN_SPEEDUP = 1.3
"""``auto`` picks bf16 on a CPU only when its measured forward + backward is at least this
much faster. A whole step gains less (the optimizer, clipping and data loading cost the same
in both): on the embedded model the measurement gave 0.94-1.22x while whole steps ran at
0.98x, on the 51.6M-parameter model 1.6-1.8x and 1.7x (``benchmarks/results/precision.md``)."""
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP32_ATTENTION = "ftlab_sdpa_float32"
"""Name of the float32 attention registered with transformers' ``AttentionInterface``."""


@dataclass(frozen=True)
class Decision:
    """The precision a run trains in and why."""

    precision: str
    """``float32`` or ``bfloat16``."""
    reason: str
    """One line for the log: what was measured or assumed."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (a CUDA GPU that supports bf16; a
    CPU with AVX512-BF16 or AMX-BF16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def _fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with q, k, v in float32 and autocast off; returns the
    output in the queries' dtype (what the next projection expects)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(query.dtype), weights


def _attention_configs(model: nn.Module) -> list:
    """The transformers configs in ``model`` (PEFT and DDP wrappers seen through) that use
    SDPA attention."""
    seen, found = set(), []
    for module in model.modules():
        config = getattr(module, "config", None)
        if (config is not None and id(config) not in seen
                and getattr(config, "_attn_implementation", None) == "sdpa"):
            seen.add(id(config))
            found.append(config)
    return found


@contextmanager
def float32_attention(model: nn.Module, enabled: bool = True):
    """Within the block, the SDPA attention of ``model`` computes in float32 even under bf16
    autocast (the CPU's bf16 attention backward is slow); restored afterwards. A model with
    another attention implementation (eager, a custom one) is left as it is."""
    configs = _attention_configs(model) if enabled else []
    if not configs:
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(FP32_ATTENTION, _fp32_sdpa)
    for config in configs:
        config._attn_implementation_internal = FP32_ATTENTION
    try:
        yield
    finally:
        for config in configs:
            config._attn_implementation_internal = "sdpa"


@contextmanager
def training_context(model: nn.Module, device: torch.device, precision: str):
    """What a forward/backward of a run in ``precision`` (``float32`` or ``bfloat16``) on
    ``device`` runs under: nothing for float32; bf16 autocast for bfloat16, with float32
    attention on the CPU."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16 here, got {precision!r}")
    if precision == "float32":
        yield
        return
    with (float32_attention(model, device.type == "cpu"),
          torch.autocast(device.type, dtype=torch.bfloat16)):
        yield


def measure_speedup(step: Callable[[], None], model: nn.Module, device: torch.device,
                    budget_s: float = 0.5) -> tuple[float, float]:
    """Median seconds of ``step()`` (one forward + backward; gradients are zeroed after each
    call) in float32 and in bf16. One untimed warm-up call each, then the two interleaved, as
    many rounds as fit in about ``budget_s`` seconds (3 to 15): a single step of a small model
    varies by tens of percent between calls, so a fast step is timed more often. The RNG state
    is restored afterwards, so measuring changes nothing the run draws (dropout masks)."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    params = [p for p in model.parameters() if p.requires_grad]
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}

    def timed(precision: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with training_context(model, device, precision):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for p in params:
            p.grad = None
        return time.perf_counter() - start

    try:
        warm = timed("bfloat16") + timed("float32")  # kernel selection, allocator
        rounds = max(3, min(15, int(budget_s / max(warm, 1e-6))))
        for i in range(rounds):
            for precision in (("float32", "bfloat16") if i % 2 else ("bfloat16", "float32")):
                times[precision].append(timed(precision))
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    return statistics.median(times["float32"]), statistics.median(times["bfloat16"])


def decide(precision: str, device: torch.device, model: nn.Module,
           step: Callable[[], None] | None, unmeasured: str = "") -> Decision:
    """Resolve ``precision`` (one of :data:`PRECISIONS`) for a run on ``device``; ``step``
    runs one forward + backward of the run's first batch (used only to measure ``auto`` on
    a CPU with native bf16). ``step=None`` means the run cannot be timed without side
    effects (``unmeasured`` says why): ``auto`` then keeps float32 on such a CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        note = ("" if precision == "float32" or native_bf16(device)
                else f"; {device.type} has no native bf16, expect it slower than float32")
        return Decision(precision, f"train.precision: {precision}{note}")
    if device.type == "cuda":
        chosen = "bfloat16" if native_bf16(device) else "float32"
        return Decision(chosen, f"auto: {chosen} (GPU bf16 support: {native_bf16(device)})")
    if not native_bf16(device):
        return Decision("float32", "auto: float32 (this CPU has no native bf16: "
                        f"none of {', '.join(CPU_BF16_FLAGS)})")
    if step is None:
        return Decision("float32", f"auto: float32 (bf16 not timed: {unmeasured})")
    fp32_s, bf16_s = measure_speedup(step, model, device)
    speedup = fp32_s / bf16_s
    chosen = "bfloat16" if speedup >= AUTO_MIN_SPEEDUP else "float32"
    return Decision(chosen, f"auto: {chosen} (a step measured: float32 {fp32_s * 1e3:.0f} ms, "
                    f"bf16 {bf16_s * 1e3:.0f} ms, {speedup:.2f}x; bf16 needs "
                    f">= {AUTO_MIN_SPEEDUP}x)")
