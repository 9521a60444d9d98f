"""Run configs: pydantic models for every stage, YAML in and out, the one home of defaults.

Every default ftlab uses lives in a field of a model below, with a description that
states units and typical values; :func:`defaults_table` renders them for the docs, so
code, docs and saved configs cannot drift apart.

A run is a :class:`PipelineConfig`: a base model and a list of stages (``sft``, ``dpo``, ``grpo``,
``merge``, ``export``, ``eval``), each with optional sections (``data``, ``lora``,
``quant``, ``train``, ``eval``, ``export``, ``dpo``, ``grpo``). A missing section means "all of
that section's defaults"; the stage that runs decides which sections it reads.

Invariants:

* Every model forbids unknown keys and non-finite floats.
* Data file paths (``data.path``, ``data.mixture[].path``) are resolved when validated:
  against ``context["base_dir"]`` when given (``load_config`` passes the YAML file's
  folder), else against the current directory. The stored path is absolute and must
  name an existing file.
* ``save_config`` writes data paths relative to the output file's folder, so
  ``load_config(save_config(cfg, anywhere)) == cfg``.
* ``load_config`` turns every problem into one :class:`~ftlab.errors.ConfigError` whose
  message has one line per problem:
  ``<file>:<line>: <dotted.field>: <what is wrong> (got <value>)[; hint]``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError, to_jsonable_python

from ftlab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "ModelConfig",
    "MixtureSource",
    "DataConfig",
    "LoRAConfig",
    "QuantConfig",
    "TrainConfig",
    "EvalConfig",
    "ExportConfig",
    "DPOConfig",
    "GRPOConfig",
    "StageConfig",
    "PipelineConfig",
    "config_line",
    "load_config",
    "register_stage_kind",
    "save_config",
    "defaults_table",
]


# ---------------------------------------------------------------------------------------
# Reusable field types
# ---------------------------------------------------------------------------------------


def _resolve_data_file(value: Path, info: ValidationInfo) -> Path:
    """Resolve ``value`` against ``info.context["base_dir"]`` (else cwd); it must be a file."""
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    resolved = (base / value.expanduser()).resolve()
    if not resolved.is_file():
        raise ValueError(f"data file not found: {resolved}")
    return resolved


def _relative_to_base(value: Path, info: SerializationInfo) -> str:
    """Write ``value`` relative to ``info.context["base_dir"]`` when given, else as is."""
    base = (info.context or {}).get("base_dir")
    return os.path.relpath(value, base) if base else str(value)


DataFile = Annotated[
    Path,
    AfterValidator(_resolve_data_file),
    PlainSerializer(_relative_to_base, when_used="json"),
]
"""An existing data file; relative paths resolve against the config file's folder."""

_DATA_FILE_HINT = "relative paths are resolved against the config file's folder"


def _unique(values: list[Any]) -> list[Any]:
    """Reject lists that name an entry twice."""
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate entries {duplicates}; list each once")
    return values


def _power_of_two(value: int) -> int:
    """Reject integers that are not powers of two."""
    if value & (value - 1):
        raise ValueError("must be a power of two (32, 64, 128, ..., 4096)")
    return value


def _auto_or_module_names(value: Any) -> Any:
    """Accept ``"auto"`` or a non-empty list of non-empty module-name strings."""
    names_ok = isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value)
    if value == "auto" or names_ok:
        return value
    raise ValueError("must be 'auto' or a non-empty list of module names such as ['q_proj', 'v_proj']")


def _hint(text: str) -> dict[str, str]:
    """Field metadata carrying a hint that ``load_config`` appends to that field's errors."""
    return {"hint": text}


def _numeric(annotation: Any) -> bool:
    """Whether ``annotation`` (possibly Optional / Annotated) means a number and not a bool."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _numeric(args[0])
    if args and get_origin(annotation) is not Literal:
        return bool not in args and any(_numeric(a) for a in args)
    return annotation in (int, float)


class _Section(BaseModel):
    """Base of every config model: unknown keys, inf/nan and booleans where a number is
    meant (``batch_size: true`` would otherwise be read as 1) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not a boolean")
        return value


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


class ModelConfig(_Section):
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


class MixtureSource(_Section):
    """One data file in a weighted mixture."""

    path: DataFile = Field(
        description="Data file (JSON, JSONL, CSV or Parquet), relative to the config file's folder.",
        json_schema_extra=_hint(_DATA_FILE_HINT),
    )
    rate: float = Field(
        gt=0,
        description="Relative sampling weight of this source; rates are normalised to sum to 1 "
        "(e.g. 3 and 1 give 75% / 25%).",
    )


class DataConfig(_Section):
    """Where training data comes from and how it becomes examples (milestone 1).

    Exactly one of ``path`` and ``mixture`` is set.
    """

    path: DataFile | None = Field(
        None,
        description="Data file (JSON, JSONL, CSV or Parquet), relative to the config file's folder. "
        "Omit it when `mixture` is given.",
        json_schema_extra=_hint(_DATA_FILE_HINT),
    )
    format: Literal["auto", "alpaca", "prompt_completion", "question_answer", "messages", "sharegpt",
                    "preference"] = Field(
        "auto",
        description="Record schema; 'auto' detects it from the keys of the first record. dpo stages "
        "read 'preference' records ({prompt, chosen, rejected}, TRL's format).",
    )
    max_length: int = Field(
        256,
        ge=16,
        description="Maximum example length in tokens (prompt + response); longer examples are "
        "truncated. Typical 256 for the embedded model, 1024-4096 for real models.",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Fraction of records held out for validation loss (0.1 = 10%); 0 disables it.",
    )
    min_response_chars: int = Field(
        1,
        ge=0,
        description="Records whose response has fewer characters are dropped (0 keeps empty responses).",
    )
    dedupe: bool = Field(True, description="Drop exact duplicate records before splitting.")
    seed: int = Field(0, ge=0, description="Seed of the shuffle and train/validation split.")
    mixture: list[MixtureSource] | None = Field(
        None,
        min_length=1,
        description="Weighted list of data files to mix instead of a single `path`.",
    )
    replay_fraction: float = Field(
        0.0,
        ge=0,
        le=0.9,
        description="Share of SFT training examples that are blocks of general text trained on every "
        "token (replay against forgetting); 0 disables it. 0.5 keeps the embedded model's general-text "
        "perplexity near the base.",
    )
    replay_path: DataFile | None = Field(
        None,
        description="Plain text file, one document per line, for replay; unset uses the embedded "
        "corpus (data/corpus/train.txt).",
        json_schema_extra=_hint(_DATA_FILE_HINT),
    )
    max_rejected_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A stage refuses to train when more than this share of its data file's records "
        "cannot be read (bad JSON, missing fields, wrong format; each reported with file:line). "
        "0 tolerates no bad record, 1 trains on whatever loads.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        """Exactly one of ``path`` and ``mixture`` must be given."""
        if (self.path is None) == (self.mixture is None):
            raise ValueError("give exactly one of 'path' (one data file) or 'mixture' (a list of files with rates)")
        return self


class LoRAConfig(_Section):
    """Low-rank adapters (milestone 2): W' = W + (alpha / r) * B @ A."""

    r: int = Field(
        16,
        ge=1,
        description="Adapter rank (inner dimension of A and B). Typical 8-64.",
        json_schema_extra=_hint("the LoRA rank is a positive integer; typical values are 8-64"),
    )
    alpha: float = Field(
        32,
        gt=0,
        description="Scaling numerator: the update is multiplied by alpha / r. Typical 1-2x r.",
    )
    dropout: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Dropout probability on the adapter input. Typical 0.0-0.1.",
        json_schema_extra=_hint("dropout is a probability in [0, 1); typical values are 0.0-0.1"),
    )
    target_modules: Annotated[Literal["auto"] | list[str], BeforeValidator(_auto_or_module_names)] = Field(
        "auto",
        description="Linear layers that get adapters: 'auto' (attention and MLP projections found "
        "by name) or a list such as ['q_proj', 'v_proj'].",
    )
    bias: Literal["none"] = Field("none", description="Bias training; only 'none' (biases stay frozen).")


class QuantConfig(_Section):
    """4-bit quantization of the frozen base for QLoRA (milestone 3)."""

    enabled: bool = Field(False, description="Quantize the frozen base weights to 4 bits.")
    backend: Literal["ftlab", "bitsandbytes"] = Field(
        "ftlab",
        description="'ftlab': the course's own pure-PyTorch 4-bit linear; 'bitsandbytes': Linear4bit.",
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4",
        description="4-bit code: nf4 (normal-float, best for normally distributed weights) or fp4.",
    )
    double_quant: bool = Field(
        True,
        description="Also quantize the per-block absmax scales to 8 bits (saves about 0.37 bits/weight).",
    )
    block_size: Annotated[int, AfterValidator(_power_of_two)] = Field(
        64,
        ge=32,
        le=4096,
        description="Weights per quantization block (one absmax scale each). Power of two; typical 64.",
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of the dequantized matmul; 'auto' uses the model dtype.",
    )


class TrainConfig(_Section):
    """The training loop (milestone 4). A step is one optimizer update."""

    lr: float = Field(
        3e-3,
        gt=0,
        le=1,
        description="Peak learning rate. Typical LoRA 1e-4..3e-3; full fine-tuning 1e-5..5e-5.",
        json_schema_extra=_hint("learning rates above 1 diverge; typical LoRA values are 1e-4..3e-3"),
    )
    epochs: float = Field(8.0, gt=0, description="Passes over the training data; fractions allowed (0.5).")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps; overrides `epochs` when set.",
    )
    batch_size: int = Field(8, ge=1, description=(
        "Examples per micro-batch, over all processes when several train together (each "
        "takes batch_size / processes; a multiple of the process count)."))
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (effective batch = batch_size x grad_accum).",
    )
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Fraction of total steps with linear warm-up from 0 to `lr`. Typical 0.03-0.1.",
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Cosine decay ends at lr x min_lr_ratio.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay. Typical 0-0.1.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this value.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation-loss evaluations.")
    save_every: int = Field(100, ge=1, description="Optimizer steps between checkpoints.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement; unset disables early stopping.",
    )
    early_stopping_min_delta: float = Field(
        0.0,
        ge=0,
        description="Smallest drop in validation loss (nats) that counts as an improvement.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together to waste less padding.",
    )
    packing: bool = Field(False, description="Concatenate short examples into full-length rows.")
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw",
        description="'adamw' (torch) or 'adamw8bit' (bitsandbytes 8-bit states, GPU memory saver).",
    )
    seed: int = Field(0, ge=0, description="Seed of adapter init, dropout and batch order.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description=("With several processes (torchrun, accelerate launch, ftlab run --nproc): "
                     "ddp keeps the whole model in each and averages gradients; fsdp (FSDP2) "
                     "shards parameters, gradients and optimizer state over them; auto is fsdp "
                     "when accelerate launch is configured for FSDP, else ddp. Ignored alone."),
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description=("Training compute precision: float32, or bfloat16 autocast (weights, "
                     "gradients and optimizer stay float32). auto: bf16 on GPUs that support "
                     "it; on CPUs with native bf16 (AVX512-BF16/AMX) whichever of the two a "
                     "measured step finds faster (bf16 only when >= 1.3x); float32 elsewhere. "
                     "The choice is logged and kept by checkpoints."),
    )
    compile: bool = Field(
        False,
        description=("torch.compile the model's forward for training. Off by default: on 2 "
                     "CPU cores compiling the embedded model takes ~140 s and saves ~25% per "
                     "step, so it pays only after thousands of steps."),
    )
    max_skipped_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Training stops with an error once more than this share of the planned steps "
        "was skipped for a non-finite loss or gradient norm (usually a learning rate too high, or "
        "broken data); 1 never stops.",
    )


class EvalConfig(_Section):
    """Evaluation (milestone 5): perplexity and generation-based task metrics."""

    max_new_tokens: int = Field(32, ge=1, le=1024, description="Generated tokens per prompt (greedy).")
    batch_size: int = Field(64, ge=1, description=(
        "Prompts per generation batch (64 answers the 162 held-out questions of the embedded "
        "model 2.4x faster than 16 on 2 CPU cores)."))
    bootstrap_samples: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples for confidence intervals; 0 disables intervals.",
    )
    sets: Annotated[list[Literal["heldout_chat", "seen_chat"]], AfterValidator(_unique)] = Field(
        ["heldout_chat"],
        min_length=1,
        description="Question sets of the embedded world to answer (data/eval/<name>.jsonl): "
        "'heldout_chat' (facts held out of SFT) and/or 'seen_chat' (facts SFT trained on).",
    )
    preference_path: DataFile | None = Field(
        None,
        description="Held-out preference pairs for preference accuracy and reward margins; unset uses "
        "the embedded data/preferences/heldout.jsonl.",
        json_schema_extra=_hint(_DATA_FILE_HINT),
    )


class ExportConfig(_Section):
    """Merge and export (milestone 5)."""

    formats: Annotated[list[Literal["hf", "adapter", "gguf"]], AfterValidator(_unique)] = Field(
        ["hf", "gguf"],
        min_length=1,
        description="Artifacts to write: 'hf' (merged transformers folder), 'adapter' (PEFT folder), "
        "'gguf' (llama.cpp file).",
    )
    gguf_types: Annotated[list[Literal["f16", "q8_0"]], AfterValidator(_unique)] = Field(
        ["f16"],
        min_length=1,
        description="GGUF tensor types to write, one file each: 'f16' or 'q8_0'.",
    )
    merge_dtype: Literal["float32"] = Field(
        "float32",
        description="Dtype adapters are merged in; always float32 (cast afterwards when exporting).",
        json_schema_extra=_hint(
            "merging into a low-precision or 4-bit base re-quantizes and loses the adapter update; "
            "merge in float32 and pick the file precision with gguf_types"
        ),
    )


class DPOConfig(_Section):
    """Direct preference optimization (capstone)."""

    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the implicit KL penalty to the reference model. Typical 0.05-0.5.",
    )
    sft_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of an added SFT loss on the chosen response; 0 gives plain DPO.",
    )


REWARD_NAMES = ["correct", "polite", "ended", "length"]
"""Reward functions a grpo stage can weight: the built-in ones (:mod:`ftlab.rl.rewards`)
and any registered later (:func:`ftlab.rl.register_reward`)."""


def register_reward_name(name: str) -> None:
    """Accept ``name`` in a config's ``grpo.rewards`` (:func:`ftlab.rl.register_reward`
    calls this)."""
    if name not in REWARD_NAMES:
        REWARD_NAMES.append(name)


def _known_rewards(weights: dict[str, float]) -> dict[str, float]:
    """Reject reward names no built-in function has, with a did-you-mean."""
    for name in weights:
        if name not in REWARD_NAMES:
            close = difflib.get_close_matches(name, REWARD_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown reward '{name}'; known: {', '.join(REWARD_NAMES)}{hint}")
    if not any(weights.values()):
        raise ValueError("every reward weight is 0: nothing would be learned")
    return weights


class GRPOConfig(_Section):
    """Group relative policy optimisation with verifiable rewards (capstone, advanced track)."""

    group_size: int = Field(
        8,
        ge=2,
        description="Completions sampled per prompt (G); advantages compare each with its group. "
        "Typical 4-16.",
    )
    max_new_tokens: int = Field(
        24,
        ge=1,
        le=1024,
        description="Token budget of a completion; a completion that has not stopped by then is "
        "truncated (the 'ended' reward then gives 0).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables it.")
    beta: float = Field(
        0.04,
        ge=0,
        description="Weight of the KL penalty (k3 estimator) to the stage's input model; 0 skips the "
        "reference pass. TRL's default is 0; DeepSeek-R1 used 0.001.",
    )
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range below 1 of the probability ratio.")
    epsilon_high: float | None = Field(
        None,
        gt=0,
        description="Clip range above 1; unset uses `epsilon` (DAPO recommends 0.28).",
    )
    kl_correction: bool = Field(
        True,
        description="Weight the per-token KL term by the probability ratio (TRL 1.16's default "
        "use_bias_correction_kl): same value on-policy, the unbiased reverse-KL gradient.",
    )
    iterations: int = Field(
        1,
        ge=1,
        description="Optimizer steps per generation round (TRL's num_iterations); >1 reuses a round's "
        "samples with clipped ratios.",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="How per-token losses are averaged: 'dapo' (TRL's default) over the step's "
        "completion tokens, 'grpo' per completion then over completions, 'bnpo' over a micro-batch's "
        "tokens, 'dr_grpo' over completions x max_new_tokens.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="What centred rewards are divided by: the group's std ('group'), the batch's, or "
        "nothing ('none', Dr. GRPO).",
    )
    rewards: Annotated[dict[str, float], AfterValidator(_known_rewards)] = Field(
        default_factory=lambda: {"correct": 1.0},
        description="Weight of each reward function by name: 'correct' (the world's check_answer), "
        "'polite', 'ended' (stopped at the end-of-turn token), 'length' (penalty past 24 tokens), or "
        "one registered with ftlab.rl.register_reward.",
    )


STAGE_KINDS = ["sft", "dpo", "grpo", "merge", "export", "eval"]
"""Stage kinds a config may name: the built-in ones and any registered later."""


def register_stage_kind(kind: str) -> None:
    """Accept ``kind`` as a stage kind in configs (:func:`ftlab.pipeline.register_stage`
    calls this)."""
    if kind not in STAGE_KINDS:
        STAGE_KINDS.append(kind)


def _known_stage_kind(kind: str) -> str:
    """Reject kinds no stage is registered for, with a did-you-mean."""
    if kind not in STAGE_KINDS:
        close = difflib.get_close_matches(kind, STAGE_KINDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown stage kind; known kinds: {', '.join(STAGE_KINDS)}{hint}")
    return kind


class StageConfig(_Section):
    """One step of a pipeline; sections left out use their defaults."""

    kind: Annotated[str, AfterValidator(_known_stage_kind)] = Field(
        description="What the stage does: sft, dpo, grpo, merge, export or eval (or a kind registered "
        "with ftlab.pipeline.register_stage).",
    )
    name: str | None = Field(
        None,
        min_length=1,
        description="Unique stage name, used for its folder in the run directory; defaults to `kind`.",
    )
    backend: Literal["ftlab", "trl"] = Field(
        "ftlab",
        description="'ftlab': the course's own loop; 'trl': the same stage through TRL trainers.",
    )
    data: DataConfig | None = Field(None, description="Training data (sft, dpo; grpo: its prompt file).")
    lora: LoRAConfig | None = Field(None, description="Adapters (sft, dpo, grpo).")
    quant: QuantConfig | None = Field(None, description="4-bit base (sft, dpo, grpo).")
    train: TrainConfig | None = Field(None, description="Training loop (sft, dpo, grpo).")
    eval: EvalConfig | None = Field(None, description="Evaluation (eval).")
    export: ExportConfig | None = Field(None, description="Merge and export (merge, export).")
    dpo: DPOConfig | None = Field(None, description="Preference loss (dpo).")
    grpo: GRPOConfig | None = Field(None, description="Rewards and sampling (grpo).")

    @model_validator(mode="after")
    def _default_name(self) -> StageConfig:
        """A stage without a name is named after its kind."""
        if self.name is None:
            self.name = self.kind
        return self


class PipelineConfig(_Section):
    """A whole run: a base model and stages executed in order into ``run_dir``."""

    run_dir: Path = Field(
        Path("runs/latest"),
        description="Output folder of the run, relative to the current directory; created if missing.",
    )
    seed: int = Field(0, ge=0, description="Global seed of the run (Python, NumPy, torch).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    stages: list[StageConfig] = Field(
        min_length=1,
        description="Stages run in order, e.g. sft -> dpo -> grpo -> merge -> export.",
    )

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        """Stage names are unique; the error points at the second use."""
        first_use: dict[str, int] = {}
        for index, stage in enumerate(stages):
            if stage.name in first_use:
                raise PydanticCustomError(
                    "duplicate_stage_name",
                    "duplicate stage name '{name}' (stage {first} has it too); give each stage a unique 'name'",
                    {"name": stage.name, "first": first_use[stage.name], "loc_suffix": (index, "name")},
                )
            first_use[stage.name] = index
        return stages


# ---------------------------------------------------------------------------------------
# YAML in and out
# ---------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], model: type[M] = PipelineConfig) -> M:
    """Read the YAML file at ``path`` and validate it as ``model``.

    Data paths in the file are resolved against the file's folder. Raises
    :class:`ConfigError` for a missing or unreadable file, a YAML syntax error, an empty
    file, a top level that is not a mapping, and every validation problem (one line
    each: ``<file>:<line>: <dotted.field>: <what is wrong> (got <value>)[; hint]``).
    """
    path = Path(path)
    text = _read_text(path)
    data = _parse_mapping(text, path, model)
    try:
        return model.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path, text, model, data)) from None


def save_config(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML to ``path`` (parents created) and return the path.

    Every field is written, defaults included, so the file documents the values used.
    Data paths are written relative to the file's folder, so ``load_config`` of the
    written file returns a config equal to ``config``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json", context={"base_dir": path.resolve().parent})
    header = f"# ftlab {type(config).__name__}, written by ftlab.config.save_config (all defaults spelled out)\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _read_text(path: Path) -> str:
    """The file's UTF-8 text, or a one-line ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the path of a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (looked for {path.resolve()})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file as UTF-8 text ({exc})") from None


def _parse_mapping(text: str, path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """Parse ``text`` with ``yaml.safe_load``; it must be a non-empty mapping."""
    keys = ", ".join(model.model_fields)
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), ())
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}; check indentation, colons and quotes") from None
    if duplicates:
        raise ConfigError("\n".join(
            f"{path}:{second}: {field}: duplicate key (first given at line {first}); YAML keeps "
            "only the last, so the first would be silently ignored: give each key once"
            for field, first, second in duplicates))
    if data is None:
        raise ConfigError(f"{path}: config file is empty; expected a mapping with keys {keys}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: top level must be a mapping of keys ({keys}) (got a {type(data).__name__})"
        )
    return data


def _duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...]) -> list[tuple[str, int, int]]:
    """``(dotted field, first line, repeated line)`` of every key given twice in one mapping
    of the YAML tree under ``node`` (1-based lines)."""
    found = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            line, name = key.start_mark.line + 1, str(key.value)
            if name in first:
                found.append((".".join(map(str, (*loc, name))), first[name], line))
            first.setdefault(name, line)
            found += _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, index))
    return found


def config_line(path: str | os.PathLike[str], loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key (or list item) of ``loc`` in the YAML file at
    ``path`` (``("stages", 2, "export")``), or None when the file cannot be parsed."""
    try:
        return _line_of(yaml.compose(Path(path).read_text(encoding="utf-8"),
                                     Loader=yaml.SafeLoader), loc)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


# ---------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------


def _format_errors(exc: ValidationError, path: Path, text: str, model: type[BaseModel], data: Any) -> str:
    """One line per problem in ``exc``, ordered by line in the file."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    problems = [_problem(err, path, root, model, data) for err in exc.errors()]
    problems.sort(key=lambda problem: problem[0] or 0)
    return "\n".join(line for _, line in problems)


def _problem(
    err: ErrorDetails, path: Path, root: yaml.Node, model: type[BaseModel], data: Any
) -> tuple[int | None, str]:
    """``(line, message line)`` for one pydantic error."""
    loc = (*err["loc"], *err.get("ctx", {}).get("loc_suffix", ()))
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    field = ".".join(map(str, loc))
    hint = _hint_for(err, loc, model)
    parts = [where, field, f"{_what(err)}{_got(err, loc, data)}"]
    return line, ": ".join(p for p in parts if p) + (f"; {hint}" if hint else "")


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key (or list item) of ``loc`` present in the YAML tree."""
    node, line = root, None
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return line


def _child(node: yaml.Node | None, part: Any) -> tuple[int, yaml.Node] | None:
    """``(line, value node)`` of mapping key ``part`` or sequence item ``part`` of ``node``."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return key.start_mark.line + 1, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


def _what(err: ErrorDetails) -> str:
    """What is wrong, in words."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "missing required key"
    return err["msg"].removeprefix("Value error, ")


def _got(err: ErrorDetails, loc: tuple[Any, ...], data: Any) -> str:
    """`` (got <value>)`` for scalar and flat-list values; empty for mappings and missing keys."""
    if err["type"] == "missing":
        return ""
    value = _lookup(data, loc, default=err["input"])
    nested = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict | list) for v in value))
    if nested:
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _lookup(data: Any, loc: tuple[Any, ...], default: Any) -> Any:
    """The raw value at ``loc`` in ``data``, or ``default`` when it is not there."""
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return default
    return data


def _hint_for(err: ErrorDetails, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """Did-you-mean for unknown keys and literal values, plus the field's own hint."""
    if err["type"] == "extra_forbidden":
        return _suggest_key(str(loc[-1]), _walk(model, loc[:-1])[0])
    _, field = _walk(model, loc)
    if field is None:
        return ""
    hints = []
    if err["type"] == "literal_error":
        choices = _literal_choices(field.annotation)
        close = difflib.get_close_matches(str(err["input"]), choices, n=1) if len(choices) > 1 else []
        hints += [f"did you mean '{close[0]}'?"] if close else []
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    hints.append(str(extra.get("hint", "")))
    return "; ".join(h for h in hints if h)


_ECOSYSTEM_NAMES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_ratio",
    "eval_steps": "eval_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_last",
    "optim": "optimizer",
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "max_seq_length": "max_length",
    "model_name": "name_or_path",
    "torch_dtype": "dtype",
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "bnb_4bit_compute_dtype": "compute_dtype",
    "load_in_4bit": "enabled",
}
"""transformers / PEFT / TRL / bitsandbytes spellings of ftlab keys, for did-you-mean hints."""


def _suggest_key(key: str, parent: type[BaseModel] | None) -> str:
    """A did-you-mean for unknown ``key`` among ``parent``'s fields, else the valid keys."""
    keys = list(parent.model_fields) if parent else []
    known = _ECOSYSTEM_NAMES.get(key)
    close = [known] if known in keys else difflib.get_close_matches(key, keys, n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(keys)}"


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model reached by following ``loc`` from ``model``, and the last field on the way."""
    current: type[BaseModel] | None = model
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None, None
        field = current.model_fields[part]
        current = _inner_model(field.annotation)
    return current, field


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation such as ``list[X]`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _literal_choices(annotation: Any) -> list[str]:
    """Every ``Literal`` value inside ``annotation``, as strings."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return [choice for arg in get_args(annotation) for choice in _literal_choices(arg)]


# ---------------------------------------------------------------------------------------
# Documentation
# ---------------------------------------------------------------------------------------


def defaults_table() -> str:
    """Markdown table of every config key, generated from the models.

    One row per key, named by its YAML path from the top of a run config (for example
    ``stages[].train.lr``), with its type and constraints, default (as YAML/JSON) and
    description. Sections appear as their own row followed by their fields.
    """
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += _rows(PipelineConfig, prefix="")
    return "\n".join(rows) + "\n"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    """Table rows for ``model``'s fields and, recursively, their sections."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        cells = [f"`{key}`", _type_cell(field), _default_cell(field), field.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        section = _inner_model(field.annotation)
        if section is not None:
            rows += _rows(section, prefix=f"{key}[]." if _is_list(field.annotation) else f"{key}.")
    return rows


def _is_list(annotation: Any) -> bool:
    """Whether ``annotation`` is ``list[...]`` or ``list[...] | None``."""
    return list in (get_origin(annotation), *map(get_origin, get_args(annotation)))


def _type_cell(field: FieldInfo) -> str:
    """The field's type followed by its numeric and length constraints."""
    constraints = [_constraint(m) for m in field.metadata]
    return ", ".join([_type_name(field.annotation), *(c for c in constraints if c)])


_CONSTRAINT_FORMS = {
    annotated_types.Gt: ("gt", "> {}"),
    annotated_types.Ge: ("ge", ">= {}"),
    annotated_types.Lt: ("lt", "< {}"),
    annotated_types.Le: ("le", "<= {}"),
    annotated_types.MinLen: ("min_length", "length >= {}"),
}


def _constraint(metadata: Any) -> str:
    """A constraint such as ``>= 1`` in words; empty for validators and other metadata."""
    form = _CONSTRAINT_FORMS.get(type(metadata))
    return form[1].format(getattr(metadata, form[0])) if form else ""


def _type_name(annotation: Any) -> str:
    """A short readable name of a type annotation (``int | null``, ``'a' | 'b'``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if args:
        return " | ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _default_cell(field: FieldInfo) -> str:
    """The default as YAML/JSON text, ``required``, or a pointer to the section's rows."""
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "section defaults below"
    return f"`{json.dumps(to_jsonable_python(default))}`"
