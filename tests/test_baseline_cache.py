"""The base-model figures' cache (ftlab.pipeline.baseline): a figure is read back only for
the same model files, eval section, measured data, code and numerics; anything else, or a
damaged entry, is measured again; ``FTLAB_CACHE=off`` always measures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ftlab.config import EvalConfig, ModelConfig
from ftlab.pipeline import baseline
from ftlab.pipeline.baseline import baseline_key, cache_dir, measure_baseline


class Measure:
    """A stand-in measurement: counts its calls, returns figures that name the call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[dict, list]:
        self.calls += 1
        return {"exact_match": 0.25 * self.calls, "general_ppl": 2.5}, [{"reply": f"{self.calls}"}]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FTLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "baselines"


def _run(model=ModelConfig(), evaluation=EvalConfig(), measure=None):
    lines: list[str] = []
    measure = measure or Measure()
    figures = measure_baseline(model, evaluation, measure, lines.append)
    return figures, lines, getattr(measure, "calls", 0)


def test_the_same_model_and_eval_section_are_measured_once(cache):
    measure = Measure()
    first, lines, _ = _run(measure=measure)
    assert lines == ["measuring the base model ..."] and measure.calls == 1
    again, lines, _ = _run(measure=measure)
    assert measure.calls == 1 and again == first  # read back, not measured
    assert lines == ["base model figures: from the cache (this model, eval section, data and "
                     "code were measured before; FTLAB_CACHE=off measures again)"]
    assert len(list(cache.glob("*.json"))) == 1 and not list(cache.glob("*.tmp"))


@pytest.mark.parametrize("change", [
    {"evaluation": EvalConfig(max_new_tokens=4)},
    {"evaluation": EvalConfig(sets=["heldout_chat", "seen_chat"])},
    {"model": ModelConfig(dtype="bfloat16")},
])
def test_another_eval_section_or_model_setting_is_measured_again(cache, change):
    _run()
    _, lines, calls = _run(**change)
    assert calls == 1 and lines == ["measuring the base model ..."]


def test_changed_model_files_preference_pairs_code_or_threads_change_the_key(cache, tmp_path,
                                                                              monkeypatch):
    import torch

    from ftlab.paths import data_dir

    folder = tmp_path / "model"
    shutil.copytree(data_dir() / "base_model", folder)
    local = ModelConfig(name_or_path=str(folder))
    key = baseline_key(local, EvalConfig())
    assert key is not None and key != baseline_key(ModelConfig(), EvalConfig())
    config = folder / "generation_config.json"
    config.write_text(config.read_text().replace("false", "true"))
    assert baseline_key(local, EvalConfig()) != key  # one file's contents

    pairs = tmp_path / "pairs.jsonl"
    shutil.copy(data_dir() / "preferences/heldout.jsonl", pairs)
    with_pairs = EvalConfig(preference_path=pairs)
    key = baseline_key(ModelConfig(), with_pairs)
    pairs.write_text(pairs.read_text() + pairs.read_text().splitlines()[0] + "\n")
    assert baseline_key(ModelConfig(), with_pairs) != key

    key = baseline_key(ModelConfig(), EvalConfig())
    with monkeypatch.context() as patch:
        patch.setattr(baseline, "_code_digest", lambda: "other code")
        assert baseline_key(ModelConfig(), EvalConfig()) != key
    assert baseline_key(ModelConfig(), EvalConfig()) == key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert baseline_key(ModelConfig(), EvalConfig()) != key
    finally:
        torch.set_num_threads(threads)


def test_a_model_without_files_here_is_measured_every_time(cache):
    hub = ModelConfig(name_or_path="nobody/not-a-cached-model")
    assert baseline_key(hub, EvalConfig()) is None
    assert _run(model=hub)[2] == 1 and _run(model=hub)[2] == 1
    assert not cache.exists()


@pytest.mark.parametrize("damage", ["{not json", '{"metrics": {"x": "a string"}, "samples": [], '
                                    '"measured": "now"}', '[1, 2]', ""])
def test_a_damaged_entry_is_measured_again_and_replaced(cache, damage):
    first, _, _ = _run()
    (entry,) = cache.glob("*.json")
    entry.write_text(damage)
    figures, lines, calls = _run()
    assert calls == 1 and lines == ["measuring the base model ..."] and figures == first
    assert _run()[2] == 0  # replaced by a good entry


def test_off_always_measures_and_an_unwritable_folder_costs_only_the_cache(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("FTLAB_CACHE", "off")
    assert cache_dir() is None
    assert _run()[2] == 1 and _run()[2] == 1
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("FTLAB_CACHE", str(blocked))
    assert _run()[2] == 1 and _run()[2] == 1


def test_the_default_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FTLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "ftlab" / "baselines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "ftlab" / "baselines"


@pytest.mark.parametrize("name", baseline.MEASURED_DATA)
def test_every_file_the_measurement_reads_is_in_the_key(name, tmp_path, monkeypatch):
    """A data folder that differs in one measured file (the others linked): another key."""
    from ftlab.paths import data_dir

    data = data_dir()
    key = baseline_key(ModelConfig(), EvalConfig())
    copy = tmp_path / "data"
    for entry in data.iterdir():
        (copy / entry.name).parent.mkdir(parents=True, exist_ok=True)
        if entry.name == name.split("/")[0]:
            shutil.copytree(entry, copy / entry.name)
        else:
            (copy / entry.name).symlink_to(entry)
    changed = copy / name
    changed.write_text(changed.read_text() + "\n")
    monkeypatch.setenv("FTLAB_DATA", str(copy))
    assert baseline_key(ModelConfig(), EvalConfig()) != key


def test_a_figure_json_cannot_hold_costs_the_cache_not_the_run(cache):
    figures, lines, calls = _run(measure=lambda: ({"x": 1.0}, [{"reply": object()}]))
    assert calls == 0 and figures[0] == {"x": 1.0}  # the lambda is not a Measure: no count
    assert not cache.exists() or not list(cache.iterdir())  # nothing left, not even a .tmp
