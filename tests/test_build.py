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


def test_a_student_takes_the_teachers_tokenizer_file_for_file(tiny_build, fresh_world, tmp_path):
    """``tokenizer_from``: the student is built with the given model's tokenizer, its files
    copied byte for byte, so both give logits over the same vocabulary."""
    from ftlab.models.load import TOKENIZER_FILES

    teacher, _ = tiny_build
    student = tmp_path / "student_model"
    prov = build_base_model(fresh_world, student, RECIPE.model_copy(update={"steps": 2}),
                            TINY.model_copy(update={"num_attention_heads": 2,
                                                    "num_key_value_heads": 1}),
                            progress=False, tokenizer_from=teacher)
    for name in TOKENIZER_FILES:
        assert (student / name).read_bytes() == (teacher / name).read_bytes(), name
    assert "tokenizer.json sha256" in prov["tokenizer"] and verify_files(student, fresh_world) == []
    assert AutoModelForCausalLM.from_pretrained(student).config.vocab_size == \
        AutoModelForCausalLM.from_pretrained(teacher).config.vocab_size


def test_the_committed_student_is_a_fifth_of_the_base_with_its_tokenizer(monkeypatch, tmp_path):
    """data/student_model verifies (hashes, world files, the base model's tokenizer files) and
    has at most a quarter of the base model's parameters; a changed tokenizer file is named."""
    import shutil

    from ftlab.files import sha256_file
    from ftlab.models import verify as verify_module
    from ftlab.paths import base_model_dir, student_model_dir

    assert verify_module.verify_base_model(preset="student", print_fn=lambda _: None) == []
    base = json.loads((base_model_dir() / PROVENANCE_FILE).read_text())
    student = json.loads((student_model_dir() / PROVENANCE_FILE).read_text())
    assert student["parameters"] <= base["parameters"] / 4 and student["vocab_size"] == base["vocab_size"]
    copy = tmp_path / "student_model"
    shutil.copytree(student_model_dir(), copy)
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"right"', '"left"'))
    recorded = json.loads((copy / PROVENANCE_FILE).read_text())  # its own hashes stay right:
    recorded["files"]["tokenizer_config.json"] = sha256_file(config)  # only the comparison sees it
    (copy / PROVENANCE_FILE).write_text(json.dumps(recorded))
    monkeypatch.setattr(verify_module, "student_model_dir", lambda: copy)
    problems = verify_module.verify_base_model(preset="student", print_fn=lambda _: None)
    assert problems == [f"{config}: not the base model's (the student's logits must index the "
                        "same vocabulary)"], problems
