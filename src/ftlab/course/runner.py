"""Run a project's milestone suites in a subprocess and collect per-test results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ftlab.course.plugin import RESULTS_ENV

TIMED_OUT = -1
NO_RESULTS = -2

BROKEN_EXIT_CODES = {2: "interrupted or collection error", 3: "internal error",
                     4: "usage error", 5: "no tests collected", TIMED_OUT: "timed out",
                     NO_RESULTS: "the ftlab.course.plugin recorded no results"}


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


def run_suite(project: Path, args: list[str] = (), timeout: float = 1800) -> SuiteRun:
    """Run ``pytest milestones <args>`` in ``project`` with its own ``src`` first on the path.

    The project's ``src/`` is put first on ``PYTHONPATH`` so a learner edition imports its
    own ``ftlab``, never the installed reference; the course plugin is loaded explicitly,
    so results are recorded even where ``milestones/conftest.py`` does not declare it.
    A run past ``timeout`` seconds, or one that records no results, counts as broken.
    """
    with tempfile.TemporaryDirectory(prefix="ftlab-results-") as tmp:
        results = Path(tmp) / "results.json"
        env = {**os.environ, RESULTS_ENV: str(results), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join(
                   [str(project / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        cmd = [sys.executable, "-m", "pytest", "milestones", "-q", "-p", "no:cacheprovider",
               "-p", "ftlab.course.plugin", *args]
        try:
            proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return SuiteRun(TIMED_OUT, [], f"{e.stdout or ''}{e.stderr or ''}")
        if not results.is_file():
            code = NO_RESULTS if proc.returncode in (0, 1) else proc.returncode
            return SuiteRun(code, [], proc.stdout + proc.stderr)
        records = json.loads(results.read_text())
    return SuiteRun(proc.returncode, records, proc.stdout + proc.stderr)
