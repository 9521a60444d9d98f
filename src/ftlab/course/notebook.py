"""The course notebooks' helpers: check a task from the notebook, and Run All past unfinished
tasks.

Each notebook's first cell calls :func:`setup_notebook`; each exercise section ends with a
``check("M1.1")`` cell::

    from ftlab.course.notebook import check, setup_notebook
    setup_notebook()
    ...
    check("M1.1")          # this task's checks: pass, or what to do next
    check("m1")            # the whole milestone, with its progress table

After :func:`setup_notebook`, a cell that stops on an unfinished task's stub (its
``NotImplementedError`` names the task) prints one line saying so instead of a traceback,
and the notebook goes on; a later cell that needs a name such a cell would have made — or
an object such a cell would have changed, having passed it to a function or called one of
its methods (``inject_lora(model, ...)``) — says which, in one line, too, until a cell makes
that name anew. Any other error stops the notebook as usual.
"""

from __future__ import annotations

import ast
import atexit
import re
from pathlib import Path

from ftlab.course.plugin import by_task, progress, task_lines, task_status
from ftlab.course.tasks import TASK_ID, mentioned_tasks, milestone_of

_MILESTONE = re.compile(r"^(m[1-9]|capstone)$")
_skipped: dict[str, str] = {}
"""Names a skipped cell would have made -> why it was skipped (shared by every cell)."""
_server = None


def project_root(start: Path | None = None) -> Path:
    """The course project being worked on: the nearest folder at or above ``start`` (default:
    the working directory, e.g. ``notebooks/``) with ``milestones/`` and ``src/ftlab/``, else
    the checkout this ``ftlab`` was imported from."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "milestones").is_dir() and (folder / "src" / "ftlab").is_dir():
            return folder
    return Path(__file__).resolve().parents[3]


def _fork_server():
    """One pre-importing pytest runner per kernel (see :mod:`ftlab.course.forkserver`), so a
    check costs the task's tests, not an interpreter start."""
    global _server
    if _server is None:
        from ftlab.course.forkserver import ForkServer

        _server = ForkServer()
        atexit.register(_server.close)
    return _server


def _suites(project: Path, milestones: set[str]) -> list[str]:
    """The milestone folders (``milestones/m1_data``, ``milestones/capstone``) to collect."""
    return [f"milestones/{p.name}" for p in sorted((project / "milestones").iterdir())
            if p.is_dir() and p.name.split("_")[0] in milestones]


def check(*what: str, project: Path | None = None) -> bool:
    """Run the checks of tasks (``"M1.1"``) or whole milestones (``"m1"``, ``"capstone"``)
    and print the verdict: ``M1.1 pass (18 checks)``, or one line for a task not started or
    blocked, or a failing task's teaching message and the function to edit; for a milestone
    also its progress table. Works from any folder of the project (``notebooks/`` too).
    Returns whether every task named passed."""
    from ftlab.course.manifest import task_locations
    from ftlab.course.runner import run_suite

    bad = [w for w in what if not (TASK_ID.match(w) or _MILESTONE.match(w))]
    if not what or bad:
        raise ValueError(f"check() takes task ids such as 'M1.1' or milestones such as 'm1' "
                         f"or 'capstone' (got {', '.join(map(repr, bad)) or 'nothing'})")
    project = project or project_root()
    tasks = [w for w in what if TASK_ID.match(w)]
    milestones = {w for w in what if _MILESTONE.match(w)} | {milestone_of(t) for t in tasks}
    select = None
    if not any(_MILESTONE.match(w) for w in what):
        select = " or ".join(f"test_{t.replace('.', '_').lower()}_" for t in tasks)
    run = run_suite(project, _suites(project, milestones), select=select, server=_fork_server())
    if run.broken:
        print(f"the checks could not run ({run.broken}):")
        print("\n".join(run.output.strip().splitlines()[-12:]))
        return False
    records = [r for r in run.records if r["task"] in tasks or milestone_of(r["task"] or "") in what]
    grouped = by_task(records)
    missing = [t for t in tasks if t not in grouped]
    for task in missing:
        print(f"{task}: no checks found in {project / 'milestones'}")
    passed = [t for t, rs in grouped.items() if task_status(rs)[0] == "pass"]
    for task in passed:
        print(f"{task} pass ({len(grouped[task])} checks)")
    for line in task_lines(records, task_locations(project)):
        print(line)
    if len(tasks) < len(what):
        print("\n".join(progress(records)))
    return bool(grouped) and not missing and len(passed) == len(grouped)


# -- Run All past unfinished tasks --------------------------------------------------------

def _made_names(tree: ast.AST) -> set[str]:
    """Names a cell binds (assignments, loops, imports, definitions, ``with ... as``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _touched_names(tree: ast.AST) -> set[str]:
    """Names of objects a cell may change in place: passed bare to a call, or the receiver
    of a method call (``f(model)``, ``model.train()``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names.update(a.id for a in [*node.args, *(k.value for k in node.keywords)]
                         if isinstance(a, ast.Name))
            if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                names.add(node.func.value.id)
    return names


def _loaded_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class _Changed(NameError):
    """A cell needs an object a skipped cell would have changed."""


def _needs(loaded: list[str]) -> None:
    """Raise :class:`_Changed` when a name this cell reads stands for an object a skipped
    cell would have made or changed (the cell would compute with a stale object)."""
    for name in loaded:
        if name in _skipped:
            raise _Changed(f"name {name!r} is stale", name=name)


def _changeable(name: str) -> bool:
    """Whether the kernel's ``name`` is data a call could change (not a module, class or
    function: ``plt.plot(...)`` changes no notebook state a later cell computes from)."""
    import inspect

    from IPython import get_ipython

    shell = get_ipython()
    value = shell.user_ns.get(name) if shell is not None else None
    return value is not None and not (inspect.ismodule(value) or inspect.isclass(value)
                                      or callable(value) and not hasattr(value, "state_dict"))


def _made(names: list[str]) -> None:
    """A cell that ran made ``names`` anew: they are no longer stale."""
    for name in names:
        _skipped.pop(name, None)


def unfinished(error: BaseException, names: list[str], touched: list[str] = ()) -> None:
    """Called by a guarded cell that raised ``error``: say in one line why the cell stopped
    when an unfinished task (or a name such a cell would have made or changed) is the
    reason, and remember ``names`` (what the cell would have made) and the changeable ones
    of ``touched`` (what it would have changed) for later cells; re-raise otherwise."""
    if isinstance(error, NotImplementedError) and mentioned_tasks(str(error)):
        why = str(error).splitlines()[0]
        print(f"skipped: needs {why}")
    elif isinstance(error, NameError) and getattr(error, "name", None) in _skipped:
        why = _skipped[error.name]
        print(f"skipped: needs `{error.name}` from a cell above that stopped ({why})")
    else:
        raise error
    for name in [*names, *filter(_changeable, touched)]:
        _skipped.setdefault(name, why)


class _GuardCells(ast.NodeTransformer):
    """Wrap each cell in ``try: ... except (NotImplementedError, NameError)`` that hands the
    error to :func:`unfinished`; a last expression stays last, so its value still shows."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        body = node.body
        if not body or any(isinstance(s, ast.ImportFrom) and s.module == "__future__"
                           for s in body):
            return node
        names = sorted(_made_names(node))
        touched = sorted(_touched_names(node) - set(names))
        loaded = sorted(_loaded_names(node) - set(names))
        last = body[-1] if isinstance(body[-1], ast.Expr) else None
        guarded = body[:-1] if last else body
        helpers = "__import__('ftlab.course.notebook', fromlist=['_'])"
        tree = ast.parse(
            f"try:\n    {helpers}._needs({loaded!r})\n"
            "except (NotImplementedError, NameError) as __ftlab_error:\n"
            f"    {helpers}.unfinished(__ftlab_error, {names!r}, {touched!r})\n"
            "    __ftlab_skip = True\n"
            f"else:\n    __ftlab_skip = False\n    {helpers}._made({names!r})\n")
        guard = tree.body[0]
        guard.body = [guard.body[0], *guarded]
        out = [guard]
        if last is not None:  # shown only when the cell ran to it
            tail = ast.parse("None if __ftlab_skip else None").body[0]
            tail.value.orelse = _guarded_value(last.value, names)
            out.append(tail)
        node.body = out
        return ast.fix_missing_locations(node)


def _guarded_value(value: ast.expr, names: list[str]) -> ast.expr:
    """``value`` evaluated with the same guard (a call of a lambda, so it stays an
    expression and IPython still displays the result)."""
    call = ast.parse(f"__import__('ftlab.course.notebook', fromlist=['_'])._value("
                     f"lambda: None, {names!r})", mode="eval").body
    call.args[0].body = value
    return call


def _value(thunk, names: list[str]):
    """The value of a cell's last expression, or None (said in one line) when it stops on
    an unfinished task."""
    try:
        return thunk()
    except (NotImplementedError, NameError) as error:
        unfinished(error, names)
        return None


def setup_notebook() -> None:
    """Let Run All go past cells that need an unfinished task (see the module doc).
    Idempotent; does nothing outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    if not any(isinstance(t, _GuardCells) for t in shell.ast_transformers):
        shell.ast_transformers.append(_GuardCells())
    _fork_server()  # imports its libraries in the background: the first check() starts fast
