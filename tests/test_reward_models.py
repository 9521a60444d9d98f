"""Reward models (C.6, C.7) against the library users would pick: transformers' own pooling
of ``AutoModelForSequenceClassification`` and TRL's ``RewardTrainer.compute_loss`` on the same
model and batch."""

from __future__ import annotations

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
