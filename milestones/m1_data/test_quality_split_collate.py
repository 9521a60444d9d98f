"""M1.4 quality filter, M1.5 leak-free split, M1.6 collate."""

from __future__ import annotations

import copy
import hashlib
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
    shape = (len(examples), max(len(example["input_ids"]) for example in examples))
    shapes = {k: tuple(v.shape) for k, v in batch.items() if tuple(v.shape) != shape}
    expect(not shapes, task="M1.6", what=f"shapes of {what}", expected=shape, got=shapes,
           cause="shape (batch, longest example): one row per example (batch first), as "
                 "long as the longest example, no longer")
    return batch


def _padding_causes(rows, seqs, pad_value, name, pad_id=PAD):
    """What went wrong padding ``seqs`` into ``rows`` (the batch's ``pad_id``): side,
    filler, width."""
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
            if name == "labels" and pad_id in filler:
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


_SYS = "Be brief."
FILTER_CASES = {
    "not-duplicates": (
        [_conv("What is 2 plus 2?", "4."), _conv("What is 2 plus 2?", "Four."),
         _conv("What is 3 plus 1?", "4."), _conv("What is 2 plus 2?", "4.", system=_SYS)],
        {}, [0, 1, 2, 3], {},
        "conversations are duplicates only when every turn matches (dedupe_key: the roles and "
        "normalized contents of all turns, system included): the same prompt with another "
        "answer, another prompt with the same answer, or another system message is not a "
        "duplicate"),
    "case-folding-and-any-white-space": (
        [_conv("Where is the Straße?", "Go\tleft."), _conv("WHERE IS THE STRASSE?", "go left."),
         _conv("Where\nis the\r\nStraße?", "Go  left.\n"), _conv("Where is the street?", "Left.")],
        {}, [0, 3], {"duplicate": 2},
        "duplicates are compared by dedupe_key(conversation) (normalize_text): case-folded "
        "with str.casefold ('Straße' == 'STRASSE'), every run of white space (tabs, newlines) "
        "one space"),
    "response-exactly-min_response_chars": (
        [_conv("a?", "Yes"), _conv("b?", "No"), _conv("c?", "Sure")],
        {"min_response_chars": 3}, [0, 2], {"short_response": 1},
        "short means fewer than min_response_chars characters: a response of exactly "
        "min_response_chars characters is kept"),
    "short-response-measured-after-stripping": (
        [_conv("a?", "No    "), _conv("b?", "\n  Yes \n"), _conv("c?", " No\n\n")],
        {"min_response_chars": 3}, [1], {"short_response": 2},
        "a response is measured after stripping: 'No    ' is 2 characters (short), "
        "'\\n  Yes \\n' is 3 (kept)"),
    "total-exactly-max_chars": (
        [_conv("12345", "67890"), _conv("12345", "678901"), _conv("1234", "5678")],
        {"max_chars": 10}, [0, 2], {"too_long": 1},
        "too_long means more than max_chars characters: exactly max_chars is kept"),
    "every-content-counts-toward-max_chars": (
        [_conv("x" * 30, "Fine."), _conv("Hi?", "Fine.", system="y" * 30),
         _conv("Hi?   ", "Good.   ", system="   "), _conv("Hi?", "Good.")],
        {"max_chars": 12}, [3], {"too_long": 3},
        "too_long counts the characters of all contents together (system, user and "
        "assistant), as they are: white space included, nothing stripped"),
    "max_chars-zero-is-a-limit": (
        [_conv("a?", "Yes."), _conv("b?", "No.")], {"max_chars": 0}, [], {"too_long": 2},
        "max_chars=0 is a limit (every conversation is longer): only None means no limit; "
        "test `max_chars is not None`, not the truthiness of max_chars"),
    "first-failing-reason-in-REASONS-order": (
        [_conv("x" * 40, " "), _conv("y" * 40, "No"), _conv("Hi?", "Fine."),
         _conv("Hi?" + " " * 40, "Fine.")],
        {"min_response_chars": 3, "max_chars": 20}, [2],
        {"empty_response": 1, "short_response": 1, "too_long": 1},
        "reasons are checked in REASONS order and only the first failing one counts: "
        "empty_response, short_response, too_long, then duplicate"),
    "only-kept-conversations-make-duplicates": (
        [_conv("Hi?" + " " * 40, "Fine."), _conv("Hi?", "Fine."), _conv("Hi?", "  ")],
        {"max_chars": 20}, [1], {"too_long": 1, "empty_response": 1},
        "a duplicate repeats an earlier *kept* conversation: one dropped for another reason "
        "(here too long) is not remembered, so its compact copy is kept"),
    "the-last-turn-is-the-response": (
        [_conv("Hi?", "Fine.") + [{"role": "user", "content": "And?"},
                                   {"role": "assistant", "content": "  "}],
         _conv("Hi?", "") + [{"role": "user", "content": "And?"},
                              {"role": "assistant", "content": "Good."}]],
        {}, [1], {"empty_response": 1},
        "the response judged is the last (assistant) turn, conversation[-1], not the first "
        "assistant turn"),
    "no-conversations": ([], {"min_response_chars": 3, "max_chars": 10}, [], {},
                         "no conversations: nothing kept, a report of total 0"),
}
"""Case -> (conversations, keyword arguments, indices kept, drops by reason, the property
it checks)."""


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_m1_4_filter_follows_the_spec(case):
    convs, kwargs, kept_at, want_dropped, cause = FILTER_CASES[case]
    given = copy.deepcopy(convs)
    what = f"quality_filter, case {case} ({kwargs or 'default limits'})"
    with explained(task="M1.4", what=what, expected="(kept, FilterReport)",
                   cause="test each conversation in REASONS order; count the first reason"):
        kept, report = quality_filter(given, **kwargs)
        dropped = {r: n for r, n in dict(report.dropped).items() if n}
        counts = (report.total, report.kept)
    expect(given == convs, task="M1.4", what=f"the input list after {what}",
           expected=f"{len(convs)} conversations, unchanged", got=f"{len(given)}: {given}",
           cause="the input list was modified (filtered in place?): leave it alone and "
                 "return a new list of the kept conversations")
    want_kept = [convs[i] for i in kept_at]
    expect(list(kept) == want_kept and dropped == want_dropped, task="M1.4", what=what,
           expected=f"kept {want_kept}; dropped {want_dropped}",
           got=f"kept {list(kept)}; dropped {dropped}", cause=cause)
    expect(counts == (len(convs), len(want_kept)), task="M1.4", what=f"report of {what}",
           expected=f"total {len(convs)}, kept {len(want_kept)}",
           got=f"total {counts[0]}, kept {counts[1]}",
           cause="report.total counts every conversation in, report.kept those returned")


def _spec_split(convs, fraction, seed):
    """The docstring's split, written out plainly: (train, validation)."""
    keys = []
    for conv in convs:
        asked = [" ".join(m["content"].split()).casefold() for m in conv
                 if m["role"] != "assistant"]
        keys.append("\x1f".join(asked))
    ranked = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    budget, count, chosen = round(fraction * len(convs)), 0, set()
    for key in ranked:
        size = keys.count(key)
        if count + size <= budget:
            chosen.add(key)
            count += size
    validation = [c for c, k in zip(convs, keys) if k in chosen]
    return [c for c, k in zip(convs, keys) if k not in chosen], validation


def _follow_up(q, a, q2, a2, system=None):
    return _conv(q, a, system) + [{"role": "user", "content": q2},
                                  {"role": "assistant", "content": a2}]


_SINGLES = [_conv(f"Question {i}?", f"Answer {i}.") for i in range(24)]
_GROUP_CAUSE = ("group by prompt_key(conversation): every non-assistant turn, normalized "
                "(the system turn and every user turn of a multi-turn conversation count)")
SPLIT_CASES = {
    "budget-10x0.25-rounds-half-to-even": (_SINGLES[:10], 0.25, [0]),
    "budget-22x0.3-rounds-up": (_SINGLES[:22], 0.3, [0]),
    "budget-24x0.1-rounds-down": (_SINGLES, 0.1, [0]),
    "budget-7x0.5-rounds-half-to-even": (_SINGLES[:7], 0.5, [0]),
    "fraction-0": (_SINGLES[:9], 0.0, [0, 1]),
    "fraction-1": (_SINGLES[:9], 1.0, [0, 1]),
    "shared-system-prompt": ([_conv(f"Question {i}?", "Yes.", system="Be brief.")
                              for i in range(12)], 0.25, [0, 1, 2]),
    "same-question-other-system": ([_conv(f"Question {i // 2}?", "Yes.", system=f"Tone {i % 2}.")
                                    for i in range(16)], 0.25, [0, 1, 2]),
    "same-first-question-other-follow-up": (
        [_follow_up("Hi?", "Hello.", f"Question {i}?", "Yes.") for i in range(12)]
        + [_follow_up(f"Question {i}?", "Yes.", "Thanks?", "Welcome.") for i in range(4)],
        0.25, [0, 1, 2]),
    "mixed-group-sizes": ([_conv(f"Prompt {g}?" + " " * k, f"Reply {k}.")
                           for g in range(14) for k in range(1 + (g * 5) % 4)], 0.3,
                          [0, 1, 2, 3, 4]),
    "no-conversations": ([], 0.2, [0]),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_m1_5_split_follows_the_spec(case):
    convs, fraction, seeds = SPLIT_CASES[case]
    budget = round(fraction * len(convs))
    for seed in seeds:
        given = copy.deepcopy(convs)
        what = (f"split of {len(convs)} conversations ({case}), validation_fraction "
                f"{fraction}, seed {seed}")
        train, val = _split(given, fraction, seed, what)
        expect(given == convs, task="M1.5", what=f"the input list after {what}",
               expected="unchanged", got="modified (reordered, emptied or edited)",
               cause="the input list was modified (sorted or shuffled in place?): leave it "
                     "alone; build the two parts as new lists")
        leaked = _shared_prompts(train, val)
        expect(not leaked, task="M1.5", what=f"prompts on both sides of the {what}",
               expected="none", got=sorted(leaked)[:3],
               cause="random split leaking the same prompt: a whole prompt_key group goes to "
                     "one side")
        want_train, want_val = _spec_split(convs, fraction, seed)
        if (train, val) == (want_train, want_val):
            continue
        if sorted(map(str, train + val)) != sorted(map(str, convs)):
            cause = "every conversation goes to exactly one side, once"
        elif len(want_val) == budget and len(val) != budget and case.startswith(("budget",
                                                                                "fraction")):
            cause = (f"the validation budget is round(validation_fraction * "
                     f"len(conversations)) = round({fraction} * {len(convs)}) = {budget}, "
                     "with Python's round (2.5 -> 2, 3.5 -> 4, 6.6 -> 7): not int(), ceil, "
                     "+0.5 or a minimum of one; fraction 0 gives no validation rows, 1 "
                     "gives every row")
        elif case in ("shared-system-prompt", "same-question-other-system",
                      "same-first-question-other-follow-up"):
            cause = _GROUP_CAUSE
        elif len(val) != len(want_val):
            cause = (f"validation has {len(val)} conversations, expected {len(want_val)}: "
                     f"the budget round({fraction} * {len(convs)}) = {budget} counts "
                     "conversations (not groups); a group goes to validation when the count "
                     "plus its size stays at most the budget")
        elif sorted(map(str, val)) == sorted(map(str, want_val)):
            cause = "keep input order in both parts"
        else:
            cause = ('groups ranked by sha256(f"{seed}:{key}").hexdigest(), ascending, '
                     "key = prompt_key(conversation); each group that fits is taken")
        expect(False, task="M1.5", what=what,
               expected=f"validation {[_question(c) for c in want_val]}",
               got=f"validation {[_question(c) for c in val]}", cause=cause)


def _question(conv):
    return " / ".join(m["content"] for m in conv if m["role"] != "assistant")


def _spec_batch(examples, pad_id):
    """The docstring's batch as lists: (input_ids, labels, attention_mask), position by
    position."""
    longest = max(len(example["input_ids"]) for example in examples)
    ids, labels, mask = [], [], []
    for example in examples:
        n = len(example["input_ids"])
        ids.append([example["input_ids"][k] if k < n else pad_id for k in range(longest)])
        labels.append([example["labels"][k] if k < n else IGNORE_INDEX for k in range(longest)])
        mask.append([1 if k < n else 0 for k in range(longest)])
    return ids, labels, mask


def _example(ids, prompt=0):
    """Tokens ``ids``, the first ``prompt`` of them untrained."""
    return {"input_ids": list(ids), "labels": [IGNORE_INDEX] * prompt + list(ids[prompt:])}


EOS = 2
COLLATE_CASES = {
    "pad-id-equals-eos": ([_example([5, 6, EOS], 1), _example([8, EOS]),
                           _example([9, 6, 7, EOS, 4, EOS], 2)], EOS),
    "pad-id-0-also-a-token": ([_example([0, 6, 0], 1), _example([7, 0, 0, 8])], 0),
    "one-example": ([_example([5, 6, 7], 1)], PAD),
    "equal-lengths": ([_example([5, 6], 1), _example([7, 8], 1), _example([9, 10])], PAD),
    "longest-first": ([_example([5, 6, 7, 8], 2), _example([9]), _example([10, 11], 1)], PAD),
}


def _collate_causes(got, want, examples, pad_id):
    """What went wrong, one cause per wrong tensor (the spec's batch is ``want``)."""
    ids, labels, mask = got
    want_ids, want_labels, want_mask = want
    if [len(r) for r in ids] != [len(r) for r in want_ids]:
        return [f"every row is as long as the longest example ({len(want_ids[0])}), padded "
                "on the right"]
    causes = []
    if ids != want_ids:
        causes += _padding_causes(ids, [e["input_ids"] for e in examples], pad_id, "input_ids",
                                  pad_id)
    if mask != want_mask:
        by_value = [[int(t != pad_id) for t in row] for row in want_ids]
        by_label = [[int(t != IGNORE_INDEX) for t in row] for row in want_labels]
        if mask == by_value:
            causes.append("attention mask computed as input_ids != pad_id: pad_id can be a "
                          "real token (pad == eos, as in many tokenizers), whose mask must "
                          "be 1; mark padding by position, from each example's length")
        elif mask == by_label:
            causes.append("attention mask taken from the labels: every real token is "
                          "attended, prompt tokens (label -100) included; 0 only on padding")
        else:
            causes.append("the attention mask is 1 on each example's tokens and 0 on its "
                          "padding")
    if labels != want_labels:
        real_masked = [(r, k) for r, row in enumerate(want_labels) for k, lab in enumerate(row)
                       if lab != IGNORE_INDEX and labels[r][k] == IGNORE_INDEX
                       and lab == pad_id]
        if real_masked:
            causes.append(f"labels masked by value (== pad_id): {len(real_masked)} trained "
                          "tokens equal to pad_id (an EOS, when pad == eos) became -100, so "
                          "the model never learns to stop; pad labels with IGNORE_INDEX by "
                          "position instead")
        else:
            causes += _padding_causes(labels, [e["labels"] for e in examples], IGNORE_INDEX,
                                      "labels", pad_id) or ["labels are the example's labels, then "
                                                    "IGNORE_INDEX on padding"]
    return causes


@pytest.mark.parametrize("case", list(COLLATE_CASES))
def test_m1_6_batch_follows_the_spec(case):
    examples, pad_id = COLLATE_CASES[case]
    given = copy.deepcopy(examples)
    what = f"collate of {len(examples)} examples ({case}, pad_id {pad_id})"
    batch = _collate(given, pad_id, what)
    expect(given == examples, task="M1.6", what=f"the examples after {what}",
           expected=examples, got=given,
           cause="the examples were modified: `+=` or extend() on an example's list pads it "
                 "in place; build new padded lists (e['input_ids'] + [pad_id] * n)")
    dtypes = {k: str(v.dtype) for k, v in batch.items() if v.dtype != torch.long}
    expect(not dtypes, task="M1.6", what=f"dtypes of {what}", expected="torch.int64 (long)",
           got=dtypes, cause="build every tensor with dtype=torch.long (a bool or float "
                             "mask, or int32 ids, is not what the model expects)")
    want = _spec_batch(examples, pad_id)
    got = tuple(batch[k].tolist() for k in ("input_ids", "labels", "attention_mask"))
    expect(got == want, task="M1.6", what=what,
           expected=f"input_ids {want[0]}, labels {want[1]}, attention_mask {want[2]}",
           got=f"input_ids {got[0]}, labels {got[1]}, attention_mask {got[2]}",
           cause="; ".join(dict.fromkeys(_collate_causes(got, want, examples, pad_id)))
           or "pad on the right to the longest example")
