"""``ftlab course release OUT``: write the learner edition of the project.

The learner edition is a complete project: ``src/`` with every solution region replaced by
its stub (all other bytes identical), notebooks with outputs cleared and solution regions
stubbed, ``course.json`` (the task list), ``milestones/``, ``data/``, ``configs/``, ``pyproject.toml`` (tests folder dropped
from ``testpaths``), ``constraints.txt``, ``LICENSE`` and a learner README. Maintainer tests,
CI, benchmarks and the wrong-answer catalogue stay behind.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

from ftlab.course.grade import render_markdown, summarize
from ftlab.course.manifest import MANIFEST, manifest_entry
from ftlab.course.path import load_path, start_here
from ftlab.course.regions import Region, find_regions, source_text, stub_text
from ftlab.course.tasks import notebook_of, sort_key
from ftlab.errors import FtlabError

COPIED = ("src", "notebooks", "milestones", "data", "configs", "pyproject.toml",
          "constraints.txt", "LICENSE")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info",
                                 ".pytest_cache", ".base_model-*", "*~", ".#*", "*.orig",
                                 "*.rej", "*.bak", "*.swp", "grades.*")
"""The learner edition's list of tasks (the regions are gone from its sources)."""
TESTPATHS = ('testpaths = ["tests", "milestones", "notebooks"]',
             'testpaths = ["milestones"]\npythonpath = ["src"]')
"""The learner's pytest collects only milestones and imports the learner's own src first."""
ADDOPTS = 'addopts = "--strict-markers --tb=no -rN"'
"""The learner's pytest prints no tracebacks: the course plugin prints one line per task not
started or blocked and the teaching message of each failing one, then the progress table."""
NOTEBOOKS_README = """# Notebooks

Open them in order in JupyterLab (`.venv/bin/jupyter lab`): `01_data_prep` … `05_eval_merge`,
then `06_capstone`; `07_scale_out` (data-parallel training, task M4.6) and `11_midtraining`
(the learning-rate schedules of continued pre-training, M4.7) are advanced tracks after
`04_training_loop`; `08_rl_grpo` (reinforcement learning with verifiable rewards, tasks
C.4 and C.5), `09_rewards_rlaif` (reward models and AI feedback, C.6 and C.7) and
`10_distillation` (a small student learns from the base model, C.8) come after
`06_capstone`. Each opens with learning objectives and a hardware box and runs top to
bottom on a CPU in about a minute once its tasks are done. Before that, *Run All* still
reaches the end: a cell that needs an unfinished task says so in one line. After each
exercise section a `check("M1.1")` cell runs that task's checks; under each cell an
*Expected output* block shows what the reference solution printed.
"""


class ReleaseError(FtlabError):
    """The learner edition cannot be written where asked."""


def check_project(root: Path) -> None:
    """Raise unless ``root`` looks like a course project (``src/`` and ``milestones/``)."""
    missing = [d for d in ("src", "milestones") if not (root / d).is_dir()]
    if missing:
        raise ReleaseError(f"{root}: not a course project (missing {', '.join(d + '/' for d in missing)})")


def _check_out(root: Path, out: Path, force: bool) -> None:
    root, out = root.resolve(), out.resolve()
    if out == root or root.is_relative_to(out) or out.is_relative_to(root):
        raise ReleaseError(f"{out}: overlaps the project {root}; write the learner edition "
                           "outside it")
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ReleaseError(f"{parent}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReleaseError(f"{out}: not empty; pass --force to replace its contents")


def _clear_out(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


EXPECTED_TAG = "expected-output"
"""Tag of the markdown cell that shows a code cell's reference output in the learner edition."""


def expected_output_cell(outputs: list[dict], key: str) -> dict | None:
    """A markdown cell showing ``outputs`` (a code cell's reference outputs) as the learner
    edition's *Expected output*: printed text and plain results as text blocks, images as
    attachments, markdown as it is; progress widgets, stderr and errors are left out.
    None when nothing is left to show. ``key`` names the attachments."""
    parts, attachments = [], {}
    for n, output in enumerate(outputs):
        if output["output_type"] == "stream" and output.get("name") == "stdout":
            parts.append("```text\n" + source_text(output["text"]).rstrip("\n") + "\n```")
        elif output["output_type"] in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "image/png" in data:
                name = f"{key}-{n}.png"
                attachments[name] = {"image/png": source_text(data["image/png"]).strip()}
                parts.append(f"![expected output]({'attachment:' + name})")
            elif "text/markdown" in data:
                parts.append(source_text(data["text/markdown"]))
            elif "text/plain" in data and not any(k.startswith("application/vnd.jupyter.widget")
                                                  for k in data):
                parts.append("```text\n" + source_text(data["text/plain"]).rstrip("\n") + "\n```")
    if not parts:
        return None
    head = ("> **Expected output** — what the reference solution shows for the cell above "
            "(yours appears under that cell when you run it):")
    cell = {"cell_type": "markdown", "metadata": {"tags": [EXPECTED_TAG]},
            "source": "\n\n".join([head, *parts]).splitlines(keepends=True)}
    if attachments:
        cell["attachments"] = attachments
    return cell


SETUP_CALL = "setup_notebook()"
"""The call that lets Run All go past unfinished tasks (:mod:`ftlab.course.notebook`)."""


def split_after_setup(cell: dict) -> list[dict]:
    """``cell`` as two cells when it calls :data:`SETUP_CALL` and goes on after it: the
    guard guards the cells *after* the one that set it up, so work in the setup cell itself
    (loading data that needs a task) would stop a learner's Run All with a traceback. The
    second cell gets the lines after the call; the outputs stay with it."""
    lines = source_text(cell["source"]).splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == SETUP_CALL),
              None)
    rest = lines[at + 1:] if at is not None else []
    if not "".join(rest).strip() or any(line.startswith((" ", "\t")) for line in rest[:1]):
        return [cell]
    first = {**cell, "source": lines[:at + 1], "outputs": [], "execution_count": None}
    second = {**cell, "source": rest, **({"id": f"{cell['id']}-after-setup"} if "id" in cell else {})}
    return [first, second]


def _release_notebook(src: Path, dst: Path, regions: list[Region]) -> None:
    """Copy a notebook with solution regions stubbed and outputs cleared; each cleared
    output is kept as an *Expected output* markdown cell right after its cell. A cell that
    sets up the Run All guard and goes on is split after the call (:func:`split_after_setup`)."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    by_cell = defaultdict(list)
    for region in regions:
        by_cell[region.cell].append(region)
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            cells.append(cell)
            continue
        *setup, cell = split_after_setup(cell) if index not in by_cell else [cell]
        cells += [*setup, cell]
        expected = expected_output_cell(cell.get("outputs", []), f"cell{index}")
        if expected is not None and "id" in cell:
            expected["id"] = f"{cell['id']}-expected"
        cell["outputs"], cell["execution_count"] = [], None
        if index in by_cell:
            cell["source"] = stub_text(source_text(cell["source"]), by_cell[index]).splitlines(
                keepends=True)
        if expected is not None:
            cells.append(expected)
    nb["cells"] = cells
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _grading_section() -> list[str]:
    """How grading works, with an example table rendered by the grader itself."""
    def record(task: str, outcome: str, message: str = "", blocked_by: tuple = ()) -> dict:
        return {"nodeid": f"milestones/test_{task}", "task": task, "outcome": outcome,
                "message": message, "blocked_by": list(blocked_by)}

    example = summarize([
        record("M1.1", "passed"),
        record("M1.3", "failed", "[M1.3] EOS of each assistant turn is a target\n"
               "  likely cause: EOS masked: the end-of-turn token must stay a target"),
        record("M5.3", "blocked", "NotImplementedError: M2.4 inject_lora", ("M2.4",)),
    ], set())
    table = [line for line in render_markdown(example).splitlines()[2:] if line]
    return [
        "## Grade", "",
        "`.venv/bin/ftlab course grade` runs every milestone's checks and writes `grades.md` and",
        "`grades.json` here: one row per task with its result and, for a failing task, the first",
        "failing check and its likely cause. A task is *blocked by* another when its checks stop on",
        "that task's unfinished stub: finish the one named first. For example:", "",
        *table,
    ]


def learner_readme(regions: list[Region], path: dict | None = None) -> str:
    """The learner edition's README: how to work, and the tasks by milestone."""
    lines = [
        "# ftlab — learner edition", "",
        "You build LLM fine-tuning yourself, offline on a CPU: each task is a function in",
        "`src/ftlab/` that raises `NotImplementedError` naming its task id, the file and",
        "function to write, and the notebook that explains it.", "",
        "## Set up (once)", "", "```bash",
        "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && "
        ".venv/bin/pip install -c constraints.txt -e .",
        "```", "",
        *start_here(path), "",
        *_grading_section(), "",
        "## Tasks", "",
    ]
    for region in sorted(regions, key=lambda r: sort_key(r.task)):
        lines.append(f"- **{region.task}** `{region.qualname}` in `{region.path}` "
                     f"({notebook_of(region.task)})")
    return "\n".join(lines) + "\n"


def release(root: Path, out: Path, force: bool = False) -> list[Region]:
    """Write the learner edition of the project at ``root`` into ``out``.

    Refuses a non-empty ``out`` unless ``force`` (then its contents are replaced), an ``out``
    that is or contains the project, or one inside a copied folder. Writes nothing outside
    ``out``. Returns the regions stubbed.
    """
    check_project(root)
    regions = find_regions(root)
    _check_out(root, out, force)
    out.mkdir(parents=True, exist_ok=True)
    _clear_out(out)
    for item in COPIED:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, out / item, ignore=IGNORED)
        elif src.is_file():
            shutil.copy2(src, out / item)
    by_path = defaultdict(list)
    for region in regions:
        by_path[region.path].append(region)
    for rel, file_regions in by_path.items():
        if rel.endswith(".ipynb"):
            continue
        text = (root / rel).read_bytes().decode("utf-8")  # bytes: keep CRLF as it is
        stubbed = stub_text(text, file_regions)
        try:
            ast.parse(stubbed)
        except SyntaxError as e:
            raise ReleaseError(f"{rel}:{e.lineno}: the stubbed file does not parse ({e.msg}); "
                               "indent each BEGIN marker like the code it replaces") from None
        (out / rel).write_bytes(stubbed.encode("utf-8"))
    for nb in sorted((root / "notebooks").rglob("*.ipynb")) if (root / "notebooks").is_dir() else []:
        rel = nb.relative_to(root).as_posix()
        _release_notebook(nb, out / rel, by_path.get(rel, []))
    pyproject = out / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text()
        if TESTPATHS[0] not in text:
            raise ReleaseError(f"{root / 'pyproject.toml'}: expected the line {TESTPATHS[0]} "
                               "(the learner edition keeps only milestones)")
        text = re.sub(r"(?m)^addopts = .*\n", "", text).replace(
            TESTPATHS[0], f"{TESTPATHS[1]}\n{ADDOPTS}")
        pyproject.write_text(text)
    if (out / "notebooks").is_dir():
        (out / "notebooks/README.md").write_text(NOTEBOOKS_README, encoding="utf-8")
    (out / "README.md").write_text(learner_readme(regions, load_path(root)), encoding="utf-8")
    manifest = [manifest_entry(r) for r in sorted(regions, key=lambda r: sort_key(r.task))]
    (out / MANIFEST).write_text(json.dumps({"tasks": manifest}, indent=1) + "\n")
    return regions
