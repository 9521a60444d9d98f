"""Given M1 infrastructure: mixtures by rate from YAML, statistics and plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from ftlab.config import DataConfig, load_config  # noqa: E402
from ftlab.data.mixture import load_data, mix  # noqa: E402
from ftlab.data.quality import FilterReport  # noqa: E402
from ftlab.data.stats import length_stats, plot_filter_reasons, plot_lengths  # noqa: E402
from ftlab.errors import DataError  # noqa: E402


def _mixture_yaml(tmp_path, data, rates=(3, 1)):
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(
        "mixture:\n"
        f"  - path: {data / 'sft/messages.jsonl'}\n    rate: {rates[0]}\n"
        f"  - path: {data / 'sft/qa.csv'}\n    rate: {rates[1]}\n"
        "seed: 7\n")
    return load_config(cfg, DataConfig)


def test_mixture_from_yaml_achieves_the_rates(tmp_path, data):
    examples, report = load_data(_mixture_yaml(tmp_path, data))
    taken = {s.path.split("/")[-1]: s.taken for s in report.sources}
    # messages.jsonl limits the size: 378 / 0.75 = 504 records, 378 + 126
    assert taken == {"messages.jsonl": 378, "qa.csv": 126}
    assert len(examples) == 504
    assert {e.format for e in examples} == {"messages", "question_answer"}
    assert report.load.total == 756 and not report.load.rejected
    assert "75.0%" in report.summary() and "25.0%" in report.summary()


def test_mixture_is_seeded(tmp_path, data):
    sources = [(data / "sft/messages.jsonl", 1), (data / "sft/alpaca.json", 1)]
    a, _ = mix(sources, seed=1, total=100)
    b, _ = mix(sources, seed=1, total=100)
    c, _ = mix(sources, seed=2, total=100)
    key = lambda xs: [(e.where.file, e.where.line) for e in xs]  # noqa: E731
    assert key(a) == key(b) != key(c)
    assert sum(e.format == "alpaca" for e in a) == 50


def test_mixture_refuses_to_oversample(data):
    with pytest.raises(DataError, match="asks for 500 records but it has 378"):
        mix([(data / "sft/messages.jsonl", 1), (data / "sft/qa.csv", 1)], total=1000)
    with pytest.raises(DataError, match="rate > 0"):
        mix([(data / "sft/messages.jsonl", 0)])


def test_length_stats_and_plots():
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
                {"input_ids": [1, 2], "labels": [-100, 2]}]
    stats = length_stats(examples)
    assert (stats.examples, stats.tokens, stats.trained, stats.longest, stats.mean) == (2, 6, 3, 4, 3.0)
    ax = plot_lengths(examples, max_length=4)
    assert ax.get_xlabel() == "tokens per example" and len(ax.lines) == 1
    report = FilterReport(total=10, kept=6)
    report.dropped.update({"duplicate": 3, "too_long": 1})
    ax = plot_filter_reasons(report)
    heights = [int(p.get_height()) for p in ax.patches]
    assert heights == [6, 0, 0, 1, 3]
