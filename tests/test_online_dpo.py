"""Online DPO (RLAIF) against TRL's ``OnlineDPOTrainer`` (trl.experimental.online_dpo): the same
sampled replies scored by the same reward model give the same pairs, loss and gradients; and
the judges' contract."""

from __future__ import annotations

import copy

import pytest
import torch

import ftlab.reward.online as online
from ftlab.lora import inject_lora, lora_layers
from ftlab.models.load import load_base_model
from ftlab.reward.judges import (TIE, JudgeError, LLMJudge, RewardModelJudge, VerifierJudge,
                                 agreement)
from ftlab.reward.model import scalar_head_model
from ftlab.reward.online import OnlineDPOObjective, order_pairs
from ftlab.rl.sampling import sample_groups

QUESTIONS = ["What is the capital of France?", "How much is 3 plus 4?",
             "Which day follows Monday?", "What is the capital of Italy?"]
IDS = ["capital:France", "sum:3 plus 4", "day_after:Monday", "capital:Italy"]


@pytest.fixture(scope="module")
def embedded():
    return load_base_model()


def _policy(base):
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    policy = inject_lora(copy.deepcopy(base), names, 4, 8)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(3))
    return policy


def test_online_dpo_loss_and_gradients_equal_trls(embedded, tmp_path, monkeypatch):
    """Rows 2i / 2i+1 of our sampling are TRL's rows i / B+i; with ``_generate`` returning
    those completions, TRL's ``training_step`` and our objective's step pick the same pairs
    with the same reward model and agree on the loss (1e-5 relative) and every adapter
    gradient (1e-4 of its largest entry: TRL passes no position ids to left-padded
    prompts, rotary attention makes that a rounding difference)."""
    datasets = pytest.importorskip("datasets")
    trl_online = pytest.importorskip("trl.experimental.online_dpo")
    base, tok = embedded
    policy = _policy(base)
    reward_model = scalar_head_model(base, tok.pad_token_id, seed=7)
    rollouts = sample_groups(policy, tok, QUESTIONS, 2, 10, 1.0, 1.0,
                             torch.Generator().manual_seed(0))
    monkeypatch.setattr(online, "sample_groups", lambda *a, **k: rollouts)

    objective = OnlineDPOObjective([{"question": q, "id": i} for q, i in zip(QUESTIONS, IDS)],
                                   tok, RewardModelJudge(reward_model, tok), beta=0.1)
    policy.zero_grad()
    ours = objective.accumulate(policy, [{"prompt_index": torch.arange(len(QUESTIONS))}])
    our_grads = [p.grad.clone() for p in policy.parameters() if p.requires_grad]

    order = [*range(0, 2 * len(QUESTIONS), 2), *range(1, 2 * len(QUESTIONS), 2)]
    tensors = tuple(t[order] for t in (rollouts.prompt_ids, rollouts.prompt_mask,
                                       rollouts.completion_ids, rollouts.completion_mask))
    args = trl_online.OnlineDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                      beta=0.1, per_device_train_batch_size=len(QUESTIONS),
                                      max_new_tokens=10, bf16=False, max_length=512)
    reference = copy.deepcopy(base).eval()
    trainer = trl_online.OnlineDPOTrainer(
        model=policy, ref_model=reference, reward_funcs=[reward_model], args=args,
        processing_class=tok, reward_processing_classes=[tok],
        train_dataset=datasets.Dataset.from_list(
            [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS]))
    trainer._generate = lambda model, prompts, images=None: (*tensors, None)
    policy.zero_grad()
    theirs = trainer.training_step(trainer.model, {
        "prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    their_grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert abs(ours.loss - float(theirs)) <= 1e-5 * max(1.0, abs(float(theirs))), (
        ours.loss, float(theirs))
    for a, b in zip(our_grads, their_grads):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_order_pairs_and_agreement():
    assert order_pairs([0, 1, TIE], 3) == ([0, 3], [1, 2], [0, 1])
    assert agreement([0, 1, TIE, 1], [0, 0, 1, TIE]) == (1 / 3, 3)
    assert agreement([0], [TIE])[1] == 0


def test_verifier_judge_reads_the_strict_verifier():
    judge = VerifierJudge(strict=True)
    pairs = [("Paris.", "Berlin."), ("Tuesday comes after Tuesday.", "Monday is followed by "
                                     "Tuesday."), ("Paris.", "Certainly! Paris.")]
    ids = ["capital:France", "day_after:Monday", "capital:France"]
    assert judge(["q"] * 3, pairs, id=ids) == [0, 1, TIE]
    assert VerifierJudge(strict=False)(["q"] * 3, pairs, id=ids) == [0, TIE, TIE]
    with pytest.raises(ValueError, match="fact id"):
        judge(["q"], [("a", "b")])


def test_llm_judge_cancels_position_bias(embedded):
    """A judge that always prefers whatever is shown first decides nothing once both orders
    are asked: every verdict flips with the order, and the two preferences cancel."""
    base, tok = embedded
    judge = LLMJudge(base, tok)
    a_id, b_id = judge.letters

    class AlwaysA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **kwargs):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., a_id] = 3.0
            return type("Out", (), {"logits": logits})

    biased = LLMJudge(AlwaysA(), tok)
    assert biased(QUESTIONS[:2], [("x", "y"), ("y", "x")]) == [TIE, TIE]
    assert biased.order_flips == biased.judged == 2
    verdicts = judge(QUESTIONS[:2], [("Paris.", "Berlin."), ("7.", "8.")])
    assert all(v in (0, 1, TIE) for v in verdicts)


def test_a_judge_that_raises_stops_the_step_naming_it(embedded):
    base, tok = embedded

    def broken(prompts, pairs, **fields):
        raise RuntimeError("no network")
    broken.name = "mine"
    objective = OnlineDPOObjective([{"question": QUESTIONS[0]}], tok, broken, beta=0.1,
                                   max_new_tokens=4)
    with pytest.raises(JudgeError, match=r"judge 'mine' raised RuntimeError: no network"):
        objective.accumulate(_policy(base), [{"prompt_index": torch.tensor([0])}])
    objective.judge = lambda prompts, pairs, **f: [2]
    with pytest.raises(JudgeError, match="must return 0, 1 or -1"):
        objective.accumulate(_policy(base), [{"prompt_index": torch.tensor([0])}])


def test_grpo_reward_model_scores_equal_trls(embedded, tmp_path):
    """A reward model as a GRPO reward: our function's scores equal those TRL's
    ``GRPOTrainer`` computes from the same sequence-classification model passed as a reward
    function, on the same completions (1e-5)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from ftlab.reward.judges import reward_model_reward

    base, tok = embedded
    reward_model = scalar_head_model(base, tok.pad_token_id, seed=7)
    rollouts = sample_groups(_policy(base), tok, QUESTIONS, 2, 10, 1.0, 1.0,
                             torch.Generator().manual_seed(0))
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS for _ in range(2)]
    completions = [[{"role": "assistant", "content": t}] for t in rollouts.raw_texts]
    args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                          per_device_train_batch_size=8, num_generations=2,
                          max_completion_length=10, bf16=False)
    trainer = trl.GRPOTrainer(model=copy.deepcopy(base), reward_funcs=[reward_model], args=args,
                              processing_class=tok, reward_processing_classes=[tok],
                              train_dataset=datasets.Dataset.from_list(
                                  [{"prompt": p} for p in prompts[::2]]))
    theirs = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, completions,
                                        rollouts.completion_ids.tolist())[:, 0]
    ours = reward_model_reward(reward_model, tok)(
        prompts=[q for q in QUESTIONS for _ in range(2)], completions=rollouts.raw_texts)
    assert torch.allclose(torch.tensor(ours, dtype=torch.float32), theirs, atol=1e-5)


def test_plan_refuses_a_reward_stage_that_is_not_earlier(tmp_path):
    import yaml

    from ftlab.config import load_config
    from ftlab.errors import ConfigError
    from ftlab.paths import data_dir
    from ftlab.pipeline import plan

    prompts = str(data_dir() / "rl/prompts.jsonl")
    stages = [
        {"kind": "online_dpo", "data": {"path": prompts},
         "online_dpo": {"judge": "reward_model", "reward_model": "rm"}},
        {"kind": "reward", "name": "rm", "data": {"path": str(data_dir() / "preferences/train.jsonl")}},
        {"kind": "grpo", "data": {"path": prompts},
         "grpo": {"rewards": {"correct": 0.0, "reward_model": {"stage": "sft", "weight": 1.0}}}}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages},
                                   sort_keys=False))
    with pytest.raises(ConfigError) as e:
        plan(load_config(path), path, check_model=False)
    message = str(e.value)
    assert "online_dpo.reward_model: 'rm' is not an earlier reward stage" in message
    assert "grpo.rewards.reward_model.stage: 'sft' is not an earlier reward stage" in message
    assert f"{path}:" in message  # file:line
    path.write_text(yaml.safe_dump({"stages": [{**stages[0], "online_dpo": {"judge": "oracle"}}]}))
    with pytest.raises(ConfigError, match="judge"):
        load_config(path)


def _online_run(embedded, folder, steps, stop_after=None, judge=None):
    from ftlab.config import TrainConfig
    from ftlab.train import Trainer

    base, tok = embedded
    torch.manual_seed(0)
    model = inject_lora(copy.deepcopy(base), ["model.layers.0.self_attn.q_proj",
                                              "model.layers.0.self_attn.v_proj"], 4, 8)
    prompts = [{"question": q, "id": i} for q, i in zip(QUESTIONS, IDS)]
    objective = OnlineDPOObjective(prompts, tok, judge or RewardModelJudge(
        scalar_head_model(base, tok.pad_token_id, seed=7), tok), beta=0.1, max_new_tokens=8)
    config = TrainConfig(lr=5e-3, max_steps=steps, batch_size=2, save_every=1, eval_every=2,
                         seed=0)
    trainer = Trainer(model, objective.examples(range(3)), config, folder, tok.pad_token_id,
                      objective.examples([3]), objective=objective, progress=False,
                      print_fn=lambda line: None)
    if stop_after:
        trainer.callbacks.append(lambda r: trainer.request_stop()
                                 if r.get("step") == stop_after else None)
    trainer.fit()
    return model, folder


def test_online_dpo_resumes_bit_identically_and_logs_its_figures(embedded, tmp_path):
    import json

    torch.set_num_threads(1)
    whole, _ = _online_run(embedded, tmp_path / "whole", 3)
    _online_run(embedded, tmp_path / "parts", 3, stop_after=2)
    resumed, folder = _online_run(embedded, tmp_path / "parts", 3)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert {"ties", "margin", "accuracy", "ended", "correct", "logps/chosen"} <= set(steps[0])
    assert any(r["kind"] == "eval" and "val_correct" in r for r in records)


def test_a_step_of_ties_trains_nothing(embedded, tmp_path):
    """The verifier calls two wrong replies a tie: a step with only ties changes nothing."""
    model, _ = _online_run(embedded, tmp_path / "ties", 1,
                           judge=lambda prompts, pairs, **f: [TIE] * len(pairs))
    assert all(float(layer.lora_B.abs().max()) == 0 for layer in lora_layers(model).values())


def test_plan_refuses_a_preference_file_without_pairs_with_its_lines(tmp_path):
    import yaml

    from ftlab.config import load_config
    from ftlab.errors import ConfigError
    from ftlab.pipeline import plan

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Hi?", "chosen": "Hello!"}\n{"prompt": "Yo?", "answer": "Hey"}\n')
    for kind in ("reward", "dpo"):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
            {"kind": kind, "data": {"path": str(pairs)}}]}))
        with pytest.raises(ConfigError) as e:
            plan(load_config(path), path, check_model=False)
        message = str(e.value)
        assert f"{path}:" in message and "data.path:" in message
        assert f"{pairs}:1" in message and f"{pairs}:2" in message and "missing" in message


def test_a_judge_that_raises_stops_the_stage_and_it_resumes_after_the_fix(tmp_path, monkeypatch):
    """An online_dpo stage whose judge fails at its third step stops with one line naming
    the stage and the judge; run again once the judge works, it resumes from its checkpoint
    and finishes."""
    import json

    import yaml

    import ftlab.reward.judges as judges
    from ftlab.config import load_config
    from ftlab.errors import FtlabError
    from ftlab.paths import data_dir
    from ftlab.pipeline import run_pipeline

    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        {"kind": "online_dpo", "data": {"path": str(data_dir() / "rl/sft_prompts.jsonl"),
                                        "validation_fraction": 0.05},
         "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         "eval": {"max_new_tokens": 8},
         "train": {"max_steps": 4, "batch_size": 2, "save_every": 1, "eval_every": 4},
         "online_dpo": {"judge": "verifier_lenient", "max_new_tokens": 8}}]}))
    honest, calls = judges.VerifierJudge.__call__, []

    def flaky(self, prompts, pairs, **fields):
        calls.append(1)
        if len(calls) == 3:
            raise ConnectionError("judge service unreachable")
        return honest(self, prompts, pairs, **fields)

    monkeypatch.setattr(judges.VerifierJudge, "__call__", flaky)
    with pytest.raises(FtlabError) as e:
        run_pipeline(load_config(path), progress=False, print_fn=lambda line: None)
    assert str(e.value).startswith("stage online_dpo: judge 'verifier_lenient' raised "
                                   "ConnectionError: judge service unreachable")
    assert len(str(e.value).splitlines()) == 1
    monkeypatch.setattr(judges.VerifierJudge, "__call__", honest)
    said = []
    run_pipeline(load_config(path), progress=False, print_fn=said.append)
    assert any(line.startswith("resuming from checkpoint") for line in said), said
    log = tmp_path / "run/online_dpo/train/metrics.jsonl"
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == [1, 2, 3, 4]
