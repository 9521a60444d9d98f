"""Instruction data, preference pairs and evaluation sets made from the world's facts.

Records are plain dicts, ready to be written by :mod:`ftlab.world.build` in every format
milestone 1 ingests. Only SFT-split facts reach SFT and training preference data; held-out
facts reach only the held-out evaluation sets.
"""

from __future__ import annotations

import random

from ftlab.world.facts import KINDS, Fact
from ftlab.world.render import answer, cloze_prompt, fill

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly assistant who answers questions about the world.",
)
SYSTEM_SHARE = 0.25
"""Share of SFT examples that carry a system message."""
SFT_QUESTIONS_PER_FACT = 3
HELDOUT_QUESTIONS_PER_FACT = 3
RL_PROMPTS_PER_KIND = 36
"""Reinforcement-learning prompts per fact kind (data/rl/prompts.jsonl)."""
MIXED_STYLE_WEIGHTS = {"polite": 0.4, "terse": 0.3, "rude": 0.3}
"""Answer styles of the capstone's SFT set: mostly impolite, so DPO has something to shift."""


def _questions(fact: Fact, k: int, rng: random.Random, exclude: frozenset = frozenset()) -> list[str]:
    pool = [q for q in (fill(t, fact) for t in KINDS[fact.kind].questions) if q not in exclude]
    return rng.sample(pool, k)


def _record(fact: Fact, question: str, response: str, style: str, system: str | None) -> dict:
    return {
        "id": fact.id, "kind": fact.kind, "subject": fact.subject, "style": style,
        "system": system, "question": question, "response": response,
    }


def sft_examples(facts: list[Fact], rng: random.Random, styles: dict[str, float]) -> list[dict]:
    """``SFT_QUESTIONS_PER_FACT`` question/answer examples per fact, shuffled.

    ``styles`` maps answer style to its sampling weight. Returns records with keys id,
    kind, subject, style, system (None or a system prompt), question, response.
    """
    names, weights = list(styles), list(styles.values())
    out = []
    for fact in facts:
        for q in _questions(fact, SFT_QUESTIONS_PER_FACT, rng):
            style = rng.choices(names, weights)[0]
            system = rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else None
            out.append(_record(fact, q, answer(fact, style, rng), style, system))
    rng.shuffle(out)
    return out


def _wrong_value(fact: Fact, candidates: list[str], rng: random.Random) -> str:
    subject = fact.subject.lower().split()
    return rng.choice([c for c in candidates if c != fact.answer and c.lower() not in subject])


def preference_pairs(facts: list[Fact], all_facts: list[Fact], rng: random.Random) -> list[dict]:
    """Two questions per fact, each giving a style pair and an entity pair.

    style:  chosen polite and right, rejected terse or rude and right;
    entity: chosen polite and right, rejected polite and wrong (another answer of the kind).
    Records use TRL's conversational preference format plus pair_type, kind and subject.
    """
    answers_of = {k: sorted({f.answer for f in all_facts if f.kind == k}) for k in KINDS}
    out = []
    for fact in facts:
        for q in _questions(fact, 2, rng):
            chosen = answer(fact, "polite", rng)
            wrong = _wrong_value(fact, answers_of[fact.kind], rng)
            rejected = {
                "style": answer(fact, rng.choice(("terse", "rude")), rng),
                "entity": answer(fact, "polite", rng, value=wrong),
            }
            for pair_type, rej in rejected.items():
                out.append({
                    "prompt": [{"role": "user", "content": q}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rej}],
                    "pair_type": pair_type, "id": fact.id, "kind": fact.kind,
                    "subject": fact.subject,
                })
    return out


REWARD_ENTITY_PAIRS_PER_FACT = 6
"""Extra right-vs-wrong pairs per SFT fact in the reward-model training file."""
REWARD_TOPIC_PAIRS_PER_FACT = 2
"""Pairs per SFT fact in the reward-model training file whose rejected reply answers another
question (``pair_type`` ``topic``)."""


def reward_pairs(facts: list[Fact], all_facts: list[Fact], rng: random.Random,
                 per_fact: int = REWARD_ENTITY_PAIRS_PER_FACT,
                 off_topic: int = REWARD_TOPIC_PAIRS_PER_FACT) -> list[dict]:
    """Entity pairs for a reward model: ``per_fact`` questions per fact, each answered rightly
    and wrongly (another answer of the kind) in the *same* style (polite half of the time,
    else terse or rude), so only correctness tells the two apart. A reward model trained on
    :func:`preference_pairs` alone learns style at once but correctness on unseen facts
    barely (about 53% on held-out entity pairs); these pairs are what it learns truth from.
    Then ``off_topic`` pairs per fact (``pair_type`` ``topic``) whose rejected reply is a
    polite, true answer to *another* question (a fact of another kind): without them a
    policy optimised against the reward model learned to answer "What is the day after
    Monday?" with "Of course! The capital of Zambia is Lusaka.". Same record format as
    :func:`preference_pairs`."""
    answers_of = {k: sorted({f.answer for f in all_facts if f.kind == k}) for k in KINDS}
    out = []
    for fact in facts:
        for q in _questions(fact, per_fact, rng):
            style = rng.choice(("polite", "polite", "terse", "rude"))
            wrong = _wrong_value(fact, answers_of[fact.kind], rng)
            out.append({
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": answer(fact, style, rng)}],
                "rejected": [{"role": "assistant",
                              "content": answer(fact, style, rng, value=wrong)}],
                "pair_type": "entity", "id": fact.id, "kind": fact.kind,
                "subject": fact.subject,
            })
        for q in _questions(fact, off_topic, rng):
            other = rng.choice([f for f in all_facts if f.kind != fact.kind])
            out.append({
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": answer(fact, "polite", rng)}],
                "rejected": [{"role": "assistant", "content": answer(other, "polite", rng)}],
                "pair_type": "topic", "id": fact.id, "kind": fact.kind, "subject": fact.subject,
            })
    return out


def chat_eval(
    facts: list[Fact], per_fact: int, rng: random.Random, exclude: frozenset = frozenset()
) -> list[dict]:
    """``per_fact`` distinct questions per fact with the expected answer.

    Questions in ``exclude`` (e.g. the ones SFT trained on) are never asked.
    """
    return [
        {"id": f.id, "kind": f.kind, "subject": f.subject, "answer": f.answer, "question": q}
        for f in facts
        for q in _questions(f, per_fact, rng, exclude)
    ]


def cloze_eval(facts: list[Fact], split: dict[str, str]) -> list[dict]:
    """One plain-completion prompt per fact, tagged with its SFT split."""
    return [
        {"id": f.id, "kind": f.kind, "subject": f.subject, "answer": f.answer,
         "prompt": cloze_prompt(f), "split": split[f.id]}
        for f in facts
    ]


def rl_prompts(facts: list[Fact], exclude: frozenset, rng: random.Random,
               per_kind: int = RL_PROMPTS_PER_KIND) -> list[dict]:
    """Chat questions for reinforcement learning, ``per_kind`` of each kind: the phrasings
    of its facts that are not in ``exclude`` (the evaluation's questions), sampled when a
    kind has more and cycled when it has fewer, so every kind weighs the same (capitals
    would otherwise be more than half). Each carries the fact's id and kind — the fields
    the ``correct`` reward verifies. No answer is given: the model must find it."""
    out = []
    for kind in sorted({f.kind for f in facts}):
        pool = [{"question": q, "id": f.id, "kind": f.kind} for f in facts if f.kind == kind
                for q in (fill(t, f) for t in KINDS[kind].questions) if q not in exclude]
        rng.shuffle(pool)
        out += [pool[i % len(pool)] for i in range(per_kind)]
    rng.shuffle(out)
    return out
