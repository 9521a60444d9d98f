"""The Hugging Face export as another tool sees it: a merged folder that AutoModelForCausalLM,
AutoTokenizer and pipeline("text-generation") load offline, answering like the unmerged model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ftlab.errors import ArtifactError
from ftlab.export.hf import export_hf, verify_hf_export
from ftlab.lora import find_target_modules, inject_lora, lora_layers, merge_lora

QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?",
             "What day comes after Monday?"]


@pytest.fixture(scope="module")
def tuned(base_model):
    """The embedded model with LoRA adapters whose B is non-zero (so merging matters)."""
    model = copy.deepcopy(base_model[0])
    torch.manual_seed(0)
    inject_lora(model, find_target_modules(model), r=8, alpha=16)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tuned, tokenizer, tmp_path_factory):
    merged = merge_lora(copy.deepcopy(tuned))
    folder = export_hf(merged, tokenizer, tmp_path_factory.mktemp("hf") / "model",
                       metrics={"heldout_exact_match": 0.5}, provenance={"steps": 3},
                       baseline={"heldout_exact_match": 0.1})
    return folder


def test_export_loads_offline_and_answers_like_the_unmerged_model(exported, tuned, tokenizer):
    check = verify_hf_export(exported, tuned, tokenizer, QUESTIONS)
    assert check.max_logit_diff < 1e-4, check.max_logit_diff
    assert check.same_replies, (check.replies, check.reference_replies)
    assert all(r.strip() for r in check.replies)


def test_export_has_the_files_a_user_expects(exported, tokenizer):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "README.md"} <= names
    generation = json.loads((exported / "generation_config.json").read_text())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation["eos_token_id"][0] == end and generation["do_sample"] is False
    assert json.loads((exported / "config.json").read_text())["eos_token_id"] == end
    template = (exported / "chat_template.jinja").read_text() if "chat_template.jinja" in names \
        else json.loads((exported / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in template
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("heldout_exact_match", 0.5)]
    assert "| heldout_exact_match | 0.1 | 0.5 |" in card.text and '"steps": 3' in card.text


def test_bf16_export_is_half_the_size(tuned, tokenizer, tmp_path):
    merged = merge_lora(copy.deepcopy(tuned))
    full = export_hf(merged, tokenizer, tmp_path / "f32")
    half = export_hf(merged, tokenizer, tmp_path / "bf16", dtype="bfloat16")
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.51
    assert next(merged.parameters()).dtype == torch.float32  # the model passed in is unchanged


def test_unmerged_or_foreign_models_are_refused(tuned, tokenizer, tmp_path):
    with pytest.raises(ArtifactError, match="merge them first"):
        export_hf(tuned, tokenizer, tmp_path)
    with pytest.raises(ArtifactError, match="not a transformers model"):
        export_hf(torch.nn.Linear(2, 2), tokenizer, tmp_path)
    with pytest.raises(ArtifactError, match="dtype"):
        export_hf(merge_lora(copy.deepcopy(tuned)), tokenizer, tmp_path, dtype="int8")
