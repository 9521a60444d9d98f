"""The committed base model: loads offline, verifies, reproduces its provenance."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from ftlab.models.build import measure_validation_loss
from ftlab.models.provenance import read_provenance, verify_files
from ftlab.models.verify import LOSS_TOLERANCE
from ftlab.paths import base_model_dir, data_dir


@pytest.fixture(scope="module")
def provenance():
    return read_provenance(base_model_dir())


def test_files_match_provenance_and_data(data):
    assert verify_files(base_model_dir(), data) == []


def test_is_a_tiny_llama_with_grouped_query_attention(base_model, provenance):
    model, tok = base_model
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    n = sum(p.numel() for p in model.parameters())
    assert 4e6 <= n <= 6e6 and n == provenance["parameters"]
    assert cfg.vocab_size == len(tok)
    assert cfg.tie_word_embeddings


def test_reproduces_recorded_validation_loss(base_model, provenance, data):
    model, tok = base_model
    loss = measure_validation_loss(model, tok, data, provenance["recipe"]["seq_len"])
    assert loss == pytest.approx(provenance["validation_loss"], rel=LOSS_TOLERANCE)


def test_provenance_meets_the_course_targets(provenance):
    assert provenance["cloze_accuracy_heldout"] >= 0.70, "base must know held-out facts"
    assert provenance["chat_exact_match_heldout"] <= 0.20, "SFT must have something to teach"
    assert provenance["chat_ends_at_end_of_turn"] <= 0.05
    assert provenance["tokens_seen"] == (provenance["steps"] * provenance["recipe"]["batch_size"]
                                         * provenance["recipe"]["seq_len"])
    curve = provenance["train_loss_curve"]
    assert curve[-1] < curve[0] / 3


def test_generation_stops_at_end_of_turn(base_model):
    model, tok = base_model
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    assert tok.convert_tokens_to_ids("<|endoftext|>") in eos
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_loads_offline_in_a_fresh_process_with_plain_from_pretrained():
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('The capital of France is', return_tensors='pt').input_ids\n"
        "print(m(ids).logits.shape[-1], len(t))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code, str(base_model_dir())], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    vocab, n_tok = out.stdout.split()
    assert vocab == n_tok


def test_corrupt_or_missing_files_are_reported(tmp_path, data):
    copy = tmp_path / "base_model"
    shutil.copytree(base_model_dir(), copy)
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    (copy / "tokenizer.json").unlink()
    problems = verify_files(copy, data)
    assert any("model.safetensors" in p and "sha256" in p for p in problems)
    assert any("tokenizer.json" in p and "missing" in p for p in problems)


def test_model_trained_on_another_corpus_or_world_is_reported(tmp_path, base_model):
    data = tmp_path / "data"
    shutil.copytree(data_dir(), data, ignore=shutil.ignore_patterns("base_model"))
    assert verify_files(base_model_dir(), data) == []
    (data / "rl/extra.jsonl").write_text("{}\n")  # a file the world gained later: no matter
    assert verify_files(base_model_dir(), data) == []
    (data / "corpus/train.txt").write_text("a different corpus\n")
    facts = data / "world/facts.json"
    facts.write_text(facts.read_text().replace('"heldout"', '"sft"', 1))
    problems = verify_files(base_model_dir(), data)
    assert len(problems) == 2
    assert "corpus/train.txt: not the file the model was trained on" in problems[0]
    assert "world/facts.json: not the world file the model was built with" in problems[1]


def test_weights_are_finite(base_model):
    model, _ = base_model
    assert all(torch.isfinite(p).all() for p in model.parameters())
