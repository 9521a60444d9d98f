"""The learner's path through the real course, tried on its learner edition as a learner
would: Run All of notebook 01 with no task done reaches the end, the check cells work from
``notebooks/``, ``pytest milestones -m m1`` speaks briefly, reference outputs are kept as
*Expected output*, and the learner README starts with the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.course.path import load_path, traced_needs
from ftlab.course.release import EXPECTED_TAG, expected_output_cell, release

ROOT = Path(__file__).resolve().parents[1]
M1_TASKS = [f"M1.{n}" for n in range(1, 7)]


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    """The learner edition of this project."""
    out = tmp_path_factory.mktemp("learner") / "course"
    release(ROOT, out)
    return out


def _learner_env(edition: Path) -> dict[str, str]:
    """A learner's environment: their own ``src`` first (as their editable install does)."""
    return {**os.environ, "PYTHONPATH": str(edition / "src")}


def test_run_all_of_notebook_01_reaches_the_end_with_no_task_done(edition):
    """Each cell that needs an unfinished task says so in one line; every check cell runs
    from notebooks/ and names the file to edit; nothing stops the notebook."""
    nb = _run_all(edition, "01_data_prep.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            for c in code]
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    skipped = [t for t in text if t.startswith("skipped: needs ")]
    assert len(skipped) >= 5, text
    assert all(len(t.strip().splitlines()) == 1 for t in skipped), skipped
    assert "skipped: needs M1.1 not started: implement to_conversation in " \
           "src/ftlab/data/normalize.py" in "".join(skipped)
    checks = {"".join(c.source): t for c, t in zip(code, text) if "".join(c.source).startswith("check(")}
    assert checks['check("M1.1")'].strip() == (
        "M1.1 not started: implement to_conversation in src/ftlab/data/normalize.py "
        "(notebooks/01_data_prep.ipynb explains it)")
    table = checks['check("m1")']
    assert "m1        0/6 tasks   M1.1 not started" in table and len(table.splitlines()) == 7


NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def _run_all(edition: Path, name: str):
    """Run All of a learner-edition notebook as a learner's kernel would (their own src);
    returns the executed notebook (an error in any cell raises)."""
    import nbformat
    from nbclient import NotebookClient

    path = edition / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    os.environ["PYTHONPATH"] = str(edition / "src")  # the kernel inherits it
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.pop("PYTHONPATH")
    return nb


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if not n.startswith("01_")])
def test_run_all_of_every_notebook_reaches_the_end_with_no_task_done(edition, name):
    """Every notebook of the untouched learner edition runs to its end: each cell that
    needs an unfinished task (the first cell's work included) says so in one line."""
    nb = _run_all(edition, name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]
    said = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            for c in code]
    skipped = [t for t in said if t.startswith("skipped: needs ")]
    assert skipped and all(len(t.strip().splitlines()) == 1 for t in skipped), skipped


def test_notebooks_name_only_files_the_learner_edition_ships(edition):
    """A path a notebook's text or code names (``benchmarks/results/x.md``,
    ``src/ftlab/train/distributed.py``) is in the learner edition; a file the run itself
    writes (inside a run folder) is not named as a path of the project, and one the
    notebook says the learner edition does not ship is allowed."""
    import re

    named = re.compile(r"(?<![\w./$-])((?:[\w-]+/)+[\w.-]+\.(?:md|py|json|jsonl|yaml|ipynb|csv|txt))\b")
    missing = []
    for notebook in sorted((edition / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        for path in sorted(set(named.findall(text))):
            made = path.startswith(("runs/", "rl/", "capstone/", "grpo/", "train/"))
            bases = (edition, notebook.parent, edition / "data")  # data files: data_dir() / ...
            said = "not ship" in text[text.index(path):text.index(path) + 120]  # says it is absent
            if not (made or said) and not any((base / path).exists() for base in bases):
                missing.append(f"{notebook.name}: {path}")
    assert not missing, missing


def test_milestone_checks_speak_briefly_on_an_untouched_learner_edition(edition):
    proc = subprocess.run([sys.executable, "-m", "pytest", "milestones", "-m", "m1",
                           "-p", "no:cacheprovider"], cwd=edition, env=_learner_env(edition),
                          capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) <= 30, proc.stdout
    for task, function, file in [("M1.1", "to_conversation", "normalize.py"),
                                 ("M1.6", "collate", "collate.py")]:
        assert any(line.startswith(f"{task} not started: implement {function} in "
                                   f"src/ftlab/data/{file}") for line in lines), proc.stdout
    assert all(t in lines[-2] for t in M1_TASKS)  # the progress table, last before the totals
    assert "Traceback" not in proc.stdout and "DeprecationWarning" not in proc.stdout


def test_a_failing_task_shows_its_teaching_message_and_the_function_to_edit(edition, capsys):
    """A plausible wrong M1.3 (the end-of-turn token masked), checked from the notebook
    helper: the teaching message and where to edit, no source listing; the right answer
    then passes."""
    from ftlab.course.notebook import check

    labels = edition / "src/ftlab/data/labels.py"
    original = labels.read_text()
    reference = (ROOT / "src/ftlab/data/labels.py").read_text()
    start, end = reference.index("### BEGIN SOLUTION M1.3"), reference.index("### END SOLUTION")
    body = reference[reference.index("\n", start) + 1:reference.rindex("\n", 0, end) + 1]
    stub = next(line for line in original.splitlines(keepends=True) if '"M1.3 not started' in line)
    masked = body.replace("spans = assistant_spans(conversation, tokenizer)",
                          "spans = [(s, e - len(tokenizer.eos_token))"
                          " for s, e in assistant_spans(conversation, tokenizer)]")
    assert masked != body
    try:
        labels.write_text(original.replace(stub, masked))
        assert not check("M1.3", project=edition)
        out = capsys.readouterr().out
        assert out.startswith("M1.3 FAIL (edit tokenize_with_labels in src/ftlab/data/labels.py)")
        assert "[M1.3]" in out and "likely cause:" in out and "EOS masked" in out
        assert "def tokenize_with_labels" not in out and len(out.splitlines()) <= 10, out
        labels.write_text(original.replace(stub, body))
        assert check("M1.3", project=edition)
        assert capsys.readouterr().out.startswith("M1.3 pass (")
    finally:
        labels.write_text(original)


def test_the_learner_readme_starts_with_the_path(edition):
    readme = (edition / "README.md").read_text()
    start = readme.index("## Start here")
    assert start < readme.index("## Grade") < readme.index("## Tasks")
    assert ".venv/bin/jupyter lab notebooks/01_data_prep.ipynb" in readme[start:]
    path = load_path(ROOT)
    for title, time in path["milestones"].values():
        assert f"| {title} | {time} |" in readme
    for task, needs in path["needs"].items():
        assert f"**{task}** needs {', '.join(needs)}" in readme
    notebooks = (edition / "notebooks/README.md").read_text()
    assert "nbval" not in notebooks and "Run All" in notebooks


def test_released_notebooks_keep_reference_outputs_as_expected_output(edition):
    ref = json.loads((ROOT / "notebooks/02_lora.ipynb").read_text())
    ours = json.loads((edition / "notebooks/02_lora.ipynb").read_text())
    shown = [c for c in ref["cells"] if c["cell_type"] == "code" and any(
        o["output_type"] == "display_data" and "image/png" in o.get("data", {})
        for o in c["outputs"])]
    assert shown, "notebook 02 shows plots"
    for i, cell in enumerate(ours["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == []
            after = ours["cells"][i + 1] if i + 1 < len(ours["cells"]) else None
            if after and EXPECTED_TAG in after["metadata"].get("tags", []):
                assert "".join(after["source"]).startswith("> **Expected output**")
    pictures = [c for c in ours["cells"] if c.get("attachments")]
    assert len(pictures) >= len(shown)
    png = next(iter(pictures[0]["attachments"].values()))["image/png"]
    want = {"".join(o["data"]["image/png"]).strip() for c in shown for o in c["outputs"]
            if "image/png" in o.get("data", {})}
    assert png in want


def test_expected_output_leaves_out_widgets_stderr_and_errors():
    outputs = [{"output_type": "stream", "name": "stderr", "text": "warn\n"},
               {"output_type": "display_data", "data": {
                   "application/vnd.jupyter.widget-view+json": {}, "text/plain": "bar"}},
               {"output_type": "error", "ename": "X", "evalue": "", "traceback": []}]
    assert expected_output_cell(outputs, "c1") is None
    cell = expected_output_cell([{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
                                 {"output_type": "execute_result", "data": {"text/plain": "42"}}],
                                "c2")
    assert "".join(cell["source"]).endswith("```text\na\nb\n```\n\n```text\n42\n```")


def test_an_unfinished_task_reached_from_the_command_line_is_one_line(capsys, monkeypatch):
    import ftlab.pipeline.cli as pipeline_cli

    def stub(*args, **kwargs):
        raise NotImplementedError("C.3 not started: implement chain in "
                                  "src/ftlab/pipeline/runner.py (notebooks/06_capstone.ipynb "
                                  "explains it)")

    monkeypatch.setattr(pipeline_cli, "run_command", stub)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err == ("ftlab: error: C.3 not started: implement chain in src/ftlab/pipeline/"
                   "runner.py (notebooks/06_capstone.ipynb explains it)\n")


@pytest.mark.parametrize("command", ["release", "grade", "verify"])
def test_course_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit):
        main(["course", command, "--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 25, out
    if command == "release":
        assert "OUT  " in out and "folder to write the learner edition into" in out


def test_traced_needs_come_from_the_regions_other_tasks_checks_run():
    records = [{"task": "M5.3", "exercised": ["M2.3", "M5.3", "M2.4"]},
               {"task": "M5.3", "exercised": ["M5.3"]}, {"task": "M1.1", "exercised": ["M1.1"]},
               {"task": None, "exercised": ["M1.2"]}]
    assert traced_needs(records) == {"M5.3": ("M2.3", "M2.4")}
