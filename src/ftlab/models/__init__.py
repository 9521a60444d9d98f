"""The embedded tiny base model and its tokenizer: build, load, verify, provenance."""

from ftlab.models.load import load_base_model, load_tokenizer

__all__ = ["load_base_model", "load_tokenizer"]
