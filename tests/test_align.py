"""ftlab.align: preference pairs, reference log-probs, the DPO objective — and equality with
TRL's DPOTrainer on the same batch and models."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ftlab.align import (DPOObjective, add_reference_logprobs, collate_pairs, load_pairs,
                         response_logprobs, response_only, tokenize_pair)
from ftlab.data.labels import IGNORE_INDEX
from ftlab.errors import DataError
from ftlab.models.load import load_base_model
from ftlab.paths import data_dir


@pytest.fixture(scope="module")
def embedded():
    return load_base_model()


@pytest.fixture(scope="module")
def pairs():
    return load_pairs(data_dir() / "preferences/train.jsonl")[0]


def test_bad_preference_records_are_reported_with_their_line(tmp_path):
    good = {"prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "What."}]}
    lines = [json.dumps(good), json.dumps({**good, "chosen": good["rejected"]}),
             json.dumps({"prompt": "Hi?", "chosen": "Yes"}), "{not json",
             json.dumps({"prompt": "Plain?", "chosen": "Sure!", "rejected": "No."}),
             json.dumps({**good, "prompt": [{"role": "assistant", "content": "x"}]})]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    kept, report = load_pairs(path)
    assert [p.chosen for p in kept] == ["Hello!", "Sure!"]
    reasons = {r.where.line: r.reason for r in report.rejected}
    assert sorted(reasons) == [2, 3, 4, 6]
    assert "identical" in reasons[2] and "rejected" in reasons[3]
    assert "turn order" in reasons[6]
    path.write_text(lines[3] + "\n")
    with pytest.raises(DataError, match="no valid preference pair"):
        load_pairs(path)


def test_only_the_final_reply_is_scored(embedded):
    _, tok = embedded
    assert response_only([-100, 5, 6, -100, -100, 7, 8, -100]) == [-100] * 5 + [7, 8, -100]
    pair = load_pairs(data_dir() / "preferences/train.jsonl")[0][0]
    example = tokenize_pair(pair, tok, 128)
    scored = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(scored) == pair.chosen + "<|im_end|>"


def test_reference_logprobs_equal_the_model_before_training(embedded, pairs):
    model, tok = embedded
    examples = add_reference_logprobs(model, [tokenize_pair(p, tok, 128) for p in pairs[:5]],
                                      tok.pad_token_id, batch_size=2, progress=False)
    batch = collate_pairs([tokenize_pair(p, tok, 128) for p in pairs[:5]], tok.pad_token_id)
    with torch.no_grad():
        want = response_logprobs(model, batch).double()
    got = torch.tensor([e["reference_chosen"] for e in examples]
                       + [e["reference_rejected"] for e in examples], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-4)  # different padding per batch: float noise only


def test_dpo_gradients_do_not_depend_on_the_micro_batch_split(embedded, pairs, perturbed):
    model, tok = embedded
    reference = add_reference_logprobs(model, [tokenize_pair(p, tok, 128) for p in pairs[:6]],
                                       tok.pad_token_id, progress=False)
    objective = DPOObjective(beta=0.1, sft_weight=0.5)
    grads = []
    for split in ([6], [2, 4], [3, 3]):
        policy = perturbed(model).train()
        batches, start = [], 0
        for size in split:
            batches.append(objective.collate(reference[start:start + size], tok.pad_token_id))
            start += size
        out = objective.accumulate(policy, batches)
        grads.append((out.loss, torch.cat([p.grad.flatten() for p in policy.parameters()])))
    for loss, grad in grads[1:]:
        assert abs(loss - grads[0][0]) < 1e-5
        assert torch.allclose(grad, grads[0][1], atol=1e-6)


def test_dpo_loss_equals_trl_on_the_same_batch_and_models(embedded, pairs, tmp_path, perturbed):
    """TRL's DPOTrainer (loss_type sigmoid + sft) and ours on TRL's own collated batch."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    reference, tok = embedded
    policy = perturbed(reference)
    chosen = pairs[:6]
    records = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}]} for p in chosen]
    args = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.1,
                         loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], report_to=[],
                         max_length=128, bf16=False, gradient_checkpointing=False)
    trainer = trl.DPOTrainer(model=policy, ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(chosen))]
    ours = [tokenize_pair(p, tok, 128) for p in chosen]
    # Same ids; TRL also scores the "\n" the template writes after <|im_end|>, we do not.
    assert [r["prompt_ids"] + r["chosen_ids"] for r in rows] == [o["input_ids"] for o in ours]
    newline = tok("\n", add_special_tokens=False).input_ids
    for r, o in zip(rows, ours):
        trained = [t for t, label in zip(o["input_ids"], o["labels"]) if label != IGNORE_INDEX]
        assert trained + newline == r["chosen_ids"]

    batch = trainer.data_collator(rows)
    trainer.model.train()
    trl_loss = float(trainer._compute_loss(trainer.model, batch, False))
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
    same = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": labels}
    with torch.no_grad():
        same["reference_logps"] = response_logprobs(reference, same).double()
    trainer.model.zero_grad()
    ours_out = DPOObjective(beta=0.1, sft_weight=0.5).accumulate(trainer.model, [same])
    assert abs(ours_out.loss - trl_loss) < 1e-5
    assert abs(ours_out.metrics["reward_margin"] - logged["rewards/margins"]) < 1e-5
    assert abs(ours_out.metrics["reward_accuracy"] - logged["rewards/accuracies"]) < 1e-6  # TRL: float32
