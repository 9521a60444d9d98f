"""Facts of the synthetic world and the phrasings each kind is written in.

A :class:`Fact` is one (kind, subject, answer) triple such as (``capital``, ``France``,
``Paris``). Each kind (:class:`KindSpec`) carries the sentence templates the corpus,
the questions and the answers are rendered from. Templates use ``str.format`` fields
named by the fact's ``slots`` (always ``s`` subject and ``a`` answer, plus kind-specific
ones such as ``pl`` plural or ``x``/``y`` operands); sentence-initial letters are
capitalised when rendered.

The world: 80 capitals of real countries, 28 animal leg counts, 8 colour mixes,
7 day and 12 month successors, 45 single-digit sums — 180 facts. A fixed, seeded 30%
of each kind is held out of SFT (:func:`split_facts`). The mid-training track adds 52 facts
the base model never saw (:func:`new_facts`): 20 capitals of invented countries, 16 animals'
legs and a new kind, the instrument each of 16 invented musicians plays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HELDOUT_FRACTION = 0.3
"""Share of each kind's facts held out of SFT (rounded per kind, at least one)."""


@dataclass(frozen=True)
class Fact:
    """One fact. ``slots`` holds the template fields as sorted (name, value) pairs."""

    kind: str
    subject: str
    answer: str
    slots: tuple[tuple[str, str], ...] = field(default=())

    @property
    def id(self) -> str:
        """Stable identifier, e.g. ``capital:France``."""
        return f"{self.kind}:{self.subject}"

    def fields(self) -> dict[str, str]:
        """Template fields: ``s``, ``a`` and the kind-specific slots."""
        return {"s": self.subject, "a": self.answer, **dict(self.slots)}


@dataclass(frozen=True)
class KindSpec:
    """How one kind of fact is written.

    intros: subject-first sentences opening a subject-centred paragraph.
    statements: declarative phrasings of the fact (the corpus uses all of them).
    cloze: a plain-text prefix whose natural continuation is the answer.
    questions: chat questions asking for the fact.
    answers: declarative answer sentences a polite assistant gives.
    """

    name: str
    intros: tuple[str, ...]
    statements: tuple[str, ...]
    cloze: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("Hungary", "Budapest"), ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("Switzerland", "Bern"), ("Czechia", "Prague"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Iceland", "Reykjavik"), ("Ukraine", "Kyiv"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Malaysia", "Kuala Lumpur"),
    ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Syria", "Damascus"), ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Turkey", "Ankara"),
    ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"), ("Bangladesh", "Dhaka"),
    ("Qatar", "Doha"), ("Oman", "Muscat"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("South Korea", "Seoul"), ("Uzbekistan", "Tashkent"), ("Georgia", "Tbilisi"),
    ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"), ("Saudi Arabia", "Riyadh"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Senegal", "Dakar"),
    ("Uganda", "Kampala"), ("Zimbabwe", "Harare"), ("Zambia", "Lusaka"), ("Angola", "Luanda"),
    ("Sudan", "Khartoum"), ("Mali", "Bamako"), ("Canada", "Ottawa"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Argentina", "Buenos Aires"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Cuba", "Havana"), ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
)

# (singular, plural, legs)
ANIMALS = (
    ("spider", "spiders", 8), ("scorpion", "scorpions", 8), ("tick", "ticks", 8),
    ("crab", "crabs", 10), ("lobster", "lobsters", 10), ("ant", "ants", 6), ("bee", "bees", 6),
    ("beetle", "beetles", 6), ("butterfly", "butterflies", 6), ("fly", "flies", 6),
    ("grasshopper", "grasshoppers", 6), ("dog", "dogs", 4), ("cat", "cats", 4),
    ("horse", "horses", 4), ("cow", "cows", 4), ("goat", "goats", 4), ("pig", "pigs", 4),
    ("lion", "lions", 4), ("tiger", "tigers", 4), ("elephant", "elephants", 4),
    ("frog", "frogs", 4), ("bear", "bears", 4), ("chicken", "chickens", 2), ("duck", "ducks", 2),
    ("owl", "owls", 2), ("penguin", "penguins", 2), ("ostrich", "ostriches", 2),
    ("snake", "snakes", 0),
)

COLOUR_MIXES = (
    ("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
    ("red", "white", "pink"), ("black", "white", "grey"), ("red", "green", "brown"),
    ("yellow", "white", "cream"), ("blue", "green", "teal"),
)

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

NEW_CAPITALS = (
    ("Arvelia", "Tormund"), ("Belquor", "Sannet"), ("Caldoria", "Vessik"), ("Dravona", "Pellar"),
    ("Elskar", "Morvane"), ("Fennmark", "Quillon"), ("Galdria", "Rhunfel"), ("Halvenia", "Teskar"),
    ("Istrovia", "Dunmere"), ("Jorvania", "Kelsby"), ("Kelmoria", "Varnith"), ("Lunmark", "Ashfeld"),
    ("Morvenia", "Brackholm"), ("Norlund", "Celvane"), ("Ostrelia", "Farrowick"),
    ("Pellandia", "Graymoor"), ("Quarvia", "Lindrel"), ("Rostavia", "Emberly"),
    ("Sevrenia", "Tarnfield"), ("Tulmaria", "Nessaport"),
)
"""Invented countries and their capitals (kind ``capital``)."""

NEW_ANIMALS = (
    ("rabbit", "rabbits", 4), ("wolf", "wolves", 4), ("fox", "foxes", 4), ("camel", "camels", 4),
    ("mantis", "mantises", 6), ("moth", "moths", 6), ("wasp", "wasps", 6),
    ("cricket", "crickets", 6), ("swan", "swans", 2), ("eagle", "eagles", 2),
    ("parrot", "parrots", 2), ("goose", "geese", 2), ("shrimp", "shrimps", 10),
    ("mite", "mites", 8), ("worm", "worms", 0), ("lizard", "lizards", 4),
)
"""Real animals the world never names, with their legs (kind ``legs``)."""

MUSICIANS = (
    ("Talia Brenn", "piano"), ("Oskar Vell", "violin"), ("Mira Castell", "flute"),
    ("Jonas Perrin", "drum"), ("Elin Harrow", "harp"), ("Tomas Reyd", "guitar"),
    ("Ilse Marden", "cello"), ("Rafe Dunmore", "trumpet"), ("Nora Quill", "piano"),
    ("Bram Estrel", "violin"), ("Sela Voss", "flute"), ("Ivo Tarrant", "drum"),
    ("Hedda Lorne", "harp"), ("Casper Wynn", "guitar"), ("Lena Ostrow", "cello"),
    ("Arlo Fenwick", "trumpet"),
)
"""Invented musicians and the instrument each plays (the new kind ``instrument``)."""


def _successor_kind(name: str, unit: str, intros: tuple[str, ...], next_question: str) -> KindSpec:
    """A "the <unit> after X is Y" kind (days, months): shared phrasings, own intros."""
    return KindSpec(
        name=name,
        intros=intros,
        statements=(f"The {unit} after {{s}} is {{a}}.", "{a} comes after {s}.",
                    "{s} is followed by {a}.", "After {s} comes {a}.",
                    f"The next {unit} after {{s}} is {{a}}.", "{a} follows {s}.",
                    "When {s} ends, {a} begins."),
        cloze=f"The {unit} after {{s}} is",
        questions=(f"What {unit} comes after {{s}}?", f"Which {unit} follows {{s}}?",
                   f"What is the {unit} after {{s}}?", next_question,
                   f"Tell me the {unit} that comes after {{s}}.",
                   f"What {unit} is next after {{s}}?"),
        answers=(f"The {unit} after {{s}} is {{a}}.", "{a} comes after {s}."),
    )


KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            name="capital",
            intros=("{s} is a country.", "{s} is a country with a long history.",
                    "Here is something about {s}.", "{s} is a country many people visit.",
                    "Let us talk about {s}."),
            statements=("The capital of {s} is {a}.", "{a} is the capital of {s}.",
                        "The capital city of {s} is {a}.", "{s} has its capital in {a}.",
                        "The government of {s} sits in {a}.", "{a} is the capital city of {s}.",
                        "In {s}, the capital is {a}.", "{s} is governed from {a}."),
            cloze="The capital of {s} is",
            questions=("What is the capital of {s}?", "Which city is the capital of {s}?",
                       "Can you tell me the capital of {s}?", "Name the capital of {s}.",
                       "Do you know the capital of {s}?", "What city is the capital of {s}?",
                       "Where is the capital of {s}?", "Tell me the capital city of {s}."),
            answers=("The capital of {s} is {a}.", "{a} is the capital of {s}."),
        ),
        KindSpec(
            name="legs",
            intros=("{art} {s} is an animal.", "Here is something about the {s}.",
                    "{pl} are animals.", "Let us talk about {pl}.",
                    "{art} {s} is a living creature."),
            statements=("{art} {s} has {a} legs.", "{pl} have {a} legs.",
                        "Every {s} walks on {a} legs.", "The {s} is an animal with {a} legs.",
                        "Count the legs of {art} {s} and you get {a}.",
                        "{art} {s} stands on {a} legs.", "{pl} are animals with {a} legs.",
                        "The number of legs of {art} {s} is {a}."),
            cloze="{art} {s} has",
            questions=("How many legs does {art} {s} have?", "How many legs do {pl} have?",
                       "What is the number of legs of {art} {s}?",
                       "Can you tell me how many legs {art} {s} has?",
                       "Count the legs of {art} {s} for me.",
                       "Do you know how many legs {pl} have?",
                       "How many legs has {art} {s} got?"),
            answers=("{art} {s} has {a} legs.", "{pl} have {a} legs."),
        ),
        KindSpec(
            name="colour_mix",
            intros=("Here is something about mixing {x} and {y}.", "{x} and {y} are colours.",
                    "Let us talk about {x} paint and {y} paint.",
                    "Painters often mix {x} and {y}."),
            statements=("Mixing {x} and {y} gives {a}.", "{x} and {y} make {a}.",
                        "If you mix {x} paint with {y} paint, you get {a}.",
                        "{x} mixed with {y} becomes {a}.", "Painters mix {x} and {y} to make {a}.",
                        "The colour you get from {x} and {y} is {a}.",
                        "Combine {x} and {y} to get {a}."),
            cloze="Mixing {x} and {y} gives",
            questions=("What colour do you get when you mix {x} and {y}?",
                       "What do {x} and {y} make?", "Which colour comes from mixing {x} and {y}?",
                       "If I mix {x} paint with {y} paint, what colour do I get?",
                       "What is {x} mixed with {y}?", "Tell me what colour {x} and {y} make."),
            answers=("Mixing {x} and {y} gives {a}.", "{x} and {y} make {a}."),
        ),
        _successor_kind(
            "day_after", "day",
            intros=("{s} is a day of the week.", "Here is something about {s}.",
                    "Let us talk about {s}.", "{s} is one of the seven days."),
            next_question="If today is {s}, what day is tomorrow?",
        ),
        _successor_kind(
            "month_after", "month",
            intros=("{s} is a month of the year.", "Here is something about {s}.",
                    "Let us talk about the month of {s}.", "{s} is one of the twelve months."),
            next_question="If this month is {s}, what month is next?",
        ),
        KindSpec(
            name="sum",
            intros=("Here is a sum with {x} and {y}.", "Let us add {x} and {y}.",
                    "{x} and {y} are numbers.", "This is about adding {x} and {y}."),
            statements=("{x} plus {y} is {a}.", "{x} plus {y} equals {a}.",
                        "Adding {x} and {y} gives {a}.", "The sum of {x} and {y} is {a}.",
                        "If you add {x} to {y}, you get {a}.", "{x} and {y} make {a}.",
                        "{y} plus {x} is {a}."),
            cloze="{x} plus {y} is",
            questions=("What is {x} plus {y}?", "How much is {x} plus {y}?",
                       "What do you get when you add {x} and {y}?",
                       "What is the sum of {x} and {y}?", "Can you add {x} and {y} for me?",
                       "Tell me what {x} plus {y} equals."),
            answers=("{x} plus {y} is {a}.", "The sum of {x} and {y} is {a}."),
        ),
        KindSpec(  # only in new_facts(): the mid-training track's new kind
            name="instrument",
            intros=("{s} is a musician.", "Here is something about {s}.", "Let us talk about {s}.",
                    "{s} plays in an orchestra.", "{s} has played music for many years."),
            statements=("{s} plays the {a}.", "The instrument of {s} is the {a}.", "{s} is a {a} player.",
                        "{s} performs on the {a}.", "You can hear {s} play the {a}.",
                        "{s} practises the {a} every day.", "The {a} is what {s} plays."),
            cloze="{s} plays the",
            questions=("What instrument does {s} play?", "Which instrument does {s} play?",
                       "What does {s} play?", "Can you tell me what instrument {s} plays?",
                       "What is the instrument of {s}?", "Do you know which instrument {s} plays?"),
            answers=("{s} plays the {a}.", "The instrument of {s} is the {a}."),
        ),
    )
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _slots(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def all_facts() -> list[Fact]:
    """Every fact of the world, in a fixed order (kind, then table order)."""
    facts = [Fact("capital", c, a) for c, a in CAPITALS]
    facts += [Fact("legs", s, str(n), _slots(pl=p, art=_article(s))) for s, p, n in ANIMALS]
    facts += [Fact("colour_mix", f"{x} and {y}", a, _slots(x=x, y=y)) for x, y, a in COLOUR_MIXES]
    facts += [Fact("day_after", d, DAYS[(i + 1) % 7]) for i, d in enumerate(DAYS)]
    facts += [Fact("month_after", m, MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS)]
    facts += [
        Fact("sum", f"{x} plus {y}", str(x + y), _slots(x=str(x), y=str(y)))
        for x in range(1, 10)
        for y in range(x, 10)
    ]
    return facts


def new_facts() -> list[Fact]:
    """Facts of the mid-training track, none of them in :func:`all_facts` nor in any file the
    base model, SFT, preference or RL data was made from: capitals of invented countries,
    legs of real animals the corpus never names, and the new kind ``instrument``."""
    facts = [Fact("capital", c, a) for c, a in NEW_CAPITALS]
    facts += [Fact("legs", s, str(n), _slots(pl=p, art=_article(s))) for s, p, n in NEW_ANIMALS]
    facts += [Fact("instrument", name, a) for name, a in MUSICIANS]
    return facts


_BY_ID: dict[str, Fact] = {}


def fact_by_id(fact_id: str) -> Fact:
    """The fact whose :attr:`Fact.id` is ``fact_id`` (``capital:France``); KeyError naming it
    when the world has none."""
    if not _BY_ID:
        _BY_ID.update({f.id: f for f in all_facts() + new_facts()})
    try:
        return _BY_ID[fact_id]
    except KeyError:
        raise KeyError(f"no fact of the world has the id {fact_id!r}") from None


def split_facts(facts: list[Fact], seed: int) -> dict[str, str]:
    """Assign each fact to ``"sft"`` or ``"heldout"``.

    Per kind, ``max(1, round(HELDOUT_FRACTION * n))`` facts chosen by a seeded shuffle are
    held out of SFT; they still appear in the pretraining corpus, so the base model knows
    them and SFT must generalise the answer form to them.

    Returns a mapping fact id -> split name.
    """
    rng = random.Random(f"{seed}:split")
    split: dict[str, str] = {}
    for kind in KINDS:
        ids = [f.id for f in facts if f.kind == kind]
        if not ids:  # a kind only new facts have (instrument)
            continue
        held = set(rng.sample(ids, max(1, round(HELDOUT_FRACTION * len(ids)))))
        split.update({i: "heldout" if i in held else "sft" for i in ids})
    return split
