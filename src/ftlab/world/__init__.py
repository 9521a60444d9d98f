"""The embedded synthetic world: facts, the pretraining corpus and every dataset made from it.

One seeded generator makes everything the course trains and evaluates on, offline:
a subject-centred pretraining corpus (train/validation), instruction data in every
format milestone 1 ingests, preference pairs, and held-out evaluation sets. The same
seed gives byte-identical files. See ``ftlab world build --help``.
"""

from ftlab.world.facts import KINDS, Fact, all_facts, split_facts
from ftlab.world.render import check_answer, is_polite

__all__ = ["KINDS", "Fact", "all_facts", "split_facts", "check_answer", "is_polite"]
