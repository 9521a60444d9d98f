"""The ``distill`` stage and its objective: the received model (or a named earlier stage)
teaches the student, which the stage hands on; the step's gradient does not depend on the
micro-batch split; on-policy steps train on the student's own replies and resume
bit-identically; sequence mode keeps only the verifier's right, finished, distinct replies;
a student or teacher that cannot be compared position by position, a teacher that does not
come before, and out-of-range settings are refused with their line at plan time."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ftlab.cli import main
from ftlab.data.collate import collate
from ftlab.distill import distillation_loss
from ftlab.distill.objective import DistillObjective, OnPolicy, reply_batch
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.paths import data_dir, student_model_dir
from ftlab.rl.sampling import Rollouts
from ftlab.train.step import target_mask

SFT = data_dir() / "sft/mixed_style.jsonl"
PROMPTS = data_dir() / "rl/prompts.jsonl"


def _config(tmp_path: Path, distill: dict | None = None, steps: int = 8,
            export: bool = False) -> Path:
    stage = {"kind": "distill", "data": {"path": str(SFT), "max_length": 80},
             "lora": {"r": 8, "alpha": 16}, "eval": {"max_new_tokens": 4},
             "train": {"max_steps": steps, "batch_size": 4, "eval_every": 4, "save_every": 4,
                       "lr": 3e-3, "precision": "float32"}}
    if distill is not None:
        stage["distill"] = distill
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                    "stages": [stage, {"kind": "merge"}] + (
                                        [{"kind": "export", "export": {"formats": ["hf"]}}]
                                        if export else [])}, sort_keys=False))
    return path


def test_the_received_model_teaches_the_student_which_the_stage_hands_on(tmp_path, capsys):
    config = _config(tmp_path, {"beta": 0.5, "temperature": 2.0}, export=True)
    assert main(["run", str(config), "--no-progress"]) == 0
    run = tmp_path / "run"
    adapter = json.loads((run / "distill/adapter/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(student_model_dir().resolve())
    merged = json.loads((run / "merge/model/config.json").read_text())
    student = json.loads((student_model_dir() / "config.json").read_text())
    assert (merged["hidden_size"], merged["num_hidden_layers"]) == \
        (student["hidden_size"], student["num_hidden_layers"])  # the student goes on
    figures = json.loads((run / "metrics.json").read_text())["stages"]["distill"]["metrics"]
    assert figures["best_val_loss"] < figures["before/val_divergence"]  # closer to the teacher
    state = json.loads((run / "state.json").read_text())["stages"]["distill"]["result"]["model"]
    assert state["path"] == "$DATA/student_model"  # a moved project's run folder finds it
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "export/hf/README.md")
    assert card.data.base_model == str(student_model_dir().resolve())  # the student, not the base
    capsys.readouterr()
    assert main(["run", str(config), "--no-progress"]) == 0
    assert "stage distill" not in capsys.readouterr().out  # reused, not trained again


def test_the_step_gradient_does_not_depend_on_the_micro_batch_split():
    """One micro-batch of 5 examples, or 1 + 4 of unequal lengths: the same loss and the same
    gradients; the loss is C.8's mean over every counted position of the step."""
    teacher, student = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    examples = tiny_examples(5, seed=3, lengths=(6, 40))
    objective = DistillObjective(teacher, beta=0.3, temperature=2.0)

    def step(groups: list[list[dict]]) -> tuple[float, dict[str, torch.Tensor]]:
        student.zero_grad()
        out = objective.accumulate(student, [objective.collate(g, 0) for g in groups])
        return out.loss, {n: p.grad.clone() for n, p in student.named_parameters()}

    whole_loss, whole = step([examples])
    split_loss, split = step([examples[:1], examples[1:]])
    batch = collate(examples, 0)
    with torch.no_grad():
        direct = distillation_loss(student(input_ids=batch["input_ids"]).logits[:, :-1],
                                   teacher(input_ids=batch["input_ids"]).logits[:, :-1],
                                   target_mask(batch), 0.3, 2.0)
    assert abs(whole_loss - split_loss) <= 1e-6 and abs(whole_loss - float(direct)) <= 1e-6
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5)
    assert not any(p.grad is not None for p in teacher.parameters())  # the teacher only teaches


@pytest.mark.parametrize(("distill", "problem"), [
    ({"student": "/nowhere/student"}, "distill.student: /nowhere/student: no such model folder"),
    ({"beta": 1.5}, "distill.beta"),
    ({"temperature": 0}, "distill.temperature"),
    ({"student": "embedded"}, "distill.student: 'embedded' is the base model"),
    ({"lmbda": -0.1, "mode": "on_policy", "prompts": str(PROMPTS)}, "distill.lmbda"),
    ({"mode": "sequence"}, "mode 'sequence' asks questions: give distill.prompts"),
    ({"mode": "on_policy"}, "mode 'on_policy' asks questions: give distill.prompts"),
    ({"mode": "sft", "teacher": "embedded"}, "mode 'sft' does not read teacher"),
    ({"lmbda": 0.3}, "mode 'offline' does not read lmbda"),  # silently ignored otherwise
    ({"mode": "sequence", "prompts": str(PROMPTS), "beta": 0.2}, "mode 'sequence' does not read beta"),
    ({"teacher": "embedded", "teacher_stage": "x"}, "give distill.teacher (a model) or"),
    ({"teacher": "/nowhere/teacher"}, "distill.teacher: /nowhere/teacher: no such model folder"),
    ({"teacher_stage": "merge"}, "distill.teacher_stage: 'merge' is not an earlier stage"),  # after
    ({"teacher_stage": "distill"}, "distill.teacher_stage: 'distill' is not an earlier stage"),
    ({"mode": "sequence", "prompts": "BAD_PROMPTS"}, "bad.jsonl:2"),
    ({"mode": "on_policy", "prompts": str(PROMPTS), "max_prompt_length": 5},
     "prompts.jsonl:1: the question is 7 tokens, over distill.max_prompt_length (5)"),
])
def test_a_missing_student_and_out_of_range_settings_are_refused_at_plan_time(
        tmp_path, capsys, distill, problem):
    if distill.get("prompts") == "BAD_PROMPTS":  # sequence mode needs each id to be a fact
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "Capital of France?", "id": "capital:France"}\n'
                       '{"question": "Capital of Atlantis?", "id": "capital:Atlantis"}\n')
        distill = {**distill, "prompts": str(bad)}
    config = _config(tmp_path, distill)
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert problem in err and f"{config}:" in err and "Traceback" not in err, err


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_student_or_teacher_with_another_tokenizer_is_refused_at_plan_time(
        tmp_path, capsys, role):
    other = tmp_path / "other"
    shutil.copytree(student_model_dir(), other)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|not-the-runs|>"])
    tokenizer.save_pretrained(other)
    config = _config(tmp_path, {role: str(other)}, steps=2)
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"distill.{role}: {other} has another tokenizer than the run's model" in err, err
    assert f"{config}:" in err and "Traceback" not in err


def test_a_student_with_logits_of_another_width_is_refused_in_one_line(tmp_path, capsys):
    """The teacher's tokenizer, but an embedding padded to another size."""
    student = tmp_path / "wider_student"
    shutil.copytree(student_model_dir(), student)
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "vocab_size": 1664}))
    assert main(["run", str(_config(tmp_path, {"student": str(student)}, steps=2)),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ftlab: error:")]
    assert len(lines) == 1 and "logits over 1664 tokens, the teacher over 1658" in lines[0], err


def test_on_policy_replies_are_trained_through_their_first_stop_token_only():
    """The batch of sampled replies: labels on the reply up to and including its first stop
    token, none on the prompt or after the stop; positions count real tokens from 0."""
    rollouts = Rollouts(prompt_ids=torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]),
                        prompt_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                        completion_ids=torch.tensor([[11, 2, 2], [12, 13, 14]]),
                        completion_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
                        texts=["a", "b"], ended=[True, False], raw_texts=["a", "b"])
    batch = reply_batch(rollouts)
    assert batch["labels"].tolist() == [[-100] * 4 + [11, 2, -100], [-100] * 4 + [12, 13, 14]]
    assert batch["position_ids"].tolist() == [[0, 0, 0, 1, 2, 3, 3], [0, 1, 2, 3, 4, 5, 6]]
    assert target_mask(batch).sum() == 5


def _distill_run(embedded, folder: Path, steps: int, lmbda: float, stop_after: int | None = None):
    from ftlab.config import TrainConfig
    from ftlab.lora import inject_lora
    from ftlab.train import Trainer

    base, tok = embedded
    torch.manual_seed(0)
    student = inject_lora(copy.deepcopy(base), ["model.layers.0.self_attn.q_proj",
                                                "model.layers.0.self_attn.v_proj"], 4, 8)
    teacher = copy.deepcopy(base)
    objective = DistillObjective(teacher, 0.5, 1.0, OnPolicy(
        ["What is the capital of France?", "Which day follows Monday?"], tok, lmbda, 0.7, 6))
    examples = tiny_examples(6, seed=3, lengths=(6, 20), tokens=(4, 200))
    trainer = Trainer(student, examples[:4], TrainConfig(lr=5e-3, max_steps=steps, batch_size=2,
                                                         save_every=1, eval_every=2, seed=0),
                      folder, tok.pad_token_id, examples[4:], objective=objective,
                      progress=False, print_fn=lambda line: None)
    if stop_after:
        trainer.callbacks.append(lambda r: trainer.request_stop()
                                 if r.get("step") == stop_after else None)
    trainer.fit()
    return student, [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["kind"] == "step"]


@pytest.fixture(scope="module")
def embedded():
    from ftlab.models.load import load_base_model

    return load_base_model()


def test_on_policy_steps_sample_at_rate_lmbda_and_resume_bit_identically(embedded, tmp_path):
    torch.set_num_threads(1)
    whole, steps = _distill_run(embedded, tmp_path / "whole", 4, lmbda=0.5)
    _distill_run(embedded, tmp_path / "parts", 4, lmbda=0.5, stop_after=2)
    resumed, _ = _distill_run(embedded, tmp_path / "parts", 4, lmbda=0.5)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert {r["on_policy"] for r in steps} == {0.0, 1.0}  # seeded: both kinds of step in 4
    assert all(r["reply_length"] > 0 for r in steps if r["on_policy"])
    _, always = _distill_run(embedded, tmp_path / "always", 2, lmbda=1.0)
    _, never = _distill_run(embedded, tmp_path / "never", 2, lmbda=0.0)
    assert [r["on_policy"] for r in always] == [1.0, 1.0]
    assert [r["on_policy"] for r in never] == [0.0, 0.0]
    # an on-policy step logs the tokens of the replies it trained on, not of the data it drew
    assert [r["tokens"] for r in always] != [r["tokens"] for r in never]
    assert all(r["tokens"] > r["targets"] for r in always)  # the prompts count too


def test_sequence_mode_keeps_right_finished_distinct_replies_and_counts_them(monkeypatch):
    """Of four replies per question the kept ones are right (the strict verifier), ended by
    themselves and not a repeat of a kept one; the counts per kind say so."""
    from ftlab.distill import sequence

    prompts = [{"question": "What is the capital of France?", "id": "capital:France",
                "kind": "capital"},
               {"question": "Which day follows Monday?", "id": "day_after:Monday",
                "kind": "day_after"}]
    replies = ["The capital of France is Paris.", "The capital of France is Paris.",
               "The capital of France is Rome.", "The capital of France is Paris.",
               "The day after Monday is Tuesday.", "Tuesday comes after Tuesday.", "The day after Monday is",
               "The day after Monday is Tuesday!"]
    ended = [True, True, True, False, True, True, True, True]

    def fake_sample(model, tokenizer, questions, group_size, *args):
        assert questions == [p["question"] for p in prompts] and group_size == 4
        return Rollouts(None, None, None, None, replies, ended, replies)

    monkeypatch.setattr(sequence, "sample_groups", fake_sample)
    kept = sequence.verified_replies(None, None, prompts, 4, 0.7, 24, "correct_strict",
                                     torch.Generator())
    assert [r["messages"][1]["content"] for r in kept.records] == [
        "The capital of France is Paris.", "The day after Monday is Tuesday.",
        "The day after Monday is Tuesday!"]
    assert kept.asked == {"capital": 4, "day_after": 4}
    assert kept.right == {"capital": 2, "day_after": 2} and kept.kept == {"capital": 1, "day_after": 2}
    figures = kept.figures()
    assert figures["sequence/kept"] == 3 and figures["sequence/right_share"] == 0.5
    assert "kept 3 of 8 sampled replies" in kept.summary()


def test_sequence_and_sft_modes_train_the_student_and_a_named_stage_teaches(tmp_path, monkeypatch,
                                                                          capsys):
    """sequence: the named earlier stage's model answers the prompts, the kept replies are
    written to the stage folder and added to the training examples; sft: the student alone
    on the data (no teacher loaded). An interrupted sequence stage reads its replies back."""
    from ftlab.distill import sequence

    always = lambda prompts, completions, id, **f: [1.0] * len(completions)  # noqa: E731
    monkeypatch.setitem(sequence.VERIFIERS, "correct", always)
    short = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "save_every": 2,
             "precision": "float32"}
    common = {"data": {"path": str(SFT), "max_length": 80}, "lora": {"r": 4, "alpha": 8},
              "train": short, "eval": {"max_new_tokens": 4}}
    stages = [{"name": "teacher", "kind": "sft", **common},
              {"name": "alone", "kind": "distill", **common, "distill": {"mode": "sft"}},
              {"name": "seq", "kind": "distill", **common,
               "distill": {"mode": "sequence", "teacher_stage": "teacher", "prompts": str(PROMPTS),
                           "samples": 1, "max_new_tokens": 4, "verifier": "correct"}}]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                      "stages": stages}))
    assert main(["run", str(config), "--no-progress"]) == 0
    run = tmp_path / "run"
    figures = json.loads((run / "metrics.json").read_text())["stages"]
    kept = [json.loads(line) for line in (run / "seq/teacher_replies.jsonl").read_text().splitlines()]
    assert kept and all(r["messages"][0]["role"] == "user" for r in kept)
    assert figures["seq"]["metrics"]["sequence/kept"] == len(kept)
    assert (figures["seq"]["metrics"]["train_examples"]
            == figures["alone"]["metrics"]["train_examples"] + len(kept))
    for name in ("alone", "seq"):
        adapter = json.loads((run / name / "adapter/adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(student_model_dir().resolve())
    state = json.loads((run / "state.json").read_text())
    del state["stages"]["seq"]  # as if stopped after sampling, before the stage completed
    (run / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["run", str(config), "--no-progress"]) == 0
    assert f"teacher: {len(kept)} verified replies read back" in capsys.readouterr().out
    again = json.loads((run / "metrics.json").read_text())["stages"]["seq"]["metrics"]
    assert again["sequence/kept"] == len(kept) and again["train_examples"] == \
        figures["seq"]["metrics"]["train_examples"]


def test_an_edited_prompt_file_or_a_retrained_teacher_runs_the_stage_again(tmp_path):
    """Both are read by the stage without being its data section or its received model: they
    are part of its fingerprint."""
    from ftlab.config import load_config
    from ftlab.pipeline import plan

    prompts, teacher = tmp_path / "prompts.jsonl", tmp_path / "teacher"
    prompts.write_text(PROMPTS.read_text())
    shutil.copytree(data_dir() / "base_model", teacher)
    config = _config(tmp_path, {"mode": "on_policy", "prompts": str(prompts),
                                "teacher": str(teacher)})

    def fingerprint() -> str:
        return plan(load_config(config), config)[0].fingerprint

    first = fingerprint()
    assert fingerprint() == first
    prompts.write_text(PROMPTS.read_text() + '{"question": "One more?"}\n')
    second = fingerprint()
    (teacher / "model.safetensors").write_bytes((teacher / "model.safetensors").read_bytes())
    os.utime(teacher / "model.safetensors", ns=(1, 1))
    assert len({first, second, fingerprint()}) == 3
