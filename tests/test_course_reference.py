"""The real project's course: ``ftlab course verify`` on this repository (minutes: every
region stubbed and every catalogued wrong answer run against its task's checks). In a file of
its own so that pytest-xdist can give it a worker while the other runs the rest."""

from __future__ import annotations

from pathlib import Path

from ftlab.course.verify import verify

ROOT = Path(__file__).resolve().parents[1]


def test_reference_course_verifies():
    """The real project: every milestone that has landed passes ``ftlab course verify``."""
    report = verify(ROOT, progress=False)
    assert report.ok, "\n".join(report.problems)
