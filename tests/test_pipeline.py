"""ftlab.pipeline and ``ftlab run``: plan checks, registry, a short run on the embedded model
with both backends, resume, the real-model configs on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ftlab.cli import main
from ftlab.config import load_config
from ftlab.errors import ConfigError
from ftlab.pipeline import STAGES, Stage, StageResult, plan, register_stage, run_pipeline
from ftlab.pipeline.cli import with_overrides
from ftlab.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]
SFT = str(data_dir() / "sft/mixed_style.jsonl")
PAIRS = str(data_dir() / "preferences/train.jsonl")
QUICK_EVAL = {"max_new_tokens": 12}


def _config(tmp_path: Path, stages: list[dict], name: str = "run.yaml", **top) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages, **top}))
    return path


def _sft(backend="ftlab", steps=4, **extra):
    return {"kind": "sft", "backend": backend, "data": {"path": SFT, "max_length": 96},
            "lora": {"r": 4, "alpha": 8}, "eval": QUICK_EVAL,
            "train": {"max_steps": steps, "batch_size": 4, "eval_every": 2}, **extra}


def _dpo(backend="ftlab", steps=2, lr=2e-4):
    return {"kind": "dpo", "backend": backend, "data": {"path": PAIRS, "max_length": 96},
            "lora": {"r": 4, "alpha": 8}, "eval": QUICK_EVAL,
            "train": {"max_steps": steps, "batch_size": 4, "eval_every": 2, "lr": lr}}


def _peft_logits(adapter: Path, ids):
    """Logits of an adapter folder as users load it: PeftModel over the base it names, and
    AutoPeftModelForCausalLM from the folder alone (offline)."""
    import warnings

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from ftlab.lora import load_in_peft

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        plain = load_in_peft(AutoModelForCausalLM.from_pretrained(base), adapter).eval()(ids).logits
        auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()(ids).logits
    return plain, auto


def _trained_model(run: Path, stage: str, before, lora: dict):
    """The model a stage trained, rebuilt from what it started on (``before``, a ModelRef)
    and its final training checkpoint's adapter weights, never from its published folder."""
    from safetensors.torch import load_file

    from ftlab.config import LoRAConfig, QuantConfig
    from ftlab.pipeline.training import trainable_model

    model = trainable_model(before, "float32", LoRAConfig(**lora), QuantConfig(), 0)
    last = sorted((run / stage / "train" / "checkpoints").glob("step-*"))[-1]
    weights = load_file(str(last / "trainable.safetensors"))
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    assert not missing, missing
    model.load_state_dict(weights, strict=False)
    return model.eval()


def test_dry_run_prints_the_plan_and_runs_nothing(capsys, tmp_path):
    assert main(["run", "--dry-run", "--run-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    for line in ("1. sft: sft [ftlab] on mixed_style.jsonl", "2. dpo: dpo [ftlab]",
                 "3. merge:", "4. export: export hf, gguf (f16)", "nothing was loaded or trained"):
        assert line in out
    assert not (tmp_path / "r").exists()


def test_plan_reports_every_problem_before_anything_runs(tmp_path):
    path = _config(tmp_path, [{"kind": "merge"}, {"kind": "sft", "export": {"formats": ["hf"]}},
                              {"kind": "export"}])
    with pytest.raises(ConfigError) as err:
        plan(load_config(path))
    lines = str(err.value).splitlines()
    assert lines[0] == "the pipeline cannot run:"
    assert any(line.startswith("stages[0] (merge): a merge stage needs a trained adapter") for line in lines)
    assert any("stages[1] (sft): export: this section is not used by a sft stage" in line
               for line in lines)
    assert any("stages[1] (sft): a sft stage needs a data section" in line for line in lines)
    assert any("stages[2] (export): export writes a merged model: put a merge stage" in line for line in lines)
    assert main(["run", "--dry-run", str(path)]) == 2


def test_unknown_kind_is_a_config_error_with_a_suggestion(tmp_path):
    path = _config(tmp_path, [{"kind": "dpoo"}])
    with pytest.raises(ConfigError, match=r"stages\.0\.kind: unknown stage kind.*did you mean 'dpo'"):
        load_config(path)


def test_a_new_stage_kind_registers_without_touching_the_runner(tmp_path):
    @register_stage
    class CountParameters(Stage):
        kind = "count_parameters"

        def run(self, ctx):
            from ftlab.pipeline import load_model

            n = sum(p.numel() for p in load_model(ctx.model).parameters())
            return StageResult(ctx.model, {"parameters": n})

    try:
        path = _config(tmp_path, [{"kind": "count_parameters"}])
        summary = run_pipeline(load_config(path), progress=False, print_fn=lambda s: None)
        assert summary["stages"]["count_parameters"]["metrics"]["parameters"] > 4_000_000
    finally:
        STAGES.pop("count_parameters")


def test_short_capstone_chain_writes_the_run_folder_and_resumes(tmp_path):
    stages = [_sft(), _dpo(), {"kind": "merge"},
              {"kind": "export", "export": {"formats": ["hf", "gguf"], "gguf_types": ["f16"]}}]
    config = load_config(_config(tmp_path, stages))
    summary = run_pipeline(config, progress=False, print_fn=lambda s: None)
    run = tmp_path / "run"
    for name in ("report.md", "metrics.json", "state.json", "config.yaml", "plots/losses.png",
                 "plots/measurements.png", "sft/adapter/adapter_model.safetensors",
                 "dpo/adapter/adapter_config.json", "merge/model/model.safetensors",
                 "export/hf/config.json", "export/model-f16.gguf"):
        assert (run / name).exists(), name
    stages_out = summary["stages"]
    assert stages_out["merge"]["metrics"]["merge_max_logit_diff"] <= 1e-4
    assert stages_out["export"]["metrics"]["hf/max_logit_diff"] <= 1e-4
    assert stages_out["export"]["metrics"]["gguf_f16/max_logit_diff"] < 0.05
    assert 0 <= stages_out["dpo"]["metrics"]["reward_accuracy/style"] <= 1
    assert [r[0] for r in stages_out["sft"]["curves"]["loss"]] == [1, 2, 3, 4]
    report = (run / "report.md").read_text()
    assert "| base |" in report and "| sft |" in report and "| dpo |" in report
    assert json.loads((run / "metrics.json").read_text())["summary_table"] in report

    again = run_pipeline(config, progress=False, print_fn=lambda s: None)
    assert again["reused_stages"] == ["sft", "dpo", "merge", "export"]
    assert again["stages"] == json.loads(json.dumps(stages_out))

    # the export's model card carries the run's measurements beside the base model's
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "export/hf/README.md")
    assert card.data.base_model == str((data_dir() / "base_model").resolve())
    exact = stages_out["dpo"]["metrics"]["eval/exact_match"]
    assert ("eval/exact_match", exact) in [
        (r.metric_type, r.metric_value) for r in card.data.eval_results]
    assert "(none recorded)" not in card.text and '"kind": "dpo"' in card.text

    # every stage's adapter folder loads in PEFT as that stage's exact model
    from ftlab.pipeline import ModelRef

    ids = torch.randint(1, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    before = {"sft": ModelRef("embedded"), "dpo": ModelRef("embedded", (str(run / "sft/adapter"),))}
    for name in ("sft", "dpo"):
        with torch.no_grad():
            want = _trained_model(run, name, before[name], {"r": 4, "alpha": 8})(ids).logits
        for got in _peft_logits(run / name / "adapter", ids):
            assert (got - want).abs().max() <= 1e-5, name

    stages[1] = _dpo(lr=1e-4)  # dpo changed: dpo and everything after it run again
    changed = run_pipeline(load_config(_config(tmp_path, stages)), progress=False,
                           print_fn=lambda s: None)
    assert changed["reused_stages"] == ["sft"]
    assert changed["stages"]["sft"] == again["stages"]["sft"]


def test_trl_backends_train_the_same_stages(tmp_path):
    pytest.importorskip("trl")
    config = load_config(_config(tmp_path, [_sft("trl"), _dpo("trl")]))
    summary = run_pipeline(config, progress=False, print_fn=lambda s: None)
    for name in ("sft", "dpo"):
        result = summary["stages"][name]
        assert result["metrics"]["steps"] == (4 if name == "sft" else 2)
        assert Path(result["artifacts"]["adapter"], "adapter_model.safetensors").is_file()
        assert result["curves"]["loss"] and result["curves"]["val_loss"]
    # TRL's adapters are published like ours: DPO's folder holds SFT's update too
    from ftlab.pipeline import ModelRef, load_model

    assert summary["stages"]["dpo"]["model"]["adapters"] == [str(tmp_path / "run/dpo/adapter")]
    ids = torch.randint(1, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    sft_then_dpo = load_model(ModelRef("embedded", (str(tmp_path / "run/sft/adapter"),)))
    dpo_config = json.loads((tmp_path / "run/dpo/adapter/adapter_config.json").read_text())
    assert dpo_config["r"] == 8  # 4 (SFT) + 4 (DPO)
    for name in ("sft", "dpo"):
        with torch.no_grad():
            want = load_model(ModelRef("embedded", (str(tmp_path / "run" / name / "adapter"),)))(ids).logits
        for got in _peft_logits(tmp_path / "run" / name / "adapter", ids):
            assert (got - want).abs().max() <= 1e-5, name
    with torch.no_grad():
        assert (sft_then_dpo(ids).logits - want).abs().max() > 0  # DPO changed the model


def test_seed_override_reaches_every_stage(tmp_path):
    config = with_overrides(load_config(_config(tmp_path, [_sft(), _dpo()])), None, 7)
    assert config.seed == 7
    assert all(s.train.seed == 7 and s.data.seed == 7 for s in config.stages)


@pytest.mark.parametrize("name,arch", [("smollm2-135m-qlora.yaml", "llama"),
                                       ("qwen2.5-0.5b-qlora.yaml", "qwen2")])
def test_real_model_configs_run_on_a_tiny_model_of_their_architecture(name, arch, tmp_path):
    """The real-model config validates as written, then runs (few steps) with its base model
    swapped for a tiny random model of the same architecture saved offline."""
    from ftlab.models.load import load_tokenizer
    from ftlab.models.tiny import tiny_config
    from transformers import AutoModelForCausalLM

    config = load_config(ROOT / "configs" / name)
    plan(config, check_model=False)
    tokenizer = load_tokenizer()
    tiny = tiny_config(arch)
    tiny.vocab_size, tiny.max_position_embeddings = len(tokenizer), 512
    tiny.pad_token_id, tiny.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    folder = tmp_path / f"tiny-{arch}"
    AutoModelForCausalLM.from_config(tiny).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    quick = [s.model_copy(update={"train": s.train.model_copy(update={"max_steps": 2, "eval_every": 2}),
                                  "eval": s.eval.model_copy(update={"max_new_tokens": 4})})
             if s.train else s for s in config.stages]
    config = config.model_copy(update={
        "run_dir": tmp_path / "run", "stages": quick,
        "model": config.model.model_copy(update={"name_or_path": str(folder), "dtype": "float32"})})
    summary = run_pipeline(config, progress=False, print_fn=lambda s: None)
    assert set(summary["stages"]) == {s.name for s in config.stages}
    assert (tmp_path / "run" / "report.md").is_file()
    from ftlab.pipeline import ModelRef, load_model

    ids = torch.randint(1, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    for stage in (s for s in config.stages if s.kind in ("sft", "dpo")):
        adapter = tmp_path / "run" / stage.name / "adapter"
        assert json.loads((adapter / "adapter_config.json").read_text())[
            "base_model_name_or_path"] == str(folder.resolve())
        with torch.no_grad():
            want = load_model(ModelRef(str(folder), (str(adapter),)))(ids).logits
        for got in _peft_logits(adapter, ids):
            assert (got - want).abs().max() <= 1e-5, stage.name


def test_readme_configs_are_valid():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        plan(load_config(path), check_model=False)  # real models are not cached here


def test_replay_keeps_general_perplexity_nearer_the_base(tmp_path):
    """The same 50-step LoRA SFT (lr 3e-3) with and without 30% replay of pretraining text
    (measured here: general-text perplexity 3.06x the base without replay, 1.05x with it)."""
    from ftlab.config import DataConfig, LoRAConfig, QuantConfig, TrainConfig
    from ftlab.data import prepare_sft
    from ftlab.evaluate.report import general_perplexity
    from ftlab.models.load import load_base_model
    from ftlab.pipeline import ModelRef
    from ftlab.pipeline.training import trainable_model
    from ftlab.train import Trainer

    base, tokenizer = load_base_model()
    base_ppl = general_perplexity(base, tokenizer)
    ratios = {}
    for replay in (0.0, 0.3):
        data = prepare_sft(DataConfig(path=SFT, max_length=128, replay_fraction=replay), tokenizer)
        model = trainable_model(ModelRef("embedded"), "float32", LoRAConfig(), QuantConfig(), 0)
        Trainer(model, data.train, TrainConfig(max_steps=50, lr=3e-3, eval_every=1000,
                                               precision="float32"),
                tmp_path / str(replay), tokenizer.pad_token_id, progress=False).fit()
        ratios[replay] = general_perplexity(model.eval(), tokenizer) / base_ppl
    assert ratios[0.3] < 1.5 < ratios[0.0], ratios


def test_an_lm_head_in_the_lora_targets_is_a_config_error():
    from ftlab.config import LoRAConfig
    from ftlab.models.tiny import tiny_model
    from ftlab.pipeline.training import target_names

    model = tiny_model("llama")
    assert target_names(model, LoRAConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match=r"lora.target_modules: 'lm_head' is the LM head"):
        target_names(model, LoRAConfig(target_modules=["q_proj", "lm_head"]))
