"""QLoRA: NF4 quantization from scratch and the transformers + bitsandbytes 4-bit path."""
