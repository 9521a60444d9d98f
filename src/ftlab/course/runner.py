"""Run a project's milestone suites in a fresh interpreter and collect per-test results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ftlab.course.forkserver import ForkServer
from ftlab.course.plugin import RESULTS_ENV, TRACE_ENV
from ftlab.course.regions import Region

SUITE_OPTIONS = ("-p", "no:cacheprovider", "-p", "ftlab.course.plugin", "-p", "no:nbval",
                 "-o", "addopts=--strict-markers")
"""Milestone suites need no notebook plugin: without nbval (whose imports cost ~3 s of CPU
per run) and its ``--nbval-lax`` from the project's addopts, each run starts faster."""
TIMED_OUT = -1
NO_RESULTS = -2
KILLED = -3

BROKEN_EXIT_CODES = {2: "interrupted or collection error", 3: "internal error",
                     4: "usage error", 5: "no tests collected", TIMED_OUT: "timed out",
                     NO_RESULTS: "the ftlab.course.plugin recorded no results",
                     KILLED: "killed by a signal"}


@dataclass
class SuiteRun:
    """Outcome of one pytest run: its exit code, per-test records and captured output."""

    exit_code: int
    records: list[dict]
    output: str

    @property
    def broken(self) -> str | None:
        """Why the run itself broke (not a test failing), or None."""
        return BROKEN_EXIT_CODES.get(self.exit_code)


def run_suite(project: Path, targets: list[str] = ("milestones",), timeout: float = 1800,
              trace: list[Region] | None = None, server: ForkServer | None = None,
              select: str | None = None) -> SuiteRun:
    """Run ``pytest <targets>`` (folders, files or node ids; default every milestone) in
    ``project`` with its own ``src`` first on the path; ``select``: a ``-k`` expression.

    The project's ``src/`` is put first on ``PYTHONPATH`` so a learner edition imports its
    own ``ftlab``, never the installed reference; the course plugin is loaded explicitly,
    so results are recorded even where ``milestones/conftest.py`` does not declare it.
    With ``trace``, each record lists the tasks of those regions its test ran
    (``exercised``; see :mod:`ftlab.course.plugin`). With ``server``, pytest runs in a
    child forked from that :class:`ForkServer` (libraries already imported) instead of a
    new process. A run past ``timeout`` seconds, or one that records no results, counts as
    broken.
    """
    with tempfile.TemporaryDirectory(prefix="ftlab-results-") as tmp:
        results = Path(tmp) / "results.json"
        env = {**os.environ, RESULTS_ENV: str(results), "PYTHONDONTWRITEBYTECODE": "1",
               # each mutant is other code: a base-row cache entry would never be read again
               "FTLAB_CACHE": "off",
               "PYTHONPATH": os.pathsep.join(
                   [str(project / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        if trace is not None:
            spans = Path(tmp) / "regions.json"
            spans.write_text(json.dumps([{"task": r.task, "path": str(project / r.path),
                                          "begin": r.begin, "end": r.end} for r in trace]))
            env[TRACE_ENV] = str(spans)
        args = [*targets, "-q", *SUITE_OPTIONS, *(["-k", select] if select else [])]
        if server is not None:
            log = Path(tmp) / "output.txt"
            code = server.run(project, [str(project / "src")], env, args, log, timeout)
            output = log.read_text(errors="replace")
            if code < 0:
                code = TIMED_OUT if code == -signal.SIGALRM else KILLED
        else:
            try:
                proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=project,
                                      env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                return SuiteRun(TIMED_OUT, [], f"{e.stdout or ''}{e.stderr or ''}")
            code, output = proc.returncode, proc.stdout + proc.stderr
        if not results.is_file():
            return SuiteRun(NO_RESULTS if code in (0, 1) else code, [], output)
        records = json.loads(results.read_text())
    return SuiteRun(code, records, output)
