"""Committed notebook outputs and benchmark results are read on other machines: they must not
name the folders of the machine that produced them (a checkout, a temporary run folder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w:/.~$<>-])/(?:[\w.@+-]+/)+[\w.@+-]*")
"""An absolute POSIX path of two or more parts (``/tmp/x/y``); not a URL's path, a ratio
(``3/4``), ``runs/x`` or ``$RUN/x``."""


def _output_texts(cell: dict):
    """The readable text of a cell's outputs: streams, text/markdown/html/json data and
    tracebacks (not images)."""
    for out in cell.get("outputs", []):
        yield "".join(out.get("text", ""))
        for kind, value in out.get("data", {}).items():
            if kind.startswith("text/") or kind.endswith("json"):
                yield "".join(value) if isinstance(value, list) else str(value)
        yield "\n".join(out.get("traceback", []))


def absolute_paths() -> list[str]:
    """``file [cell n]: path`` for each absolute path in committed outputs and results."""
    found = []
    for notebook in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            found += [f"{notebook.relative_to(ROOT)} cell {i}: {m.group()}"
                      for text in _output_texts(cell) for m in ABSOLUTE.finditer(text)]
    for result in sorted((ROOT / "benchmarks" / "results").glob("*")):
        found += [f"{result.relative_to(ROOT)}: {m.group()}"
                  for m in ABSOLUTE.finditer(result.read_text())]
    return found


def test_the_pattern_finds_absolute_paths_only():
    text = ("/tmp/ftlab-06-x/capstone and /home/a/data.jsonl, not runs/06/x, $RUN/sft, "
            "https://example.com/a/b, 3/4 or loss/ppl")
    assert ABSOLUTE.findall(text) == ["/tmp/ftlab-06-x/capstone", "/home/a/data.jsonl"]


def test_committed_outputs_and_results_name_no_absolute_path():
    """Outputs show paths relative to the project (``data/sft/...``) or the run folder
    (``sft/adapter``); a notebook writes under ``runs/<notebook>`` (``scratch_dir``)."""
    found = absolute_paths()
    assert not found, ("absolute paths in committed outputs (print them through "
                       "ftlab.paths.shown, write under scratch_dir, re-execute):\n"
                       + "\n".join(found[:20]))


def test_shown_paths_are_relative_to_the_run_folder_then_the_project(tmp_path):
    from ftlab.paths import project_dir, scratch_dir, shown

    run = tmp_path / "run"
    assert shown(run / "sft/adapter", run) == "sft/adapter"
    assert shown(project_dir() / "data/sft/messages.jsonl") == "data/sft/messages.jsonl"
    assert shown(project_dir() / "data/sft/messages.jsonl", run) == "data/sft/messages.jsonl"
    assert shown(str(tmp_path / "elsewhere.jsonl")) == str(tmp_path / "elsewhere.jsonl")
    assert shown("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a Hub id, as given
    folder = scratch_dir("test-scratch")
    try:
        (folder / "left.txt").write_text("from an earlier Run All")
        assert scratch_dir("test-scratch") == folder and not any(folder.iterdir())
        assert shown(folder / "x.jsonl") == "runs/test-scratch/x.jsonl"
    finally:
        folder.rmdir()


def test_benchmarks_record_the_cpu_they_ran_on():
    """Every benchmark result written from now on says which CPU measured it."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _env import environment
    finally:
        sys.path.pop(0)
    from ftlab.hardware import SPEED_FLAGS, cpu_flags

    cpu = environment()["cpu"]
    assert cpu["model"] and cpu["cores"] >= 1 and cpu["torch_capability"]
    assert cpu["flags"] == [f for f in SPEED_FLAGS if f in cpu_flags()]
