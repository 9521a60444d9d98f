"""M1.1 — every supported format becomes the same canonical conversation."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from ftlab.course.teaching import expect
from ftlab.data.normalize import ALPACA_SEPARATOR, to_conversation
from ftlab.paths import data_dir

pytestmark = pytest.mark.m1
TASK = "M1.1"


def test_m1_1_alpaca_input_follows_the_instruction():
    record = {"instruction": "Answer the following question.", "input": "What is 2 plus 3?",
              "output": "Sure! 2 plus 3 is 5."}
    got = to_conversation(record, "alpaca")
    want = [{"role": "user", "content": "Answer the following question.\n\nWhat is 2 plus 3?"},
            {"role": "assistant", "content": "Sure! 2 plus 3 is 5."}]
    expect(got == want, task=TASK, what="alpaca record with an input", expected=want, got=got,
           cause="alpaca input dropped or merged in the wrong place: the user turn is the "
                 f"instruction, then {ALPACA_SEPARATOR!r}, then the input")


def test_m1_1_alpaca_without_input_is_the_instruction_alone():
    got = to_conversation({"instruction": "Name a colour.", "input": "", "output": "Red."},
                          "alpaca")
    want = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Red."}]
    expect(got == want, task=TASK, what="alpaca record with an empty input", expected=want,
           got=got, cause="an empty input adds nothing: no separator, no blank lines")


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
    got = to_conversation(record, fmt)
    want = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}]
    expect(got == want, task=TASK, what=f"{fmt} record with a system message", expected=want,
           got=got, cause="system message lost (or roles not mapped: human -> user, "
                          "gpt -> assistant)")


@pytest.mark.parametrize(("fmt", "record"), [
    ("prompt_completion", {"prompt": "Hi?", "completion": "Hello."}),
    ("question_answer", {"question": "Hi?", "answer": "Hello."}),
])
def test_m1_1_single_turn_formats(fmt, record):
    got = to_conversation(record, fmt)
    want = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    expect(got == want, task=TASK, what=f"{fmt} record", expected=want, got=got,
           cause="the prompt/question is the user turn, the completion/answer the assistant's")


def test_m1_1_record_is_not_modified():
    record = {"messages": [{"role": "user", "content": "Hi?", "name": "x"},
                           {"role": "assistant", "content": "Hello."}]}
    before = json.dumps(record)
    got = to_conversation(record, "messages")
    expect(json.dumps(record) == before and got[0] == {"role": "user", "content": "Hi?"},
           task=TASK, what="messages record with an extra key", expected="a new list of "
           "{role, content} dicts, the record unchanged", got=got,
           cause="build new dicts with only role and content instead of returning the input")


def test_m1_1_every_embedded_format_gives_the_same_conversations():
    data = data_dir() / "sft"
    pairs = {}
    rows = [json.loads(line) for line in (data / "messages.jsonl").read_text().splitlines()]
    pairs["messages"] = [to_conversation(r, "messages") for r in rows]
    pairs["sharegpt"] = [to_conversation(r, "sharegpt")
                         for r in json.loads((data / "sharegpt.json").read_text())]
    pairs["parquet"] = [to_conversation(r, "messages")
                        for r in pq.read_table(data / "messages.parquet").to_pylist()]
    with (data / "qa.csv").open(newline="") as f:
        pairs["question_answer"] = [to_conversation(r, "question_answer") for r in csv.DictReader(f)]
    alpaca = json.loads((data / "alpaca.json").read_text())
    pairs["alpaca"] = [to_conversation(r, "alpaca") for r in alpaca]

    def qa(conv):
        return (conv[-2]["content"].split(ALPACA_SEPARATOR)[-1], conv[-1]["content"])

    reference = [qa(c) for c in pairs["messages"]]
    for name, convs in pairs.items():
        got = [qa(c) for c in convs]
        expect(got == reference, task=TASK, what=f"embedded SFT set read as {name}",
               expected="the same question and answer pairs as messages.jsonl",
               got=f"{sum(a != b for a, b in zip(got, reference))} of {len(got)} differ",
               cause="a format's fields mapped to the wrong roles")
