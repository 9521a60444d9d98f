"""Plausible wrong answers: implementations the graders must reject, with a teaching message.

Each milestone's catalogue lives in the maintainer tests (``tests/wrong_answers/m<k>.py``,
never shipped to learners) as a module-level ``WRONG_ANSWERS`` list of :class:`WrongAnswer`.
``ftlab course verify`` swaps each one in for its task's region and requires a failing
check whose message names the task and contains every phrase of ``message_contains``.
"""

from __future__ import annotations

import runpy
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ftlab.course.regions import find_regions, read_source

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


def solution(root: Path, task: str) -> str:
    """The reference code of ``task``'s region in the project at ``root``, markers excluded,
    dedented to column 0."""
    region = next((r for r in find_regions(root) if r.task == task and r.cell is None), None)
    if region is None:
        raise ValueError(f"{task}: no solution region in {root}")
    lines = read_source(root / region.path).splitlines(keepends=True)
    return textwrap.dedent("".join(lines[region.begin : region.end - 1]))


def variant(root: Path, task: str, old: str, new: str) -> str:
    """``task``'s reference solution with the one mistake ``old`` -> ``new``.

    Raises ValueError when ``old`` is not in the solution, so a catalogue cannot silently
    drift from the code it mutates.
    """
    code = solution(root, task)
    if old not in code:
        raise ValueError(f"{task}: {old!r} is not in the reference solution; update the "
                         "wrong answer")
    return code.replace(old, new, 1)


def variants(root: Path, task: str, *changes: tuple[str, str]) -> str:
    """``task``'s reference solution with several mistakes (``(old, new)`` pairs, applied in
    order), each checked like :func:`variant`: a missing ``old`` raises ValueError."""
    code = solution(root, task)
    for old, new in changes:
        if old not in code:
            raise ValueError(f"{task}: {old!r} is not in the reference solution; update the "
                             "wrong answer")
        code = code.replace(old, new, 1)
    return code


def load_wrong_file(file: Path) -> list[WrongAnswer]:
    """The ``WRONG_ANSWERS`` list of one Python file (empty when it has none)."""
    return list(runpy.run_path(str(file)).get("WRONG_ANSWERS", []))


def load_catalogue(root: Path) -> list[WrongAnswer]:
    """Every wrong answer in ``root/tests/wrong_answers/*.py``, in file order."""
    folder = root / CATALOGUE
    return [answer for file in (sorted(folder.glob("*.py")) if folder.is_dir() else [])
            for answer in load_wrong_file(file)]
