"""``ftlab base-model build`` on a tiny budget: loss falls, output loads, reruns are identical."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlab.models.architecture import ArchitectureConfig
from ftlab.models.build import build_base_model
from ftlab.models.provenance import PROVENANCE_FILE, verify_files
from ftlab.models.pretrain import PretrainRecipe

TINY = ArchitectureConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64)
RECIPE = PretrainRecipe(steps=24, batch_size=4, seq_len=64, warmup_steps=4, eval_every=12,
                        lr=1e-2)


@pytest.fixture(scope="module")
def tiny_build(fresh_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "base_model"
    prov = build_base_model(fresh_world, out, RECIPE, TINY, progress=False)
    return out, prov


def test_loss_falls(tiny_build):
    _, prov = tiny_build
    curve = prov["train_loss_curve"]
    assert curve[-1] < curve[0] - 1.0
    val = list(prov["validation_loss_by_step"].values())
    assert val[-1] < val[0]


def test_output_is_a_loadable_hf_folder_with_provenance(tiny_build, fresh_world):
    out, prov = tiny_build
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == TINY.hidden_size and len(tok) == model.config.vocab_size
    on_disk = json.loads((out / PROVENANCE_FILE).read_text())
    assert on_disk["steps"] == RECIPE.steps and on_disk["tokens_seen"] == 24 * 4 * 64
    for key in ("validation_perplexity", "cloze_accuracy_heldout", "chat_exact_match_heldout",
                "corpus_sha256", "wall_time_s"):
        assert key in on_disk
    assert verify_files(out, fresh_world) == []
    assert not list(out.parent.glob(".base_model-*")), "temporary build folder left behind"


def test_rebuild_is_bit_identical(tiny_build, fresh_world, tmp_path):
    out, _ = tiny_build
    again = tmp_path / "again"
    build_base_model(fresh_world, again, RECIPE, TINY, progress=False)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
