"""The real 4-bit path: transformers + bitsandbytes, with its traps handled (given).

* ``BitsAndBytesConfig`` defaults to fp4 without double quantization; :func:`bnb_config`
  always sets the quant type, double quantization and the compute dtype explicitly.
* bitsandbytes >= 0.49 on CPUs with avx512_bf16 repacks a ``Linear4bit`` weight on the first
  eval-mode forward, after which LoRA gradients silently stop (see :mod:`.cpu_trap`).
  :func:`load_quantized` disables the repack before loading and on every layer after it;
  :func:`check_adapter_gradients` proves gradients still reach the adapters after an
  eval pass.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ftlab.errors import FtlabError
from ftlab.quant.blockwise import NF4Weight

QUANT_TYPES = ("nf4", "fp4")


def compute_dtype_for(device: torch.device | str) -> torch.dtype:
    """The dtype 4-bit weights are dequantized to: bf16 on CUDA GPUs that support it, else
    fp16 on CUDA; float32 on CPU (exact, and bf16 matmuls are slow on most CPUs)."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def bnb_config(bits: int = 4, quant_type: str = "nf4", double_quant: bool = True,
               compute_dtype: torch.dtype | None = None, device: str = "cpu"):
    """A ``transformers.BitsAndBytesConfig`` with every 4-bit setting explicit.

    ``bits`` 4 (``quant_type`` nf4 or fp4, ``double_quant``) or 8 (LLM.int8()).
    ``compute_dtype`` None picks :func:`compute_dtype_for` ``device``.
    """
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or compute_dtype_for(device))


@contextmanager
def cpu_repack_disabled() -> Iterator[None]:
    """While active, new ``Linear4bit`` layers never repack their weight for the CPU."""
    import bitsandbytes.nn.modules as modules

    original = modules.has_avx512bf16
    modules.has_avx512bf16 = lambda: False
    try:
        yield
    finally:
        modules.has_avx512bf16 = original


def disable_cpu_repack(model: nn.Module) -> int:
    """Switch the CPU repack off on every ``Linear4bit`` of ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_quantized(path: str | Path, bits: int = 4, quant_type: str = "nf4",
                   double_quant: bool = True, compute_dtype: torch.dtype | None = None,
                   device: str = "cpu") -> nn.Module:
    """Load a causal LM from a local folder with its linear layers in 4 or 8 bits.

    Non-quantized parts (embeddings, norms, LM head) load in the compute dtype. The CPU
    repack is disabled before and after loading. Raises :class:`FtlabError` when the
    folder does not exist.
    """
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise FtlabError(f"{path}: no such model folder")
    config = bnb_config(bits, quant_type, double_quant, compute_dtype, device)
    dtype = compute_dtype or compute_dtype_for(device)
    with cpu_repack_disabled():
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config,
                                                     dtype=dtype, device_map=device)
    disable_cpu_repack(model)
    faulty = cpu_dequantize_faults(model)
    if faulty:
        warnings.warn(
            f"bitsandbytes' CPU kernel dequantizes {len(faulty)} layer(s) wrongly (input width not "
            f"a multiple of the block size): {', '.join(faulty[:4])}{' …' if len(faulty) > 4 else ''}"
            ". Their outputs will be wrong; use ftlab's NF4 layers (quant.backend: ftlab) for "
            "this model on CPU.", stacklevel=2)
    return model


def cpu_dequantize_faults(model: nn.Module) -> list[str]:
    """Names of NF4 ``Linear4bit`` layers on CPU that bitsandbytes dequantizes differently
    from the reference dequantization of the same stored codes.

    bitsandbytes 0.50.2's native CPU kernel gets layers wrong whose input width is not a
    multiple of the block size (a block then spans two rows); only those are checked.
    """
    from bitsandbytes.functional import dequantize_4bit

    faulty = []
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if (state is None or state.quant_type != "nf4" or module.weight.device.type != "cpu"
                or state.shape[-1] % state.blocksize == 0):
            continue
        absmax = ({"absmax_codes": state.absmax, "absmax_scales": state.state2.absmax,
                   "absmax_offset": state.offset} if state.nested else {"absmax": state.absmax})
        reference = NF4Weight(module.weight.data.reshape(-1), tuple(state.shape),
                              state.blocksize, **absmax).dequantize()
        if not torch.equal(dequantize_4bit(module.weight.data, state).float(), reference):
            faulty.append(name)
    return faulty


class _Int8CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


@contextmanager
def quiet_int8() -> Iterator[None]:
    """Silence bitsandbytes' int8 cast notice, which it logs on every layer call."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    notice = _Int8CastNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _train_gradient_norm(model: nn.Module, input_ids: torch.Tensor) -> float:
    """Gradient norm of the trainable parameters after one seeded train-mode forward and
    backward with ``input_ids`` as labels (a missing gradient counts 0); gradients cleared."""
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
    grads = [p.grad.float().norm() for p in model.parameters()
             if p.requires_grad and p.grad is not None]
    model.zero_grad(set_to_none=True)
    return torch.stack(grads).norm().item() if grads else 0.0


def check_adapter_gradients(model: nn.Module, input_ids: torch.Tensor,
                            rtol: float = 1e-4) -> float:
    """Prove adapters train the same after an eval pass: the gradient norm of a train step
    on ``input_ids`` (batch, seq) before and after an eval-mode forward must be equal and
    non-zero. Returns the norm; leaves gradients cleared and the model in train mode.

    Raises :class:`FtlabError` when nothing is trainable or the gradients changed or
    vanished — on CPU the bitsandbytes repack trap (load with :func:`load_quantized`).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise FtlabError("no trainable parameters: attach LoRA adapters before checking")
    before = _train_gradient_norm(model, input_ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)
    after = _train_gradient_norm(model, input_ids)
    if not (after > 0 and abs(after - before) <= rtol * before):
        raise FtlabError(
            f"adapter gradients changed after an eval pass (norm {before:.6g} before, "
            f"{after:.6g} after): the 4-bit layers stopped passing gradients. On CPU this is "
            "the bitsandbytes avx512_bf16 repack trap; load the model with "
            "ftlab.quant.load_quantized (or call disable_cpu_repack before any forward).")
    return after
