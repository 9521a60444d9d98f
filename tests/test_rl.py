"""ftlab.rl: sampling, rewards, the GRPO objective — and equality with TRL's GRPOTrainer
(advantages from the same rewards; loss and gradients on the same completions)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ftlab.config import TrainConfig
from ftlab.evaluate import greedy_decode
from ftlab.lora import adapters_disabled, inject_lora, lora_layers
from ftlab.models.load import load_base_model
from ftlab.models.measure import chat_prompt
from ftlab.paths import data_dir
from ftlab.config import REWARD_NAMES
from ftlab.config import GRPOConfig
from ftlab.rl import (BUILTIN, GRPOObjective, RewardError, builtin_rewards,
                      end_of_turn_ids, group_advantages, grpo_loss, reward_functions,
                      sample_groups, sampler, score, stop_token_ids, token_logprobs)
from ftlab.train import Trainer

QUESTIONS = ["What is the capital of France?", "How much is 3 plus 4?",
             "Which day follows Monday?"]


@pytest.fixture(scope="module")
def embedded():
    return load_base_model()


def test_sampling_equals_transformers_generate_token_for_token(embedded):
    model, tok = embedded
    tok.padding_side = "left"
    enc = tok([chat_prompt(tok, q) for q in QUESTIONS], return_tensors="pt", padding=True,
              add_special_tokens=False)
    stops = stop_token_ids(tok, model)
    torch.manual_seed(5)
    ours = greedy_decode(model, enc.input_ids, enc.attention_mask, 12, stops, tok.pad_token_id,
                         pick=sampler(0.8, 0.9))
    torch.manual_seed(5)
    theirs = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.9, top_k=0,
                            max_new_tokens=12, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    theirs = theirs[:, enc.input_ids.shape[1]:]
    assert ours.tolist() == theirs[:, :ours.shape[1]].tolist()
    tok.padding_side = "right"


def test_groups_are_seeded_and_masks_end_at_the_stop_token(embedded):
    model, tok = embedded
    one = sample_groups(model, tok, QUESTIONS, 4, 16, 1.0, 1.0, torch.Generator().manual_seed(1))
    two = sample_groups(model, tok, QUESTIONS, 4, 16, 1.0, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(one.completion_ids, two.completion_ids) and one.texts == two.texts
    assert one.completion_ids.shape[0] == 12 and one.prompt_ids.shape[0] == 12
    stops = set(stop_token_ids(tok, model))
    assert stops == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    for row, mask, ended in zip(one.completion_ids.tolist(), one.completion_mask.tolist(),
                                one.ended):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert ended == (row[n - 1] in stops)
        assert not any(t in stops for t in row[:n - 1])


def test_adapters_disabled_is_exactly_the_base(embedded):
    model, tok = embedded
    tuned = inject_lora(copy.deepcopy(model), ["model.layers.0.self_attn.q_proj"], 4, 8)
    with torch.no_grad():
        for layer in lora_layers(tuned).values():
            layer.lora_B.normal_()
    ids = tok(QUESTIONS[0], return_tensors="pt").input_ids
    base = model(ids).logits
    with adapters_disabled(tuned):
        assert torch.equal(tuned(ids).logits, base)
    assert not torch.equal(tuned(ids).logits, base)


def _fields(n):
    return {"id": ["capital:France"] * n, "completion_ids": [[1, 2]] * n}


def test_reward_errors_name_the_function_and_the_prompt():
    prompts = ["What is the capital of France?"] * 2
    completions = ["Paris.", "Rome."]
    good = score({"correct": builtin_rewards([0])["correct"]}, {"correct": 1.0}, prompts,
                 completions, _fields(2))
    assert good.total.tolist() == [1.0, 0.0]
    cases = {
        "raises": (lambda prompts, completions, **kw: 1 / 0, "raised ZeroDivisionError"),
        "nan": (lambda prompts, completions, **kw: [float("nan"), 1.0], "returned nan"),
        "short": (lambda prompts, completions, **kw: [1.0], "returned 1 values for 2"),
    }
    for name, (fn, says) in cases.items():
        with pytest.raises(RewardError) as e:
            score({name: fn}, {name: 1.0}, prompts, completions, _fields(2))
        assert f"reward function '{name}'" in str(e.value) and says in str(e.value)
        assert "capital of France" in str(e.value)


def test_a_run_scores_what_it_weights_and_the_builtins_its_prompts_allow():
    assert set(BUILTIN) <= set(REWARD_NAMES)  # the config accepts every built-in name
    assert set(reward_functions({"polite": 1.0}, [2], facts_known=False)) == {
        "polite", "ended", "length"}  # 'correct' needs a fact id on every prompt
    assert set(reward_functions({"polite": 1.0}, [2], facts_known=True)) == set(BUILTIN)
    got = score({"n": lambda prompts, completions, **kw: [torch.tensor(0.5), 1]}, {"n": 1.0},
                ["q", "q"], ["a", "b"], {})
    assert got.total.tolist() == [0.5, 1.0]  # tensors and ints are numbers too
    with pytest.raises(RewardError, match=r"returned None \(NoneType\)"):
        score({"n": lambda prompts, completions, **kw: [None, 1]}, {"n": 1.0}, ["q", "q"],
              ["a", "b"], {})
    with pytest.raises(ValueError, match="do not make whole groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_trl_advantages_equal_ours_from_the_same_rewards(embedded, tmp_path):
    """TRL computes advantages inside ``_generate_and_score_completions`` (no public function
    for it): we run that on one batch with a reward that records what it returned."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    model, tok = embedded
    returned = []

    def reward(prompts, completions, **kw):
        values = [float(len(c[-1]["content"]) % 5) for c in completions]
        values[:4] = [2.0] * 4  # one group with no spread
        returned.extend(values)
        return values

    for scale in ("group", "batch", "none"):
        returned.clear()
        args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                              per_device_train_batch_size=12, num_generations=4,
                              max_completion_length=8, scale_rewards=scale, bf16=False)
        records = [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS]
        trainer = trl.GRPOTrainer(model=copy.deepcopy(model), reward_funcs=[reward], args=args,
                                  train_dataset=datasets.Dataset.from_list(records),
                                  processing_class=tok)
        torch.manual_seed(0)
        out = trainer._generate_and_score_completions([r for r in records for _ in range(4)])
        ours = group_advantages(torch.tensor(returned), 4, scale)
        assert torch.allclose(out["advantages"], ours, atol=1e-6), scale


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_trl_loss_and_gradients_equal_ours(embedded, tmp_path, loss_type, perturbed):
    """The same completions, advantages, old and reference log-probs through TRL's
    ``compute_loss`` and through ours (token_logprobs + C.5): loss to 1e-6 relative, every
    adapter gradient to 1e-5 relative to its largest entry. Left-padded prompts get other
    position ids in TRL (it passes none); rotary attention makes that a rounding difference."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    base, tok = embedded
    rollouts = sample_groups(perturbed(base, 1, 0.02), tok, QUESTIONS, 4, 10, 1.0, 1.0,
                             torch.Generator().manual_seed(0))
    tensors = (rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
               rollouts.completion_mask)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    policy = inject_lora(copy.deepcopy(base), names, 4, 8)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B.normal_(std=0.05)
        old = token_logprobs(perturbed(policy, 2, 0.01), *tensors)[0]
        with adapters_disabled(policy):
            ref = token_logprobs(policy, *tensors)[0]
    advantages = group_advantages(torch.linspace(-1, 2, 12), 4)
    mask = rollouts.completion_mask

    policy.zero_grad()
    logps, _ = token_logprobs(policy, *tensors)
    ours = grpo_loss(logps, old, ref, advantages, mask, 0.05, 0.2, 0.28, loss_type,
                     max_completion_length=10).loss
    ours.backward()
    our_grads = [p.grad.clone() for p in policy.parameters() if p.requires_grad]

    policy.zero_grad()
    args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], beta=0.05,
                          epsilon=0.2, epsilon_high=0.28, loss_type=loss_type,
                          per_device_train_batch_size=12, num_generations=4,
                          max_completion_length=10, bf16=False)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[lambda prompts, completions, **k:
                                                          [0.0] * len(prompts)],
                              args=args, processing_class=tok,
                              train_dataset=datasets.Dataset.from_list(
                                  [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS]))
    trainer.current_gradient_accumulation_steps = 1  # set by TRL's training loop
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, {
        "prompt_ids": tensors[0], "prompt_mask": tensors[1], "completion_ids": tensors[2],
        "completion_mask": mask, "advantages": advantages, "old_per_token_logps": old,
        "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()})
    theirs.backward()
    their_grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert abs(float(ours) - float(theirs)) <= 1e-6 * max(1.0, abs(float(theirs)))
    for a, b in zip(our_grads, their_grads):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def _grpo_run(embedded, folder, steps, stop_after=None, iterations=2):
    base, tok = embedded
    torch.manual_seed(0)
    model = inject_lora(copy.deepcopy(base), ["model.layers.0.self_attn.q_proj",
                                              "model.layers.0.self_attn.v_proj"], 4, 8)
    prompts = [{"question": q, "id": i, "kind": k} for q, i, k in (
        (QUESTIONS[0], "capital:France", "capital"), (QUESTIONS[1], "sum:3 plus 4", "sum"),
        (QUESTIONS[2], "day_after:Monday", "day_after"),
        ("What is the capital of Italy?", "capital:Italy", "capital"))]
    settings = GRPOConfig(group_size=3, max_new_tokens=8, beta=0.05, iterations=iterations,
                            rewards={"correct": 1.0, "ended": 0.5})
    objective = GRPOObjective(prompts, tok, builtin_rewards(end_of_turn_ids(tok)), settings)
    config = TrainConfig(lr=5e-3, max_steps=steps, batch_size=2, save_every=1, eval_every=2,
                         seed=0)
    seen = []
    trainer = Trainer(model, objective.examples(range(3)), config, folder, tok.pad_token_id,
                      objective.examples([3]), objective=objective, progress=False,
                      print_fn=lambda line: None,
                      callbacks=[lambda r: seen.append(r) if stop_after and r.get("step") ==
                                 stop_after and r["kind"] == "step" else None])
    if stop_after:
        trainer.callbacks.append(lambda r: trainer.request_stop()
                                 if r.get("step") == stop_after else None)
    trainer.fit()
    return model, folder


def test_grpo_training_resumes_bit_identically_mid_round(embedded, tmp_path):
    """Interrupted after step 3 — the middle of a two-step round — and resumed."""
    torch.set_num_threads(1)
    whole, _ = _grpo_run(embedded, tmp_path / "whole", 4)
    _grpo_run(embedded, tmp_path / "parts", 4, stop_after=3)
    resumed, folder = _grpo_run(embedded, tmp_path / "parts", 4)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"reward", "reward/correct", "reward/ended", "kl", "entropy", "clip_fraction",
            "reward_kind/capital"} <= set(steps[0])
    assert steps[1]["clip_fraction"] >= 0 and steps[0]["kl"] == 0.0  # step 1: policy = ref
    assert any(r["kind"] == "eval" and "val_reward" in r for r in records)


# --- the grpo stage ------------------------------------------------------------------
def _prompts(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _rl_config(tmp_path, prompts, **grpo):
    import yaml

    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        {"kind": "sft", "data": {"path": str(data_dir() / "sft/messages.jsonl"), "max_length": 96},
         "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "eval_every": 30}},
        {"kind": "grpo", "data": {"path": str(prompts), "validation_fraction": 0.25},
         "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         "train": {"max_steps": 4, "batch_size": 4, "save_every": 2, "eval_every": 2},
         "grpo": {"group_size": 3, "max_new_tokens": 12, "temperature": 0.7, **grpo}}]}))
    return path


def test_grpo_plan_refuses_bad_prompts_unknown_rewards_and_several_processes(tmp_path):
    from ftlab.config import load_config
    from ftlab.errors import ConfigError
    from ftlab.pipeline import plan

    prompts = _prompts(tmp_path, ['{"question": "What is the capital of France?", "id": "capital:France"}',
                                  'not json', '{"id": "capital:Italy"}',
                                  '{"question": "What is 2 plus 2?", "id": "sum:nope"}',
                                  '{"question": "Hi?", "id": "capital:Italy", "completions": 1}'])
    with pytest.raises(ConfigError) as e:
        plan(load_config(_rl_config(tmp_path, prompts)))
    text = str(e.value)
    assert f"{prompts}:2: not JSON" in text and f"{prompts}:3: a prompt needs" in text
    assert f"{prompts}:4: the world's verifier (the 'correct' rewards, the verifier judges) needs an 'id'" in text and ":1:" not in text
    assert f"{prompts}:5: column(s) completions would clash" in text
    with pytest.raises(ConfigError) as e:
        load_config(_rl_config(tmp_path, prompts, rewards={"corect": 1.0}))
    assert "rl.yaml:" in str(e.value) and "did you mean 'correct'" in str(e.value)
    good = _prompts(tmp_path, ['{"question": "What is the capital of France?", "id": "capital:France"}'] * 2)
    with pytest.raises(ConfigError) as e:
        plan(load_config(_rl_config(tmp_path, good)), processes=2)
    assert "a grpo stage runs in one process" in str(e.value)
    plan(load_config(_rl_config(tmp_path, good)))  # fine in one process
    with pytest.raises(ConfigError, match="set lora.dropout: 0"):
        plan(load_config(_rl_config(tmp_path, good, iterations=2)))  # lora.dropout 0.05


def test_grpo_plan_refuses_long_prompts_and_a_reversed_clip_range(tmp_path, capsys):
    """Through `ftlab run --dry-run`: a question over grpo.max_prompt_length tokens is an
    error with its file:line (or allowed, to be truncated, when the config says so); an
    upper clip below the lower one is an error at its line."""
    from ftlab.cli import main

    long = "What is the capital of " + "very " * 700 + "France?"
    prompts = _prompts(tmp_path, ['{"question": "What is the capital of France?", "id": "capital:France"}',
                                  json.dumps({"question": long, "id": "capital:France"})])
    config = _rl_config(tmp_path, prompts)
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:2: the question is " in err and "over grpo.max_prompt_length (512)" in err, err
    assert f"{prompts}:1:" not in err and "Traceback" not in err
    assert main(["run", str(_rl_config(tmp_path, prompts, long_prompts="truncate")), "--dry-run"]) == 0
    capsys.readouterr()
    config = _rl_config(tmp_path, prompts, long_prompts="truncate", epsilon=0.2, epsilon_high=0.1)
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "grpo:" in text)
    assert f"{config}:{line}: stages.1.grpo: " in err and "epsilon_high (0.1) is below epsilon" in err, err


def test_repeated_prompts_are_counted_and_a_fact_never_straddles_the_split():
    """The shipped prompt file repeats phrasings on purpose: 'drop' keeps one of each, 'keep'
    keeps all, both count them; whatever the seed and fraction, no fact (and so no copy of
    a question) is on both sides of the split, and the validation share is about as asked."""
    from ftlab.rl.prompts import load_prompts, prepare_prompts, split_prompts
    from ftlab.models import load_tokenizer

    path = data_dir() / "rl/prompts.jsonl"
    numbered = load_prompts(path, True)
    tokenizer = load_tokenizer()
    kept, counts = prepare_prompts(path, numbered, tokenizer, 512, "error", "keep")
    dropped, again = prepare_prompts(path, numbered, tokenizer, 512, "error", "drop")
    unique = {(r["question"], r["id"]) for _, r in numbered}
    assert len(kept) == len(numbered) and len(dropped) == len(unique) < len(numbered)
    assert counts["prompts/duplicates"] == again["prompts/duplicates"] == len(numbered) - len(unique)
    for records in (kept, dropped):
        for seed in range(4):
            for fraction in (0.1, 0.25):
                train, val = split_prompts(records, fraction, seed)
                assert len(train) + len(val) == len(records) and train and val
                assert not {r["id"] for r in train} & {r["id"] for r in val}
                assert abs(len(val) - fraction * len(records)) <= 18  # a fact has <= 18 lines
    assert split_prompts(records, 0.0, 0)[1] == []


def test_grpo_stage_trains_reports_and_resumes_after_a_failing_reward(tmp_path):
    """A registered reward raises in the third round: the run stops with its name and the
    prompt, the checkpoint of step 2 stays; after the fix the stage resumes from it."""
    from ftlab.config import load_config
    from ftlab.pipeline import run_pipeline
    from ftlab.rl import register_reward

    broken = {"on": True, "calls": 0}

    @register_reward("flaky")
    def flaky(prompts, completions, **fields):
        broken["calls"] += 1
        if broken["on"] and broken["calls"] == 5:  # greedy pass, rounds 1-2, eval; round 3
            raise KeyError("fact table not loaded")
        return [0.0] * len(completions)

    lines = (data_dir() / "rl/prompts.jsonl").read_text().splitlines()[:12]
    config = load_config(_rl_config(tmp_path, _prompts(tmp_path, lines),
                                    rewards={"correct": 1.0, "ended": 0.5, "flaky": 0.1}))
    with pytest.raises(RewardError) as e:
        run_pipeline(config, progress=False, print_fn=lambda s: None)
    assert "reward function 'flaky' raised KeyError" in str(e.value)
    questions = [json.loads(line)["question"] for line in lines]
    assert any(f"first prompt of the batch: {q!r}" in str(e.value) for q in questions)
    checkpoints = tmp_path / "run/grpo/train/checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir())[-1].endswith("2")
    broken["on"] = False
    said = []
    summary = run_pipeline(config, progress=False, print_fn=said.append)
    assert any("resuming from checkpoint" in line and "step 2" in line for line in said)
    assert any("(a fact's prompts on one side)" in line for line in said), said
    result = summary["stages"]["grpo"]
    figures = result["metrics"]
    assert figures["steps"] == 4 and {"before/reward", "after/reward", "before/reward/correct",
                                      "after/reward_kind/capital", "eval/exact_match/macro"} <= set(figures)
    assert result["curves"]["reward"] and result["curves"]["val_reward"]
    groups = json.loads((tmp_path / "run/grpo/samples.json").read_text())
    assert len(groups) == 2 and len(groups[0]["completions"]) == 3
    assert abs(sum(c["advantage"] for c in groups[0]["completions"])) < 1e-5
    assert Path(result["artifacts"]["adapter"], "adapter_model.safetensors").is_file()


def test_grpo_stage_runs_on_trls_grpotrainer(tmp_path):
    pytest.importorskip("trl")
    import yaml

    from ftlab.config import load_config
    from ftlab.pipeline import ModelRef, load_model, run_pipeline

    lines = (data_dir() / "rl/prompts.jsonl").read_text().splitlines()[:8]
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        {"kind": "grpo", "backend": "trl", "data": {"path": str(_prompts(tmp_path, lines)),
                                                     "validation_fraction": 0},
         "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         "eval": {"max_new_tokens": 8},
         "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2},
         "grpo": {"group_size": 2, "max_new_tokens": 8, "rewards": {"correct": 1.0, "ended": 1.0}}}]}))
    summary = run_pipeline(load_config(path), progress=False, print_fn=lambda s: None)
    result = summary["stages"]["grpo"]
    assert result["metrics"]["steps"] == 2 and len(result["curves"]["reward"]) == 2
    adapter = json.loads(Path(result["artifacts"]["adapter"], "adapter_config.json").read_text())
    assert adapter["r"] == 4 and {m.rsplit(".", 1)[1] for m in adapter["target_modules"]} == {
        "q_proj", "v_proj"}
    load_model(ModelRef("embedded", (result["artifacts"]["adapter"],)))  # reads back
