"""Dataset mixtures by rate (given infrastructure).

A mixture draws from several sources in proportion to their rates. Without an explicit
``total`` it is as large as it can be without repeating a record: ``N = min_i(available_i
/ share_i)``, each source giving ``round(share_i * N)`` records drawn without replacement by
a seeded shuffle. The report shows what was asked for and what was achieved per source.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.config import DataConfig
from ftlab.data.dataset import Example, load_conversations
from ftlab.data.loading import LoadReport
from ftlab.errors import DataError
from ftlab.paths import shown


@dataclass(frozen=True)
class SourceCount:
    """One source of a mixture: requested share, records available and taken."""

    path: str
    share: float
    available: int
    taken: int


@dataclass
class MixtureReport:
    """Per-source counts of a mixture and the merged load report of its files."""

    sources: list[SourceCount] = field(default_factory=list)
    load: LoadReport | None = None

    def summary(self) -> str:
        total = sum(s.taken for s in self.sources) or 1
        rows = [f"{'source':<40} {'asked':>6} {'achieved':>8} {'taken':>6} {'available':>9}"]
        rows += [f"{shown(s.path):<40} {s.share:>6.1%} {s.taken / total:>8.1%} {s.taken:>6} "
                 f"{s.available:>9}" for s in self.sources]
        return "\n".join(rows)


def mix(sources: list[tuple[str | Path, float]], seed: int = 0, total: int | None = None,
        fmt: str = "auto") -> tuple[list[Example], MixtureReport]:
    """Draw a mixture from ``(path, rate)`` sources; rates are relative weights (> 0).

    ``total`` (optional) fixes the mixture size; asking a source for more records than it
    has is a DataError naming it. The result is shuffled with ``seed``.
    """
    if not sources or any(rate <= 0 for _, rate in sources):
        raise DataError("a mixture needs at least one source, each with a rate > 0")
    rng = random.Random(seed)
    loaded, load = [], LoadReport(files=[])
    for path, _ in sources:
        examples, report = load_conversations(path, fmt)
        load.merge(report)
        loaded.append(examples)
    weight = sum(rate for _, rate in sources)
    shares = [rate / weight for _, rate in sources]
    size = total if total is not None else int(min(len(e) / s for e, s in zip(loaded, shares)))
    out, report = [], MixtureReport(load=load)
    for (path, _), share, examples in zip(sources, shares, loaded):
        want = round(share * size)
        if want > len(examples):
            raise DataError(f"{path}: the mixture asks for {want} records but it has "
                            f"{len(examples)}; lower total or this source's rate")
        out += rng.sample(examples, want)
        report.sources.append(SourceCount(str(path), share, len(examples), want))
    rng.shuffle(out)
    return out, report


def records_of(report: LoadReport | MixtureReport) -> LoadReport:
    """The account of every record read: the report itself, or a mixture's merged one."""
    return report.load if isinstance(report, MixtureReport) else report


def load_data(config: DataConfig) -> tuple[list[Example], LoadReport | MixtureReport]:
    """The examples a data config names: one file, or a mixture of files."""
    if config.mixture:
        return mix([(s.path, s.rate) for s in config.mixture], seed=config.seed,
                   fmt=config.format)
    return load_conversations(config.path, config.format)
