"""A pre-forking pytest runner: many short milestone runs without paying imports each time.

``course verify`` runs each mutant's checks in a fresh interpreter so that the mutated
``ftlab`` is the one imported. Starting Python and importing torch, transformers and
pytest costs several seconds of CPU per run, more than most mutants' checks. A
:class:`ForkServer` is one helper process that imports those third-party libraries once
and then forks a child per run: the child starts with them loaded, imports ``ftlab`` from
the run's own ``src`` (the server never imports ``ftlab``), runs ``pytest.main`` and exits.

Protocol (one JSON object per line): request ``{"cwd", "path", "env", "args", "output",
"timeout"}`` on the server's stdin; reply ``{"exit": code}`` on its stdout, ``code`` being
pytest's exit status, or minus the signal number when the child was killed (``SIGALRM``
after ``timeout`` seconds). The child's stdout and stderr go to the file ``output``.

The server is run as a script (``python forkserver.py``), not as a module, so that it
never imports the ``ftlab`` package it would otherwise hand to its children.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ("numpy", "torch", "safetensors.torch", "tokenizers", "transformers",
           "transformers.modeling_utils", "transformers.models.llama.modeling_llama",
           "transformers.models.gpt2.modeling_gpt2", "peft", "pydantic", "yaml", "tqdm",
           "datasets", "evaluate", "matplotlib.pyplot", "gguf", "filelock", "trl",
           "pytest", "_pytest.assertion.rewrite", "_pytest.python")
"""Imported once by the server; a library missing here is simply imported by each child.
Every third-party library ``ftlab``'s modules import belongs here: with them preloaded, a
child imports all of ``ftlab`` in ~0.2 s instead of ~1.2 s (measured on 2 cores), and
``course verify`` forks a child for each of its hundreds of mutants."""
CHILD_FAILED = 70
"""Exit code of a child that could not start pytest (its traceback is in its output)."""


class ForkServer:
    """Client side: start the server, run pytest in forked children, one at a time.

    Not thread-safe: give each worker thread its own server (the server answers one
    request at a time). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, threads: int | None = None) -> None:
        """``threads``: torch (OpenMP) threads of the server and its children, fixed when the
        server imports torch; None keeps the environment's (``OMP_NUM_THREADS``, else all
        cores). Servers that run side by side must share the cores out, or they slow each
        other several-fold."""
        # the server's own stderr (import-time notices of the preloaded libraries) goes to a
        # file, not to the caller's output (a notebook); it is shown if the server dies
        self._stderr = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "PYTHONPATH": ""}
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        self._proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            bufsize=1, env=env)

    def _died(self) -> RuntimeError:
        self._stderr.seek(0)
        tail = "".join(self._stderr.readlines()[-20:])
        return RuntimeError(f"the fork server exited with {self._proc.wait()}:\n{tail}")

    def run(self, cwd: Path, path: list[str], env: dict[str, str], args: list[str],
            output: Path, timeout: float) -> int:
        """Run ``pytest.main(args)`` in ``cwd`` with ``path`` first on ``sys.path`` and the
        environment ``env``; the child's output goes to ``output``. Returns its exit code
        (negative: killed by that signal, e.g. -14 after ``timeout`` seconds)."""
        request = {"cwd": str(cwd), "path": path, "env": env, "args": list(args),
                   "output": str(output), "timeout": max(1, int(timeout))}
        if self._proc.poll() is not None:
            raise self._died()
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise self._died()
        return int(json.loads(reply)["exit"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child(request: dict) -> None:
    """In the forked child: set up the run as a fresh interpreter would, run pytest, exit."""
    fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    code = CHILD_FAILED
    try:
        signal.alarm(request["timeout"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        sys.path[:0] = request["path"]
        sys.argv = ["pytest", *request["args"]]
        import pytest

        code = int(pytest.main(request["args"]))
    except BaseException:  # noqa: BLE001 - reported in the run's output, exit code 70
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Server side: preload, then fork one child per request line, reply with its exit code."""
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run as a script: its folder is not a package root
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a child imports what the server could not
            pass
    assert not any(m == "ftlab" or m.startswith("ftlab.") for m in sys.modules)
    # the preloaded libraries' objects live as long as the server: out of the collector's
    # reach, a child's gc.collect() (pytest runs several at exit) skips them, ~0.25 s each
    gc.collect()
    gc.freeze()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
