"""Pytest plugin of the milestone suites: per-test results and the progress table.

Enabled by ``milestones/conftest.py`` (``pytest_plugins = ["ftlab.course.plugin"]``).
At the end of a run it prints a table of tasks passed per milestone. When the environment
variable ``FTLAB_RESULTS`` names a file, it also writes every test's result there as JSON
(``ftlab course grade`` and ``verify`` read it): a list of records
``{"nodeid", "name", "task", "markers", "outcome", "message"}`` where outcome is
passed, failed or skipped and message is the first failure's one-line summary.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

from ftlab.course.tasks import milestone_of, sort_key, task_of_test

RESULTS_ENV = "FTLAB_RESULTS"
_MILESTONES = ("m1", "m2", "m3", "m4", "m5", "capstone")
_collected: dict[str, dict] = {}
_records: dict[str, dict] = {}


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        _collected[item.nodeid] = {
            "nodeid": item.nodeid, "name": name, "task": task_of_test(name),
            "markers": sorted({m.name for m in item.iter_markers()} & set(_MILESTONES)),
            "outcome": "passed", "message": "",
        }


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _collected:
        return
    record = _records.setdefault(report.nodeid, dict(_collected[report.nodeid]))
    if record["outcome"] == "failed":
        return
    if report.failed:
        record["outcome"], record["message"] = "failed", _message(report)
    elif report.skipped and report.when in ("setup", "call"):
        record["outcome"] = "skipped"


def progress(records: list[dict]) -> list[str]:
    """Lines of the progress table: per milestone, tasks passed and each task's mark."""
    tasks: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["task"] and r["outcome"] != "skipped":
            tasks[r["task"]].append(r)
    by_milestone: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for task in sorted(tasks, key=sort_key):
        ok = all(r["outcome"] == "passed" for r in tasks[task])
        by_milestone[milestone_of(task)].append((task, ok))
    lines = []
    for milestone in _MILESTONES:
        row = by_milestone.get(milestone)
        if row:
            done = sum(ok for _, ok in row)
            marks = "  ".join(f"{t} {'pass' if ok else 'FAIL'}" for t, ok in row)
            lines.append(f"{milestone:<9} {done}/{len(row)} tasks   {marks}")
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    records = list(_records.values())
    lines = progress(records)
    if lines:
        terminalreporter.write_sep("=", "ftlab progress")
        for line in lines:
            terminalreporter.write_line(line)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
