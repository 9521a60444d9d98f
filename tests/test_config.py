"""Run configs: YAML round trips, one-line-per-problem errors with file, line and field, one home of defaults."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from ftlab.config import (
    DataConfig,
    DPOConfig,
    EvalConfig,
    ExportConfig,
    LoRAConfig,
    MixtureSource,
    ModelConfig,
    PipelineConfig,
    QuantConfig,
    StageConfig,
    TrainConfig,
    defaults_table,
    load_config,
    save_config,
)
from ftlab.errors import ConfigError, FtlabError

REPO = Path(__file__).resolve().parents[1]
MODELS = [
    PipelineConfig, ModelConfig, StageConfig, DataConfig, MixtureSource, LoRAConfig,
    QuantConfig, TrainConfig, EvalConfig, ExportConfig, DPOConfig,
]


def write(folder: Path, name: str, text: str) -> Path:
    """Write dedented ``text`` to ``folder/name`` and return the path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A data file at ``tmp_path/data/train.jsonl`` (contents are not read by config code)."""
    return write(tmp_path, "data/train.jsonl", '{"prompt": "a", "completion": "b"}\n')


def config_error(path: Path) -> list[str]:
    """The lines of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


# --- round trips --------------------------------------------------------------------------


def test_round_trip_into_another_folder_keeps_data_paths(tmp_path: Path, data_file: Path) -> None:
    source = write(
        tmp_path,
        "configs/run.yaml",
        """
        run_dir: runs/x
        seed: 3
        stages:
          - kind: sft
            data: {path: ../data/train.jsonl, max_length: 64}
            lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
            train: {lr: 1.0e-4, max_steps: 5, early_stopping_patience: 2}
          - kind: dpo
            data:
              mixture:
                - {path: ../data/train.jsonl, rate: 3}
                - {path: ../data/train.jsonl, rate: 1}
            dpo: {beta: 0.2}
          - kind: export
            export: {formats: [adapter, gguf], gguf_types: [f16, q8_0]}
        """,
    )
    config = load_config(source)
    assert config.stages[0].data.path == data_file.resolve()
    assert [s.path for s in config.stages[1].data.mixture] == [data_file.resolve()] * 2

    saved = save_config(config, tmp_path / "elsewhere" / "deep" / "saved.yaml")
    text = saved.read_text()
    assert "path: ../../data/train.jsonl" in text
    assert str(tmp_path) not in text, "data paths are written relative to the saved file"
    assert load_config(saved) == config


def test_round_trip_of_defaults_writes_every_field(tmp_path: Path, data_file: Path) -> None:
    config = PipelineConfig(
        stages=[
            StageConfig(kind="sft", data=DataConfig(path=data_file), train=TrainConfig()),
            StageConfig(kind="merge"),
        ]
    )
    saved = save_config(config, tmp_path / "out.yaml")
    assert load_config(saved) == config
    for key in TrainConfig.model_fields:
        assert re.search(rf"^\s+{key}:", saved.read_text(), re.M), f"saved file lacks train.{key}"


def test_data_path_without_context_is_relative_to_cwd(tmp_path: Path, data_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DataConfig(path="data/train.jsonl").path == data_file.resolve()


def test_stage_name_defaults_to_kind() -> None:
    assert StageConfig(kind="merge").name == "merge"


def test_example_config_is_valid(tmp_path: Path) -> None:
    """configs/example_sft.yaml validates once its data file exists (a stand-in here)."""
    example = tmp_path / "configs" / "example_sft.yaml"
    example.parent.mkdir()
    shutil.copy(REPO / "configs" / "example_sft.yaml", example)
    write(tmp_path, "data/sft/messages.jsonl", "{}\n")
    config = load_config(example)
    assert [s.kind for s in config.stages] == ["sft", "merge", "export"]
    sft = config.stages[0]
    assert (sft.lora.r, sft.lora.alpha, sft.train.lr, sft.train.epochs) == (16, 32, 3e-3, 8)
    assert config.stages[2].export.formats == ["hf", "gguf"]


# --- one line per problem: file, line, field ------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            """
            stages:
              - kind: merge
                lora:
                  r: -4
            """,
            r":4: stages\.0\.lora\.r: Input should be greater than or equal to 1 \(got -4\)",
        ),
        (
            """
            stages:
              - kind: sft
                train:
                  epochs: 2
                  lr: 5
            """,
            r":5: stages\.0\.train\.lr: .*less than or equal to 1 \(got 5\); learning rates above 1 diverge; "
            r"typical LoRA values are 1e-4\.\.3e-3",
        ),
        (
            """
            stages:
              - kind: sft
                lora: {dropout: 1.5}
            """,
            r":3: stages\.0\.lora\.dropout: Input should be less than 1 \(got 1\.5\)",
        ),
        (
            """
            stages:
              - kind: eval
              - kind: trian
            """,
            r":3: stages\.1\.kind: unknown stage kind; known kinds: sft, dpo, grpo, reward, online_dpo, distill, merge, export, eval(, \w+)* "
            r"\(got 'trian'\)",
        ),
        (
            """
            seed: 1
            stages:
              - kind: sft
                train:
                  learning_rate: 0.001
            """,
            r":5: stages\.0\.train\.learning_rate: unknown key \(got 0\.001\); did you mean 'lr'\?$",
        ),
        (
            """
            stages:
              - kind: sft
                lora: {alhpa: 8}
            """,
            r":3: stages\.0\.lora\.alhpa: unknown key \(got 8\); did you mean 'alpha'\?$",
        ),
        (
            """
            stages:
              - kind: merge
              - kind: sft
              - kind: merge
            """,
            r":4: stages\.2\.name: duplicate stage name 'merge' \(stage 0 has it too\)",
        ),
        (
            """
            stages:
              - kind: export
                export:
                  formats: [hf, gguf, hf]
            """,
            r":4: stages\.0\.export\.formats: duplicate entries \['hf'\]",
        ),
        (
            """
            stages:
              - kind: sft
                quant: {enabled: true, block_size: 100}
            """,
            r":3: stages\.0\.quant\.block_size: must be a power of two .* \(got 100\)",
        ),
        (
            """
            stages:
              - kind: sft
                data:
                  format: alpaca
            """,
            r":3: stages\.0\.data: give exactly one of 'path' .* or 'mixture'",
        ),
        (
            """
            stages: []
            """,
            r":1: stages: List should have at least 1 item",
        ),
    ],
    ids=[
        "negative-rank",
        "lr-5",
        "dropout-1.5",
        "unknown-kind",
        "unknown-key",
        "misspelled-key",
        "duplicate-stage",
        "duplicate-format",
        "block-size",
        "no-data-source",
        "no-stages",
    ],
)
def test_invalid_config_names_file_line_and_field(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write(tmp_path, "bad.yaml", yaml_text)
    lines = config_error(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:"), lines[0]
    assert re.search(expected, lines[0]), lines[0]


def test_missing_data_file_names_resolved_path_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "configs/run.yaml",
        """
        stages:
          - kind: sft
            data:
              max_length: 64
              path: ../data/nope.jsonl
        """,
    )
    [line] = config_error(path)
    resolved = (tmp_path / "data" / "nope.jsonl").resolve()
    assert line.startswith(f"{path}:5: stages.0.data.path: data file not found: {resolved} (got '../data/nope.jsonl')")


def test_missing_mixture_file_points_at_its_item(tmp_path: Path, data_file: Path) -> None:
    path = write(
        tmp_path,
        "run.yaml",
        """
        stages:
          - kind: sft
            data:
              mixture:
                - {path: data/train.jsonl, rate: 1}
                - path: data/other.jsonl
                  rate: 2
        """,
    )
    [line] = config_error(path)
    assert line.startswith(f"{path}:6: stages.0.data.mixture.1.path: data file not found:"), line


def test_several_problems_give_one_line_each_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        stages:
          - kind: sft
            train:
              lr: 5
              epochs: 0
            lora:
              r: -4
              dropout: 1.5
        colour: blue
        """,
    )
    lines = config_error(path)
    prefixes = [re.match(r"(.*?:\d+: [\w.]+):", line).group(1) for line in lines]
    assert prefixes == [
        f"{path}:4: stages.0.train.lr",
        f"{path}:5: stages.0.train.epochs",
        f"{path}:7: stages.0.lora.r",
        f"{path}:8: stages.0.lora.dropout",
        f"{path}:9: colour",
    ]
    assert lines[-1].endswith("unknown key (got 'blue'); valid keys: run_dir, seed, model, stages")


def test_missing_required_key_falls_back_to_parent_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        seed: 0
        stages:
          - name: first
        """,
    )
    assert config_error(path) == [f"{path}:3: stages.0.kind: missing required key"]


def test_missing_top_level_key_has_no_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "seed: 1\n")
    assert config_error(path) == [f"{path}: stages: missing required key"]


# --- unreadable files ------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert config_error(path) == [f"{path}: config file not found (looked for {path.resolve()})"]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        seed: 0
        stages:
          - kind: sft
           name: x
        """,
    )
    [line] = config_error(path)
    assert line.startswith(f"{path}:4: YAML syntax error:"), line


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    [line] = config_error(path)
    assert line == f"{path}: config file is empty; expected a mapping with keys run_dir, seed, model, stages"


@pytest.mark.parametrize(("text", "kind"), [("- kind: sft\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "top.yaml"
    path.write_text(text)
    [line] = config_error(path)
    assert line.startswith(f"{path}:1: top level must be a mapping") and line.endswith(f"(got a {kind})"), line


def test_config_error_is_an_ftlab_error() -> None:
    assert issubclass(ConfigError, FtlabError)


def test_load_config_validates_any_section_model(tmp_path: Path) -> None:
    path = write(tmp_path, "train.yaml", "lr: 0.01\nepoch: 2\n")
    with pytest.raises(ConfigError, match=r"train\.yaml:2: epoch: unknown key \(got 2\); did you mean 'epochs'\?"):
        load_config(path, model=TrainConfig)
    path.write_text("lr: 0.01\nepochs: 2\n")
    assert load_config(path, model=TrainConfig) == TrainConfig(lr=0.01, epochs=2)


# --- models and defaults ---------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_is_documented_and_extra_keys_are_forbidden(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert not undocumented, f"{model.__name__} fields without a description: {undocumented}"


def test_defaults_table_is_generated_from_the_models() -> None:
    table = defaults_table()
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells
    assert float(rows["stages[].train.lr"][2].strip("`")) == TrainConfig().lr == 3e-3
    assert int(rows["stages[].lora.r"][2].strip("`")) == LoRAConfig().r == 16
    assert rows["stages[].export.formats"][2] == '`["hf", "gguf"]`'
    assert rows["stages[].data.path"][1] == "Path \\| null"
    assert rows["stages[].train.lr"][1] == "float, > 0, <= 1"
    assert rows["stages"][2] == "required"
    for name in TrainConfig.model_fields:
        assert f"stages[].train.{name}" in rows
    assert rows["stages[].train.lr"][3] == TrainConfig.model_fields["lr"].description


def test_documented_defaults() -> None:
    train, lora, quant, export = TrainConfig(), LoRAConfig(), QuantConfig(), ExportConfig()
    assert (train.lr, train.epochs, train.batch_size, train.warmup_ratio) == (3e-3, 8.0, 8, 0.05)
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.05, "auto")
    assert (quant.enabled, quant.quant_type, quant.double_quant, quant.block_size) == (False, "nf4", True, 64)
    assert (export.formats, export.gguf_types, export.merge_dtype) == (["hf", "gguf"], ["f16"], "float32")
    assert PipelineConfig(stages=[StageConfig(kind="merge")]).run_dir == Path("runs/latest")
