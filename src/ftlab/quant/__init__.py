"""Milestone 3 — QLoRA: NF4 from scratch, bit for bit as bitsandbytes, and the real 4-bit path.

Tasks (solution regions): M3.1 :func:`nf4_codebook`, M3.2 :func:`quantize_nf4`, M3.3
:func:`dequantize_nf4`, M3.4 :func:`double_quantize`, M3.5 :class:`NF4Linear` (storing the
frozen 4-bit weight), M3.6 :func:`theoretical_bits_per_parameter`.
Given: the 8-bit dynamic code, nearest-code lookup, :class:`NF4Weight`, the on-the-fly
dequantizing matmul, quantizing a model and preparing it for QLoRA, the transformers +
bitsandbytes loader with the CPU repack trap disabled, memory measurement.
"""

from ftlab.quant.blockwise import (NF4Weight, dequantize_absmax, dequantize_nf4, double_quantize,
                                   quantize_nf4, quantize_weight)
from ftlab.quant.bnb import (bnb_config, check_adapter_gradients, compute_dtype_for,
                             cpu_repack_disabled, disable_cpu_repack, load_quantized, quiet_int8)
from ftlab.quant.codebook import dynamic_code, nearest_code, nf4_codebook
from ftlab.quant.linear import NF4Linear, NF4Matmul, prepare_qlora, quantize_model
from ftlab.quant.memory import (nf4_layers, peak_memory, rss_mb, stored_bits_per_parameter,
                                tensor_bytes, theoretical_bits_per_parameter,
                                training_state_theory)

__all__ = ["NF4Linear", "NF4Matmul", "NF4Weight", "bnb_config", "check_adapter_gradients",
           "compute_dtype_for", "cpu_repack_disabled", "dequantize_absmax", "dequantize_nf4",
           "disable_cpu_repack", "double_quantize", "dynamic_code", "load_quantized",
           "nearest_code", "nf4_codebook", "nf4_layers", "peak_memory", "prepare_qlora",
           "quantize_model", "quantize_nf4", "quantize_weight", "quiet_int8", "rss_mb",
           "stored_bits_per_parameter", "tensor_bytes", "theoretical_bits_per_parameter",
           "training_state_theory"]
