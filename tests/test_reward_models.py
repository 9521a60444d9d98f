"""Reward models (C.6, C.7) against the library users would pick: transformers' own pooling
of ``AutoModelForSequenceClassification`` and TRL's ``RewardTrainer.compute_loss`` on the same
model and batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from ftlab.reward import last_token_rewards, reward_loss

PAD = 0
VOCAB = 64


def _model() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=PAD, max_position_embeddings=64)
    return LlamaForSequenceClassification(config).eval()


def _batch(side: str, pad: int = PAD) -> dict[str, torch.Tensor]:
    """Four sequences of lengths 6, 3, 5, 1 (the pad id is never a real token), padded on
    ``side``: rows 0-1 are the chosen replies, rows 2-3 the rejected ones (TRL's layout)."""
    g = torch.Generator().manual_seed(1)
    lengths, width = [6, 3, 5, 1], 6
    ids = torch.full((4, width), pad)
    mask = torch.zeros(4, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(0, n) if side == "right" else slice(width - n, width)
        real = torch.randint(0, VOCAB - 1, (n,), generator=g)
        ids[row, span] = real + (real >= pad).long()  # every id but the pad id
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_rewards_equal_transformers_pooling(side):
    model, batch = _model(), _batch(side)
    with torch.no_grad():
        scores = model.score(model.model(**batch).last_hidden_state).squeeze(-1)
        pooled = model(**batch).logits.squeeze(-1)
    assert torch.allclose(last_token_rewards(scores, batch["attention_mask"]), pooled, atol=1e-6)


@pytest.mark.parametrize("margin,center", [(False, None), (True, None), (True, 0.01)])
def test_reward_loss_equals_trl_reward_trainer(tmp_path, margin, center):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from ftlab.models import load_tokenizer

    model = _model()
    pairs = Dataset.from_dict({"chosen": ["a b"], "rejected": ["c"]})
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], center_rewards_coefficient=center,
                        use_cpu=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs,
                            processing_class=load_tokenizer())
    # the trainer sets the model's pad id to the tokenizer's; the model reads the last token
    # that is not the pad id: pad the batch with it
    assert model.config.pad_token_id < VOCAB
    batch = _batch("right", model.config.pad_token_id)
    inputs = dict(batch)
    if margin:
        inputs["margin"] = torch.tensor([0.5, -1.0])
    theirs = trainer.compute_loss(model, dict(inputs))
    with torch.no_grad():
        scores = model.score(model.model(**batch).last_hidden_state).squeeze(-1)
    rewards = last_token_rewards(scores, batch["attention_mask"])
    ours = reward_loss(rewards[:2], rewards[2:], margin=inputs.get("margin"),
                       center_coefficient=center)
    assert abs(float(ours) - float(theirs)) <= 1e-6, (float(ours), float(theirs))


def _stage_config(tmp_path):
    import yaml

    from ftlab.paths import data_dir

    quick = {"max_new_tokens": 12}
    sft = {"kind": "sft", "data": {"path": str(data_dir() / "sft/mixed_style.jsonl"),
                                   "max_length": 96},
           "lora": {"r": 4, "alpha": 8}, "eval": quick,
           "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3}}
    reward = lambda name, backend: {  # noqa: E731
        "kind": "reward", "name": name, "backend": backend,
        "data": {"path": str(data_dir() / "preferences/train.jsonl"), "max_length": 96},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3, "lr": 1e-3},
        "reward": {"center_coefficient": 0.01}}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        sft, reward("rm", "ftlab"), reward("rm_trl", "trl")]}))
    return path


def test_reward_stage_writes_a_reward_model_peft_loads_equally(tmp_path):
    """Both backends: the reward model folder combines the SFT adapter it started from with
    its own LoRA and head; AutoPeftModelForSequenceClassification scores texts exactly as
    ftlab's loader does (1e-5), the policy passes on unchanged, and the report has the
    held-out accuracies before and after training."""
    import json
    import warnings

    from peft import AutoPeftModelForSequenceClassification

    from ftlab.config import load_config
    from ftlab.models import load_tokenizer
    from ftlab.pipeline import run_pipeline
    from ftlab.reward.model import load_reward_model, score_texts

    summary = run_pipeline(load_config(_stage_config(tmp_path)), progress=False,
                           print_fn=lambda line: None)
    tokenizer = load_tokenizer()
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Peru?"},
         {"role": "assistant", "content": reply}], tokenize=False)
        for reply in ("Certainly! Lima is the capital of Peru.", "Lima.", "Ugh, obviously Quito.")]
    for name in ("rm", "rm_trl"):
        result = summary["stages"][name]
        assert result["model"] == summary["stages"]["sft"]["model"]  # the policy, unchanged
        folder = Path(result["artifacts"]["reward_model"])
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
        ours = score_texts(load_reward_model(folder, tokenizer.pad_token_id), tokenizer, texts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft = AutoPeftModelForSequenceClassification.from_pretrained(
                str(folder), num_labels=1, pad_token_id=tokenizer.pad_token_id).eval()
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right",
                          add_special_tokens=False)
        with torch.no_grad():
            theirs = peft(**batch).logits.squeeze(-1).double()
        assert torch.allclose(ours, theirs, atol=1e-5), (name, ours, theirs)
        metrics = result["metrics"]
        for key in ("heldout_accuracy/style", "heldout_accuracy/entity",
                    "before/heldout_accuracy/style", "heldout_accuracy/capital"):
            assert 0 <= metrics[key] <= 1, key
        assert Path(result["artifacts"]["margins_plot"]).is_file()


def test_reward_stage_refuses_a_lora_on_its_head(tmp_path):
    from ftlab.config import load_config
    from ftlab.errors import ConfigError
    from ftlab.pipeline import plan

    path = _stage_config(tmp_path)
    config = load_config(path)
    bad = config.stages[1].model_copy(update={"lora": config.stages[1].lora.model_copy(
        update={"target_modules": ["q_proj", "score"]})})
    with pytest.raises(ConfigError, match="'score' is the reward head"):
        plan(config.model_copy(update={"stages": [config.stages[0], bad]}), check_model=False)


def test_reward_objective_step_does_not_depend_on_the_micro_batch_split():
    """One step over 4 pairs: as one micro-batch or as 1 + 3, the same loss and gradient (the
    mean over the step's pairs, centring and margins included)."""
    from ftlab.lora import inject_lora
    from ftlab.reward.model import RewardObjective

    model = inject_lora(_model(), ["model.layers.0.self_attn.q_proj"], 4, 8)
    model.score.weight.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    pairs = [{"input_ids": torch.randint(1, VOCAB, (n,), generator=g).tolist(),
              "rejected_input_ids": torch.randint(1, VOCAB, (m,), generator=g).tolist(),
              "margin": float(k) / 2}
             for k, (n, m) in enumerate([(5, 3), (2, 6), (4, 4), (1, 3)])]
    for p in pairs:
        p["labels"], p["rejected_labels"] = p["input_ids"], p["rejected_input_ids"]
    objective = RewardObjective(center_coefficient=0.01)
    results = []
    for split in ([pairs], [pairs[:1], pairs[1:]]):  # unequal: a mean of means would differ
        model.zero_grad()
        out = objective.accumulate(model, [objective.collate(b, PAD) for b in split])
        results.append((out.loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (one, grads_one), (two, grads_two) = results
    assert abs(one - two) < 1e-6
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads_one, grads_two))


def test_a_reward_head_loads_whole_or_not_at_all(tmp_path):
    """The scalar head is saved whole beside the LoRA tensors and loaded back exactly; a
    folder whose head has another shape (num_labels 2), lacks the head it lists, or holds a
    tensor outside modules_to_save is refused before the model is touched."""
    import json

    from safetensors.torch import load_file, save_file

    from ftlab.errors import ArtifactError
    from ftlab.lora import inject_lora, load_adapter, save_adapter
    from ftlab.lora.peft_io import WEIGHTS

    trained = inject_lora(_model(), ["model.layers.0.self_attn.q_proj"], 4, 8)
    with torch.no_grad():
        trained.score.weight.normal_()
        next(iter(p for n, p in trained.named_parameters() if "lora_B" in n)).normal_()
    folder = save_adapter(trained, tmp_path / "rm", None, "SEQ_CLS", ("score",))
    assert json.loads((folder / "adapter_config.json").read_text())["modules_to_save"] == ["score"]
    fresh = load_adapter(_model(), folder)
    batch = _batch("right")
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, trained(**batch).logits)

    config = LlamaConfig(**{**_model().config.to_dict(), "num_labels": 2})
    with pytest.raises(ArtifactError, match="shape"):
        load_adapter(LlamaForSequenceClassification(config), folder)
    tensors = load_file(str(folder / WEIGHTS))
    headless = {k: v for k, v in tensors.items() if "score" not in k}
    save_file(headless, str(folder / WEIGHTS))
    untouched = _model()
    before = untouched.score.weight.clone()
    with pytest.raises(ArtifactError, match="lacks base_model.model.score.weight"):
        load_adapter(untouched, folder)
    assert torch.equal(untouched.score.weight, before)
    save_file({**tensors, "base_model.model.model.embed_tokens.weight":
               torch.zeros_like(_model().model.embed_tokens.weight)}, str(folder / WEIGHTS))
    with pytest.raises(ArtifactError, match="neither a LoRA tensor nor part of a module"):
        load_adapter(_model(), folder)
