"""Training precision as a user relies on it: bf16 autocast trains the embedded model along
the float32 loss curve (SFT and DPO, within stated tolerances), ``auto`` decides from what it
measures without perturbing the run it measures, a resumed run keeps the precision it started
in, and QLoRA, packing and the trl backend's arguments follow the setting."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from train_child import lora_model

from ftlab.config import DataConfig, TrainConfig
from ftlab.data import prepare_sft
from ftlab.lora import LoRALinear, find_target_modules, inject_lora
from ftlab.models import load_base_model
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.paths import base_model_dir, data_dir
from ftlab.train import SFTObjective, Trainer, read_metrics
from ftlab.train import precision as P
from ftlab.train.checkpoint import trainable_weights

SFT_STEPS = 30
LOSS_TOLERANCE = 0.03
"""Largest mean |loss_bf16 - loss_fp32| per step (nats) over the first SFT_STEPS steps of
LoRA SFT on the embedded model. bf16 keeps ~3 significant digits of each matmul input; the
measured mean difference is 0.006 (largest 0.02), a wrong cast (bf16 weights updated in place, a loss
reduced in bf16) moves it by far more."""


def _losses(folder) -> list[float]:
    return [r["loss"] for r in read_metrics(folder / "metrics.jsonl") if r["kind"] == "step"]


def _embedded_sft(folder, precision: str, **settings):
    model, tokenizer = load_base_model(base_model_dir())
    torch.manual_seed(0)
    inject_lora(model, find_target_modules(model, ["q_proj", "k_proj", "v_proj", "o_proj"]),
                r=16, alpha=32, dropout=0.0)
    prepared = prepare_sft(DataConfig(path=data_dir() / "sft" / "mixed_style.jsonl",
                                      max_length=80), tokenizer)
    cfg = TrainConfig(lr=2e-3, max_steps=SFT_STEPS, batch_size=8, precision=precision,
                      eval_every=SFT_STEPS, **settings)
    trainer = Trainer(model.train(), prepared.train, cfg, folder, tokenizer.pad_token_id,
                      prepared.validation, max_length=80, progress=False)
    return trainer, trainer.fit()


def test_bf16_sft_follows_the_float32_loss_curve_on_the_embedded_model(tmp_path):
    fp32, fp32_result = _embedded_sft(tmp_path / "fp32", "float32")
    bf16, bf16_result = _embedded_sft(tmp_path / "bf16", "bfloat16")
    assert (fp32.precision, bf16.precision) == ("float32", "bfloat16")
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    gaps = [abs(x - y) for x, y in zip(a, b)]
    assert statistics.mean(gaps) <= LOSS_TOLERANCE, (
        f"bf16 strays from the float32 loss curve: mean |difference| "
        f"{statistics.mean(gaps):.4f} > {LOSS_TOLERANCE} nats (largest {max(gaps):.4f})")
    assert max(gaps) > 0, "bf16 gave float32's losses bit for bit: autocast never ran"
    assert b[-1] < b[0] - 1.0  # it learned: the chat form costs ~2 nats less after 30 steps
    assert abs(bf16_result.best_val_loss - fp32_result.best_val_loss) <= LOSS_TOLERANCE
    # the trained weights stay float32: autocast changes the compute, never the parameters
    assert all(w.dtype == torch.float32 for w in trainable_weights(bf16.model).values())


class _AttentionDtypes(TorchDispatchMode):
    """Records the dtypes the attention kernels receive, after autocast has cast them."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func):
            self.seen.add(tuple(a.dtype for a in args[:3]))
        return func(*args, **(kwargs or {}))


class _Float32Casts(TorchDispatchMode):
    """Records the shapes of the float32 tensors that casts create."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "_to_copy" in str(func) and out.dtype == torch.float32:
            self.shapes.append(tuple(out.shape))
        return out


def test_a_lora_layer_under_autocast_casts_no_activation_to_float32():
    """Under bf16 autocast the adapter's input reaches its matmuls as bf16, forward and
    backward: casting it to the adapter's float32 first, for autocast to cast it back, cost
    ~10% of a bf16 step of the 51.6M model. Only the float32 parameters' gradients are cast
    back to float32; the output has the dtype autocast gives a plain linear layer."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 96), r=4, alpha=8)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), _Float32Casts() as casts:
        out = layer(x)
        out.sum().backward()
    assert out.dtype == torch.bfloat16
    assert [shape for shape in casts.shapes if len(shape) > 2] == [], \
        "an activation was cast to float32 inside the LoRA layer"
    assert x.grad.dtype == torch.bfloat16 and layer.lora_A.grad.dtype == torch.float32


def test_bf16_runs_matmuls_in_bf16_and_cpu_attention_in_float32():
    model = tiny_model("llama")
    ids = torch.randint(4, 96, (2, 12))
    projections = set()
    model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, i, out: projections.add(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), _AttentionDtypes() as plain:
        model(input_ids=ids)
    assert plain.seen == {(torch.bfloat16,) * 3}  # what plain autocast would do
    with P.training_context(model, torch.device("cpu"), "bfloat16"), _AttentionDtypes() as ours:
        assert model.config._attn_implementation == P.FP32_ATTENTION
        out = model(input_ids=ids).logits
    assert model.config._attn_implementation == "sdpa"  # restored
    assert projections == {torch.bfloat16}, "the projections should run in bf16"
    assert ours.seen == {(torch.float32,) * 3}, (
        f"CPU attention should get float32 q, k, v under train.precision=bfloat16, got "
        f"{ours.seen}: its bf16 backward is ~10x slower on the CPU")
    reference = model(input_ids=ids).logits
    assert (out.float() - reference).abs().max() < 0.05  # bf16 rounding, not another model


def test_bf16_dpo_follows_the_float32_loss_curve(tmp_path):
    from ftlab.align import DPOObjective, add_reference_logprobs
    from ftlab.align.preferences import load_pairs, tokenize_pair

    model, tokenizer = load_base_model(base_model_dir())
    pairs, _ = load_pairs(data_dir() / "preferences" / "train.jsonl")
    examples = [tokenize_pair(p, tokenizer, 128) for p in pairs[:48]]
    losses = {}
    for precision in ("float32", "bfloat16"):
        policy, _ = load_base_model(base_model_dir())
        torch.manual_seed(0)
        inject_lora(policy, find_target_modules(policy), r=16, alpha=32, dropout=0.0)
        train = add_reference_logprobs(policy, [dict(e) for e in examples],
                                       tokenizer.pad_token_id)
        cfg = TrainConfig(lr=2e-4, max_steps=6, batch_size=8, precision=precision)
        Trainer(policy.train(), train, cfg, tmp_path / precision, tokenizer.pad_token_id,
                progress=False, objective=DPOObjective(0.1, 1.0)).fit()
        losses[precision] = _losses(tmp_path / precision)
    gaps = [abs(x - y) for x, y in zip(losses["float32"], losses["bfloat16"])]
    assert len(gaps) == 6 and statistics.mean(gaps) <= LOSS_TOLERANCE, gaps
    assert max(gaps) > 0


# -- auto ------------------------------------------------------------------------------

def test_auto_is_float32_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    measured = []
    decision = P.decide("auto", torch.device("cpu"), tiny_model("llama"), measured.append)
    assert decision.precision == "float32" and "no native bf16" in decision.reason
    assert measured == []  # nothing was timed: emulated bf16 is always slower


@pytest.mark.parametrize("timings, chosen", [((1.0, 0.5), "bfloat16"), ((1.0, 0.95), "float32"),
                                            ((1.0, 0.8), "float32")])  # 1.25x: below 1.3x
def test_auto_on_a_bf16_cpu_takes_what_it_measured(monkeypatch, timings, chosen):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    monkeypatch.setattr(P, "measure_speedup", lambda step, model, device: timings)
    decision = P.decide("auto", torch.device("cpu"), tiny_model("llama"), lambda: None)
    assert decision.precision == chosen
    assert f"{timings[0] / timings[1]:.2f}x" in decision.reason


def test_auto_does_not_time_runs_it_cannot_time_without_side_effects(monkeypatch):
    """A data-parallel run or a sampling objective (GRPO) passes no step: auto keeps float32
    on a bf16 CPU and says why, without timing anything."""
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(P, "measure_speedup", lambda *a, **k: pytest.fail("timed a step"))
    decision = P.decide("auto", torch.device("cpu"), tiny_model("llama"), None,
                        "a grpo step has side effects (sampling, rewards)")
    assert decision == P.Decision(
        "float32", "auto: float32 (bf16 not timed: a grpo step has side effects (sampling, "
        "rewards))")


class _SamplingObjective(SFTObjective):
    """An objective whose steps must not be run outside training (as GRPO's)."""

    name = "sampling"
    repeatable_steps = False


def test_the_trainer_does_not_time_an_objective_whose_steps_are_not_repeatable(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(P, "measure_speedup", lambda *a, **k: pytest.fail("timed a step"))
    said = []
    trainer = Trainer(lora_model(), tiny_examples(8, seed=3),
                      TrainConfig(max_steps=1, batch_size=4, precision="auto"), tmp_path, 0,
                      progress=False, objective=_SamplingObjective(), print_fn=said.append)
    trainer.fit()
    assert trainer.precision == "float32"
    assert "precision: auto: float32 (bf16 not timed: a sampling step cannot be run outside training)" in said[0]


def test_measuring_auto_leaves_the_run_exactly_as_it_was(tmp_path, monkeypatch):
    """auto times a step in each precision before training; with float32 chosen, the run must
    equal a float32 run bit for bit: same data order, dropout draws and gradients."""
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(P, "AUTO_MIN_SPEEDUP", float("inf"))  # measure, then keep float32
    calls = []
    original = P.measure_speedup

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(P, "measure_speedup", counted)
    weights = {}
    for precision in ("auto", "float32"):
        model = lora_model(dropout=0.1)
        cfg = TrainConfig(lr=1e-2, max_steps=4, batch_size=4, precision=precision)
        trainer = Trainer(model, tiny_examples(16, seed=3), cfg, tmp_path / precision, 0,
                          progress=False)
        trainer.fit()
        assert trainer.precision == "float32"
        weights[precision] = trainable_weights(model)
    assert calls == [1]
    assert all(torch.equal(weights["auto"][k], weights["float32"][k]) for k in weights["auto"])


def test_a_resumed_run_keeps_the_precision_it_started_in(tmp_path, monkeypatch):
    """Started in bf16 (auto's choice), stopped, resumed where auto would now say float32:
    it continues in bf16 and ends bit-identical to the uninterrupted bf16 run; packing on."""
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    examples = tiny_examples(24, seed=5, lengths=(6, 30))

    def run(folder, speed, stop_at=None):
        monkeypatch.setattr(P, "measure_speedup", lambda step, model, device: speed)
        model = lora_model(dropout=0.1)
        cfg = TrainConfig(lr=1e-2, max_steps=6, batch_size=3, save_every=2, packing=True,
                          precision="auto")
        trainer = Trainer(model, examples, cfg, folder, 0, max_length=64, progress=False)
        if stop_at:
            trainer.callbacks.append(lambda r: r["kind"] == "step" and r["step"] == stop_at
                                     and trainer.request_stop())
        trainer.fit()
        return trainer, trainable_weights(model)

    whole, expected = run(tmp_path / "whole", (1.0, 0.5))
    assert whole.precision == "bfloat16"
    first, _ = run(tmp_path / "resumed", (1.0, 0.5), stop_at=3)
    assert first.counters["step"] == 3
    resumed, weights = run(tmp_path / "resumed", (1.0, 2.0))  # auto would pick float32 now
    assert resumed.precision == "bfloat16"
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_qlora_trains_under_bf16(tmp_path):
    from ftlab.quant import prepare_qlora

    model = tiny_model("llama")
    prepare_qlora(model, r=4, alpha=8)
    packed = {n: b.clone() for n, b in model.named_buffers() if b.dtype == torch.uint8}
    cfg = TrainConfig(lr=5e-2, max_steps=20, batch_size=4, precision="bfloat16",
                      warmup_ratio=0.0)
    trainer = Trainer(model.train(), tiny_examples(16, tokens=(4, 20)), cfg, tmp_path, 0,
                      progress=False)
    result = trainer.fit()
    losses = _losses(tmp_path)
    assert result.skipped_steps == 0 and losses[-1] < losses[0] - 0.1, losses
    assert all(torch.equal(b, packed[n]) for n, b in model.named_buffers() if n in packed)


@pytest.mark.parametrize("precision, bf16", [("bfloat16", True), ("float32", False),
                                             ("auto", torch.cuda.is_available()
                                              and torch.cuda.is_bf16_supported())])
def test_the_trl_backend_trains_in_the_same_precision(tmp_path, precision, bf16):
    from ftlab.pipeline.trl_backend import training_arguments

    args = training_arguments(TrainConfig(precision=precision), tmp_path, False, False)
    assert args["bf16"] is bf16 and args["fp16"] is False


def test_compiled_training_follows_the_eager_run_and_checkpoints_plain_names(tmp_path,
                                                                             monkeypatch):
    """train.compile: the forward runs through torch.compile (here its aot_eager backend:
    the same graph capture and autograd, without inductor's minutes of C++ compilation on
    2 cores); losses equal the eager run's and checkpoints keep the model's own names."""
    real = torch.compile
    compiled = []

    def aot_eager(module, **kwargs):
        compiled.append(module)
        return real(module, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", aot_eager)
    losses, names = {}, {}
    for flag in (False, True):
        model = lora_model(dropout=0.0)
        cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, compile=flag, precision="float32")
        trainer = Trainer(model, tiny_examples(12, seed=4), cfg, tmp_path / str(flag), 0,
                          progress=False)
        trainer.fit()
        losses[flag] = _losses(tmp_path / str(flag))
        names[flag] = sorted(trainable_weights(model))
    assert len(compiled) == 1
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert names[True] == names[False] and not any("_orig_mod" in n for n in names[True])
