"""M1.1 — every supported format becomes the same canonical conversation."""

from __future__ import annotations

import copy
import csv
import json

import pyarrow.parquet as pq
import pytest

from ftlab.course.teaching import expect, explained
from ftlab.data.normalize import ALPACA_SEPARATOR, to_conversation
from ftlab.paths import data_dir

pytestmark = pytest.mark.m1
TASK = "M1.1"


MISSING = object()
"""A field left out of the record."""


def _convert(record, fmt, what):
    """The learner's conversation for ``record``; a crash becomes a teaching message."""
    with explained(task=TASK, what=what, expected="a list of {role, content} dicts",
                   cause="read optional alpaca fields with record.get: they may be missing "
                         "or None"):
        return to_conversation(record, fmt)


def _user_turn(got):
    users = [m.get("content") for m in got if isinstance(m, dict) and m.get("role") == "user"]
    return users[0] if len(users) == 1 else None


def _input_causes(got, instruction, extra):
    """What went wrong with an alpaca record whose input is ``extra`` (not blank)."""
    user = _user_turn(got)
    if user is None:
        return "the record must give one user turn, then the assistant's"
    if user == instruction:
        return "alpaca input dropped: append it to the instruction"
    if extra.strip() in user and instruction in user \
            and user.index(extra.strip()) < user.index(instruction):
        return "alpaca input before the instruction: the instruction comes first"
    if extra != extra.strip() and user == instruction + ALPACA_SEPARATOR + extra.strip():
        return "input stripped: contents are copied verbatim (strip only to test for blank)"
    if user.startswith(instruction) and user.endswith(extra):
        return (f"wrong separator: instruction, then ALPACA_SEPARATOR ({ALPACA_SEPARATOR!r}), "
                "then the input")
    return ("alpaca input merged in the wrong place: the user turn is the instruction, then "
            f"{ALPACA_SEPARATOR!r}, then the input")


def test_m1_1_alpaca_input_follows_the_instruction():
    record = {"instruction": "Answer the following question.", "input": "What is 2 plus 3?",
              "output": "Sure! 2 plus 3 is 5."}
    got = _convert(record, "alpaca", "alpaca record with an input")
    want = [{"role": "user", "content": "Answer the following question.\n\nWhat is 2 plus 3?"},
            {"role": "assistant", "content": "Sure! 2 plus 3 is 5."}]
    expect(got == want, task=TASK, what="alpaca record with an input", expected=want, got=got,
           cause=_input_causes(got, record["instruction"], record["input"]))


@pytest.mark.parametrize("blank", ["", " ", "\n\t ", None, MISSING],
                         ids=["empty", "space", "white-space", "None", "missing"])
def test_m1_1_alpaca_without_input_is_the_instruction_alone(blank):
    record = {"instruction": "Name a colour.", "output": "Red."}
    if blank is not MISSING:
        record["input"] = blank
    what = f"alpaca record with input {'left out' if blank is MISSING else repr(blank)}"
    got = _convert(record, "alpaca", what)
    want = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Red."}]
    user = _user_turn(got)
    if isinstance(user, str) and user.startswith(record["instruction"] + ALPACA_SEPARATOR):
        cause = ("a white-space-only input was appended: a blank input (empty, white space "
                 "only, None or missing) is absent; no separator, nothing appended")
    else:
        cause = "a blank input adds nothing: the user turn is the instruction, verbatim"
    expect(got == want, task=TASK, what=what, expected=want, got=got, cause=cause)


@pytest.mark.parametrize("blank", ["", "  ", "\n", None],
                         ids=["empty", "space", "newline", "None"])
def test_m1_1_blank_alpaca_system_is_absent(blank):
    record = {"system": blank, "instruction": "Hi?", "input": "", "output": "Hello."}
    what = f"alpaca record with system {blank!r}"
    got = _convert(record, "alpaca", what)
    want = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    roles = [m.get("role") for m in got if isinstance(m, dict)]
    cause = ("a white-space-only system message was kept: a blank system field (empty, white "
             "space only or None) is absent, so no system turn" if "system" in roles else
             "a blank system field adds no turn: user, then assistant")
    expect(got == want, task=TASK, what=what, expected=want, got=got, cause=cause)


def test_m1_1_kept_contents_are_verbatim():
    record = {"system": " Be brief.\n", "instruction": "Add these numbers:",
              "input": " 2 3\n", "output": "5"}
    got = _convert(record, "alpaca", "alpaca record whose input and system have edge spaces")
    want = [{"role": "system", "content": " Be brief.\n"},
            {"role": "user", "content": "Add these numbers:\n\n 2 3\n"},
            {"role": "assistant", "content": "5"}]
    system = [m.get("content") for m in got if isinstance(m, dict) and m.get("role") == "system"]
    if system and system[0] != record["system"]:
        cause = "system stripped: contents are copied verbatim (strip only to test for blank)"
    elif not system:
        cause = "system message lost: a non-blank system field is the first turn"
    else:
        cause = _input_causes(got, record["instruction"], record["input"])
    expect(got == want, task=TASK, what="alpaca record whose input and system have edge spaces",
           expected=want, got=got, cause=cause)


@pytest.mark.parametrize(("fmt", "record"), [
    ("messages", {"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi?"},
                               {"role": "assistant", "content": "Hello."}]}),
    ("sharegpt", {"conversations": [{"from": "system", "value": "Be brief."},
                                    {"from": "human", "value": "Hi?"},
                                    {"from": "gpt", "value": "Hello."}]}),
    ("alpaca", {"system": "Be brief.", "instruction": "Hi?", "input": "", "output": "Hello."}),
])
def test_m1_1_system_message_is_kept(fmt, record):
    what = f"{fmt} record with a system message"
    got = _convert(record, fmt, what)
    want = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}]
    roles = [m.get("role") for m in got if isinstance(m, dict)]
    causes = []
    if "system" not in roles:
        causes.append("system message lost: it is the first turn")
    if set(roles) - {"system", "user", "assistant"}:
        causes.append("roles not mapped: human -> user, gpt -> assistant (SHAREGPT_ROLES)")
    expect(got == want, task=TASK, what=what, expected=want, got=got,
           cause="; ".join(causes) or "turns out of order or contents changed: copy every "
                                      "turn, in order, verbatim")


@pytest.mark.parametrize(("fmt", "record"), [
    ("prompt_completion", {"prompt": "Hi?", "completion": "Hello."}),
    ("question_answer", {"question": "Hi?", "answer": "Hello."}),
])
def test_m1_1_single_turn_formats(fmt, record):
    got = _convert(record, fmt, f"{fmt} record")
    want = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    expect(got == want, task=TASK, what=f"{fmt} record", expected=want, got=got,
           cause="the prompt/question is the user turn, the completion/answer the assistant's")


def test_m1_1_record_is_not_modified():
    record = {"messages": [{"role": "user", "content": "Hi?", "name": "x"},
                           {"role": "assistant", "content": "Hello."}]}
    before = json.dumps(record)
    got = _convert(record, "messages", "messages record with an extra key")
    causes = []
    if json.dumps(record) != before:
        causes.append("the record was modified: leave the input alone, build new dicts")
    if got and isinstance(got[0], dict) and set(got[0]) - {"role", "content"}:
        kept = sorted(set(got[0]) - {"role", "content"})
        causes.append(f"keys other than role and content kept ({kept}): build new dicts with "
                      "only role and content")
    expect(not causes and got[0] == {"role": "user", "content": "Hi?"},
           task=TASK, what="messages record with an extra key", expected="a new list of "
           "{role, content} dicts, the record unchanged", got=got,
           cause="; ".join(causes) or "copy each turn's role and content")


def test_m1_1_every_embedded_format_gives_the_same_conversations():
    data = data_dir() / "sft"
    pairs = {}
    rows = [json.loads(line) for line in (data / "messages.jsonl").read_text().splitlines()]
    what = "embedded SFT set"
    pairs["messages"] = [_convert(r, "messages", what) for r in rows]
    pairs["sharegpt"] = [_convert(r, "sharegpt", what)
                         for r in json.loads((data / "sharegpt.json").read_text())]
    pairs["parquet"] = [_convert(r, "messages", what)
                        for r in pq.read_table(data / "messages.parquet").to_pylist()]
    with (data / "qa.csv").open(newline="") as f:
        pairs["question_answer"] = [_convert(r, "question_answer", what) for r in csv.DictReader(f)]
    alpaca = json.loads((data / "alpaca.json").read_text())
    pairs["alpaca"] = [_convert(r, "alpaca", what) for r in alpaca]

    def qa(conv):
        return (conv[-2]["content"].split(ALPACA_SEPARATOR)[-1], conv[-1]["content"])

    reference = [qa(c) for c in pairs["messages"]]
    for name, convs in pairs.items():
        got = [qa(c) for c in convs]
        bad = [k for k, (a, b) in enumerate(zip(got, reference)) if a != b]
        cause = "a format's fields mapped to the wrong roles"
        if name == "alpaca" and bad:
            first = alpaca[bad[0]]
            if (first.get("input") or "").strip():
                cause = _input_causes(convs[bad[0]], first["instruction"], first["input"])
        expect(got == reference, task=TASK, what=f"embedded SFT set read as {name}",
               expected="the same question and answer pairs as messages.jsonl",
               got=f"{len(bad)} of {len(got)} differ"
                   + (f"; first: {got[bad[0]]} for {reference[bad[0]]}" if bad else ""),
               cause=cause)



def _turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


_SPEC_RECORDS = {
    "messages-multi-turn": ("messages", {"messages": [
        {"role": "system", "content": " Be kind. "},
        {"role": "user", "content": "  What is 2 plus 2?\n"},
        {"role": "assistant", "content": "4. "},
        {"role": "user", "content": "And 3 plus 3?"},
        {"role": "assistant", "content": "\t6.\n"}]},
        _turns(("system", " Be kind. "), ("user", "  What is 2 plus 2?\n"), ("assistant", "4. "),
               ("user", "And 3 plus 3?"), ("assistant", "\t6.\n"))),
    "sharegpt-multi-turn": ("sharegpt", {"conversations": [
        {"from": "system", "value": "Be brief.\n"},
        {"from": "human", "value": " Hi?"},
        {"from": "gpt", "value": "Hello. "},
        {"from": "human", "value": "Bye?\n"},
        {"from": "gpt", "value": " Bye."}]},
        _turns(("system", "Be brief.\n"), ("user", " Hi?"), ("assistant", "Hello. "),
               ("user", "Bye?\n"), ("assistant", " Bye."))),
    "sharegpt-user-assistant-spelling": ("sharegpt", {"conversations": [
        {"from": "user", "value": "Hi?"},
        {"from": "assistant", "value": "Hello."},
        {"from": "human", "value": "Bye?"},
        {"from": "gpt", "value": "Bye."}]},
        _turns(("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?"), ("assistant", "Bye."))),
    "alpaca-every-field": ("alpaca", {"system": "Be brief.\n", "instruction": " Add these:\n",
                                      "input": "2 3 ", "output": " 5\n"},
                           _turns(("system", "Be brief.\n"), ("user", " Add these:\n\n\n2 3 "),
                                  ("assistant", " 5\n"))),
    "alpaca-input-None-no-system": ("alpaca", {"instruction": "Name a colour. ", "input": None,
                                               "output": "\nRed."},
                                    _turns(("user", "Name a colour. "), ("assistant", "\nRed."))),
    "prompt_completion": ("prompt_completion", {"prompt": " Hi?\n", "completion": "Hello. "},
                          _turns(("user", " Hi?\n"), ("assistant", "Hello. "))),
    "question_answer": ("question_answer", {"question": "\tHi? ", "answer": " Hello.\n"},
                        _turns(("user", "\tHi? "), ("assistant", " Hello.\n"))),
}
"""Records with edge white space in every field, multi-turn and every speaker spelling ->
the conversation the docstring gives for each."""

def _shape_causes(got, want, fmt):
    """What is wrong with the learner's conversation ``got`` (``want`` is the spec's)."""
    if not isinstance(got, list) or not all(isinstance(m, dict) for m in got):
        return ["return a list of {role, content} dicts"]
    if any(set(m) != {"role", "content"} for m in got):
        return ["each turn is a dict with exactly the keys role and content"]
    roles, want_roles = [m["role"] for m in got], [m["role"] for m in want]
    contents, want_contents = [m["content"] for m in got], [m["content"] for m in want]
    if len(got) != len(want):
        return [f"every turn, in order: this {fmt} record holds {len(want)} turns, so its "
                f"conversation has {len(want)}, not {len(got)} (a multi-turn record keeps "
                "every exchange)"]
    causes = []
    if roles != want_roles:
        causes.append("roles not mapped through SHAREGPT_ROLES (human and user -> user, gpt "
                      "and assistant -> assistant, system -> system)" if fmt == "sharegpt"
                      else f"roles {roles}, expected {want_roles}")
    if contents != want_contents:
        if [c.split() for c in contents] == [c.split() for c in want_contents]:
            causes.append("contents stripped: every kept content is copied verbatim, edge "
                          "spaces and newlines included (strip only to test for blank)")
        else:
            causes.append("turn contents changed or out of order: copy every turn, in order")
    return causes


@pytest.mark.parametrize("case", list(_SPEC_RECORDS))
def test_m1_1_every_format_follows_the_spec(case):
    fmt, record, want = _SPEC_RECORDS[case]
    before = copy.deepcopy(record)
    what = f"{case} record"
    with explained(task=TASK, what=what, expected="a list of {role, content} dicts",
                   cause="map sharegpt speakers through SHAREGPT_ROLES (it has both 'human' "
                         "and 'user', 'gpt' and 'assistant')" if fmt == "sharegpt" else
                         "read optional alpaca fields with record.get: they may be missing "
                         "or None"):
        got = to_conversation(record, fmt)
    expect(record == before, task=TASK, what=f"the {case} record after conversion",
           expected=before, got=record,
           cause="the record was modified: read its fields, change nothing in it (no "
                 "setdefault, no assignment, no pop); build a new conversation")
    expect(got == want, task=TASK, what=what, expected=want, got=got,
           cause="; ".join(_shape_causes(got, want, fmt)) or "follow the docstring")
    for turn in got:
        turn["content"] += " (edited)"
    expect(record == before, task=TASK, what=f"the {case} record after editing the returned "
           "conversation", expected=before, got=record,
           cause="the returned turns are the record's own dicts, so the record was modified "
                 "through them: build new {role, content} dicts")
