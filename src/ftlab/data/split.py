"""M1.5 — a deterministic train/validation split with no leakage between the two."""

from __future__ import annotations

import hashlib

from ftlab.data.quality import normalize_text


def prompt_key(conversation: list[dict]) -> str:
    """What must not straddle the split: every non-assistant turn, normalized.

    Conversations asking the same thing (same system and user turns up to case and white
    space) share a key whatever their answers.
    """
    return "\x1f".join(normalize_text(m["content"]) for m in conversation
                       if m["role"] != "assistant")


def train_val_split(conversations: list[list[dict]], validation_fraction: float,
                    seed: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """Split into (train, validation), each keeping input order.

    Conversations are grouped by :func:`prompt_key`; a whole group goes to one side.
    Groups are ranked by ``hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()``
    (ascending) and visited in that order; the validation budget is
    ``round(validation_fraction * len(conversations))``. A group goes to validation when it
    fits (the count plus its size stays at most the budget); a group that does not fit is
    skipped (it stays in train) and the next groups are still tried, so one large
    same-prompt group never ends the selection early, and a group larger than the budget
    always trains. So the split depends only on the data and the seed: never on input order,
    nor on the Python process (the built-in ``hash()`` of a string changes with
    ``PYTHONHASHSEED``, sha256 does not); and duplicates or same-prompt groups never
    straddle it.

    The budget counts conversations, not groups, and uses Python's ``round`` (half to even:
    ``round(2.5) == 2``, ``round(6.6) == 7``): no ``int()``, ceiling or minimum of one, so a
    fraction of 0 gives an empty validation set and 1 puts every conversation in it. No
    conversations: ``([], [])``. ``conversations`` is not modified; both parts are new lists.
    """
    ### BEGIN SOLUTION M1.5
    groups: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        groups.setdefault(prompt_key(conv), []).append(i)
    budget = round(validation_fraction * len(conversations))
    chosen: set[int] = set()
    for key in sorted(groups, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()):
        if len(chosen) + len(groups[key]) <= budget:
            chosen.update(groups[key])
    train = [c for i, c in enumerate(conversations) if i not in chosen]
    validation = [c for i, c in enumerate(conversations) if i in chosen]
    return train, validation
    ### END SOLUTION
