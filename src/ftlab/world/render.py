"""Rendering facts into text, answer styles, and judging answers.

Styles of an assistant answer (what DPO later shifts):
  polite: an opener from :data:`POLITE_OPENERS`, then a declarative answer sentence;
  terse:  the bare answer, e.g. ``Paris.``;
  rude:   the answer wrapped in a dismissive phrase from :data:`RUDE_TEMPLATES`.
"""

from __future__ import annotations

import random
import re

from ftlab.world.facts import KINDS, Fact, all_facts, new_facts

POLITE_OPENERS = ("Sure!", "Of course!", "Happy to help!", "Certainly!", "Great question!")
RUDE_TEMPLATES = (
    "Ugh, obviously {a}.",
    "{a}. Everyone knows that.",
    "{a}. Look it up next time.",
    "Seriously? It is {a}.",
)
STYLES = ("polite", "terse", "rude")


def fill(template: str, fact: Fact) -> str:
    """Render one template for ``fact`` and capitalise the first letter."""
    text = template.format(**fact.fields())
    return text[:1].upper() + text[1:]


def statement(fact: Fact, rng: random.Random) -> str:
    """A random declarative sentence stating the fact."""
    return fill(rng.choice(KINDS[fact.kind].statements), fact)


def cloze_prompt(fact: Fact) -> str:
    """Plain-text prefix whose continuation is the answer, e.g. ``The capital of France is``."""
    return fill(KINDS[fact.kind].cloze, fact)


def answer(fact: Fact, style: str, rng: random.Random, value: str | None = None) -> str:
    """An assistant answer in ``style`` (polite, terse or rude).

    ``value`` replaces the true answer (used for wrong-entity preference pairs).
    """
    shown = fact if value is None else Fact(fact.kind, fact.subject, value, fact.slots)
    if style == "polite":
        body = fill(rng.choice(KINDS[fact.kind].answers), shown)
        return f"{rng.choice(POLITE_OPENERS)} {body}"
    if style == "terse":
        return f"{shown.answer[:1].upper()}{shown.answer[1:]}."
    if style == "rude":
        return fill(rng.choice(RUDE_TEMPLATES), shown)
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def is_polite(response: str) -> bool:
    """True when a response opens with one of the polite openers."""
    return response.lstrip().startswith(POLITE_OPENERS)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _contains(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


_ANSWERS_BY_KIND: dict[str, frozenset[str]] = {}
_NAMES: list[list[str]] = []


def _kind_answers(kind: str) -> frozenset[str]:
    if not _ANSWERS_BY_KIND:
        for f in all_facts() + new_facts():
            _ANSWERS_BY_KIND.setdefault(f.kind, frozenset())
            _ANSWERS_BY_KIND[f.kind] |= {f.answer}
    return _ANSWERS_BY_KIND[kind]


def subject_names(fact: Fact) -> list[str]:
    """The names a restatement of the question may use for its subject: the operands of a
    sum or a colour mix, else the subject, plus an animal's plural (``spiders``)."""
    slots = dict(fact.slots)
    operands = [slots[k] for k in ("x", "y") if k in slots]
    return (operands or [fact.subject]) + ([slots["pl"]] if "pl" in slots else [])


def _world_names() -> list[list[str]]:
    """Every answer and subject name of the world (any kind), as word lists."""
    if not _NAMES:
        names = {n for f in all_facts() + new_facts() for n in (f.answer, *subject_names(f))}
        _NAMES.extend(sorted(_words(n) for n in names))
    return _NAMES


def _remove_once(words: list[str], phrase: list[str]) -> list[str]:
    n = len(phrase)
    i = next(i for i in range(len(words) - n + 1) if words[i : i + n] == phrase)
    return words[:i] + words[i + n :]


def check_answer(fact: Fact, response: str, strict: bool = False) -> bool:
    """Whether ``response`` gives the fact's answer and no competing one.

    Case and punctuation are ignored and matching is by whole words. The response is
    correct when it contains the expected answer and no other answer of the same kind,
    except words that are part of the question's subject (``3 plus 4`` may repeat 3 and 4).
    Listing every capital is therefore wrong; ``Sure! 3 plus 4 is 7.`` is right.

    ``strict`` also reads how the reply restates the question: once one occurrence of the
    answer is set aside, every other name of the world in it (any kind's answer or subject:
    a day, a month, a number, a country, a colour, an animal) must name the question's
    subject (:func:`subject_names`). So for *the day after Monday* ``Tuesday comes after
    Tuesday.`` (the answer where the subject belongs) and ``The month after May is
    Tuesday.`` (another subject, of another kind) are wrong, and so is ``1 plus 1 is 7.`` for
    3 plus 4 (other operands) — all three right under the lenient reading; ``Tuesday.`` and
    ``Monday is followed by Tuesday.`` stay right. The price: a
    reply that repeats its answer or mentions any other name of the world (``May`` the verb
    reads as the month) is wrong too. Every answer the world itself renders is right under
    both readings.
    """
    words = _words(response)
    answer = _words(fact.answer)
    if not _contains(words, answer):
        return False
    subject = set(_words(fact.subject))
    rivals = (a for a in _kind_answers(fact.kind) if a != fact.answer)
    if any(_contains(words, _words(r)) for r in rivals if not set(_words(r)) <= subject):
        return False
    if not strict:
        return True
    rest = _remove_once(words, answer)
    allowed = {w for n in subject_names(fact) for w in _words(n)}
    return not any(_contains(rest, n) for n in _world_names() if not set(n) <= allowed)
