"""Solution regions: parse them from ``.py`` files and notebook code cells; stub them.

A region opens with ``### BEGIN SOLUTION <task-id>`` and closes with ``### END SOLUTION``,
each alone on its line. Regions never nest; every region is tagged with a valid task id;
a task id has one region in the whole project. Violations raise :class:`RegionError` with
``file:line`` of each problem.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
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
        """The line that replaces the region in the learner edition (no newline): it names
        the task, what to implement and where (the file to edit, or the notebook cell), and
        the notebook that explains it."""
        where = (f"in {self.path}" if self.cell is None else "in this notebook cell")
        return (f'{self.indent}raise NotImplementedError("{self.task} not started: implement '
                f'{self.qualname} {where} ({notebook_of(self.task)} explains it)")')


def _qualname(source: str, line: int, fallback: str | None) -> str | None:
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


def _comment_lines(text: str) -> set[int] | None:
    """Line numbers holding a comment token (so not inside a string); None if untokenizable."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        return {t.start[0] for t in tokens if t.type == tokenize.COMMENT}
    except (tokenize.TokenError, SyntaxError):
        return None


def parse_text(text: str, path: str, cell: int | None = None,
               fallback_name: str | None = None) -> tuple[list[Region], list[str]]:
    """Regions of one text and the problems found (``file:line: ...`` strings).

    Only marker lines that are comments count (a marker quoted in a string or docstring is
    text). In a ``.py`` file (``cell`` None) a region must sit inside a function: with no
    ``fallback_name`` a module-level region is a problem, since its stub would raise on
    import. Notebook regions are named "your turn".
    """
    regions, problems = [], []
    if "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text:
        return regions, problems  # no marker can match: skip tokenizing (most files)
    where = f"{path} cell {cell}" if cell is not None else path
    comments = _comment_lines(text)
    lines = text.splitlines()
    if comments is not None and len(lines) > len(text.split("\n")):
        comments = None  # exotic line breaks: tokenize and splitlines disagree on numbering
    open_at: tuple[int, str, str | None] | None = None
    for n, line in enumerate(lines, 1):
        if comments is not None and n not in comments:
            continue
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
            body = [b for b in lines[start : n - 1] if b.strip()]
            if body:  # the stub takes the indentation of the code it replaces
                indent = body[0][: len(body[0]) - len(body[0].lstrip())]
            if task is not None and TASK_ID.match(task):
                name = "your turn" if cell is not None else _qualname(text, start, fallback_name)
                if name is None:
                    problems.append(f"{where}:{start}: solution region {task} is not inside a "
                                    "function; its stub would raise when the module is imported")
                else:
                    regions.append(Region(task, path, start, n, indent, name, cell))
            open_at = None
    if open_at is not None:
        problems.append(f"{where}:{open_at[0]}: unterminated solution region (no "
                        "'### END SOLUTION' before the end)")
    return regions, problems


def replace_regions(text: str, replacements: list[tuple[Region, list[str]]]) -> str:
    """``text`` with each region's lines (markers included) replaced by the given lines.

    New lines take the line ending of the region's last line; a region ending the file
    without a line break leaves none after its last new line. All other bytes are kept.
    """
    lines = text.splitlines(keepends=True)
    for region, new in sorted(replacements, key=lambda rn: rn[0].begin, reverse=True):
        last = lines[region.end - 1]
        newline = last[len(last.rstrip("\r\n")):]
        body = "".join(line + (newline or "\n") for line in new)
        lines[region.begin - 1 : region.end] = [body if newline else body[:-1]]
    return "".join(lines)


def stub_text(text: str, regions: list[Region]) -> str:
    """``text`` with each region replaced by its stub line; all other bytes kept."""
    return replace_regions(text, [(r, [r.stub_line()]) for r in regions])


def read_source(path: Path) -> str:
    """A course file's text (bytes decoded, line endings kept); RegionError if not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RegionError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def source_text(value: str | list[str]) -> str:
    """A notebook field's text (``source``, an output's ``text``): nbformat stores it as one
    string or as a list of lines."""
    return "".join(value) if isinstance(value, list) else value


def notebook_cells(path: Path) -> list[tuple[int, str]]:
    """(index, source) of each code cell of a notebook; RegionError if it is not one."""
    try:
        nb = json.loads(read_source(path))
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RegionError(f"{path}: not a readable notebook ({e})") from None
    return [(i, source_text(c["source"]))
            for i, c in enumerate(cells) if c.get("cell_type") == "code"]


def course_files(root: Path) -> list[Path]:
    """Files that may hold regions: ``src/**/*.py`` and ``notebooks/**/*.ipynb``."""
    files = sorted((root / "src").rglob("*.py")) + sorted((root / "notebooks").rglob("*.ipynb"))
    return [f for f in files if "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts]


_parsed: dict[tuple[str, str], tuple[tuple[int, int, int], list[Region], list[str]]] = {}
"""(file, relative name) -> (the file's stat when parsed, its regions, its problems)."""


def _file_regions(file: Path, rel: str) -> tuple[list[Region], list[str]]:
    """Regions and problems of one course file, parsed again only when its size, time or
    inode changed (tokenizing every file costs ~0.3 s, and a catalogue asks once per
    wrong answer)."""
    st = file.stat()
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    key = (str(file), rel)
    cached = _parsed.get(key)
    if cached is None or cached[0] != stamp:
        if file.suffix == ".py":
            found, bad = parse_text(read_source(file), rel)
        else:
            found, bad = [], []
            for index, source in notebook_cells(file):
                r, p = parse_text(source, rel, cell=index)
                found += r
                bad += p
        cached = _parsed[key] = (stamp, found, bad)
    return list(cached[1]), list(cached[2])


def find_regions(root: Path) -> list[Region]:
    """Every region of the project at ``root``; raises :class:`RegionError` on any problem."""
    regions, problems = [], []
    for file in course_files(root):
        found, bad = _file_regions(file, file.relative_to(root).as_posix())
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
