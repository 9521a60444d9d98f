"""Hugging Face export (given): a merged model folder other tools load as is.

:func:`export_hf` writes a standard transformers folder — ``model.safetensors``,
``config.json``, the tokenizer with its chat template, ``generation_config.json`` whose
EOS is the end-of-turn token (so ``generate`` and ``pipeline`` stop where the fine-tune
learned to stop), and a model card ``README.md`` with metrics and provenance.
:func:`verify_hf_export` loads the folder back through ``AutoModelForCausalLM``,
``AutoTokenizer`` and ``pipeline("text-generation")`` and compares it with the model it came
from.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                          PreTrainedTokenizerBase, pipeline)

from ftlab.errors import ArtifactError
from ftlab.lora import lora_layers
from ftlab.models.measure import chat_prompt, chat_reply, greedy_complete

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
END_OF_TURN = "<|im_end|>"


def _check_exportable(model: nn.Module) -> None:
    if lora_layers(model) or hasattr(model, "peft_config"):
        raise ArtifactError("the model still has LoRA adapters: merge them first "
                            "(ftlab.lora.merge_lora, or PEFT's merge_and_unload), or export "
                            "the adapter alone with ftlab.lora.save_adapter")
    if not hasattr(model, "save_pretrained"):
        raise ArtifactError(f"{type(model).__name__} is not a transformers model; only "
                            "PreTrainedModel instances can be exported as a HF folder")


def model_card(base_model: str, metrics: dict[str, float] | None,
               provenance: dict | None, baseline: dict[str, float] | None = None) -> str:
    """Model card text, built with ``huggingface_hub``'s ``ModelCard``: metadata
    (``library_name``, ``base_model``, tags, and each metric as a model-index evaluation
    result), usage, a metrics table (beside the base model's value when ``baseline`` has
    it) and the provenance as JSON."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = metrics or {}
    baseline = baseline or {}
    results = [EvalResult(task_type="text-generation", dataset_type="ftlab-evaluation",
                          dataset_name="ftlab evaluation sets", metric_type=name,
                          metric_value=value)
               for name, value in metrics.items() if isinstance(value, int | float)]
    data = ModelCardData(base_model=base_model, library_name="transformers",
                         pipeline_tag="text-generation", tags=["ftlab", "lora", "merged"],
                         model_name=f"{Path(base_model).name} fine-tuned with ftlab",
                         eval_results=results or None)

    def value(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = "\n".join(f"| {k} | {value(baseline[k]) if k in baseline else ''} | {value(v)} |"
                     for k, v in metrics.items())
    body = f"""
# Fine-tuned from {base_model} with ftlab

LoRA adapters merged into the base weights in float32. Chat format: ChatML; every reply ends
with `{END_OF_TURN}`, which `generation_config.json` sets as the end-of-sequence token.

```python
from transformers import pipeline
chat = pipeline("text-generation", model="path/to/this/folder")
print(chat([{{"role": "user", "content": "What is the capital of France?"}}],
           max_new_tokens=32, do_sample=False)[0]["generated_text"][-1]["content"])
```

## Metrics

| metric | base model | this model |
|---|---|---|
{rows or "| (none recorded) | | |"}

## Provenance

```json
{json.dumps({"ftlab": version("ftlab"), "transformers": version("transformers"),
             **(provenance or {})}, indent=2, default=str)}
```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def export_hf(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path | str, *,
              base_model: str = "ftlab embedded base model", dtype: str = "float32",
              metrics: dict[str, float] | None = None, provenance: dict | None = None,
              baseline: dict[str, float] | None = None) -> Path:
    """Write a merged ``model`` and its ``tokenizer`` as a transformers folder.

    ``dtype``: the stored weight dtype (``float32``, ``bfloat16`` or ``float16``); the model
    passed in is not changed (a copy is cast). ``metrics`` (and the base model's
    ``baseline`` values of the same names) go into the model card. Raises :class:`ArtifactError` for a model
    with adapters (merge first) or one that is not a transformers model.
    """
    _check_exportable(model)
    if dtype not in DTYPES:
        raise ArtifactError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = copy.deepcopy(model).to(DTYPES[dtype]).eval()
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    before = getattr(model, "generation_config", None)
    before = getattr(before, "eos_token_id", None)
    before = before if isinstance(before, list) else [before] if before is not None else []
    eos = [end] + [t for t in before if t != end]  # the end of turn first, the model's own after
    out.config.eos_token_id = end
    out.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=getattr(model.config, "bos_token_id", None), do_sample=False)
    out.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(base_model, metrics, provenance, baseline))
    return folder


@dataclass(frozen=True)
class ExportCheck:
    """How a loaded export compares with the model it came from."""

    max_logit_diff: float
    replies: list[str]
    """Replies of ``pipeline("text-generation")`` on the loaded folder."""
    reference_replies: list[str]
    """Greedy replies of the reference model."""

    @property
    def same_replies(self) -> bool:
        return self.replies == self.reference_replies


def verify_hf_export(folder: Path | str, reference: nn.Module,
                     tokenizer: PreTrainedTokenizerBase, questions: list[str],
                     max_new_tokens: int = 32) -> ExportCheck:
    """Load ``folder`` offline as a user would and compare it with ``reference``.

    Logits: both models on the chat prompts of ``questions``, max |difference| (float32).
    Replies: ``pipeline("text-generation")`` on the folder (greedy, its own generation config)
    against :func:`~ftlab.models.measure.greedy_complete` on the reference, each cut at the
    end-of-turn token.
    """
    folder = Path(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    loaded_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    prompts = [chat_prompt(tokenizer, q) for q in questions]
    diff = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            want = reference(input_ids=ids).logits.float()
            got = loaded(input_ids=ids).logits.float()
            diff = max(diff, float((got - want).abs().max()))
    chat = pipeline("text-generation", model=loaded, tokenizer=loaded_tok)
    replies = [chat([{"role": "user", "content": q}], max_new_tokens=max_new_tokens,
                    do_sample=False)[0]["generated_text"][-1]["content"] for q in questions]
    reference_replies = [chat_reply(t) for t in
                         greedy_complete(reference, tokenizer, prompts, max_new_tokens)]
    return ExportCheck(diff, replies, reference_replies)
