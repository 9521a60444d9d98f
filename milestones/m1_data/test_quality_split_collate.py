"""M1.4 quality filter, M1.5 leak-free split, M1.6 collate."""

from __future__ import annotations

import pytest
import torch

from ftlab.course.teaching import expect
from ftlab.data.collate import collate
from ftlab.data.labels import IGNORE_INDEX
from ftlab.data.quality import quality_filter
from ftlab.data.split import prompt_key, train_val_split

pytestmark = pytest.mark.m1


def _conv(q, a, system=None):
    sys_turn = [{"role": "system", "content": system}] if system else []
    return sys_turn + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_m1_4_duplicates_differing_in_case_or_white_space_are_dropped():
    convs = [_conv("What is 2 plus 2?", "4."), _conv("what is  2 plus 2?", "4.  "),
             _conv("WHAT IS 2 PLUS 2?\n", "4."), _conv("What is 3 plus 3?", "6.")]
    kept, report = quality_filter(convs)
    expect(kept == [convs[0], convs[3]] and report.dropped["duplicate"] == 2, task="M1.4",
           what="kept conversations of four, three being the same up to case and spaces",
           expected="the first copy and the different one", got=f"{len(kept)} kept: {kept}",
           cause="duplicates that differ only in whitespace/case survive: compare normalized "
                 "text (normalize_text)")


def test_m1_4_every_reason_is_counted():
    convs = [_conv("a?", ""), _conv("b?", "   "), _conv("c?", "No"), _conv("d?", "x" * 500),
             _conv("e?", "Fine."), _conv("e?", "Fine.")]
    kept, report = quality_filter(convs, min_response_chars=3, max_chars=100)
    want = {"empty_response": 2, "short_response": 1, "too_long": 1, "duplicate": 1}
    expect(dict(report.dropped) == want and kept == [convs[4]] and report.kept == 1
           and report.total == 6, task="M1.4", what="drop reasons", expected=want,
           got=dict(report.dropped), cause="check in order: empty, short, too long, duplicate; "
                                           "count the first reason only")


def _grouped(n_groups=60, per_group=3):
    convs = []
    for g in range(n_groups):
        for k in range(per_group):
            spaces = " " * k
            convs.append(_conv(f"Question {g}?{spaces}", f"Answer {k} to {g}."))
    return convs


def test_m1_5_same_prompt_never_straddles_the_split():
    convs = _grouped()
    train, val = train_val_split(convs, 0.2, seed=0)
    leaked = {prompt_key(c) for c in train} & {prompt_key(c) for c in val}
    expect(not leaked and len(train) + len(val) == len(convs), task="M1.5",
           what="prompts in both train and validation", expected="none",
           got=f"{len(leaked)} shared prompts, {len(train)}+{len(val)} of {len(convs)}",
           cause="random split leaking the same prompt: put whole prompt groups on one side")
    expect(0.15 <= len(val) / len(convs) <= 0.2, task="M1.5", what="validation share",
           expected="0.2 or just under", got=len(val) / len(convs),
           cause="take groups while the validation count stays within the fraction")


def test_m1_5_split_is_deterministic_and_order_independent():
    convs = _grouped()
    a = train_val_split(convs, 0.2, seed=0)
    b = train_val_split(list(reversed(convs)), 0.2, seed=0)
    c = train_val_split(convs, 0.2, seed=1)
    keys = lambda part: sorted(prompt_key(x) for x in part)  # noqa: E731
    expect(keys(a[1]) == keys(b[1]) and keys(a[1]) != keys(c[1]), task="M1.5",
           what="validation prompts for the same data in another order, and another seed",
           expected="same for the same seed whatever the order; different for another seed",
           got=f"reordered equal: {keys(a[1]) == keys(b[1])}, reseeded equal: {keys(a[1]) == keys(c[1])}",
           cause="rank groups by a hash of seed and prompt, not by position or a shuffled index")


def test_m1_6_padding_is_never_trained():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                     {"input_ids": [8], "labels": [8]}], pad_id=3)
    want = torch.tensor([[-100, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]])
    expect(torch.equal(batch["labels"], want), task="M1.6", what="labels of a padded batch",
           expected=want.tolist(), got=batch["labels"].tolist(),
           cause="padding labels left as pad id: pad labels with IGNORE_INDEX (-100)")


def test_m1_6_right_padding_and_attention_mask():
    batch = collate([{"input_ids": [5], "labels": [5]},
                     {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}], pad_id=3)
    expect(batch["input_ids"].tolist() == [[5, 3, 3], [5, 6, 7]]
           and batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
           and all(v.dtype == torch.long for v in batch.values()), task="M1.6",
           what="input_ids and attention_mask", expected="[[5, 3, 3], [5, 6, 7]] and "
           "[[1, 0, 0], [1, 1, 1]] as int64", got=f"{batch['input_ids'].tolist()} and "
           f"{batch['attention_mask'].tolist()}",
           cause="pad on the right with pad_id; the mask is 1 on real tokens")
