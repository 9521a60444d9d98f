"""Plausible wrong answers: implementations the graders must reject, with a teaching message.

Each milestone's catalogue lives in the maintainer tests (``tests/wrong_answers/m<k>.py``,
never shipped to learners) as a module-level ``WRONG_ANSWERS`` list of :class:`WrongAnswer`.
``ftlab course verify`` swaps each one in for its task's region and requires a failing
check whose message names the task and contains every phrase of ``message_contains``.
"""

from __future__ import annotations

import runpy
from dataclasses import dataclass
from pathlib import Path

CATALOGUE = Path("tests/wrong_answers")


@dataclass(frozen=True)
class WrongAnswer:
    """A wrong implementation of ``task``.

    ``code`` replaces the region (marker lines included), written at column 0; it is
    re-indented to the region's indentation. ``message_contains`` are phrases (any case)
    the failing check's message must contain: the cause a learner should read.
    """

    task: str
    label: str
    code: str
    message_contains: tuple[str, ...]


def load_catalogue(root: Path) -> list[WrongAnswer]:
    """Every wrong answer in ``root/tests/wrong_answers/*.py``, in file order."""
    folder = root / CATALOGUE
    answers: list[WrongAnswer] = []
    for file in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        answers += runpy.run_path(str(file)).get("WRONG_ANSWERS", [])
    return answers
