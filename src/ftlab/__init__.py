"""ftlab: learn LLM fine-tuning by building it, and use what you built offline.

Subpackages follow the course: ``data`` (M1), ``lora`` (M2), ``quant`` (M3),
``train`` (M4), ``evaluate``/``export`` (M5), ``align``/``pipeline`` (capstone).
The embedded offline world, tokenizer and base model live in ``world`` and ``models``.
"""

__version__ = "0.1.0"
