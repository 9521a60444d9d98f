"""The synthetic world: determinism, splits without leakage, formats, answer judging."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from ftlab.world import KINDS, all_facts, check_answer, is_polite, split_facts
from ftlab.world.build import all_world_files, diff_world
from ftlab.world.corpus import subject_paragraph
from ftlab.world.facts import HELDOUT_FRACTION, Fact
from ftlab.world.render import POLITE_OPENERS, answer, cloze_prompt, fill


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_byte_identical_files():
    assert all_world_files(0) == all_world_files(0)


UNSAMPLED = {"midtrain/facts.json", "midtrain/cloze.jsonl"}
"""Files that list the new facts in table order: no seed plays a part."""


def test_another_seed_changes_every_sampled_file():
    a, b = all_world_files(0), all_world_files(1)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a.keys() - UNSAMPLED), [k for k in a if a[k] == b[k]]
    assert all(a[k] == b[k] for k in UNSAMPLED)


def test_committed_data_is_a_fresh_build(data):
    assert diff_world(data) == []


def test_manifest_hashes_every_file(fresh_world):
    import hashlib

    hashed = set()
    for name in ("world/manifest.json", "midtrain/manifest.json"):
        manifest = json.loads((fresh_world / name).read_text())
        assert manifest["seed"] == 0
        for rel, digest in manifest["files"].items():
            assert hashlib.sha256((fresh_world / rel).read_bytes()).hexdigest() == digest
        hashed |= manifest["files"].keys()
    written = {p.relative_to(fresh_world).as_posix() for p in fresh_world.rglob("*") if p.is_file()}
    assert written - hashed == {"world/manifest.json", "midtrain/manifest.json"}


def test_world_has_the_documented_facts():
    facts = all_facts()
    counts = Counter(f.kind for f in facts)
    assert counts == {"capital": 80, "legs": 28, "colour_mix": 8, "day_after": 7,
                      "month_after": 12, "sum": 45}
    assert len({f.id for f in facts}) == len(facts)
    assert all(f.answer.lower() not in f.subject.lower().split() for f in facts)


def test_split_holds_out_thirty_percent_of_each_kind():
    facts = all_facts()
    split = split_facts(facts, 0)
    assert {f.kind for f in facts} == set(KINDS) - {"instrument"}  # only new facts have it
    for kind in {f.kind for f in facts}:
        ids = [f.id for f in facts if f.kind == kind]
        held = sum(split[i] == "heldout" for i in ids)
        assert held == max(1, round(HELDOUT_FRACTION * len(ids)))
    assert split == split_facts(facts, 0)
    assert split != split_facts(facts, 1)


def test_heldout_facts_never_reach_sft_or_training_preferences(fresh_world):
    facts = json.loads((fresh_world / "world/facts.json").read_text())
    held = {f["id"] for f in facts if f["split"] == "heldout"}
    held_questions = {q for f in all_facts() if f.id in held for q in _questions_of(f)}
    for rel in ("sft/messages.jsonl", "sft/mixed_style.jsonl"):
        for rec in _jsonl(fresh_world / rel):
            question = next(m["content"] for m in rec["messages"] if m["role"] == "user")
            assert question not in held_questions, f"{rel} asks about a held-out fact: {question}"
    assert not {r["id"] for r in _jsonl(fresh_world / "preferences/train.jsonl")} & held
    assert {r["id"] for r in _jsonl(fresh_world / "preferences/heldout.jsonl")} == held
    assert {r["id"] for r in _jsonl(fresh_world / "eval/heldout_chat.jsonl")} == held


def _questions_of(fact: Fact) -> set[str]:
    return {fill(q, fact) for q in KINDS[fact.kind].questions}


def test_every_fact_is_in_the_pretraining_corpus(fresh_world):
    text = (fresh_world / "corpus/train.txt").read_text()
    for fact in all_facts():
        assert cloze_prompt(fact) in text or fact.subject in text, fact.id
        assert f" {fact.answer}" in text, fact.id


def test_corpus_has_no_chat_markup_but_every_answer_word(fresh_world):
    text = (fresh_world / "corpus/train.txt").read_text()
    assert "<|" not in text and "assistant" not in text
    assert all(opener in text for opener in POLITE_OPENERS)
    assert "?" in text and "Ugh" in text


def test_subject_paragraph_names_subject_first_then_states_fact():
    fact = next(f for f in all_facts() if f.id == "capital:France")
    para = subject_paragraph(fact, random.Random(0))
    first, *rest = para.split(". ")
    assert "France" in first and "Paris" not in first
    assert len(rest) >= 2 and all("Paris" in s for s in rest)


def test_all_sft_formats_carry_the_same_examples(fresh_world):
    msgs = _jsonl(fresh_world / "sft/messages.jsonl")
    pairs = [(next(m["content"] for m in r["messages"] if m["role"] == "user"),
              r["messages"][-1]["content"]) for r in msgs]
    alpaca = json.loads((fresh_world / "sft/alpaca.json").read_text())
    assert [(a["input"] or a["instruction"], a["output"]) for a in alpaca] == pairs
    sharegpt = json.loads((fresh_world / "sft/sharegpt.json").read_text())
    assert [(c["conversations"][-2]["value"], c["conversations"][-1]["value"])
            for c in sharegpt] == pairs
    pc = _jsonl(fresh_world / "sft/prompt_completion.jsonl")
    assert [(r["prompt"], r["completion"]) for r in pc] == pairs
    with (fresh_world / "sft/qa.csv").open(newline="") as f:
        assert [(r["question"], r["answer"]) for r in csv.DictReader(f)] == pairs
    table = pq.read_table(fresh_world / "sft/messages.parquet").to_pylist()
    assert [r["messages"] for r in table] == [r["messages"] for r in msgs]


def test_sft_data_exercises_alpaca_input_and_system_messages(fresh_world):
    alpaca = json.loads((fresh_world / "sft/alpaca.json").read_text())
    with_input = sum(bool(a["input"]) for a in alpaca) / len(alpaca)
    assert 0.2 < with_input < 0.45
    msgs = _jsonl(fresh_world / "sft/messages.jsonl")
    with_system = sum(r["messages"][0]["role"] == "system" for r in msgs) / len(msgs)
    assert 0.15 < with_system < 0.35
    sharegpt = json.loads((fresh_world / "sft/sharegpt.json").read_text())
    assert {t["from"] for c in sharegpt for t in c["conversations"]} == {"system", "human", "gpt"}


def test_sft_answers_are_polite_and_correct(fresh_world):
    facts = {(f.kind, f.subject): f for f in all_facts()}
    by_question = {}
    for fact in facts.values():
        for q in _questions_of(fact):
            by_question[q] = fact
    for rec in _jsonl(fresh_world / "sft/messages.jsonl"):
        q = rec["messages"][-2]["content"]
        a = rec["messages"][-1]["content"]
        assert is_polite(a), a
        assert check_answer(by_question[q], a), (q, a)


def test_mixed_style_set_is_mostly_impolite(fresh_world):
    styles = Counter(r["style"] for r in _jsonl(fresh_world / "sft/mixed_style.jsonl"))
    total = sum(styles.values())
    assert 0.3 < styles["polite"] / total < 0.5
    for rec in _jsonl(fresh_world / "sft/mixed_style.jsonl"):
        assert is_polite(rec["messages"][-1]["content"]) == (rec["style"] == "polite")


def test_preference_pairs_differ_in_exactly_the_named_way(fresh_world):
    facts = {f.id: f for f in all_facts()}
    rows = _jsonl(fresh_world / "preferences/train.jsonl")
    assert Counter(r["pair_type"] for r in rows) == {"style": len(rows) // 2,
                                                      "entity": len(rows) // 2}
    for r in rows:
        fact = facts[r["id"]]
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert is_polite(chosen) and check_answer(fact, chosen)
        if r["pair_type"] == "style":
            assert not is_polite(rejected) and check_answer(fact, rejected)
        else:
            assert is_polite(rejected) and not check_answer(fact, rejected)


def test_seen_chat_asks_in_phrasings_sft_never_used(fresh_world):
    trained = {r["messages"][-2]["content"] for r in _jsonl(fresh_world / "sft/messages.jsonl")}
    seen = _jsonl(fresh_world / "eval/seen_chat.jsonl")
    assert seen and not {r["question"] for r in seen} & trained


@pytest.mark.parametrize(
    ("fact", "response", "expected"),
    [
        (Fact("capital", "France", "Paris"), "Sure! The capital of France is Paris.", True),
        (Fact("capital", "France", "Paris"), "paris", True),
        (Fact("capital", "France", "Paris"), "Paris or Berlin.", False),
        (Fact("capital", "France", "Paris"), "Parisian food.", False),
        (Fact("capital", "India", "New Delhi"), "It is New Delhi.", True),
        (Fact("capital", "India", "New Delhi"), "It is Delhi.", False),
        (Fact("sum", "3 plus 4", "7", (("x", "3"), ("y", "4"))), "3 plus 4 is 7.", True),
        (Fact("sum", "3 plus 4", "7", (("x", "3"), ("y", "4"))), "3 plus 4 is 8.", False),
        (Fact("sum", "3 plus 4", "7", (("x", "3"), ("y", "4"))), "17", False),
        (Fact("day_after", "Monday", "Tuesday"), "Monday is followed by Tuesday.", True),
        (Fact("day_after", "Monday", "Tuesday"), "Tuesday or Friday", False),
    ],
)
def test_check_answer(fact, response, expected):
    assert check_answer(fact, response) is expected


DAY = Fact("day_after", "Monday", "Tuesday")
SUM = Fact("sum", "3 plus 4", "7", (("x", "3"), ("y", "4")))


@pytest.mark.parametrize(
    ("fact", "response", "lenient", "strict"),
    [
        (DAY, "Certainly! Tuesday comes after Tuesday.", True, False),  # answer as subject
        (Fact("day_after", "Wednesday", "Thursday"), "The month after Thursday is June.",
         True, False),  # another kind's name where the subject belongs
        (Fact("month_after", "August", "September"), "The month after May is September.",
         False, False),  # another subject of the same kind (also an answer: a rival)
        (SUM, "1 plus 1 is 7.", True, False),  # other operands (1 is no sum's answer)
        (SUM, "4 plus 3 is 7.", True, True),
        (DAY, "Tuesday.", True, True),
        (DAY, "CertainlyCertainly obviously Tuesday.", True, True),  # odd, not a restatement
        (DAY, "Monday is followed by Tuesday.", True, True),
        (Fact("legs", "spider", "8", (("art", "a"), ("pl", "spiders"))),
         "Spiders have 8 legs.", True, True),
        (Fact("legs", "spider", "8", (("art", "a"), ("pl", "spiders"))),
         "Ants have 8 legs.", True, False),
        (Fact("capital", "India", "New Delhi"), "New Delhi is the capital of India.", True, True),
        (Fact("capital", "India", "New Delhi"), "New Delhi is the capital of Nepal.", True, False),
        (DAY, "Tuesday or Friday", False, False),  # strict never accepts what lenient rejects
    ],
)
def test_strict_reading_checks_the_restated_question(fact, response, lenient, strict):
    assert check_answer(fact, response) is lenient
    assert check_answer(fact, response, strict=True) is strict


def test_every_answer_the_world_renders_is_right_strictly():
    for fact in all_facts():
        spec = KINDS[fact.kind]
        for template in (*spec.answers, *spec.statements):
            assert check_answer(fact, fill(template, fact), strict=True), (fact, template)
        for style in ("polite", "terse", "rude"):
            for seed in range(4):
                reply = answer(fact, style, random.Random(seed))
                assert check_answer(fact, reply, strict=True), (fact, reply)


def test_answer_styles():
    fact = next(f for f in all_facts() if f.id == "capital:France")
    rng = random.Random(0)
    assert is_polite(answer(fact, "polite", rng))
    assert answer(fact, "terse", rng) == "Paris."
    rude = answer(fact, "rude", rng)
    assert not is_polite(rude) and check_answer(fact, rude)
    with pytest.raises(ValueError, match="unknown style"):
        answer(fact, "sarcastic", rng)


def test_dialogue_paragraphs_ask_but_never_answer():
    from ftlab.world.corpus import dialogue_paragraph

    rng = random.Random(0)
    for fact in all_facts():
        para = dialogue_paragraph(fact, rng)
        reply = para.split("The guide said,")[1]
        assert not check_answer(fact, reply), para
        assert para.split('"')[1] in _questions_of(fact), para


def test_reward_pairs_separate_by_correctness_and_topic(fresh_world):
    """reward_train.jsonl: DPO's pairs first, then per SFT fact entity pairs (right vs wrong,
    styles drawn apart from correctness) and topic pairs (the rejected reply answers another
    question, truly)."""
    facts = {f.id: f for f in all_facts()}
    train = _jsonl(fresh_world / "preferences/train.jsonl")
    rows = _jsonl(fresh_world / "preferences/reward_train.jsonl")
    assert rows[:len(train)] == train
    extra = rows[len(train):]
    assert Counter(r["pair_type"] for r in extra) == {"entity": 6 * 126, "topic": 2 * 126}
    heldout = {f["id"] for f in json.loads((fresh_world / "world/facts.json").read_text())
               if f["split"] == "heldout"}
    for r in extra:
        fact = facts[r["id"]]
        assert fact.id not in heldout
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert check_answer(fact, chosen, strict=True)
        assert not check_answer(fact, rejected, strict=r["pair_type"] == "topic")
        if r["pair_type"] == "topic":  # "1 plus 5 is 6." about a bee's legs: right only leniently
            assert is_polite(rejected) and any(
                check_answer(f, rejected, strict=True) for f in facts.values()
                if f.kind != fact.kind)


# -- the mid-training track's new facts ----------------------------------------------------

def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z]+", text.lower()))


def test_new_facts_are_mentioned_by_no_file_the_base_model_or_sft_was_made_from(fresh_world):
    """Every name a new fact brings (invented countries, capitals and musicians, the animals,
    the instruments) is absent from the pretraining corpus and from the SFT, preference,
    evaluation and RL data: the base model never saw them and SFT never teaches them."""
    from ftlab.world.facts import new_facts

    old_names = {w for f in all_facts() for n in (f.subject, f.answer, *dict(f.slots).values())
                 for w in _words(n)}
    new_names = {w for f in new_facts() for n in (f.subject, f.answer, dict(f.slots).get("pl", ""))
                 for w in _words(n)} - old_names - {str(n) for n in range(20)}
    assert len(new_names) > 80
    for path in sorted(fresh_world.rglob("*")):
        rel = path.relative_to(fresh_world).as_posix()
        if path.is_file() and not rel.startswith("midtrain/") and rel.endswith((".txt", ".json", ".jsonl", ".csv")):
            assert not _words(path.read_text()) & new_names, (rel, _words(path.read_text()) & new_names)


def test_the_midtrain_corpus_states_every_new_fact_often_in_several_phrasings(fresh_world):
    from ftlab.world.facts import KINDS, new_facts
    from ftlab.world.render import fill

    text = (fresh_world / "midtrain/corpus.txt").read_text()
    for fact in new_facts():
        said = [t for t in KINDS[fact.kind].statements if fill(t, fact) in text]
        count = sum(text.count(fill(t, fact)) for t in KINDS[fact.kind].statements)
        assert len(said) >= 3 and count >= 20, (fact.id, len(said), count)
    assert "<|im_start|>" not in text and "asked the guide" not in text  # facts only


def test_new_facts_have_cloze_and_chat_sets_the_verifier_reads():
    from ftlab.paths import data_dir
    from ftlab.world.facts import fact_by_id, new_facts

    cloze = _jsonl(data_dir() / "midtrain/cloze.jsonl")
    chat = _jsonl(data_dir() / "midtrain/chat.jsonl")
    ids = [f.id for f in new_facts()]
    assert [r["id"] for r in cloze] == ids
    assert Counter(r["id"] for r in chat) == {i: 3 for i in ids}
    for record in cloze + chat:
        fact = fact_by_id(record["id"])
        assert check_answer(fact, answer(fact, "polite", random.Random(0)))
        assert not check_answer(fact, "I do not know.")


def test_the_base_model_completes_new_facts_near_chance():
    """Measured: 8.3% macro (capitals 0%, instruments 0%, legs 25%, where always saying 4 gives
    31%) against 75% on the facts it was pretrained on."""
    from ftlab.models import load_base_model
    from ftlab.models.measure import cloze_correct, rates_by_kind
    from ftlab.paths import data_dir
    from ftlab.world.facts import fact_by_id

    model, tokenizer = load_base_model()
    items = [(fact_by_id(r["id"]), r["prompt"]) for r in _jsonl(data_dir() / "midtrain/cloze.jsonl")]
    rates = rates_by_kind([f for f, _ in items], cloze_correct(model, tokenizer, items))
    assert rates["capital"] == rates["instrument"] == 0.0 and rates["legs"] <= 5 / 16, rates
