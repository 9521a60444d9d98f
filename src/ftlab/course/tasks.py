"""Task ids, milestones and notebooks: the naming conventions every course tool shares.

A task id is ``M<milestone>.<n>`` (``M2.2``) or ``C.<n>`` for the capstone. A milestone
test names its task in its function name: ``test_m2_2_forward_equals_dense_update`` checks
``M2.2``; a milestone test without a task in its name checks given infrastructure.
"""

from __future__ import annotations

import re

TASK_ID = re.compile(r"^(?:M[1-9]|C)\.[1-9][0-9]*$")
_TEST_TASK = re.compile(r"^test_(m[1-9]|c)_([1-9][0-9]*)(?:_|$)")
_MENTION = re.compile(r"\b(?:M[1-9]|C)\.[1-9][0-9]*\b")

NOTEBOOKS = {
    "m1": "notebooks/01_data_prep.ipynb",
    "m2": "notebooks/02_lora.ipynb",
    "m3": "notebooks/03_qlora.ipynb",
    "m4": "notebooks/04_training_loop.ipynb",
    "m5": "notebooks/05_eval_merge.ipynb",
    "capstone": "notebooks/06_capstone.ipynb",
}
"""Milestone marker -> the notebook that teaches it."""

TASK_NOTEBOOKS = {"M4.6": "notebooks/07_scale_out.ipynb",
                  "M4.7": "notebooks/11_midtraining.ipynb",
                  "C.4": "notebooks/08_rl_grpo.ipynb", "C.5": "notebooks/08_rl_grpo.ipynb",
                  "C.6": "notebooks/09_rewards_rlaif.ipynb",
                  "C.7": "notebooks/09_rewards_rlaif.ipynb",
                  "C.8": "notebooks/10_distillation.ipynb"}
"""Tasks of an advanced track, taught in their own notebook though graded with their
milestone (M4.6, data parallelism, and M4.7, the schedules of mid-training, are graded with
``m4``; C.4 and C.5, GRPO, C.6 and C.7, reward models, and C.8, distillation, with
``capstone``)."""


def milestone_of(task: str) -> str:
    """Pytest marker of a task's milestone: ``M2.2`` -> ``m2``, ``C.1`` -> ``capstone``."""
    head = task.split(".")[0]
    return "capstone" if head == "C" else head.lower()


def notebook_of(task: str) -> str:
    """The notebook a learner is sent to for ``task``."""
    return TASK_NOTEBOOKS.get(task) or NOTEBOOKS[milestone_of(task)]


def task_of_test(name: str) -> str | None:
    """Task id named by a test function (``test_m2_2_x[param]`` -> ``M2.2``), else None."""
    match = _TEST_TASK.match(name)
    if not match:
        return None
    head = match.group(1).upper()
    return f"{head}.{match.group(2)}"


def sort_key(task: str) -> tuple[int, int]:
    """Order tasks M1.1 < M1.2 < … < M5.n < C.1."""
    head, n = task.split(".")
    return (99 if head == "C" else int(head[1:]), int(n))


def mentioned_tasks(text: str) -> set[str]:
    """Task ids mentioned in a message."""
    return set(_MENTION.findall(text))
