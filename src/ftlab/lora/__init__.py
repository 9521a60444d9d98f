"""Milestone 2 — LoRA from scratch, equal to PEFT.

Tasks (solution regions): M2.1 :class:`LoRALinear` init, M2.2 its forward, M2.3
:func:`find_target_modules`, M2.4 :func:`inject_lora`, M2.5 :meth:`LoRALinear.delta_weight`.
Given: the parameter report, PEFT-format save/load (and loading our folders with PEFT
itself), merging.
"""

from ftlab.lora.inject import (ParameterReport, adapters_disabled, inject_lora, lora_layers,
                               parameter_report)
from ftlab.lora.layer import LoRALinear
from ftlab.lora.merge import merge_lora
from ftlab.lora.peft_io import combine_adapters, load_adapter, load_in_peft, save_adapter
from ftlab.lora.targets import KNOWN_TARGETS, find_target_modules

__all__ = ["KNOWN_TARGETS", "LoRALinear", "ParameterReport", "adapters_disabled", "combine_adapters",
           "find_target_modules", "inject_lora", "load_adapter", "load_in_peft", "lora_layers",
           "merge_lora", "parameter_report", "save_adapter"]
