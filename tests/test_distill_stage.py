"""The ``distill`` stage and its objective: the received model teaches the student, which
the stage hands on; the step's gradient does not depend on the micro-batch split; a student
that cannot learn position for position (missing, another tokenizer) and out-of-range
settings are refused with their line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ftlab.cli import main
from ftlab.data.collate import collate
from ftlab.distill import distillation_loss
from ftlab.distill.objective import DistillObjective
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.paths import data_dir, student_model_dir
from ftlab.train.step import target_mask

SFT = data_dir() / "sft/mixed_style.jsonl"


def _config(tmp_path: Path, distill: dict | None = None, steps: int = 8) -> Path:
    stage = {"kind": "distill", "data": {"path": str(SFT), "max_length": 80},
             "lora": {"r": 8, "alpha": 16}, "eval": {"max_new_tokens": 4},
             "train": {"max_steps": steps, "batch_size": 4, "eval_every": 4, "save_every": 4,
                       "lr": 3e-3, "precision": "float32"}}
    if distill is not None:
        stage["distill"] = distill
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                    "stages": [stage, {"kind": "merge"}]}, sort_keys=False))
    return path


def test_the_received_model_teaches_the_student_which_the_stage_hands_on(tmp_path, capsys):
    config = _config(tmp_path, {"beta": 0.5, "temperature": 2.0})
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
])
def test_a_missing_student_and_out_of_range_settings_are_refused_at_plan_time(
        tmp_path, capsys, distill, problem):
    config = _config(tmp_path, distill)
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert problem in err and f"{config}:" in err and "Traceback" not in err, err


def test_a_student_with_another_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    student = tmp_path / "other_student"
    shutil.copytree(student_model_dir(), student)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.add_tokens(["<|not-the-teachers|>"])
    tokenizer.save_pretrained(student)
    config = _config(tmp_path, {"student": str(student)}, steps=2)
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ftlab: error:")]
    assert len(lines) == 1 and "another tokenizer than the teacher" in lines[0], err
    assert "Traceback" not in err


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
