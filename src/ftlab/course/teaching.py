"""The one helper for teaching assertion messages in milestone checks.

A failing check says which task, what was checked, what was expected, what came back and
the likely cause::

    [M2.1] adapted model equals the base model at initialisation
      expected: max |adapted - base| = 0
      got:      0.4187
      likely cause: B must start at zero; a random B changes the output before training
"""

from __future__ import annotations

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
