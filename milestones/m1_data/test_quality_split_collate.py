"""M1.4 quality filter, M1.5 leak-free split, M1.6 collate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ftlab.data.split
from ftlab.course.teaching import expect, explained
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


def _split(convs, fraction, seed, what):
    """The learner's (train, validation); a crash becomes a teaching message."""
    with explained(task="M1.5", what=what, expected="(train, validation), two lists",
                   cause="group by prompt_key, rank the groups, fill the validation budget"):
        train, val = train_val_split(convs, fraction, seed)
        return list(train), list(val)


def test_m1_5_same_prompt_never_straddles_the_split():
    convs = _grouped()
    train, val = _split(convs, 0.2, 0, "split of 60 prompts asked three times each")
    leaked = {prompt_key(c) for c in train} & {prompt_key(c) for c in val}
    expect(not leaked and len(train) + len(val) == len(convs), task="M1.5",
           what="prompts in both train and validation", expected="none",
           got=f"{len(leaked)} shared prompts, {len(train)}+{len(val)} of {len(convs)}",
           cause="random split leaking the same prompt: put whole prompt groups on one side"
           if leaked else "every conversation goes to exactly one side")
    expect(0.15 <= len(val) / len(convs) <= 0.2, task="M1.5", what="validation share",
           expected="0.2 or just under", got=len(val) / len(convs),
           cause="take groups while the validation count stays within the fraction")


def test_m1_5_split_is_deterministic_and_order_independent():
    convs = _grouped()
    a = _split(convs, 0.2, 0, "split with seed 0")
    b = _split(list(reversed(convs)), 0.2, 0, "split of the reversed data with seed 0")
    c = _split(convs, 0.2, 1, "split with seed 1")
    keys = lambda part: sorted(prompt_key(x) for x in part)  # noqa: E731
    reordered, reseeded = keys(a[1]) == keys(b[1]), keys(a[1]) == keys(c[1])
    causes = []
    if not reordered:
        causes.append("the split depends on input order: rank groups by a hash of seed and "
                      "prompt, not by position or a shuffled index")
    if reseeded:
        causes.append('the seed is ignored: it is part of what is hashed, f"{seed}:{key}"')
    expect(reordered and not reseeded, task="M1.5",
           what="validation prompts for the same data in another order, and another seed",
           expected="same for the same seed whatever the order; different for another seed",
           got=f"reordered equal: {reordered}, reseeded equal: {reseeded}",
           cause="; ".join(causes))


_SPLIT_IN_A_FRESH_PROCESS = """
import json, sys, types
# Load split.py and what it imports, not all of ftlab.data (torch, transformers): faster.
package = types.ModuleType("ftlab.data")
package.__path__ = [sys.argv[1]]
sys.modules["ftlab.data"] = package
from ftlab.data.split import train_val_split
conversations, fraction, seed = json.load(sys.stdin)
out, sys.stdout = sys.stdout, sys.stderr  # prints in the split do not mix with the answer
json.dump(list(train_val_split(conversations, fraction, seed)[1]), out)
"""


def test_m1_5_split_is_the_same_in_every_process():
    convs = _grouped()
    here = _split(convs, 0.2, 0, "split with seed 0")[1]
    package = Path(ftlab.data.split.__file__).resolve().parent
    src = str(package.parents[1])
    path = [src] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    procs = {}
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(path)}
        procs[hash_seed] = subprocess.Popen(
            [sys.executable, "-c", _SPLIT_IN_A_FRESH_PROCESS, str(package)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
    runs = {}
    try:
        for hash_seed, proc in procs.items():
            out, err = proc.communicate(json.dumps([convs, 0.2, 0]), timeout=600)
            expect(proc.returncode == 0, task="M1.5",
                   what=f"the same split in a fresh Python process (PYTHONHASHSEED={hash_seed})",
                   expected="it runs", got=err.strip().splitlines()[-1:] or proc.returncode,
                   cause="the split crashed outside this process: depend only on the arguments")
            runs[f"PYTHONHASHSEED={hash_seed}"] = json.loads(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    keys = lambda part: sorted(prompt_key(x) for x in part)  # noqa: E731
    differ = {name: len(set(keys(val)) ^ set(keys(here))) for name, val in runs.items()}
    expect(not any(differ.values()) and runs["PYTHONHASHSEED=1"] == runs["PYTHONHASHSEED=2"],
           task="M1.5", what="validation set of the same data and seed in this process and "
           "in two fresh ones (PYTHONHASHSEED=1, PYTHONHASHSEED=2)",
           expected="the same validation set in every process",
           got=", ".join(f"{n}: {d} prompts differ from this process" for n, d in differ.items()),
           cause="the split changes from one Python process to the next: Python's built-in "
                 "hash() of a str (or the order of a set of strings) is salted per process "
                 "(PYTHONHASHSEED), so a rerun validates on other data; rank the groups by "
                 "hashlib.sha256, the same everywhere")


def _shared_prompts(train, val):
    return {prompt_key(c) for c in train} & {prompt_key(c) for c in val}


def _numbers(part):
    return sorted({int(c[0]["content"].split()[1].rstrip("?")) for c in part})


@pytest.mark.parametrize(("seed", "pinned"), [
    (0, [1, 16, 22, 23, 31, 34, 43, 46, 52, 53, 57, 58]),
    (7, [2, 16, 23, 25, 30, 31, 32, 33, 41, 46, 49, 53]),
])
def test_m1_5_validation_set_is_pinned_by_the_seed(seed, pinned):
    convs = _grouped()
    train, val = _split(convs, 0.2, seed, f"split with seed {seed}")
    want = [c for c in convs if _numbers([c])[0] in pinned]
    if _shared_prompts(train, val):
        cause = ("random split leaking the same prompt: prompts on both sides; put whole "
                 "prompt groups on one side")
    elif _numbers(val) == pinned and len(val) == len(want):
        cause = "keep input order in both parts"
    elif len(val) != len(want):
        cause = (f"validation count {len(val)}, budget round(0.2 * {len(convs)}) = {len(want)}: "
                 "take whole groups while the count stays at most the budget")
    else:
        cause = ('groups ranked by something other than sha256(f"{seed}:{key}").hexdigest(), '
                 "ascending, with key = prompt_key(conversation): another digest or string "
                 "(the key without the seed?), another order, or Python's hash()")
    expect(val == want and train == [c for c in convs if c not in want], task="M1.5",
           what=f"validation prompts (question numbers) of 60 groups with seed {seed}",
           expected=pinned, got=_numbers(val), cause=cause)


def test_m1_5_a_group_that_does_not_fit_is_skipped():
    convs = ([_conv("Same question?", f"Answer {k}.") for k in range(10)]
             + [_conv(f"Other question {i}?", "Fine.") for i in range(20)])
    budget = round(0.2 * len(convs))
    counts, big_in_val, leaks = {}, [], []
    for seed in range(20):
        train, val = _split(convs, 0.2, seed, f"split with seed {seed}")
        counts[seed] = len(val)
        if any(c in val for c in convs[:10]):
            big_in_val.append(seed)
        if _shared_prompts(train, val):
            leaks.append(seed)
    causes = []
    if leaks:
        causes.append(f"random split leaking the same prompt (seeds {leaks}): a whole group "
                      "goes to one side")
    elif big_in_val:
        causes.append(f"a group larger than the budget went to validation (seeds {big_in_val}): "
                      "take a group only while the count stays at most the budget")
    if any(n < budget for n in counts.values()) and any(n == budget for n in counts.values()):
        causes.append("a group that does not fit ended the selection: skip it (it stays in "
                      "train) and keep taking the next groups that fit")
    if all(n < budget for n in counts.values()):
        causes.append(f"validation stays below the budget round(0.2 * 30) = {budget}: "
                      "a group fits when count + group size <= budget")
    expect(set(counts.values()) == {budget} and not big_in_val and not leaks, task="M1.5",
           what=f"validation size for seeds 0-19: one 10-copy prompt and 20 single prompts, "
                f"budget {budget}", expected=f"{budget} for every seed (20 singles fill it)",
           got={s: n for s, n in counts.items() if n != budget} or counts,
           cause="; ".join(causes) or "skip a group that does not fit, take the next ones")


PAD = 3


def _collate(examples, pad_id, what):
    """The learner's batch, checked for its three keys; a crash becomes a teaching message."""
    with explained(task="M1.6", what=what, expected="a dict of LongTensors",
                   cause="pad each list to the longest example, then torch.tensor(..., "
                         "dtype=torch.long)"):
        batch = collate(examples, pad_id)
    want = {"input_ids", "labels", "attention_mask"}
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    expect(isinstance(batch, dict) and set(batch) == want, task="M1.6", what=f"keys of {what}",
           expected=sorted(want), got=keys,
           cause=f"missing key(s) {sorted(want - set(batch))}: return input_ids, labels and "
                 "attention_mask" if isinstance(batch, dict) and want - set(batch) else
                 "return a dict with exactly input_ids, labels and attention_mask")
    types = {k: type(v).__name__ for k, v in batch.items() if not isinstance(v, torch.Tensor)}
    expect(not types, task="M1.6", what=f"values of {what}", expected="torch tensors",
           got=types, cause="turn each padded list of lists into one torch.tensor")
    return batch


def _padding_causes(rows, seqs, pad_value, name):
    """What went wrong padding ``seqs`` into ``rows``: side, filler, width."""
    causes = []
    width = max(len(s) for s in seqs)
    if any(len(r) != width for r in rows):
        causes.append(f"{name} not padded to the longest example ({width})")
        return causes
    for row, seq in zip(rows, seqs):
        pad = width - len(seq)
        if not pad:
            continue
        if row[-len(seq):] == seq and row[:len(seq)] != seq:
            causes.append("left padding: pad on the right, real tokens first (with left "
                          "padding a row's tokens start at a position > 0 unless position ids "
                          "are passed)")
            filler = row[:pad]
        else:
            filler = row[len(seq):]
        if set(filler) != {pad_value}:
            if name == "labels" and PAD in filler:
                causes.append("padding labels left as pad id: pad labels with IGNORE_INDEX "
                              "(-100) so padding is never trained")
            else:
                causes.append(f"{name} padded with {sorted(set(filler))}, not {pad_value}")
    return list(dict.fromkeys(causes))



def test_m1_6_padding_is_never_trained():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                {"input_ids": [8], "labels": [8]}]
    batch = _collate(examples, PAD, "a batch of two examples")
    want = torch.tensor([[-100, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]])
    got = batch["labels"].tolist()
    causes = _padding_causes(got, [e["labels"] for e in examples], IGNORE_INDEX, "labels")
    expect(torch.equal(batch["labels"], want), task="M1.6", what="labels of a padded batch",
           expected=want.tolist(), got=got,
           cause="; ".join(causes) or "labels are the example's labels, then IGNORE_INDEX")


def test_m1_6_right_padding_and_attention_mask():
    examples = [{"input_ids": [5], "labels": [5]}, {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}]
    batch = _collate(examples, PAD, "a batch of two examples")
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    causes = _padding_causes(ids, [e["input_ids"] for e in examples], PAD, "input_ids")
    want_mask = [[1, 0, 0], [1, 1, 1]]
    if mask != want_mask:
        if mask == [[0, 0, 1], [1, 1, 1]]:
            if not any(c.startswith("left padding") for c in causes):
                causes.append("left padding: the mask of a right-padded row is 1s, then 0s")
        elif mask == [[1, 1, 1], [1, 1, 1]]:
            causes.append("attention mask of all ones: 0 on padding, so no token attends to it")
        else:
            causes.append("the attention mask is 1 on real tokens and 0 on padding")
    dtypes = {k: str(v.dtype) for k, v in batch.items() if v.dtype != torch.long}
    if dtypes:
        causes.append(f"not int64: {dtypes}; build every tensor with dtype=torch.long")
    expect(ids == [[5, 3, 3], [5, 6, 7]] and mask == want_mask and not dtypes, task="M1.6",
           what="input_ids and attention_mask", expected="[[5, 3, 3], [5, 6, 7]] and "
           "[[1, 0, 0], [1, 1, 1]] as int64", got=f"{ids} and {mask}, dtypes "
           f"{ {k: str(v.dtype) for k, v in batch.items()} }",
           cause="; ".join(dict.fromkeys(causes)) or "pad on the right with pad_id; the mask "
                                                      "is 1 on real tokens")
