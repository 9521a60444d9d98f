"""The pretraining corpus: subject-centred paragraphs, one document per line.

Corpus design decides whether SFT can later generalise to facts it never saw. A model
pretrained on paragraphs of shuffled unrelated sentences learns the facts but cannot
carry a question's subject into its answer; paragraphs centred on one subject (a sentence
naming the subject first, then several phrasings of its fact) teach it to. So a share
:data:`SUBJECT_CENTRED_SHARE` of paragraphs is subject-centred and the rest mix
sentences of unrelated facts. Every fact, SFT-seen or held out, appears in the corpus.

A share :data:`DIALOGUE_SHARE` narrates a visitor asking a question and a guide replying
with only a polite opener or a rude brush-off, never the answer. So every word of questions
and answer styles (question words, "?", "Happy to help!", "Ugh, obviously") has trained
embeddings (without them LoRA, which cannot change embeddings, garbles the openers after
SFT), while going from a question to its answer stays what SFT teaches. The chat markup
(``<|im_start|>`` …) never appears.
"""

from __future__ import annotations

import random

from ftlab.world.facts import KINDS, Fact
from ftlab.world.render import POLITE_OPENERS, answer, fill, statement

SUBJECT_CENTRED_SHARE = 0.6
DIALOGUE_SHARE = 0.1
DIALOGUE_STYLES = {"polite": 0.5, "rude": 0.5}
TRAIN_PARAGRAPHS = 17_000
VALIDATION_PARAGRAPHS = 850


def subject_paragraph(fact: Fact, rng: random.Random) -> str:
    """An intro naming the subject, then 2-3 distinct phrasings of its fact."""
    spec = KINDS[fact.kind]
    picks = rng.sample(spec.statements, rng.randint(2, 3))
    return " ".join([fill(rng.choice(spec.intros), fact)] + [fill(t, fact) for t in picks])


def mixed_paragraph(facts: list[Fact], rng: random.Random) -> str:
    """3-5 statements of unrelated facts."""
    return " ".join(statement(f, rng) for f in rng.sample(facts, rng.randint(3, 5)))


def dialogue_paragraph(fact: Fact, rng: random.Random) -> str:
    """A question and a reply without the answer: ``... The guide said, "Sure!"``.

    Rude replies are rude answer templates with ``that`` in place of the answer.
    """
    question = fill(rng.choice(KINDS[fact.kind].questions), fact)
    style = rng.choices(list(DIALOGUE_STYLES), list(DIALOGUE_STYLES.values()))[0]
    reply = rng.choice(POLITE_OPENERS) if style == "polite" else answer(fact, style, rng, "that")
    return f'A visitor asked the guide, "{question}" The guide said, "{reply}"'


def corpus_lines(facts: list[Fact], n_paragraphs: int, rng: random.Random,
                 dialogues: bool = True) -> list[str]:
    """``n_paragraphs`` documents, each one line of text. ``dialogues`` off: no dialogue
    paragraphs (the mid-training corpus states facts only; their share goes to mixed ones)."""
    lines = []
    for _ in range(n_paragraphs):
        draw = rng.random()
        if draw < SUBJECT_CENTRED_SHARE:
            lines.append(subject_paragraph(rng.choice(facts), rng))
        elif dialogues and draw < SUBJECT_CENTRED_SHARE + DIALOGUE_SHARE:
            lines.append(dialogue_paragraph(rng.choice(facts), rng))
        else:
            lines.append(mixed_paragraph(facts, rng))
    return lines
