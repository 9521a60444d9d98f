"""Given M1 infrastructure: format detection, conversations from messy files, the inspector."""

from __future__ import annotations

import ast
import json

import pytest

from ftlab.data import (FORMATS, detect_format, inspect_html, inspect_text, load_conversations,
                        tokenize_with_labels)
from ftlab.data.formats import check_conversation, check_fields
from ftlab.errors import DataError

SFT_FILES = ("alpaca.json", "messages.jsonl", "sharegpt.json", "prompt_completion.jsonl",
             "qa.csv", "messages.parquet")


@pytest.mark.parametrize(("record", "fmt"), [
    ({"messages": []}, "messages"), ({"conversations": []}, "sharegpt"),
    ({"instruction": "", "output": "", "input": ""}, "alpaca"),
    ({"prompt": "", "completion": ""}, "prompt_completion"),
    ({"question": "", "answer": "", "extra": 1}, "question_answer"),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


def test_unknown_format_names_the_keys_seen():
    with pytest.raises(DataError) as err:
        detect_format({"text": "x", "label": 1})
    msg = str(err.value)
    assert "keys seen ['label', 'text']" in msg
    assert all(name in msg for name in FORMATS)


@pytest.mark.parametrize(("record", "fmt", "reason"), [
    ({"instruction": "Hi", "output": 3}, "alpaca", "field 'output' must be a string, got int"),
    ({"instruction": "  ", "output": "x"}, "alpaca", "field 'instruction' is empty"),
    ({"instruction": "Hi", "output": "x", "input": None}, "alpaca", None),
    ({"messages": "hi"}, "messages", "must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", "unknown role 'bot'"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", "unknown speaker 'robot'"),
    ({"conversations": [{"from": "human"}]}, "sharegpt", "must be an object with a string 'value'"),
])
def test_check_fields(record, fmt, reason):
    if reason is None:
        check_fields(record, fmt)
    else:
        with pytest.raises(DataError, match=reason):
            check_fields(record, fmt)


@pytest.mark.parametrize("roles", [["user"], ["assistant"], ["user", "user", "assistant"],
                                   ["user", "assistant", "system"], []])
def test_check_conversation_rejects_bad_turn_order(roles):
    with pytest.raises(DataError, match="turn order"):
        check_conversation([{"role": r, "content": "x"} for r in roles])


@pytest.mark.parametrize("name", SFT_FILES)
def test_every_embedded_format_loads_completely(data, name):
    examples, report = load_conversations(data / "sft" / name)
    assert report.total == report.loaded == len(examples) == 378 and not report.rejected


def test_messy_file_reports_every_bad_record_by_line_and_keeps_every_good_one(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"instruction": "Hi?", "input": "", "output": "Hello."}\r\n'   # 1 ok
        b"\r\n"                                                                      # 2 blank
        b'{"prompt": "a", "completion": ""}\n'                                       # 3 empty
        b"{bad json\n"                                                               # 4
        b'{"foo": 1, "bar": 2}\n'                                                    # 5 unknown
        b'{"messages": [{"role": "user", "content": "x"}]}\n'                        # 6 order
        b'{"question": "q?", "answer": "A."}\n'                                      # 7 ok
        b'{"question": "caf\xe9?", "answer": "A."}\n'                                # 8 bytes
        b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}\n'  # 9
        b'{"instruction": "Hi", "output": 7}\n'                                      # 10 type
    )
    examples, report = load_conversations(path)
    assert [e.where.line for e in examples] == [1, 7, 9]
    assert [e.format for e in examples] == ["alpaca", "question_answer", "sharegpt"]
    assert {r.where.line for r in report.rejected} == {3, 4, 5, 6, 8, 10}
    assert report.total == 9 == len(examples) + len(report.rejected)
    assert report.blank_lines == 1
    lines = report.summary().splitlines()
    assert lines[0].endswith("9 records, 3 loaded, 6 rejected; blank lines skipped: 1")
    assert [int(line.split(":")[1]) for line in lines[1:]] == [3, 4, 5, 6, 8, 10]


def test_named_format_is_required_of_every_record(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "q?", "answer": "A."}\n{"prompt": "p", "completion": "c"}\n')
    examples, report = load_conversations(path, fmt="question_answer")
    assert len(examples) == 1
    assert "not a question_answer record: missing ['question', 'answer']" in report.rejected[0].reason
    with pytest.raises(DataError, match="unknown format 'csv'"):
        load_conversations(path, fmt="csv")


def test_label_inspector_marks_trained_tokens(tokenizer):
    conv = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    ex = tokenize_with_labels(conv, tokenizer, 64)
    text = inspect_text(ex, tokenizer)
    trained = [line for line in text.splitlines() if " TRAIN " in line]
    assert "".join(ast.literal_eval(line.split("TRAIN", 1)[1].strip()) for line in trained) == "Hello.<|im_end|>"
    assert text.splitlines()[-1] == f"{len(trained)} of {len(ex['input_ids'])} tokens trained"
    html = inspect_html(ex, tokenizer)
    assert html.count('title="trained"') == len(trained)
    assert "&lt;|im_start|&gt;" in html


def test_prepare_sft_filters_splits_and_tokenizes(tmp_path, tokenizer):
    from ftlab.config import DataConfig
    from ftlab.data import prepare_sft

    rows = [{"messages": [{"role": "user", "content": f"Question {i % 30}?"},
                          {"role": "assistant", "content": f"Answer {i % 30}."}]}
            for i in range(40)]  # 10 exact duplicates
    rows.append({"messages": [{"role": "user", "content": "Empty?"},
                              {"role": "assistant", "content": " "}]})
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare_sft(DataConfig(path=path, validation_fraction=0.2), tokenizer)
    assert len(prepared.train) + len(prepared.validation) == 30
    assert len(prepared.validation) == 6
    assert prepared.filter_report.dropped["duplicate"] == 10
    eos = tokenizer.eos_token_id
    assert all(eos in e["labels"] for e in prepared.train + prepared.validation)
    kept_all = prepare_sft(DataConfig(path=path, dedupe=False, validation_fraction=0.0), tokenizer)
    assert len(kept_all.train) == 40 and kept_all.filter_report is None


def test_replay_blocks_are_pretraining_text_trained_on_every_token(tmp_path, tokenizer):
    from ftlab.config import DataConfig
    from ftlab.data import prepare_sft
    from ftlab.data.replay import replay_count, replay_examples
    from ftlab.paths import data_dir

    assert [replay_count(70, f) for f in (0.0, 0.3, 0.5)] == [0, 30, 70]
    corpus = data_dir() / "corpus/train.txt"
    blocks = replay_examples(corpus, tokenizer, 5, 64, seed=1)
    assert blocks == replay_examples(corpus, tokenizer, 5, 64, seed=1)
    assert blocks != replay_examples(corpus, tokenizer, 5, 64, seed=2)
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for block in blocks:
        assert len(block["input_ids"]) == 64 and block["labels"] == block["input_ids"]
        assert block["input_ids"][0] == sep  # starts at a document, as in pretraining
        assert tokenizer.decode(block["input_ids"][1:20]).strip() in corpus.read_text()

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = tmp_path / "general.txt"
    own.write_text("One document.\nAnother document here.\n")
    prepared = prepare_sft(DataConfig(path=path, validation_fraction=0.0, replay_fraction=0.5,
                                      replay_path=own, max_length=16), tokenizer)
    assert len(prepared.train) == 40 and prepared.replayed == 20
    assert "20 of them general-text replay" in prepared.summary()
    assert all(e["labels"] == e["input_ids"] for e in prepared.train[20:])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no non-empty line"):
        prepare_sft(DataConfig(path=path, replay_fraction=0.5, replay_path=empty), tokenizer)


def test_preference_format_is_refused_by_sft(tokenizer):
    from ftlab.config import DataConfig
    from ftlab.data import prepare_sft
    from ftlab.errors import ConfigError
    from ftlab.paths import data_dir

    with pytest.raises(ConfigError, match="preference records .* are for dpo stages"):
        prepare_sft(DataConfig(path=data_dir() / "preferences/train.jsonl", format="preference"),
                    tokenizer)
