"""The learner edition's manifest (``course.json``): each task's function, file, notebook
and whether milestone checks grade it; read by the grader, the pytest plugin and the
notebook helpers to name the function to edit. The reference project has no manifest: its
solution regions say the same."""

from __future__ import annotations

import json
from pathlib import Path

from ftlab.course.regions import Region, find_regions
from ftlab.course.tasks import notebook_of
from ftlab.errors import FtlabError

MANIFEST = "course.json"


def manifest_entry(region: Region) -> dict:
    """One task's entry in the manifest."""
    return {"task": region.task, "qualname": region.qualname, "path": region.path,
            "notebook": notebook_of(region.task), "graded": region.cell is None}


def graded_tasks(project: Path) -> set[str]:
    """Tasks a project must grade: its code regions, or a learner edition's manifest."""
    manifest = project / MANIFEST
    if manifest.is_file():
        return {t["task"] for t in json.loads(manifest.read_text())["tasks"] if t["graded"]}
    return {r.task for r in find_regions(project) if r.cell is None}


def task_locations(project: Path) -> dict[str, tuple[str, str]]:
    """``task -> (function, file)`` of every task of a project (a learner edition's
    manifest, or the reference's regions); empty when neither is readable."""
    manifest = project / MANIFEST
    try:
        if manifest.is_file():
            return {t["task"]: (t["qualname"], t["path"])
                    for t in json.loads(manifest.read_text())["tasks"]}
        return {r.task: (r.qualname, r.path) for r in find_regions(project)}
    except (FtlabError, OSError, ValueError, KeyError):
        return {}
