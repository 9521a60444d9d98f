"""Progress where the output goes: a bar in a terminal, a few whole lines in a log."""

from __future__ import annotations

import io

from ftlab.progress import PlainProgress, progress_bar


def test_redirected_progress_is_a_few_whole_lines():
    log = io.StringIO()
    bar = progress_bar(total=450, desc="train", unit="step", file=log)
    assert isinstance(bar, PlainProgress)
    for _ in range(450):
        bar.update(1)
        bar.set_postfix(loss="1.234")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("train: start 0/450 step (0%)")
    assert lines[-1].startswith("train: done 450/450 step (100%) loss=1.234")
    assert [line.split()[2] for line in lines[1:-1]] == [f"{45 * k}/450" for k in range(1, 10)]


def test_a_resumed_bar_and_an_iterable_and_a_disabled_one():
    log = io.StringIO()
    bar = progress_bar(total=10, initial=5, desc="train", file=log)
    bar.update(5)
    bar.close()
    assert log.getvalue().splitlines()[0].startswith("train: start 5/10 it (50%)")
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="x", file=log)) == [0, 1, 2]
    assert log.getvalue().splitlines()[-1].startswith("x: done 3/3")
    quiet = io.StringIO()
    for _ in progress_bar(range(3), disable=True, file=quiet):
        pass
    assert quiet.getvalue() == ""
