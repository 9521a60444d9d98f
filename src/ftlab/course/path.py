"""The learner's path: milestone order, time estimates and which tasks need which.

A course project describes its path in ``milestones/path.json``::

    {"milestones": {"m1": ["Data preparation", "2-3 h"], ...},
     "needs": {"M5.3": ["M2.1", "M2.2", ...]}}

The learner edition's README opens with :func:`start_here`. ``needs`` is checked by
``ftlab course verify`` against a traced reference run (:func:`traced_needs`): a task needs
another when one of its checks runs that task's solution lines, so with the other task
unfinished its checks are *blocked*.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ftlab.course.tasks import NOTEBOOKS, sort_key

PATH_FILE = "milestones/path.json"


def load_path(project: Path) -> dict | None:
    """``milestones/path.json`` of ``project`` (``milestones``, ``tracks`` — advanced
    notebooks — and ``needs``, values as tuples), or None when the project has none."""
    file = project / PATH_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    return {"milestones": {m: tuple(v) for m, v in data.get("milestones", {}).items()},
            "tracks": {nb: tuple(v) for nb, v in data.get("tracks", {}).items()},
            "needs": {t: tuple(n) for t, n in data.get("needs", {}).items()}}


def traced_needs(records: list[dict]) -> dict[str, tuple[str, ...]]:
    """From a traced reference run (records with ``exercised``, see
    :mod:`ftlab.course.plugin`): task -> the other tasks whose lines its checks ran."""
    needs: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["task"]:
            needs[r["task"]] |= set(r.get("exercised", ())) - {r["task"]}
    return {t: tuple(sorted(n, key=sort_key)) for t, n in sorted(needs.items()) if n}


def start_here(path: dict | None) -> list[str]:
    """The learner README's first section: the first command, the milestones in order with
    their times and the dependencies (from ``path``, :func:`load_path`), and the loop."""
    lines = ["## Start here", "", "```bash", ".venv/bin/jupyter lab notebooks/01_data_prep.ipynb",
             "```", "",
             "Work through the milestones in order; each notebook explains its tasks, and you "
             "write them in `src/ftlab/` (each stub names its file and function).", ""]
    if path:
        lines += ["| # | notebook | milestone | time (estimate) |", "|---|---|---|---|",
                  *(f"| {i} | `{NOTEBOOKS.get(m, m)}` | {title} | {time} |"
                    for i, (m, (title, time)) in enumerate(path["milestones"].items(), 1)), ""]
        if path.get("tracks"):
            lines += ["Advanced tracks, after the milestone they build on:", "",
                      *(f"- `{nb}`: {title} ({time})" for nb, (title, time) in
                        path["tracks"].items()), ""]
        needs = "; ".join(f"**{t}** needs {', '.join(n)}" for t, n in sorted(
            path["needs"].items(), key=lambda item: sort_key(item[0])))
        if needs:
            lines += [f"Checks that also run other tasks' code: {needs} — finish those first.",
                      ""]
    lines += [
        "Each notebook uses the functions of the milestones before it (notebook 02 trains on "
        "milestone 1's batches), so do them in order. Until a task is done, *Run All* still "
        "reaches the end of a notebook: each cell that needs the task says so in one line.", "",
        "**The loop.** Read a section, implement its task, run the `check(\"M1.1\")` cell under "
        "it: it prints `pass`, or that the task is not started or blocked, or the failing "
        "check's teaching message (expected, got, likely cause) and the function to edit. "
        "Under each cell an *Expected output* block shows what the reference solution printed. "
        "At the end of a notebook `check(\"m1\")` runs the whole milestone; from a terminal in "
        "this folder: `.venv/bin/python -m pytest milestones -m m1`.",
    ]
    return lines
