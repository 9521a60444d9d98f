"""Loading the embedded base model and tokenizer (offline, plain ``from_pretrained``)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from ftlab.errors import ArtifactError
from ftlab.paths import base_model_dir


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
"""The tokenizer's files in a model folder (a student built with ``tokenizer_from`` takes
them byte for byte)."""


def _folder(path: Path | None) -> Path:
    folder = Path(path) if path is not None else base_model_dir()
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: no config.json; not a model folder "
                            "(run `ftlab base-model build` or `ftlab base-model verify`)")
    return folder


def load_tokenizer(path: Path | None = None) -> PreTrainedTokenizerBase:
    """The embedded tokenizer (or the one in ``path``)."""
    return AutoTokenizer.from_pretrained(_folder(path))


def load_base_model(
    path: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded base model in eval mode and its tokenizer, loaded from local files only."""
    folder = _folder(path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.eval(), load_tokenizer(folder)
