"""Solution regions: parse them from ``.py`` files and notebook code cells; stub them.

A region opens with ``### BEGIN SOLUTION <task-id>`` and closes with ``### END SOLUTION``,
each alone on its line. Regions never nest; every region is tagged with a valid task id;
a task id has one region in the whole project. Violations raise :class:`RegionError` with
``file:line`` of each problem.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ftlab.course.tasks import TASK_ID, notebook_of
from ftlab.errors import FtlabError

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:[ \t]+(?P<task>\S+))?[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")


class RegionError(FtlabError):
    """Malformed solution regions (one line per problem, each with file:line)."""


@dataclass(frozen=True)
class Region:
    """One solution region.

    ``begin``/``end`` are 1-based line numbers of the marker lines within the file (or,
    for a notebook, within the cell's source); ``cell`` is the code-cell index or None.
    """

    task: str
    path: str
    begin: int
    end: int
    indent: str
    qualname: str
    cell: int | None = None

    @property
    def where(self) -> str:
        cell = f" cell {self.cell}" if self.cell is not None else ""
        return f"{self.path}{cell}:{self.begin}"

    def stub_line(self) -> str:
        """The line that replaces the region in the learner edition (no newline)."""
        return (f'{self.indent}raise NotImplementedError("{self.task} {self.qualname} '
                f'— see {notebook_of(self.task)}")')


def _qualname(source: str, line: int, fallback: str) -> str:
    """Dotted name of the innermost function or class enclosing ``line``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return fallback
    best: list[str] = []

    def visit(node: ast.AST, chain: list[str]) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if child.lineno <= line <= (child.end_lineno or child.lineno):
                    best = chain + [child.name]
                    visit(child, best)

    visit(tree, [])
    return ".".join(best) or fallback


def parse_text(text: str, path: str, cell: int | None = None,
               fallback_name: str = "your turn") -> tuple[list[Region], list[str]]:
    """Regions of one text and the problems found (``file:line: ...`` strings)."""
    regions, problems = [], []
    where = f"{path} cell {cell}" if cell is not None else path
    open_at: tuple[int, str, str | None] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        begin = BEGIN.match(line)
        if begin:
            task = begin.group("task")
            if open_at is not None:
                problems.append(f"{where}:{n}: nested solution region (the region opened at "
                                f"line {open_at[0]} is not closed); close it first")
            elif task is None:
                problems.append(f"{where}:{n}: untagged solution region; write "
                                "'### BEGIN SOLUTION <task-id>', e.g. M2.2")
            elif not TASK_ID.match(task):
                problems.append(f"{where}:{n}: invalid task id {task!r}; expected M<1-9>.<n> "
                                "or C.<n>")
            open_at = (n, begin.group("indent"), task)
        elif END.match(line):
            if open_at is None:
                problems.append(f"{where}:{n}: '### END SOLUTION' without a BEGIN")
                continue
            start, indent, task = open_at
            if task is not None and TASK_ID.match(task):
                name = _qualname(text, start, fallback_name) if cell is None else fallback_name
                regions.append(Region(task, path, start, n, indent, name, cell))
            open_at = None
    if open_at is not None:
        problems.append(f"{where}:{open_at[0]}: unterminated solution region (no "
                        "'### END SOLUTION' before the end)")
    return regions, problems


def stub_text(text: str, regions: list[Region]) -> str:
    """``text`` with each region replaced by its stub line; all other bytes kept."""
    lines = text.splitlines(keepends=True)
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        last = lines[region.end - 1]
        newline = last[len(last.rstrip("\r\n")):] or ""
        lines[region.begin - 1 : region.end] = [region.stub_line() + newline]
    return "".join(lines)


def notebook_cells(path: Path) -> list[tuple[int, str]]:
    """(index, source) of each code cell of a notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def course_files(root: Path) -> list[Path]:
    """Files that may hold regions: ``src/**/*.py`` and ``notebooks/*.ipynb``."""
    files = sorted((root / "src").rglob("*.py")) + sorted((root / "notebooks").glob("*.ipynb"))
    return [f for f in files if "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts]


def find_regions(root: Path) -> list[Region]:
    """Every region of the project at ``root``; raises :class:`RegionError` on any problem."""
    regions, problems = [], []
    for file in course_files(root):
        rel = file.relative_to(root).as_posix()
        if file.suffix == ".py":
            found, bad = parse_text(file.read_bytes().decode("utf-8"), rel,
                                    fallback_name=file.stem)
        else:
            found, bad = [], []
            for index, source in notebook_cells(file):
                r, p = parse_text(source, rel, cell=index)
                found += r
                bad += p
        regions += found
        problems += bad
    first: dict[str, Region] = {}
    for region in regions:
        if region.task in first:
            problems.append(f"{region.where}: duplicate solution region {region.task} "
                            f"(also at {first[region.task].where})")
        else:
            first[region.task] = region
    if problems:
        raise RegionError("\n".join(problems))
    return regions
