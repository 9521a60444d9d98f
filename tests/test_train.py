"""The training loop as a user relies on it: accumulation equal to a big batch, skipped
non-finite steps, packing without cross-attention, checkpoints that are atomic and
checksummed, resume that is bit-identical after an interruption, a SIGKILL (also in the
middle of writing a checkpoint) or a damaged checkpoint, early stopping that keeps the best,
and the same loop for our LoRA, QLoRA and PEFT models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from train_child import lora_model

from ftlab.config import TrainConfig
from ftlab.errors import ConfigError, TrainingError
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.data import collate
from ftlab.train import (BatchLoader, CheckpointWarning, Trainer, count_targets,
                         latest_good_checkpoint, list_checkpoints, pack, read_metrics,
                         target_loss_sum)
from ftlab.train.checkpoint import MANIFEST, STATE, WEIGHTS, trainable_weights

PAD = 0
CHILD = Path(__file__).with_name("train_child.py")
DETERMINISTIC = ("step", "loss", "lr", "grad_norm", "stepped", "tokens", "targets", "val_loss")


def _fit(folder, examples, val=None, model=None, callbacks=(), **settings):
    model = model if model is not None else lora_model(dropout=settings.pop("dropout", 0.0))
    cfg = TrainConfig(**{"lr": 1e-2, "warmup_ratio": 0.0, **settings})
    trainer = Trainer(model, examples, cfg, folder, PAD, val_examples=val, progress=False,
                      max_length=64, callbacks=list(callbacks))
    return model, trainer, trainer.fit()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _stable(records):
    return [{k: r.get(k) for k in DETERMINISTIC} for r in records]


# -- accumulation, clipping, skipped steps ------------------------------------------------

def test_accumulation_splits_give_the_same_weights(tmp_path):
    examples = tiny_examples(4, seed=21, lengths=(5, 60))
    assert len({len(e["input_ids"]) for e in examples}) == 4
    weights = {}
    for batch, accum in [(4, 1), (2, 2), (1, 4)]:
        model, _, result = _fit(tmp_path / f"{batch}x{accum}", examples, max_steps=1,
                                batch_size=batch, grad_accum=accum, group_by_length=False)
        assert result.steps == 1
        weights[(batch, accum)] = trainable_weights(model)
    assert _max_diff(weights[(2, 2)], weights[(4, 1)]) <= 1e-6
    assert _max_diff(weights[(1, 4)], weights[(4, 1)]) <= 1e-6
    assert _max_diff(weights[(4, 1)], trainable_weights(lora_model(0.0))) > 1e-4  # it trained


def test_metrics_report_the_pre_clip_norm_and_every_field(tmp_path):
    _, trainer, _ = _fit(tmp_path, tiny_examples(16), max_steps=4, batch_size=4, lr=0.5,
                         max_grad_norm=1e-3)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 1e-3 for r in steps)  # reported before clipping
    fields = {"epoch", "loss", "lr", "grad_norm", "stepped", "tokens", "targets",
              "tokens_per_s", "mfu", "memory_mb"}
    assert all(fields <= r.keys() and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in steps)
    assert (tmp_path / "training.png").stat().st_size > 10_000


class PoisonedModel(nn.Module):
    """Returns nan logits for any batch holding token 95, like a diverging step."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        if (input_ids == 95).any():
            out.logits = out.logits * torch.nan
        return out


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    examples = tiny_examples(8, seed=2, tokens=(4, 90))
    examples[5]["input_ids"][1] = 95
    model = PoisonedModel(lora_model(0.0))
    _, _, result = _fit(tmp_path, examples, model=model, max_steps=8, batch_size=1,
                        group_by_length=False, max_skipped_fraction=0.2)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert result.skipped_steps == 1 and sum(not r["stepped"] for r in steps) == 1
    assert all(torch.isfinite(w).all() for w in trainable_weights(model).values())

    # 1 of 8 planned steps is more than the default limit of 10%: the run stops at once
    with pytest.raises(TrainingError, match=r"1 of \d steps were skipped .*train.max_skipped_fraction"):
        _fit(tmp_path / "strict", examples, model=PoisonedModel(lora_model(0.0)), max_steps=8,
             batch_size=1, group_by_length=False)


# -- batching and packing ------------------------------------------------------------------

def test_packed_examples_do_not_attend_to_each_other():
    model = tiny_model("llama")  # eval mode, where transformers would build a KV cache
    examples = tiny_examples(5, seed=4, lengths=(6, 20))
    packed = pack([examples[:3], examples[3:]], PAD)
    assert packed["position_ids"][0, :len(examples[0]["input_ids"])].tolist() == list(
        range(len(examples[0]["input_ids"])))
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                       use_cache=False).logits
        for row, group in enumerate([examples[:3], examples[3:]]):
            start = 0
            for e in group:
                n = len(e["input_ids"])
                alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
                assert torch.allclose(logits[row, start:start + n], alone, atol=1e-5)
                start += n
        # the trainer's loss sees the same: packed == the examples one by one
        alone = sum(target_loss_sum(model, collate([e], PAD)) for e in examples)
        assert torch.allclose(target_loss_sum(model, packed), alone, rtol=1e-6)
    assert count_targets(packed) == sum(count_targets(collate([e], PAD)) for e in examples)


def test_length_grouping_cuts_padding_and_sees_every_example_once():
    examples = tiny_examples(400, seed=1, lengths=(4, 60))
    plain = BatchLoader(examples, 8, PAD, seed=0, group_by_length=False)
    grouped = BatchLoader(examples, 8, PAD, seed=0)
    packed = BatchLoader(examples, 2, PAD, seed=0, packing=True, max_length=64)
    assert grouped.padding_fraction() < plain.padding_fraction() / 3
    assert packed.padding_fraction() < plain.padding_fraction() / 2
    for loader in (plain, grouped, packed):
        for epoch in (0, 1):
            seen = sorted(i for batch in loader.plan(epoch) for row in batch for i in row)
            assert seen == list(range(400))
    assert grouped.plan(0) != grouped.plan(1)


def test_packed_training_counts_every_token_and_resumes_bit_identical(tmp_path):
    examples = tiny_examples(24, seed=6, lengths=(4, 30))
    settings = dict(max_steps=6, batch_size=2, packing=True, dropout=0.1, save_every=100)
    straight, trainer, _ = _fit(tmp_path / "a", examples, **settings)
    steps = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "step"]
    per_epoch = len(trainer.loader)
    assert sum(r["tokens"] for r in steps[:per_epoch]) == sum(len(e["input_ids"]) for e in examples)
    box = {}
    model = lora_model(0.1)
    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0,
                      **{k: v for k, v in settings.items() if k != "dropout"})
    box["t"] = Trainer(model, examples, cfg, tmp_path / "b", PAD, progress=False,
                       max_length=64, callbacks=[lambda r: r["step"] == 3 and box["t"].request_stop()])
    box["t"].fit()
    resumed, _, result = _fit(tmp_path / "b", examples, **settings)
    assert result.resumed_from == 3
    assert _max_diff(trainable_weights(resumed), trainable_weights(straight)) == 0


# -- checkpoints ---------------------------------------------------------------------------

def test_checkpoints_are_complete_checksummed_and_pruned(tmp_path):
    _, trainer, result = _fit(tmp_path, tiny_examples(24), val=tiny_examples(6, seed=9),
                              max_steps=9, batch_size=4, save_every=2, eval_every=3,
                              keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    best = f"step-{result.best_step:06d}"
    assert names[-2:] == ["step-000008", "step-000009"] and best in names
    assert len(names) == 2 + (best not in names[-2:])
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    folder = tmp_path / "checkpoints" / "step-000009"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {WEIGHTS, STATE, "config.json"}
    state = torch.load(folder / STATE, weights_only=True)
    assert {"optimizer", "scheduler", "rng", "data", "trainer"} <= state.keys()
    assert state["trainer"]["step"] == 9
    weights = load_file(str(folder / WEIGHTS))
    assert all("lora_" in name for name in weights)  # trainable weights only


def test_interrupted_run_resumes_bit_identical_with_the_same_log(tmp_path):
    examples, val = tiny_examples(30, seed=11), tiny_examples(6, seed=12)
    settings = dict(max_steps=10, batch_size=3, grad_accum=2, save_every=4, eval_every=3,
                    dropout=0.1, warmup_ratio=0.2)
    straight, _, _ = _fit(tmp_path / "a", examples, val, **settings)
    box = {}
    stop = lambda r: r["step"] == 5 and box["trainer"].request_stop()  # noqa: E731
    model = lora_model(0.1)
    trainer = Trainer(model, examples, TrainConfig(lr=1e-2, **{k: v for k, v in settings.items()
                                                                if k != "dropout"}),
                      tmp_path / "b", PAD, val_examples=val, progress=False, callbacks=[stop])
    box["trainer"] = trainer
    first = trainer.fit()
    assert first.interrupted and first.steps == 5
    resumed, _, second = _fit(tmp_path / "b", examples, val, **settings)
    assert second.resumed_from == 5 and second.steps == 10
    assert _max_diff(trainable_weights(resumed), trainable_weights(straight)) == 0
    assert _stable(read_metrics(tmp_path / "b" / "metrics.jsonl")) == _stable(
        read_metrics(tmp_path / "a" / "metrics.jsonl"))


def _child(run_dir, out, *flags):
    return subprocess.run([sys.executable, str(CHILD), str(run_dir), str(out), *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    done = _child(folder / "run", folder / "final.safetensors")
    assert done.returncode == 0, done.stderr
    return load_file(str(folder / "final.safetensors")), folder / "run"


@pytest.mark.parametrize("flag", ["--kill-at-step", "--kill-writing-step"])
def test_sigkill_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted, flag):
    want, straight_dir = uninterrupted
    killed = _child(tmp_path / "run", tmp_path / "final.safetensors", flag, "6" if "writing"
                    in flag else "7")
    assert killed.returncode == -9
    if "writing" in flag:
        assert list((tmp_path / "run" / "checkpoints").glob(".tmp-step-000006"))
    left = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert left == (["step-000002", "step-000004"] if "writing" in flag
                    else ["step-000004", "step-000006"])
    done = _child(tmp_path / "run", tmp_path / "final.safetensors")
    assert done.returncode == 0, done.stderr
    assert _max_diff(load_file(str(tmp_path / "final.safetensors")), want) == 0
    assert _stable(read_metrics(tmp_path / "run" / "metrics.jsonl")) == _stable(
        read_metrics(straight_dir / "metrics.jsonl"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage):
    examples = tiny_examples(24)
    settings = dict(max_steps=8, batch_size=4, save_every=2, keep_last=3, dropout=0.1)
    straight, _, _ = _fit(tmp_path / "a", examples, **settings)
    box = {}
    model = lora_model(0.1)
    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0,
                      **{k: v for k, v in settings.items() if k != "dropout"})
    box["t"] = Trainer(model, examples, cfg, tmp_path / "b", PAD, progress=False,
                       callbacks=[lambda r: r["step"] == 6 and box["t"].request_stop()])
    box["t"].fit()
    latest = tmp_path / "b" / "checkpoints" / "step-000006"
    if damage == "truncate":
        data = (latest / WEIGHTS).read_bytes()
        (latest / WEIGHTS).write_bytes(data[: len(data) // 2])
        expected = "trainable.safetensors: "
    elif damage == "flip":
        data = bytearray((latest / STATE).read_bytes())
        data[len(data) // 2] ^= 0x01
        (latest / STATE).write_bytes(bytes(data))
        expected = "state.pt: sha256 differs"
    else:
        (latest / MANIFEST).unlink()
        expected = "manifest.json: missing"
    with pytest.warns(CheckpointWarning, match="step-000006 is damaged") as caught:
        resumed, _, result = _fit(tmp_path / "b", examples, **settings)
    message = str(caught[0].message)
    assert expected in message and "step-000004" in message, message
    assert result.resumed_from == 4
    assert (tmp_path / "b" / "checkpoints" / "corrupt" / "step-000006").is_dir()  # kept aside
    assert _max_diff(trainable_weights(resumed), trainable_weights(straight)) == 0


def test_no_good_checkpoint_starts_over_and_other_settings_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    with pytest.warns(CheckpointWarning, match="starts from step 0"):
        assert latest_good_checkpoint(tmp_path / "checkpoints") is None
    _fit(tmp_path / "run", tiny_examples(8), max_steps=2, batch_size=4)
    with pytest.raises(ConfigError, match=r"batch_size: 4 -> 2"):
        _fit(tmp_path / "run", tiny_examples(8), max_steps=4, batch_size=2)


# -- early stopping -------------------------------------------------------------------------

def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    train = tiny_examples(32, seed=1, tokens=(4, 30))
    val = tiny_examples(8, seed=2, tokens=(60, 96))  # tokens training never rewards
    model, trainer, result = _fit(tmp_path, train, val, max_steps=60, batch_size=4, lr=3e-2,
                                  eval_every=2, save_every=100, keep_last=1,
                                  early_stopping_patience=3, early_stopping_min_delta=0.01)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert result.stopped_early and result.steps < 60
    assert result.best_step == best["step"] and result.best_val_loss == best["val_loss"]
    assert evals[-1]["bad_evals"] == 3
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert f"step-{result.best_step:06d}" in names and f"step-{result.steps:06d}" in names
    trainer.restore_best()
    best_weights = load_file(str(tmp_path / "checkpoints" / f"step-{result.best_step:06d}"
                                 / WEIGHTS))
    assert _max_diff(trainable_weights(model), best_weights) == 0


# -- other model kinds ------------------------------------------------------------------

def _loss_falls(tmp_path, model):
    _, _, result = _fit(tmp_path, tiny_examples(16, tokens=(4, 20)), model=model, max_steps=20,
                        batch_size=4, lr=5e-2)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert result.skipped_steps == 0
    # a tiny random model's logits are small (|logit| < 1), so its loss can fall ~0.15 here
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.1, [r["loss"] for r in steps]


def test_trains_a_peft_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8,
                                                          target_modules="all-linear"))
    _loss_falls(tmp_path, model.train())


def test_trains_a_qlora_model_without_touching_the_4bit_weights(tmp_path):
    from ftlab.quant import prepare_qlora

    model = tiny_model("llama")
    prepare_qlora(model, r=4, alpha=8)
    packed = {n: b.clone() for n, b in model.named_buffers() if b.dtype == torch.uint8}
    assert packed
    _loss_falls(tmp_path, model.train())
    assert all(torch.equal(b, packed[n]) for n, b in model.named_buffers() if n in packed)


def test_steps_count_trained_tokens_per_source_and_curves_split_them(tmp_path):
    """Examples tagged with a ``source`` (general-text replay) are counted per step; over an
    epoch the counts add up to the tagged examples' trained tokens, and the pipeline's curves
    put the pure replay steps and pure task steps apart."""
    from ftlab.pipeline.training import training_curves

    task = tiny_examples(40, seed=3, lengths=(5, 12))
    replay = [{**e, "labels": list(e["input_ids"]), "source": "replay"}
              for e in tiny_examples(40, seed=4, lengths=(40, 48))]
    _, trainer, _ = _fit(tmp_path / "train", task + replay, max_steps=20, batch_size=4)
    steps = [r for r in read_metrics(tmp_path / "train" / "metrics.jsonl") if r["kind"] == "step"]
    assert sum(r.get("targets/replay", 0) for r in steps) == sum(len(e["labels"]) - 1 for e in replay)
    assert all(r.get("targets/replay", 0) <= r["targets"] for r in steps)
    curves = training_curves(tmp_path)
    replay_steps = {s for s, _ in curves["loss/replay"]}
    task_steps = {s for s, _ in curves["loss/task"]}
    assert replay_steps and task_steps and not replay_steps & task_steps
    assert all(r.get("targets/replay", 0) >= 0.9 * r["targets"] for r in steps
               if r["step"] in replay_steps)
    assert all(r.get("targets/replay", 0) <= 0.1 * r["targets"] for r in steps
               if r["step"] in task_steps)


@pytest.mark.parametrize("settings", [
    {"schedule": "wsd", "warmup_ratio": 0.25, "warmup_start": 0.1, "decay_ratio": 0.25},
    {"schedule": "linear", "warmup_ratio": 0.1, "warmup_start": 0.5, "min_lr_ratio": 0.0},
    {"schedule": "constant", "warmup_ratio": 0.0},
])
def test_the_trainer_follows_the_configured_schedule_step_by_step(tmp_path, settings):
    """The learning rate logged with each step is the peak times lr_at (M4.7) of that
    update, and a run resumed from a checkpoint goes on on the same schedule."""
    from ftlab.train.schedule import lr_at, schedule_for

    config = {"max_steps": 12, "batch_size": 2, "lr": 0.01, "save_every": 5, **settings}
    _fit(tmp_path, tiny_examples(8), **config)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    train = TrainConfig(**{k: v for k, v in config.items()})
    schedule = schedule_for(12, train.warmup_ratio, train.min_lr_ratio, train.schedule,
                            train.warmup_start, train.decay_ratio)
    assert [r["lr"] for r in steps] == pytest.approx([0.01 * lr_at(r["step"] - 1, schedule)
                                                      for r in steps], abs=1e-12)
    assert len({round(r["lr"], 12) for r in steps}) > 1 or settings["schedule"] == "constant"


def test_wsd_whose_warm_up_and_decay_do_not_fit_is_refused():
    with pytest.raises(ValueError, match="wsd's warm-up and final decay must fit"):
        TrainConfig(schedule="wsd", warmup_ratio=0.6, decay_ratio=0.5)


def test_a_run_resumed_with_another_schedule_is_refused(tmp_path):
    """The checkpoint's scheduler would otherwise carry its own shape into the new run."""
    _fit(tmp_path, tiny_examples(8), max_steps=4, batch_size=2, save_every=2, schedule="wsd",
         warmup_ratio=0.25, decay_ratio=0.25)
    with pytest.raises(ConfigError, match=r"schedule: 'wsd' -> 'cosine'.*decay_ratio: 0.25 -> 0.2"):
        _fit(tmp_path, tiny_examples(8), max_steps=6, batch_size=2, save_every=2,
             warmup_ratio=0.25)
