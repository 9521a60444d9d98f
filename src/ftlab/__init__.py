"""ftlab: learn LLM fine-tuning by building it, and use what you built offline.

Subpackages follow the course: ``data`` (M1), ``lora`` (M2), ``quant`` (M3),
``train`` (M4), ``evaluate``/``export`` (M5), ``align``/``pipeline`` (capstone).
The embedded offline world, tokenizer and base model live in ``world`` and ``models``.

Importing ftlab silences one known-harmless log line: bitsandbytes on CPUs with
avx512_bf16 warns on import that the optional ``kernels`` package (which fetches from the
Hub, so ftlab never installs it) is missing. Every other bitsandbytes message still shows.
"""

import logging

__version__ = "0.1.0"

KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _drop_kernels_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(KERNELS_NOTICE)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_kernels_notice)
