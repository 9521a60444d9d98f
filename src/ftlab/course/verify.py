"""``ftlab course verify``: proof that the graders grade.

(a) the reference passes every milestone test, and each task-named test carries its
    milestone's marker;
(b) in a fresh learner edition every task's tests fail naming a task id, and tests of
    given infrastructure pass;
(c) mutation: with any single region stubbed alone, one of its task's tests fails
    (otherwise the region is listed as ungraded);
(d) no line of solution text appears in the learner edition;
(e) every catalogued wrong answer makes a check of its task fail with a message that
    names the task and the cause.

Mutants run in private workspaces (a copy of ``src/``, links to everything else), ``jobs``
at a time, each in a child of a :class:`ForkServer` (libraries imported once), each against
only the tests named for its task: both verdicts — (c) a stub fails a check of its task, (e)
a wrong answer fails a check of its task with its cause — read those tests alone, so the
other tests that run the region (other milestones' checks using it) cannot change them. The
reference run is traced to find regions no test runs at all; the tracer sees only the test's
own process: a check that runs a region in a subprocess must be named for that region's task.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path


from ftlab.course.forkserver import ForkServer
from ftlab.course.path import PATH_FILE, load_path, traced_needs
from ftlab.course.regions import (Region, course_files, find_regions, notebook_cells,
                                  read_source, replace_regions)
from ftlab.course.release import check_project, release
from ftlab.course.runner import SuiteRun, run_suite
from ftlab.course.tasks import mentioned_tasks, milestone_of
from ftlab.course.wrong import WrongAnswer, load_catalogue, load_wrong_file
from ftlab.hardware import threads_per_process
from ftlab.progress import progress_bar

LINKED = ("milestones", "data", "configs", "notebooks", "pyproject.toml")
MIN_LEAK_CHARS = 12
"""Solution lines shorter than this (``return x``) are too generic to count as leaks."""


@dataclass
class Report:
    """Findings of a verification: ``problems`` fail it, ``notes`` inform."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Mutant:
    """The reference with one region's lines replaced by ``lines``."""

    region: Region
    lines: list[str]
    wrong: WrongAnswer | None = None


def _check_reference(run: SuiteRun, report: Report) -> None:
    for r in run.records:
        if r["outcome"] == "failed":
            report.problems.append(f"(a) reference fails {r['nodeid']}: {r['message']}")
        if r["task"] and milestone_of(r["task"]) not in r["markers"]:
            report.problems.append(f"(a) {r['nodeid']} checks {r['task']} but lacks the "
                                   f"'{milestone_of(r['task'])}' marker")


def _check_learner(run: SuiteRun, regions: list[Region], report: Report) -> None:
    graded = set()
    for r in run.records:
        if not r["task"]:
            if r["outcome"] == "failed":
                report.problems.append(f"(b) given infrastructure fails in the learner edition: "
                                       f"{r['nodeid']}: {r['message']}")
            continue
        graded.add(r["task"])
        named = mentioned_tasks(r["message"])
        if r["outcome"] not in ("failed", "blocked"):
            report.problems.append(f"(b) {r['nodeid']} {r['outcome']} in the learner edition; "
                                   f"it must fail until {r['task']} is implemented")
        elif not named:
            report.problems.append(f"(b) {r['nodeid']} fails without naming a task: "
                                   f"{r['message']}")
        elif r["task"] not in named:
            report.notes.append(f"(b) {r['nodeid']} fails first on the stub of "
                                f"{', '.join(sorted(named))} (it depends on it)")
    for region in regions:
        if region.task not in graded:
            report.problems.append(f"(b) {region.task} ({region.where}) has no test in "
                                   "milestones/ (name one test_<m>_<n>_...)")


def _solution_lines(root: Path, regions: list[Region]) -> set[str]:
    """Distinctive stripped lines of solution text (absent from the given code)."""
    inside: set[str] = set()
    outside: set[str] = set()
    spans: dict[tuple[str, int | None], list[Region]] = {}
    for region in regions:
        spans.setdefault((region.path, region.cell), []).append(region)
    for file in course_files(root):
        rel = file.relative_to(root).as_posix()
        texts = ([(None, file.read_bytes().decode("utf-8"))] if file.suffix == ".py"
                 else notebook_cells(file))
        for cell, text in texts:
            ranges = [(r.begin, r.end) for r in spans.get((rel, cell), [])]
            for n, line in enumerate(text.splitlines(), 1):
                target = inside if any(b < n < e for b, e in ranges) else outside
                target.add(line.strip())
    return {line for line in inside - outside if len(line) >= MIN_LEAK_CHARS}


def _text_lines(file: Path) -> set[str]:
    """Stripped lines of a text file (of every cell, for a notebook); empty if binary."""
    try:
        if file.suffix == ".ipynb":
            return {line.strip() for cell in json.loads(file.read_bytes())["cells"]
                    for line in "".join(cell.get("source", "")).splitlines()}
        return {line.strip() for line in file.read_bytes().decode("utf-8").splitlines()}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return set()


def _check_leaks(root: Path, learner: Path, regions: list[Region], report: Report) -> None:
    secret = _solution_lines(root, regions)
    for file in sorted(p for p in learner.rglob("*") if p.is_file()):
        lines = _text_lines(file)
        for leaked in sorted(secret & lines):
            report.problems.append(f"(d) solution text in {file.relative_to(learner)}: {leaked!r}")


def _workspace(root: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    shutil.copytree(root / "src", into / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in LINKED:
        if (root / name).exists():
            (into / name).symlink_to(root / name)
    return into


def _apply(workspace: Path, root: Path, mutant: Mutant) -> Path:
    region = mutant.region
    path = workspace / region.path
    original = read_source(root / region.path)
    path.write_bytes(replace_regions(original, [(region, mutant.lines)]).encode("utf-8"))
    return path


def tests_of_tasks(records: list[dict]) -> dict[str, list[str]]:
    """Task -> node ids of the tests that can see its region: those named for the task and
    those that ran its lines (``exercised``, from a traced run), in run order."""
    out: dict[str, list[str]] = {}
    for r in records:
        for task in {r["task"], *r.get("exercised", ())} - {None}:
            out.setdefault(task, []).append(r["nodeid"])
    return out


def _run_mutants(root: Path, mutants: list[Mutant], targets: dict[str, list[str]],
                 servers: list[ForkServer], progress: bool) -> list[SuiteRun]:
    results: list[SuiteRun | None] = [None] * len(mutants)
    bar = progress_bar(total=len(mutants), desc="mutants", disable=not progress)
    jobs = len(servers)
    with tempfile.TemporaryDirectory(prefix="ftlab-verify-") as tmp:
        def worker(k: int) -> None:
            ws = _workspace(root, Path(tmp) / f"ws{k}")
            for i in range(k, len(mutants), jobs):
                mutant = mutants[i]
                path = _apply(ws, root, mutant)
                try:
                    results[i] = run_suite(ws, targets[mutant.region.task], server=servers[k])
                finally:
                    shutil.copy2(root / mutant.region.path, path)
                bar.update()

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(worker, range(min(jobs, len(mutants)))))
    bar.close()
    return results


def _indented(code: str, indent: str) -> list[str]:
    return [indent + line if line else line for line in textwrap.dedent(code).strip("\n").splitlines()]


def verify(root: Path, jobs: int = 2, progress: bool = True,
           tasks: set[str] | None = None, wrong_file: Path | None = None) -> Report:
    """Run checks (a)-(e) on the project at ``root``; see the module docstring.

    ``tasks`` limits the mutants of (c) and (e) to those tasks (a quick check while writing
    a task's checks); (a), (b) and (d) always cover the whole project. ``wrong_file``: a
    Python file with a ``WRONG_ANSWERS`` list checked *instead of* the project's catalogue
    and the stubs (wrong answers kept outside the repository, e.g. a blind audit's).
    """
    root = root.resolve()
    check_project(root)
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    threads = threads_per_process(jobs)  # the servers' suites run side by side
    with ExitStack() as servers_open:
        servers = [servers_open.enter_context(ForkServer(threads)) for _ in range(jobs)]
        return _verify(root, servers, progress, tasks, wrong_file)


def _verify(root: Path, servers: list[ForkServer], progress: bool, tasks: set[str] | None,
            wrong_file: Path | None) -> Report:
    report = Report()
    regions = [r for r in find_regions(root) if r.cell is None]
    with tempfile.TemporaryDirectory(prefix="ftlab-learner-") as tmp, \
            ThreadPoolExecutor(max_workers=2) as pool:
        learner = Path(tmp) / "learner"

        def learner_suite() -> SuiteRun:
            release(root, learner)
            return run_suite(learner, server=servers[-1])

        # the reference and the learner edition run side by side when there are two servers
        learner_future = pool.submit(learner_suite) if len(servers) > 1 else None
        reference = run_suite(root, trace=regions, server=servers[0])
        learner_run = learner_future.result() if learner_future else learner_suite()
        if reference.exit_code == 5 and not regions:
            report.notes.append("no milestone tests and no solution regions yet: nothing to grade")
            return report
        if reference.broken:
            report.problems.append(f"(a) pytest broke on the reference ({reference.broken}):\n"
                                   + reference.output[-2000:])
            return report
        _check_reference(reference, report)
        path = load_path(root)
        traced = traced_needs(reference.records)
        if path is not None and traced != path["needs"]:
            report.problems.append(f"(g) {PATH_FILE} says the checks of {path['needs']} need "
                                   f"other tasks, but the traced reference run shows {traced}: "
                                   "update its 'needs' (the learner README states them)")
        if learner_run.broken:
            report.problems.append(f"(b) pytest broke on the learner edition "
                                   f"({learner_run.broken}):\n" + learner_run.output[-2000:])
        else:
            _check_learner(learner_run, regions, report)
        _check_leaks(root, learner, find_regions(root), report)

    by_task = {r.task: r for r in regions}
    catalogue = load_catalogue(root) if wrong_file is None else load_wrong_file(wrong_file)
    mutants = [Mutant(r, [r.stub_line()]) for r in regions if wrong_file is None]
    for wrong in catalogue:
        if wrong.task not in by_task:
            report.problems.append(f"(e) wrong answer '{wrong.label}' names {wrong.task}, "
                                   "which has no solution region")
            continue
        region = by_task[wrong.task]
        mutants.append(Mutant(region, _indented(wrong.code, region.indent), wrong))
    if tasks is not None:
        unknown = sorted(set(tasks) - set(by_task))
        if unknown:
            report.problems.append(f"no solution region for {', '.join(unknown)}")
        mutants = [m for m in mutants if m.region.task in tasks]
    targets = tests_of_tasks(reference.records)
    for region in regions:
        if region.task not in targets and (tasks is None or region.task in tasks):
            report.problems.append(f"(c) ungraded region {region.task} at {region.where}: "
                                   "no milestone test runs its lines")
    own = {task: [r["nodeid"] for r in reference.records if r["task"] == task]
           for task in by_task}
    mutants = [m for m in mutants if own[m.region.task]]
    runs = _run_mutants(root, mutants, own, servers, progress)
    for mutant, run in zip(mutants, runs):
        task = mutant.region.task
        failed = [r for r in run.records if r["outcome"] in ("failed", "blocked")]
        label = mutant.wrong.label if mutant.wrong else "stub"
        if run.broken:
            report.problems.append(f"{task} {label}: pytest broke ({run.broken})")
        elif mutant.wrong is None:
            if not any(r["task"] == task for r in failed):
                report.problems.append(f"(c) ungraded region {task} at {mutant.region.where}: "
                                       f"with it stubbed, every test of {task} passes")
        else:
            _judge_wrong(mutant.wrong, failed, report)
    wrong_count = sum(m.wrong is not None for m in mutants)
    report.notes.append(f"{len(mutants) - wrong_count} regions, {wrong_count} wrong answers checked")
    return report


def _judge_wrong(wrong: WrongAnswer, failed: list[dict], report: Report) -> None:
    teaching = [r for r in failed if r["task"] == wrong.task
                and wrong.task in mentioned_tasks(r["message"])
                and all(p.lower() in r["message"].lower() for p in wrong.message_contains)]
    if not failed:
        report.problems.append(f"(e) uncaught wrong answer for {wrong.task}: '{wrong.label}' "
                               "passes every check")
    elif not teaching:
        report.problems.append(
            f"(e) wrong answer for {wrong.task} '{wrong.label}' fails, but no check of "
            f"{wrong.task} says {wrong.task} and {list(wrong.message_contains)}; first: "
            f"{failed[0]['nodeid']}: {failed[0]['message']}")
