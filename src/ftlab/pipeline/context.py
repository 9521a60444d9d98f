"""What flows between stages: model references, stage results, the stage context (given).

A model is passed on as a :class:`ModelRef` — a model folder (or ``embedded``, or a Hub id)
plus the adapter folders trained on it so far, in order — never as an in-memory object, so
a resumed run rebuilds exactly the model a completed stage handed on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from ftlab.config import ModelConfig, PipelineConfig, StageConfig
from ftlab.lora import load_adapter, merge_lora
from ftlab.models.load import load_base_model, load_tokenizer

EMBEDDED = "embedded"


@dataclass(frozen=True)
class ModelRef:
    """A model: ``path`` (a HF model folder, ``embedded`` or a cached Hub id) with the PEFT
    adapter folders in ``adapters`` merged on top, in order. Training stages hand on one
    adapter each: their published folder already combines every earlier stage's update."""

    path: str
    adapters: tuple[str, ...] = ()

    def with_adapter(self, folder: Path) -> ModelRef:
        """This base with ``folder``, an adapter that includes every earlier one (see
        :func:`ftlab.pipeline.training.publish_adapter`), in place of the earlier ones."""
        return ModelRef(self.path, (str(folder),))

    def to_json(self) -> dict:
        return {"path": self.path, "adapters": list(self.adapters)}

    @classmethod
    def from_json(cls, data: dict) -> ModelRef:
        return cls(data["path"], tuple(data["adapters"]))


def load_model(ref: ModelRef, dtype: str = "float32", keep_last_adapter: bool = False
               ) -> nn.Module:
    """Load ``ref`` in eval mode: the model, then each adapter injected and merged in float32.

    ``keep_last_adapter``: leave the newest adapter unmerged (LoRA layers in place), for a
    merge stage that verifies its own merge. Without adapters the weights load in ``dtype``;
    with adapters they load in float32 (merging never happens in low precision).
    """
    torch_dtype = getattr(torch, dtype) if not ref.adapters else torch.float32
    if ref.path == EMBEDDED:
        model, _ = load_base_model(dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype)
    for i, adapter in enumerate(ref.adapters):
        load_adapter(model, Path(adapter))
        if not (keep_last_adapter and i == len(ref.adapters) - 1):
            merge_lora(model)
    return model.eval()


def model_problem(name_or_path: str) -> str | None:
    """Why ``name_or_path`` (a run's ``model.name_or_path``) cannot be loaded, or None.

    ``embedded`` is always there. An existing path must be a transformers model folder
    (``config.json``). Anything else must be a Hub id: with ``HF_HUB_OFFLINE`` set it must
    already be in the Hugging Face cache; online, a missing one is downloaded when the run
    loads it. Checked at plan time, so a typo never waits for a run to start.
    """
    if name_or_path == EMBEDDED:
        return None
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None if (path / "config.json").is_file() else (
            f"{name_or_path}: not a transformers model folder (no config.json in {path.resolve()})")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return f"{name_or_path}: no such model folder (looked for {path.resolve()})"
    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return None
    if constants.is_offline_mode():
        return (f"{name_or_path}: neither a model folder here ({path.resolve()}) nor a Hub id in "
                "the Hugging Face cache, and HF_HUB_OFFLINE is set: download it once with "
                f"`hf download {name_or_path}` (online), or give a local folder")
    return None


def load_model_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the run's base model (``embedded`` or a folder / cached Hub id)."""
    if config.name_or_path == EMBEDDED:
        return load_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.name_or_path)


@dataclass
class StageResult:
    """What a stage hands on: the model after it, its figures and files.

    ``metrics``: flat name -> number (exact match, losses, sizes...). ``artifacts``: name ->
    path of files it wrote (adapter, merged model, GGUF, plots). ``curves``: name -> list of
    ``[step, value]`` for the report's loss plot.
    """

    model: ModelRef
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        data["model"] = self.model.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict) -> StageResult:
        return cls(**{**data, "model": ModelRef.from_json(data["model"])})


@dataclass
class StageContext:
    """Everything a stage's ``run`` gets: the whole run config, its own config, its folder,
    the model it starts from, the tokenizer, whether to show progress bars, the results of
    the stages before it (``earlier``, in run order), the base model's measurements
    (``baseline``) and where to say what it does (``log``: one line at a time)."""

    run: PipelineConfig
    stage: StageConfig
    folder: Path
    model: ModelRef
    tokenizer: PreTrainedTokenizerBase
    progress: bool = True
    earlier: dict[str, StageResult] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print
