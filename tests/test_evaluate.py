"""Evaluation as a user relies on it: perplexity equal to the training loop's and
transformers' losses, greedy answers equal to generate(), exact match through the shipped
evaluate module offline, paired bootstrap comparisons, general-text perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.data import collate, tokenize_with_labels
from ftlab.evaluate import (all_token_labels, answer_questions, compare, comparison_markdown,
                            evaluate_questions, general_perplexity, load_metric, perplexity)
from ftlab.evaluate.tasks import TaskResult
from ftlab.models.build import eval_items
from ftlab.models.measure import chat_prompt
from ftlab.models.provenance import read_provenance
from ftlab.paths import base_model_dir
from ftlab.train import validation_loss
from ftlab.world import all_facts

CONVERSATION = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Certainly! The capital of France is Paris."}]


@pytest.fixture(scope="module")
def batches(tokenizer):
    examples = [tokenize_with_labels(CONVERSATION, tokenizer, 64),
                tokenize_with_labels([{"role": "user", "content": "Hi?"},
                                      {"role": "assistant", "content": "Hello."}], tokenizer, 64)]
    return [collate(examples, tokenizer.pad_token_id), collate(examples[:1], tokenizer.pad_token_id)]


def test_perplexity_equals_the_training_loop_and_transformers(base_model, batches):
    model = base_model[0]
    ours = perplexity(model, batches)
    assert math.isclose(ours.loss, validation_loss(model, batches), rel_tol=1e-6)
    with torch.no_grad():  # one batch: transformers' mean over its tokens is the same thing
        hf = model(input_ids=batches[1]["input_ids"], labels=batches[1]["labels"]).loss
        hf_all = model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"],
                       labels=all_token_labels(batches[0])).loss
    assert math.isclose(perplexity(model, batches[1:]).loss, float(hf), rel_tol=1e-5)
    assert math.isclose(perplexity(model, batches[:1], response_only=False).loss, float(hf_all),
                        rel_tol=1e-5)


def test_answers_equal_generate_and_stop_at_the_end_of_turn(base_model, tokenizer):
    model = base_model[0]
    questions = ["What is the capital of France?", "What day comes after Monday?"]
    replies, ended = answer_questions(model, tokenizer, questions, max_new_tokens=12)
    tokenizer.padding_side = "left"
    enc = tokenizer([chat_prompt(tokenizer, q) for q in questions], return_tensors="pt",
                    padding=True, add_special_tokens=False)
    tokenizer.padding_side = "right"
    out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=3,
                         eos_token_id=[2])[:, enc.input_ids.shape[1]:]
    want = [tokenizer.decode([t for t in row if t not in (2, 3)], skip_special_tokens=True).strip()
            for row in out.tolist()]
    assert replies == want
    assert ended == [2 in row for row in out.tolist()]
    assert not any(r.startswith(q) or "<|im_start|>" in r for q, r in zip(questions, replies))


def test_local_metric_module_judges_like_check_answer():
    metric = load_metric("fact_exact_match")
    score = metric.compute(predictions=["Sure! The capital of France is Paris.", "Berlin or Paris",
                                        "It has 8 legs."],
                           references=["capital:France", "capital:France", "legs:spider"])
    assert score["fact_exact_match"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no local metric"):
        load_metric("accuracy")


def test_comparison_intervals_are_paired_and_seeded():
    facts = ([f for f in all_facts() if f.kind == "capital"][:20]
             + [f for f in all_facts() if f.kind == "legs"][:20])
    base = TaskResult(facts, [f.id for f in facts], [""] * 40, correct=[i % 4 == 0 for i in range(40)])
    tuned = TaskResult(facts, [f.id for f in facts], [""] * 40, correct=[i % 4 != 3 for i in range(40)])
    rows = compare(base, tuned, samples=500, seed=1)
    assert rows == compare(base, tuned, samples=500, seed=1)
    overall = rows[0]
    assert overall.kind == "all" and overall.n == 40
    assert overall.delta == pytest.approx(0.5) and overall.low <= 0.5 <= overall.high
    assert 0 < overall.high - overall.low < 0.5
    assert {r.kind for r in rows[2:]} == {"capital", "legs"}
    assert "| all | 40 | 25.0% | 75.0% | +50.0 |" in comparison_markdown(rows)


def test_the_macro_row_weighs_every_kind_the_same():
    """30 capitals all right and 10 legs all wrong: 75% over questions, 50% over kinds."""
    facts = ([f for f in all_facts() if f.kind == "capital"][:30]
             + [f for f in all_facts() if f.kind == "legs"][:10])
    base = TaskResult(facts, [f.id for f in facts], [""] * 40, correct=[False] * 40)
    tuned = TaskResult(facts, [f.id for f in facts], [""] * 40, correct=[i < 30 for i in range(40)])
    overall, macro = compare(base, tuned, samples=200, seed=0)[:2]
    assert overall.tuned == pytest.approx(0.75) and macro.kind == "macro over kinds"
    assert macro.tuned == pytest.approx(0.5) and macro.low == macro.high == pytest.approx(0.5)


def test_base_model_scores_match_its_provenance(base_model, tokenizer):
    model = base_model[0]
    prov = read_provenance(base_model_dir())
    assert general_perplexity(model, tokenizer) == pytest.approx(prov["validation_perplexity"],
                                                                 rel=0.01)
    items = eval_items(base_model_dir().parent)["chat_heldout"]
    result = evaluate_questions(model, tokenizer, items, max_new_tokens=24)
    assert result.rate("correct") == pytest.approx(prov["chat_exact_match_heldout"], abs=0.02)
