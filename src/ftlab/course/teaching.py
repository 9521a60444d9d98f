"""The one helper for teaching assertion messages in milestone checks.

A failing check says which task, what was checked, what was expected, what came back and
the likely cause::

    [M2.1] adapted model equals the base model at initialisation
      expected: max |adapted - base| = 0
      got:      0.4187
      likely cause: B must start at zero; a random B changes the output before training
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def teach(task: str, what: str, expected: Any, got: Any, cause: str) -> str:
    """The message of a failed check (one header line naming the task, then details)."""
    return (f"[{task}] {what}\n  expected: {expected}\n  got:      {got}\n"
            f"  likely cause: {cause}")


def expect(ok: bool, *, task: str, what: str, expected: Any, got: Any, cause: str) -> None:
    """Raise ``AssertionError`` with a teaching message unless ``ok``."""
    if not ok:
        raise AssertionError(teach(task, what, expected, got, cause))


@contextmanager
def explained(*, task: str, what: str, expected: Any, cause: str) -> Iterator[None]:
    """Turn an exception raised by a learner's code into a teaching message.

    Wrap the call into the learner's code::

        with explained(task="M2.2", what="forward of a (2, 5, 24) batch",
                       expected="shape (2, 5, 16)", cause="x @ A.T is (.., r); then @ B.T"):
            out = layer(x)

    A shape mismatch, a missing key or an index out of range becomes ``AssertionError`` with
    the task, what was expected and ``got: <ExceptionType>: <message>``. ``NotImplementedError``
    (an unfinished task, possibly another one: the grader reports that as *blocked*) and
    ``AssertionError`` pass through unchanged.
    """
    try:
        yield
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:  # noqa: BLE001 - any crash in learner code is reported
        raise AssertionError(teach(task, what, expected, f"{type(error).__name__}: {error}",
                                   cause)) from error


def expect_close(actual: torch.Tensor, desired: torch.Tensor, *, task: str, what: str,
                 cause: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Like :func:`expect` for tensors: same shape and ``|a - d| <= atol + rtol * |d|``."""
    actual, desired = torch.as_tensor(actual), torch.as_tensor(desired)
    if actual.shape != desired.shape:
        raise AssertionError(teach(task, what, f"shape {tuple(desired.shape)}",
                                   f"shape {tuple(actual.shape)}", cause))
    diff = (actual.double() - desired.double()).abs()
    bound = atol + rtol * desired.double().abs()
    expect(bool((diff <= bound).all()), task=task, what=what,
           expected=f"within atol {atol:g} + rtol {rtol:g}",
           got=f"max |difference| {diff.max().item():.3g}", cause=cause)
