"""Pytest plugin of the milestone suites: per-test results and the progress table.

Enabled by ``milestones/conftest.py`` (``pytest_plugins = ["ftlab.course.plugin"]``).
At the end of a run it prints what to do next for each task that does not pass (one line
when not started or blocked; the teaching message and the function to edit when failing),
then the table of tasks passed per milestone. When the environment
variable ``FTLAB_RESULTS`` names a file, it also writes every test's result there as JSON
(``ftlab course grade`` and ``verify`` read it): a list of records
``{"nodeid", "name", "task", "markers", "outcome", "message", "blocked_by"}``. ``outcome``
is passed, failed, skipped or blocked; ``message`` is the first failure's summary. A test
is *blocked* when it stops on the ``NotImplementedError`` stub of other tasks (listed in
``blocked_by``): its own task cannot be judged until those are done.

A task test that crashes with any exception other than an assertion or a stub's
``NotImplementedError`` (a shape or device mismatch inside learner code, a fixture that
raises) fails with a course message instead of a raw traceback: the task, the exception,
where it was raised (the deepest frame inside ``src/``, with the task whose solution
region holds that line) and what to read (:func:`crash_message`).

When ``FTLAB_TRACE_REGIONS`` names a JSON file of solution regions
(``[{"task", "path", "begin", "end"}]``, absolute paths), each record also gets
``exercised``: the tasks whose region lines ran during the test (``course verify`` runs a
mutant only against the tests that exercise its task).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections import defaultdict
from pathlib import Path

import pytest

from ftlab.course.manifest import task_locations
from ftlab.course.regions import parse_text, read_source
from ftlab.course.tasks import mentioned_tasks, milestone_of, sort_key, task_of_test
from ftlab.course.teaching import teach

RESULTS_ENV = "FTLAB_RESULTS"
TRACE_ENV = "FTLAB_TRACE_REGIONS"
_MILESTONES = ("m1", "m2", "m3", "m4", "m5", "capstone")
_records: dict[str, dict] = {}


class RegionTracer:
    """Records which solution regions' lines run, with a line tracer limited to their files."""

    def __init__(self, regions: list[dict]) -> None:
        self._spans: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for r in regions:
            self._spans[os.path.realpath(r["path"])].append((r["begin"], r["end"], r["task"]))
        self._files: dict[str, list[tuple[int, int, str]] | None] = {}
        self.hit: set[str] = set()

    def _spans_of(self, filename: str) -> list[tuple[int, int, str]] | None:
        if filename not in self._files:
            self._files[filename] = self._spans.get(os.path.realpath(filename))
        return self._files[filename]

    def _global(self, frame, event, arg):
        spans = self._spans_of(frame.f_code.co_filename)
        if spans is None:
            return None

        def local(frame, event, arg):
            if event == "line":
                line = frame.f_lineno
                for begin, end, task in spans:
                    if begin < line < end:
                        self.hit.add(task)
            return local
        return local

    def __enter__(self) -> RegionTracer:
        self.hit = set()
        sys.settrace(self._global)
        threading.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(None)
        threading.settrace(None)


def _region_of(path: str, line: int) -> str | None:
    """The task whose solution region holds ``path:line`` (regions parsed once per file)."""
    path = os.path.realpath(path)
    if path not in _region_spans:
        try:
            _region_spans[path] = [(r.begin, r.end, r.task)
                                   for r in parse_text(read_source(Path(path)), path)[0]]
        except (OSError, UnicodeDecodeError, SyntaxError):
            _region_spans[path] = []
    return next((task for begin, end, task in _region_spans[path] if begin < line < end), None)


_region_spans: dict[str, list[tuple[int, int, str]]] = {}


def crash_message(task: str, what: str, error: BaseException) -> str:
    """The teaching message of a task test stopped by ``error`` raised in code under test:
    names ``task``, the exception and the deepest frame in the package (``src/...:line``,
    and the task whose solution region it is in), so a shape or device mismatch points at
    the line to fix instead of a traceback through the checks."""
    frames = traceback.extract_tb(error.__traceback__)
    course = f"{os.sep}ftlab{os.sep}course{os.sep}"  # the checks' own helpers
    inside = [f for f in frames if f"{os.sep}src{os.sep}" in f.filename
              and course not in f.filename]
    where, owner = "", None
    if inside:  # a line of the package; else the error came from the checks or a library
        frame = inside[-1]
        short = frame.filename.split(f"{os.sep}src{os.sep}", 1)[-1]
        owner = _region_of(frame.filename, frame.lineno or 0)
        where = (f" at src/{short}:{frame.lineno} in {frame.name}"
                 + (f" (inside {owner}'s solution)" if owner else ""))
    blame = owner or task
    return teach(task, what, "your code to run without raising",
                 f"{type(error).__name__}: {error}{where}".strip(),
                 f"a crash inside {blame}'s code: compare the shapes, dtypes and devices it "
                 f"uses with the docstring of {blame}; the check's input is allowed by the spec")


def _what(item) -> str:
    """What the test checks: its docstring's first line, else its name."""
    doc = (getattr(getattr(item, "obj", None), "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else item.name


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """Task tests: a crash in the code under test becomes a course message (module doc)."""
    task = task_of_test(pyfuncitem.name.split("[", 1)[0])
    try:
        return (yield)
    except (AssertionError, NotImplementedError):
        raise
    except Exception as error:  # noqa: BLE001 - any crash in learner code is reported
        if task is None:
            raise
        raise AssertionError(crash_message(task, _what(pyfuncitem), error)) from error


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A fixture of a task test that crashes (it ran code under test) is reported like a
    crash in the test itself: the course message replaces the setup error's traceback."""
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    task = task_of_test(item.name.split("[", 1)[0])
    if (call.when == "setup" and task and isinstance(error, Exception)
            and not isinstance(error, (AssertionError, NotImplementedError))):
        report.longrepr = "AssertionError: " + crash_message(task, _what(item), error)
    return report


_tracer: RegionTracer | None = None
_exercised: dict[str, set[str]] = {}


def pytest_configure(config) -> None:
    global _tracer
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, encoding="utf-8") as f:
            _tracer = RegionTracer(json.load(f))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _tracer is None:
        yield
        return
    with _tracer:
        yield
    _exercised[item.nodeid] = set(_tracer.hit)


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    text = str(report.longrepr).strip() if report.longrepr else ""
    return text if text.startswith("AssertionError: [") else (text.splitlines() or [""])[-1]


def _new_record(report: pytest.TestReport) -> dict:
    """A test's record, from its report alone (so it also works on the controller of a
    pytest-xdist run, which collects nothing itself)."""
    name = report.nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
    return {"nodeid": report.nodeid, "name": name, "task": task_of_test(name),
            "markers": sorted(set(report.keywords) & set(_MILESTONES)),
            "outcome": "passed", "message": "", "blocked_by": []}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "::" not in report.nodeid:  # a notebook cell or a file-level report: not a test
        return
    record = _records.setdefault(report.nodeid, _new_record(report))
    if record["outcome"] == "failed":
        return
    if report.failed:
        record["outcome"], record["message"] = "failed", _message(report)
        blockers = _blockers(record["message"], record["task"])
        if blockers:
            record["outcome"], record["blocked_by"] = "blocked", blockers
    elif report.skipped and report.when in ("setup", "call"):
        record["outcome"] = "skipped"


def _blockers(message: str, task: str | None) -> list[str]:
    """Other tasks whose unfinished stub stopped a test (its failure is their
    ``NotImplementedError``), sorted; empty when the test failed on its own."""
    if not message.startswith("NotImplementedError"):
        return []
    named = mentioned_tasks(message)
    return [] if task in named else sorted(named, key=sort_key)


def _not_started(record: dict) -> bool:
    """The test stopped on its own task's ``NotImplementedError`` stub."""
    return (record["outcome"] == "failed" and record["message"].startswith("NotImplementedError")
            and record["task"] in mentioned_tasks(record["message"]))


def task_status(records: list[dict]) -> tuple[str, list[str]]:
    """A task's status from its (non-skipped) test records: ``pass``, ``fail``, ``not
    started`` (its own stub raised) or ``blocked`` (with the blocking tasks). A task with
    any test failing on its own otherwise fails; any blocked test blocks the rest."""
    failed = [r for r in records if r["outcome"] == "failed"]
    if failed:
        return ("not started", []) if all(map(_not_started, failed)) else ("fail", [])
    blockers = sorted({b for r in records for b in r.get("blocked_by", [])}, key=sort_key)
    return ("blocked", blockers) if blockers else ("pass", [])


MARKS = {"pass": "pass", "fail": "FAIL", "not started": "not started"}
"""How the progress table shows each status (``blocked`` names its blockers)."""


def by_task(records: list[dict]) -> dict[str, list[dict]]:
    """The non-skipped records of task tests, grouped by task, tasks in course order."""
    tasks: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["task"] and r["outcome"] != "skipped":
            tasks[r["task"]].append(r)
    return {t: tasks[t] for t in sorted(tasks, key=sort_key)}


def task_lines(records: list[dict], locations: dict[str, tuple[str, str]] | None = None
               ) -> list[str]:
    """What to do next, per task that does not pass: one line for a task not started (its
    stub's message: what to implement, in which file) or blocked (the task to finish
    first); for a failing task its teaching message and, from ``locations`` (task ->
    ``(function, file)``), where to edit."""
    lines = []
    for task, records_of in by_task(records).items():
        status, blockers = task_status(records_of)
        if status == "not started":
            first = next(r for r in records_of if _not_started(r))
            lines.append(first["message"].splitlines()[0].removeprefix("NotImplementedError: "))
        elif status == "blocked":
            lines.append(f"{task} blocked: its checks need {', '.join(blockers)}; finish "
                         f"{'those' if len(blockers) > 1 else 'that'} first")
        elif status == "fail":
            first = next(r for r in records_of if r["outcome"] == "failed")
            message = first["message"].removeprefix("AssertionError: ").splitlines()[:8]
            where = (locations or {}).get(task)
            edit = f" (edit {where[0]} in {where[1]})" if where else ""
            lines.append(f"{task} FAIL{edit}: {first['name']}")
            lines += [f"    {line}" for line in message]
    return lines


def progress(records: list[dict]) -> list[str]:
    """Lines of the progress table: per milestone, tasks passed and each task's mark
    (``M4.2 pass``, ``M4.3 FAIL``, ``M1.1 not started``, ``M5.3 blocked by M2.4``)."""
    by_milestone: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for task, records_of in by_task(records).items():
        status, blockers = task_status(records_of)
        mark = MARKS.get(status) or f"blocked by {', '.join(blockers)}"
        by_milestone[milestone_of(task)].append((task, mark))
    lines = []
    for milestone in _MILESTONES:
        row = by_milestone.get(milestone)
        if row:
            done = sum(mark == "pass" for _, mark in row)
            marks = "  ".join(f"{t} {mark}" for t, mark in row)
            lines.append(f"{milestone:<9} {done}/{len(row)} tasks   {marks}")
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    records = list(_records.values())
    if _tracer is not None:
        for r in records:
            r["exercised"] = sorted(_exercised.get(r["nodeid"], ()), key=sort_key)
    lines = progress(records)
    if lines:
        terminalreporter.write_sep("=", "ftlab progress")
        for line in [*task_lines(records, task_locations(terminalreporter.config.rootpath)),
                     *lines]:
            terminalreporter.write_line(line)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
