"""Progress of long work, fit for where the output goes.

In a terminal or a notebook: a tqdm bar (``tqdm.auto``: a widget in Jupyter). When the
output is redirected (CI, ``nohup``, a log file) a bar's carriage-return updates would fill
the log with thousands of partial lines; there, progress is a few plain lines instead: one
at the start, one each time another tenth of the work is done, one at the end — each with
the bar's postfix (loss, learning rate).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

STEPS = 10
"""A plain progress line each time another 1/STEPS of the total is done."""


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return bool(get and get() is not None and "IPKernelApp" in getattr(get(), "config", {}))


def _interactive(stream: TextIO) -> bool:
    return _in_notebook() or bool(getattr(stream, "isatty", lambda: False)())


class PlainProgress:
    """The part of tqdm's interface ftlab uses (``update``, ``set_postfix``, ``close``,
    iteration, ``write``), writing a few whole lines to ``file`` instead of a bar."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", initial: int = 0, unit: str = "it", disable: bool = False,
                 file: TextIO | None = None, **_: Any) -> None:
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "progress", unit, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__")
                                                       else None)
        self.n, self.postfix, self.file = initial, "", file or sys.stderr
        self._started, self._closed = time.perf_counter(), False
        self._shown = self._tenths()
        self._line("start")

    def _line(self, what: str) -> None:
        if self.disable:
            return
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        postfix = f" {self.postfix}" if self.postfix else ""
        seconds = time.perf_counter() - self._started
        print(f"{self.desc}: {what} {self.n}{total} {self.unit}{share}{postfix} [{seconds:.0f} s]",
              file=self.file, flush=True)

    def _tenths(self) -> int:
        return self.n * STEPS // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenths() > self._shown and self.n < (self.total or 0):
            self._shown = self._tenths()
            self._line("at")

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line("done")

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar in a terminal or notebook, else :class:`PlainProgress` (module doc).
    Takes tqdm's arguments (``total``, ``desc``, ``initial``, ``unit``, ``disable``)."""
    if _interactive(kwargs.get("file") or sys.stderr):
        return tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
