"""One run per run folder at a time: an exclusive lock held for the whole run.

``ftlab run`` takes ``<run_dir>/.ftlab-run.lock`` (an OS file lock through ``filelock``,
released by the operating system when the process ends, however it ends) and writes who
holds it to ``<run_dir>/.ftlab-run.json``: the pid, the host and when it started. A second
run on the same folder fails at once with :class:`~ftlab.errors.ConfigError` naming the
holder. A holder record left by a process that died (SIGKILL, a crash, a power cut) does
not block: its lock went with it, and the new run says it took the folder over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ftlab.errors import ConfigError

LOCK = ".ftlab-run.lock"
HOLDER = ".ftlab-run.json"


def _holder(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / HOLDER).read_text())
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}")


def run_folder_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be a run folder (it is a file, or a file stands where one of
    its parents should be, or the nearest existing parent is not writable), else None.
    Creates nothing: ``--dry-run`` asks it too."""
    if run_dir.exists() and not run_dir.is_dir():
        return "it is a file, not a folder"
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so no folder can be made under it"
    if not run_dir.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


@contextmanager
def run_folder_lock(run_dir: Path, print_fn: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the length of the ``with`` block (the folder is created
    first). Raises :class:`ConfigError` at once when another live process holds it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{run_dir}: cannot be used as the run folder "
                          f"({run_folder_problem(run_dir) or error.strerror}); choose another "
                          "run_dir or --run-dir") from None
    lock = FileLock(run_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{run_dir}: another ftlab run is using this run folder "
                          f"({_describe(_holder(run_dir))}); wait for it to finish, or give "
                          "this run another --run-dir") from None
    try:
        stale = _holder(run_dir)
        if stale:
            print_fn(f"run folder {run_dir}: taking over from {_describe(stale)}, which "
                     "stopped without releasing it")
        (run_dir / HOLDER).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}))
        yield
    finally:
        (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()
