"""Our labels agree with TRL's: ``tokenize_with_labels`` trains exactly the tokens that TRL 1.x's
``SFTTrainer(assistant_only_loss=True)`` trains, on the same conversations and tokenizer.

TRL (checked against 1.16, ``trl/trainer/sft_trainer.py``), for a conversational
``"messages"`` dataset without packing: renders each conversation with
``apply_chat_template(..., tokenize=True, return_assistant_tokens_mask=True)`` (special tokens
come from the template only, no extra BOS/EOS is appended for conversational data), turns the
``assistant_masks`` (the ``{% generation %}`` spans of the template) into a ``labels`` column
with -100 outside them, truncates to ``max_length`` and drops fully masked rows, all during
dataset preparation. ``DataCollatorForLanguageModeling`` then only pads (labels with -100).
The embedded template puts ``content + '<|im_end|>'`` inside ``{% generation %}`` and the
``'\\n'`` after it outside, which is exactly our span: reply + EOS, not the newline.

Everything here fits in ``max_length`` (asserted), so truncation is not compared: TRL's
default ``truncation_mode="keep_start"`` cuts the end, ours keeps the end of the last reply.
"""

from __future__ import annotations

import itertools
import json

import pytest

from ftlab.data import IGNORE_INDEX, tokenize_with_labels
from ftlab.paths import data_dir

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

MAX_LENGTH = 512
N_RECORDS = 50

MULTI_TURN = [
    {"role": "system", "content": "You are a terse assistant. Answer in one line."},
    {"role": "user", "content": "How many legs does a spider have?"},
    {"role": "assistant", "content": "Eight."},
    {"role": "user", "content": "And an ant?\nAnswer with a number."},
    {"role": "assistant", "content": "6 — ants are insects, so six legs."},
]


def _conversations() -> list[list[dict]]:
    with open(data_dir() / "sft" / "messages.jsonl", encoding="utf-8") as f:
        convs = [json.loads(line)["messages"] for line in itertools.islice(f, N_RECORDS)]
    assert len(convs) == N_RECORDS
    return [*convs, MULTI_TURN]


@pytest.fixture(scope="module")
def trl_and_ours(tmp_path_factory):
    """(conversations, tokenizer, TRL's processed rows, TRL trainer, our tokenized rows)."""
    from ftlab.models import load_base_model

    # A fresh model and tokenizer: the trainer writes pad/eos ids into the model's configs and
    # sets tokenizer.pad_token, so the session-wide `base_model` fixture is left untouched.
    model, tokenizer = load_base_model()
    convs = _conversations()
    config = trl.SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("sft")), assistant_only_loss=True,
        max_length=MAX_LENGTH, use_cpu=True, report_to=[], packing=False,
        dataset_num_proc=None, shuffle_dataset=False, padding_free=False,
    )
    trainer = trl.SFTTrainer(model=model, args=config,
                             train_dataset=datasets.Dataset.from_dict({"messages": convs}),
                             processing_class=tokenizer)
    ours = [tokenize_with_labels(c, tokenizer, MAX_LENGTH) for c in convs]
    return convs, tokenizer, trainer.train_dataset, trainer, ours


def test_template_and_trl_agree_that_eos_is_trained(trl_and_ours):
    """Preconditions of the comparison: markers present, TRL's own end-of-turn check passes."""
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    _, tokenizer, _, _, _ = trl_and_ours
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_trl_dataset_has_labels_for_every_conversation_in_order(trl_and_ours):
    convs, _, ds, _, _ = trl_and_ours
    # Labels are built during preparation in TRL 1.16; the mask column is folded in and dropped.
    assert {"input_ids", "labels"} <= set(ds.column_names)
    assert "assistant_masks" not in ds.column_names
    # No row was dropped (fully masked) or reordered (shuffle off): row i is conversation i.
    assert len(ds) == len(convs)
    assert ds["messages"] == convs


def test_same_ids_and_same_trained_tokens_as_trl(trl_and_ours):
    convs, tokenizer, ds, _, ours = trl_and_ours
    n_tokens = n_trained = 0
    for i, (conv, mine, theirs) in enumerate(zip(convs, ours, ds, strict=True)):
        ids, labels = theirs["input_ids"], theirs["labels"]
        assert len(ids) <= MAX_LENGTH and len(mine["input_ids"]) < MAX_LENGTH, \
            f"conversation {i} reaches max_length; truncation policies differ (see module doc)"
        assert mine["input_ids"] == ids, f"conversation {i}: token ids differ from TRL's"
        trl_trained = {j for j, label in enumerate(labels) if label != IGNORE_INDEX}
        our_trained = {j for j, label in enumerate(mine["labels"]) if label != IGNORE_INDEX}
        if our_trained != trl_trained:
            show = lambda js: [(j, tokenizer.decode([ids[j]])) for j in sorted(js)]  # noqa: E731
            pytest.fail(f"conversation {i}: trained by us only {show(our_trained - trl_trained)}, "
                        f"by TRL only {show(trl_trained - our_trained)}")
        # Both label the trained tokens with the token itself (unshifted).
        assert mine["labels"] == labels
        # Non-vacuous: each assistant turn contributes its EOS, and the newline after it is not
        # trained; the conversation's last token is that newline.
        n_eos = sum(ids[j] == tokenizer.eos_token_id for j in trl_trained)
        assert n_eos == sum(m["role"] == "assistant" for m in conv) >= 1
        assert tokenizer.decode([ids[-1]]) == "\n" and len(ids) - 1 not in trl_trained
        n_tokens += len(ids)
        n_trained += len(trl_trained)
    assert n_tokens > n_trained > 0


def test_multi_turn_trains_both_replies_and_nothing_else(trl_and_ours):
    convs, tokenizer, ds, _, _ = trl_and_ours
    row = ds[len(convs) - 1]
    assert row["messages"] == MULTI_TURN
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    replies = [m["content"] + tokenizer.eos_token for m in MULTI_TURN if m["role"] == "assistant"]
    assert tokenizer.decode(trained) == "".join(replies)


def test_collator_keeps_the_prepared_labels(trl_and_ours):
    """The final batch labels are the prepared labels, right-padded with -100 (EOS kept)."""
    convs, tokenizer, ds, trainer, ours = trl_and_ours
    rows = [ds[0], ds[len(convs) - 1]]
    batch = trainer.data_collator(rows)
    width = max(len(r["input_ids"]) for r in rows)
    for b, (row, mine) in enumerate(zip(rows, [ours[0], ours[-1]], strict=True)):
        n = len(row["input_ids"])
        assert batch["labels"][b, :n].tolist() == mine["labels"]
        assert batch["labels"][b, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["input_ids"][b, n:].tolist() == [tokenizer.pad_token_id] * (width - n)
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)
