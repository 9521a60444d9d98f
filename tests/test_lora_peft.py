"""Our LoRA against PEFT on tiny random models of six architectures (given M2 infrastructure)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import ftlab  # noqa: F401  (quiets the bitsandbytes kernels notice)
from ftlab.lora import (find_target_modules, inject_lora, load_adapter, load_in_peft,
                        lora_layers, merge_lora, parameter_report, save_adapter)
from ftlab.models.tiny import ARCHITECTURES, tiny_model

R, ALPHA = 4, 8.0
IDS = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
EXPECTED_TARGETS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
}


def _ours_and_peft(arch: str):
    """Our adapted model and PEFT's, with the same random (non-zero) adapter weights."""
    ours = tiny_model(arch)
    targets = find_target_modules(ours)
    inject_lora(ours, targets, R, ALPHA)
    torch.manual_seed(1)
    for layer in lora_layers(ours).values():
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
                        fan_in_fan_out=arch == "gpt2")
    peft = get_peft_model(tiny_model(arch), config)
    state = {}
    for name, layer in lora_layers(ours).items():
        state[f"base_model.model.{name}.lora_A.default.weight"] = layer.lora_A.detach()
        state[f"base_model.model.{name}.lora_B.default.weight"] = layer.lora_B.detach()
    missing = set(state) - set(peft.state_dict())
    assert not missing, sorted(missing)[:3]
    peft.load_state_dict(state, strict=False)
    return ours, peft


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_targets_per_architecture(arch):
    model = tiny_model(arch)
    targets = find_target_modules(model)
    assert {t.rsplit(".", 1)[-1] for t in targets} == EXPECTED_TARGETS[arch]
    assert len(targets) == 2 * (len(EXPECTED_TARGETS[arch]) + (1 if arch == "gpt2" else 0))
    assert not any("lm_head" in t or "embed" in t or "wte" in t for t in targets)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_and_gradients_equal_peft(arch):
    ours, peft = _ours_and_peft(arch)
    ours.train(), peft.train()
    a, b = ours(IDS).logits, peft(IDS).logits
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (a - b).abs().max()
    a.square().mean().backward()
    b.square().mean().backward()
    peft_params = dict(peft.named_parameters())
    for name, layer in lora_layers(ours).items():
        for part in ("A", "B"):
            g = getattr(layer, f"lora_{part}").grad
            h = peft_params[f"base_model.model.{name}.lora_{part}.default.weight"].grad
            assert torch.allclose(g, h, rtol=1e-6, atol=1e-9), (name, part, (g - h).abs().max())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_our_adapter_folder_loads_in_peft_with_the_same_logits(arch, tmp_path):
    ours, _ = _ours_and_peft(arch)
    save_adapter(ours, tmp_path / "adapter")
    LoraConfig.from_pretrained(str(tmp_path / "adapter"))  # a valid PEFT config
    peft = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "adapter")).eval()
    assert torch.allclose(ours.eval()(IDS).logits, peft(IDS).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_explicitly_requested_lm_head_is_refused(arch):
    with pytest.raises(ValueError, match="lm_head"):
        find_target_modules(tiny_model(arch), names=["lm_head"])


def test_load_in_peft_silences_only_the_deprecation_notice_peft_triggers(tmp_path):
    ours, _ = _ours_and_peft("llama")
    save_adapter(ours, tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "adapter"))
    assert any("is_gradient_checkpointing" in str(w.message) for w in caught)  # the notice is real
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft = load_in_peft(tiny_model("llama"), tmp_path / "adapter").eval()
        warnings.warn("other notices still show", FutureWarning)
    assert [str(w.message) for w in caught] == ["other notices still show"]
    assert warnings.filters == filters
    assert torch.allclose(ours.eval()(IDS).logits, peft(IDS).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_peft_adapter_loads_into_ours_with_the_same_logits(arch, tmp_path):
    _, peft = _ours_and_peft(arch)
    peft.save_pretrained(str(tmp_path / "peft"))
    ours = load_adapter(tiny_model(arch), tmp_path / "peft").eval()
    assert torch.allclose(ours(IDS).logits, peft.eval()(IDS).logits, atol=1e-5)
    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert set(lora_layers(ours)) == set(config["target_modules"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_model_equals_unmerged(arch):
    ours, _ = _ours_and_peft(arch)
    before = ours.eval()(IDS).logits
    merge_lora(ours)
    assert not lora_layers(ours)
    assert torch.allclose(ours(IDS).logits, before, atol=1e-5)


def test_parameter_report_counts_adapters_only():
    model = tiny_model("llama")
    total = sum(p.numel() for p in model.parameters())
    inject_lora(model, find_target_modules(model), R, ALPHA)
    report = parameter_report(model)
    expected = sum(R * (m.lora_A.shape[1] + m.lora_B.shape[0]) for m in lora_layers(model).values())
    assert report.trainable == expected and report.total == total + expected
    assert report.by_type["LoRALinear"] == (expected, expected)
    assert report.memory_mb()["adam_states"] == pytest.approx(2 * expected * 4 / 2**20)
    assert "trainable" in report.summary()
    assert sum(n for _, n in report.by_type.values()) == report.total


def test_parameter_report_counts_tied_weights_once():
    from ftlab.models import load_base_model

    model, _ = load_base_model()
    report = parameter_report(model)
    assert model.config.tie_word_embeddings
    assert sum(n for _, n in report.by_type.values()) == report.total == 4_581_120


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_stacked_adapters_combine_into_one_that_both_peft_loaders_read(arch, tmp_path):
    """Stage 1 adapts every target (r 4); stage 2 trains on stage 1 merged, with another rank
    and only some targets. The combined folder over the plain base gives the stacked model
    in PeftModel.from_pretrained and AutoPeftModelForCausalLM alike."""
    from peft import AutoPeftModelForCausalLM

    from ftlab.lora import combine_adapters

    base_dir = tmp_path / "base"
    tiny_model(arch).save_pretrained(base_dir)
    stacked = tiny_model(arch)
    targets = find_target_modules(stacked)
    folders = []
    for stage, (r, alpha, names) in enumerate([(4, 8.0, targets), (2, 16.0, targets[::2])]):
        inject_lora(stacked, names, r, alpha)
        torch.manual_seed(stage + 1)
        for layer in lora_layers(stacked).values():
            torch.nn.init.normal_(layer.lora_B, std=0.1)
        folders.append(save_adapter(stacked, tmp_path / f"stage{stage}"))
        merge_lora(stacked)
    want = stacked(IDS).logits
    out = combine_adapters(folders, tmp_path / "combined", str(base_dir))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 6 and config["base_model_name_or_path"] == str(base_dir)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        plain = load_in_peft(AutoModelForCausalLM.from_pretrained(base_dir), out)(IDS).logits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            auto = AutoPeftModelForCausalLM.from_pretrained(str(out))(IDS).logits
        only_last = load_in_peft(AutoModelForCausalLM.from_pretrained(base_dir), folders[1])(IDS).logits
    assert (plain - want).abs().max() <= 1e-5 and (auto - want).abs().max() <= 1e-5
    assert (only_last - want).abs().max() > 1e-3  # the last stage alone is another model
