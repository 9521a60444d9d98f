"""The ``model`` section: the base model every stage starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftlab.config.fields import Section


class ModelConfig(Section):
    """The base model every stage starts from."""

    name_or_path: str = Field(
        "embedded",
        description="Base model: 'embedded' (the project's tiny offline model in data/), a local "
        "HF model folder, or a Hub id such as 'HuggingFaceTB/SmolLM2-135M' (needs it cached).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Dtype the base weights are loaded in. float32 on CPU; bfloat16 on recent GPUs.",
    )
