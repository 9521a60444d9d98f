"""``ftlab course grade [PROJECT]``: run the milestone suites, write grades.md and grades.json.

A task passes when every one of its tests passes (skipped tests do not count) and is worth
:data:`POINTS_PER_TASK`. A task whose checks stop on the unfinished stub of another task is
*blocked by* that task (no points, and no failure of its own). Tasks with a solution region
but no test are listed as ungraded and worth nothing.
Tests without a task in their name check given infrastructure and are reported apart.
Failing tasks are the normal outcome of grading, not an error; only a run that breaks
(collection error, no tests, interruption) raises :class:`GradingError`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from ftlab.course.forkserver import ForkServer
from ftlab.course.manifest import graded_tasks
from ftlab.course.plugin import by_task, task_status
from ftlab.course.runner import run_suite
from ftlab.course.tasks import milestone_of, sort_key
from ftlab.errors import FtlabError
from ftlab.hardware import threads_per_process

NO_TESTS = 5
"""pytest's exit status when a folder holds no test: nothing to grade there, not broken."""

POINTS_PER_TASK = 1


class GradingError(FtlabError):
    """The suites could not be run to a verdict."""


def _likely_cause(message: str) -> str:
    """The "likely cause:" line of a teaching message (see ftlab.course.teaching), or ""."""
    return next((line.split("likely cause:", 1)[1].strip() for line in message.splitlines()
                 if "likely cause:" in line), "")


def summarize(records: list[dict], region_tasks: set[str]) -> dict:
    """Grades from per-test records (see :mod:`ftlab.course.plugin`)."""
    tests: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["task"]:
            tests[r["task"]].append(r)
    milestones: dict[str, dict] = {}
    for task in sorted(set(tests) | region_tasks, key=sort_key):
        counted = [r for r in tests.get(task, []) if r["outcome"] != "skipped"]
        failed = [r for r in counted if r["outcome"] == "failed"]
        status, blockers = task_status(counted) if counted else ("ungraded", [])
        first = failed or [r for r in counted if r["outcome"] == "blocked"]
        m = milestones.setdefault(milestone_of(task),
                                  {"points": 0, "max_points": 0, "tasks": {}})
        points = POINTS_PER_TASK if status == "pass" else 0
        worth = 0 if status == "ungraded" else POINTS_PER_TASK
        m["tasks"][task] = {
            "status": status, "points": points, "max_points": worth,
            "tests": len(counted), "failed": len(failed), "blocked_by": blockers,
            "first_failure": first[0]["message"].splitlines()[0] if first else "",
            "likely_cause": _likely_cause(first[0]["message"]) if first else "",
            "first_failing_test": first[0]["nodeid"] if first else "",
        }
        m["points"] += points
        m["max_points"] += worth
    given = [r for r in records if not r["task"]]
    return {
        "points": sum(m["points"] for m in milestones.values()),
        "max_points": sum(m["max_points"] for m in milestones.values()),
        "milestones": milestones,
        "infrastructure": {
            "passed": sum(r["outcome"] == "passed" for r in given),
            "failed": [{"test": r["nodeid"], "message": r["message"].splitlines()[0]}
                       for r in given if r["outcome"] == "failed"],
        },
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(grades: dict) -> str:
    """grades.md: totals, then one row per task."""
    lines = [f"# Grades: {grades['points']}/{grades['max_points']} points", "",
             "| milestone | task | result | points | first failure |", "|---|---|---|---|---|"]
    for name, m in grades["milestones"].items():
        for task, t in m["tasks"].items():
            result = (f"blocked by {', '.join(t['blocked_by'])}" if t["status"] == "blocked"
                      else t["status"])
            lines.append(f"| {name} ({m['points']}/{m['max_points']}) | {task} | {result} | "
                         f"{t['points']}/{t['max_points']} | {_cell(t['first_failure'])}"
                         + (f" (likely cause: {_cell(t['likely_cause'])})" if t["likely_cause"] else "")
                         + " |")
    infra = grades["infrastructure"]
    if infra["passed"] or infra["failed"]:
        lines += ["", f"Checks of the given code (not graded): {infra['passed']} passed, "
                      f"{len(infra['failed'])} failed."]
        lines += [f"- `{f['test']}`: {_cell(f['message'])}" for f in infra["failed"]]
    return "\n".join(lines) + "\n"


def grade(project: Path, out: Path | None = None,
          print_fn: Callable[[str], None] | None = None) -> dict:
    """Grade the project at ``project``; write grades.md/.json into ``out`` (default: project).

    Milestones are graded one after another (each milestone folder its own pytest run,
    forked from one :class:`ForkServer`, so libraries are imported once); ``print_fn`` hears
    one line as each starts and one with its tasks passed when it ends."""
    project = project.resolve()
    if not (project / "milestones").is_dir():
        raise GradingError(f"{project}: no milestones/ folder; is this an ftlab project?")
    if out is not None and out.exists() and not out.is_dir():
        raise GradingError(f"{out}: exists and is not a folder")
    region_tasks = graded_tasks(project)
    folders = sorted(p.name for p in (project / "milestones").iterdir()
                     if p.is_dir() and not p.name.startswith(("_", ".")))
    say = print_fn or (lambda line: None)
    records: list[dict] = []
    with ForkServer(threads_per_process(1)) as server:
        for n, folder in enumerate(folders, 1):
            say(f"grading {folder} ({n}/{len(folders)}) ...")
            began = time.perf_counter()
            run = run_suite(project, [f"milestones/{folder}"], server=server)
            if run.broken and run.exit_code != NO_TESTS:
                tail = "\n".join(run.output.strip().splitlines()[-15:])
                raise GradingError(f"pytest could not grade {project / 'milestones' / folder} "
                                   f"({run.broken}):\n{tail}")
            records += run.records
            tasks = by_task(run.records)
            passed = sum(task_status(rs)[0] == "pass" for rs in tasks.values())
            say(f"  {folder}: {passed}/{len(tasks)} tasks pass "
                f"({time.perf_counter() - began:.0f} s)")
    grades = summarize(records, region_tasks)
    out = out or project
    out.mkdir(parents=True, exist_ok=True)
    (out / "grades.json").write_text(json.dumps(grades, indent=1) + "\n")
    (out / "grades.md").write_text(render_markdown(grades))
    return grades
