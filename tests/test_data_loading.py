"""Raw-record loading: every format, every messy case, exact lines and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftlab.data import loading
from ftlab.data.loading import (
    MAX_RECORD_CHARS,
    LoadReport,
    Rejection,
    SourceRef,
    load_records,
)
from ftlab.errors import DataError

BOM = b"\xef\xbb\xbf"


def write(tmp_path: Path, name: str, content: bytes) -> str:
    """Write ``content`` byte for byte and return the path as a str (the name the loader shows)."""
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def lines_of(records) -> list[int]:
    return [r.where.line for r in records]


def reasons(report: LoadReport) -> list[tuple[int, str]]:
    return [(r.where.line, r.reason) for r in report.rejected]


def assert_accounted(records, report: LoadReport) -> None:
    assert report.total == len(records) + len(report.rejected)
    assert report.loaded == len(records)


# --- report and references -------------------------------------------------------------------


def test_source_ref_and_rejection_render_file_and_position():
    assert str(SourceRef("data.jsonl", line=12)) == "data.jsonl:12"
    assert str(SourceRef("data.parquet", row=3)) == "data.parquet row 3"
    assert str(SourceRef("data.parquet", row=0)) == "data.parquet row 0"
    rejection = Rejection(SourceRef("d.csv", line=4), "expected 2 cells (as in the header), got 3")
    assert str(rejection) == "d.csv:4: expected 2 cells (as in the header), got 3"


def test_report_reject_merge_and_summary():
    first = LoadReport(files=["a.jsonl"], total=5, blank_lines=1)
    first.reject(SourceRef("a.jsonl", line=2), "invalid JSON: Expecting value (column 1)")
    assert first.loaded == 4
    second = LoadReport(files=["b.parquet"], total=3)
    second.reject(SourceRef("b.parquet", row=1), "too long")
    first.merge(second)
    assert (first.files, first.total, first.blank_lines, first.loaded) == (
        ["a.jsonl", "b.parquet"], 8, 1, 6,
    )
    assert first.summary().splitlines() == [
        "a.jsonl, b.parquet: 8 records, 6 loaded, 2 rejected; blank lines skipped: 1",
        "  a.jsonl:2: invalid JSON: Expecting value (column 1)",
        "  b.parquet row 1: too long",
    ]


def test_load_into_an_existing_report_accumulates(tmp_path):
    a = write(tmp_path, "a.jsonl", b'{"x": 1}\n[1]\n')
    b = write(tmp_path, "b.csv", b"x\n1\n2\n")
    _, report = load_records(a)
    records, same = load_records(b, report)
    assert same is report
    assert report.files == [a, b]
    assert (report.total, report.loaded, len(records)) == (4, 3, 2)


# --- JSON Lines --------------------------------------------------------------------------------


def test_jsonl_keeps_order_line_numbers_and_data(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": {"b": [1, 2]}}\n')
    records, report = load_records(path)
    assert [r.data for r in records] == [{"a": 1}, {"a": 2}, {"a": {"b": [1, 2]}}]
    assert lines_of(records) == [1, 2, 3]
    assert records[0].where == SourceRef(path, line=1, row=None)
    assert (report.files, report.total, report.blank_lines, report.rejected) == ([path], 3, 0, [])


def test_jsonl_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", BOM + b'{"a": 1}\r\n\r\n  \t \r\n{"a": 2}\r\n\n')
    records, report = load_records(Path(path))
    assert [r.data for r in records] == [{"a": 1}, {"a": 2}]
    assert lines_of(records) == [1, 4]
    assert (report.total, report.blank_lines) == (2, 3)


def test_jsonl_invalid_json_is_rejected_with_line_and_error(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"a": 1}\n{"a": 1 "b": 2}\n{"a": 3}\n')
    records, report = load_records(path)
    assert lines_of(records) == [1, 3]
    assert reasons(report) == [(2, "invalid JSON: Expecting ',' delimiter (column 9)")]
    assert str(report.rejected[0]) == f"{path}:2: invalid JSON: Expecting ',' delimiter (column 9)"


@pytest.mark.parametrize(
    ("line", "kind"), [(b"[1,2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "null")]
)
def test_jsonl_non_object_is_rejected_naming_its_type(tmp_path, line, kind):
    records, report = load_records(write(tmp_path, "d.jsonl", b'{"a": 1}\n' + line + b"\n"))
    assert lines_of(records) == [1]
    assert reasons(report) == [(2, f"expected a JSON object, got {kind}")]


def test_jsonl_non_utf8_line_is_rejected_with_byte_and_column(tmp_path):
    # column counts bytes: '{"a": "' is 7 bytes, 'é' is 2 more, so 0xff is byte 10
    content = b'{"a": 1}\n{"a": "\xc3\xa9\xff"}\n{"a": "caf\xc3\xa9"}\n'
    records, report = load_records(write(tmp_path, "d.jsonl", content))
    assert [r.data for r in records] == [{"a": 1}, {"a": "café"}]
    assert reasons(report) == [(2, "not valid UTF-8 (byte 0xff at column 10)")]


def test_jsonl_overlong_record_is_rejected_with_its_length(tmp_path):
    fits = json.dumps({"t": "x" * (MAX_RECORD_CHARS - 9)}).encode()
    too_long = json.dumps({"t": "x" * MAX_RECORD_CHARS}).encode()
    assert len(fits) == MAX_RECORD_CHARS
    records, report = load_records(write(tmp_path, "d.jsonl", fits + b"\n" + too_long + b"\n"))
    assert lines_of(records) == [1]
    assert reasons(report) == [
        (2, f"record is {MAX_RECORD_CHARS + 9} characters long, over the limit of 200000")
    ]


def test_jsonl_mixed_formats_empty_strings_and_missing_fields_are_kept(tmp_path):
    rows = [
        {"instruction": "Add", "input": "", "output": "5"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"conversations": [{"from": "human", "value": ""}]},
        {"prompt": "p"},
        {},
    ]
    content = "\n".join(json.dumps(r) for r in rows).encode()
    records, report = load_records(write(tmp_path, "d.jsonl", content))
    assert [r.data for r in records] == rows
    assert report.rejected == []


def test_messy_jsonl_every_bad_record_reported_every_good_one_kept(tmp_path):
    too_long = json.dumps({"text": "x" * MAX_RECORD_CHARS}).encode()
    content = b"\r\n".join([
        BOM + b'{"instruction": "Add", "input": "2 3", "output": "5"}',  # 1 kept
        b"",  # 2 blank
        b"   \t",  # 3 blank
        b'{"messages": [{"role": "user", "content": "hi"}]}',  # 4 kept
        b'{"prompt": "a", "completion": "b",}',  # 5 invalid JSON
        b"[1, 2]",  # 6 not an object
        b'"text"',  # 7 not an object
        b"42",  # 8 not an object
        b'{"output": "caf\xe9"}',  # 9 latin-1 byte
        too_long,  # 10 too long
        b'{"question": "", "answer": "ok"}',  # 11 kept: empty strings are not our business
        b"{}",  # 12 kept: missing fields are not our business
        b'{"conversations": [{"from": "human", "value": "hi"}]}',  # 13 kept, no final newline
    ])
    path = write(tmp_path, "messy.jsonl", content)
    records, report = load_records(path)
    assert lines_of(records) == [1, 4, 11, 12, 13]
    assert records[0].data == {"instruction": "Add", "input": "2 3", "output": "5"}
    assert records[2].data == {"question": "", "answer": "ok"}
    assert reasons(report) == [
        (5, "invalid JSON: Expecting property name enclosed in double quotes (column 35)"),
        (6, "expected a JSON object, got list"),
        (7, "expected a JSON object, got str"),
        (8, "expected a JSON object, got int"),
        (9, "not valid UTF-8 (byte 0xe9 at column 16)"),
        (10, f"record is {MAX_RECORD_CHARS + 12} characters long, over the limit of 200000"),
    ]
    assert (report.total, report.loaded, report.blank_lines) == (11, 5, 2)
    assert_accounted(records, report)
    summary = report.summary().splitlines()
    assert summary[0] == f"{path}: 11 records, 5 loaded, 6 rejected; blank lines skipped: 2"
    assert summary[1:] == [f"  {r}" for r in report.rejected]


# --- JSON arrays -------------------------------------------------------------------------------


def test_json_array_records_start_lines_and_non_objects(tmp_path):
    content = b"\r\n".join([
        BOM + b"[",
        b'  {"instruction": "a", "output": "b"},',  # 2
        b'  "oops",',  # 3
        b"  {",  # 4
        b'    "messages": []',
        b"  },",
        b'  [1],  {"x": 1},',  # 7: two elements on one line
        b"  null",  # 8
        b"]",
        b"",
    ])
    records, report = load_records(write(tmp_path, "d.json", content))
    assert [(r.where.line, r.data) for r in records] == [
        (2, {"instruction": "a", "output": "b"}), (4, {"messages": []}), (7, {"x": 1}),
    ]
    assert reasons(report) == [
        (3, "expected a JSON object, got str"),
        (7, "expected a JSON object, got list"),
        (8, "expected a JSON object, got null"),
    ]
    assert_accounted(records, report)


def test_json_empty_array_and_overlong_element(tmp_path):
    assert load_records(write(tmp_path, "e.json", b" \n[ ]\n"))[1].total == 0
    element = json.dumps({"t": "x" * MAX_RECORD_CHARS}).encode()
    records, report = load_records(write(tmp_path, "d.json", b'[\n{"a": 1},\n' + element + b"]"))
    assert lines_of(records) == [2]
    assert reasons(report) == [
        (3, f"record is {MAX_RECORD_CHARS + 9} characters long, over the limit of 200000")
    ]


def test_json_array_with_invalid_json_refuses_the_file_with_line_and_column(tmp_path):
    path = write(tmp_path, "d.json", b'[\n  {"a": 1},\n  {"b": 2\n  {"c": 3}\n]\n')
    with pytest.raises(DataError) as error:
        load_records(path)
    message = str(error.value)
    assert message.startswith(f"{path}: invalid JSON at line 4, column 3: Expecting ',' delimiter")
    assert "\n" not in message


def test_json_array_with_non_utf8_byte_refuses_the_file_naming_the_offset(tmp_path):
    # BOM (3 bytes) + '[\n ' (3) + '{"a": "caf' (10): the bad byte is at offset 16, line 2
    path = write(tmp_path, "d.json", BOM + b'[\n {"a": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"line 2 \(byte 0xe9 at byte offset 16\)"):
        load_records(path)


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = write(tmp_path, "d.json", BOM + b'{"a": 1}\r\n\r\n{"a": 2\r\n{"a": 3}')
    records, report = load_records(path)
    assert [(r.where.line, r.data) for r in records] == [(1, {"a": 1}), (4, {"a": 3})]
    assert reasons(report) == [(3, "invalid JSON: Expecting ',' delimiter (column 8)")]
    assert report.blank_lines == 1


# --- CSV ---------------------------------------------------------------------------------------


def test_messy_csv_every_bad_row_reported_every_good_one_kept(tmp_path):
    content = b"\r\n".join([
        BOM + b"instruction,input,output",  # 1 header, BOM not part of the first name
        b"Add,,5",  # 2 kept, empty cell -> ""
        b'"Write a',  # 3 kept: a row spanning lines 3-4
        b'poem",,"roses are red"',
        b"",  # 5 blank
        b"Too,many,cells,here",  # 6
        b"short,row",  # 7
        b'"bad"x,1,2',  # 8 malformed quoting
        b"caf\xe9,1,2",  # 9 latin-1 byte
        b'last,"a ""quoted"" word",3',  # 10 kept, no final newline
    ])
    path = write(tmp_path, "messy.csv", content)
    records, report = load_records(path)
    assert [(r.where.line, r.data) for r in records] == [
        (2, {"instruction": "Add", "input": "", "output": "5"}),
        (3, {"instruction": "Write a\npoem", "input": "", "output": "roses are red"}),
        (10, {"instruction": "last", "input": 'a "quoted" word', "output": "3"}),
    ]
    assert reasons(report) == [
        (6, "expected 3 cells (as in the header), got 4"),
        (7, "expected 3 cells (as in the header), got 2"),
        (8, "malformed CSV: ',' expected after '\"'"),
        (9, "not valid UTF-8 (byte 0xe9 at column 4)"),
    ]
    assert (report.total, report.loaded, report.blank_lines) == (7, 3, 1)
    assert_accounted(records, report)


def test_csv_unterminated_quote_is_one_rejection_spanning_to_the_end(tmp_path):
    records, report = load_records(write(tmp_path, "d.csv", b'q,a\n1,"open\n2,3\n'))
    assert records == []
    assert reasons(report) == [(2, "malformed CSV: unexpected end of data (lines 2-3)")]


def test_csv_overlong_row_is_rejected(tmp_path):
    cell = b"x" * MAX_RECORD_CHARS
    records, report = load_records(write(tmp_path, "d.csv", b"q,a\n1," + cell + b"\n2,3\n"))
    assert lines_of(records) == [3]
    assert reasons(report) == [
        (2, f"record is {MAX_RECORD_CHARS + 2} characters long, over the limit of 200000")
    ]


def test_csv_bad_header_refuses_the_file(tmp_path):
    with pytest.raises(DataError, match=r"header on line 1: duplicate column names \['a'\]"):
        load_records(write(tmp_path, "d.csv", b"a,b,a\n1,2,3\n"))


def test_csv_empty_and_header_only(tmp_path):
    assert load_records(write(tmp_path, "e.csv", b""))[1].total == 0
    assert load_records(write(tmp_path, "h.csv", b"q,a\r\n"))[1].total == 0


# --- Parquet and datasets ----------------------------------------------------------------------

ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "source": "a"},
    {"messages": [{"role": "user", "content": "x" * 60}], "source": ""},
]


def test_parquet_rows_with_nested_columns(tmp_path, monkeypatch):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records, report = load_records(path)
    assert [r.data for r in records] == ROWS
    assert [str(r.where) for r in records] == [f"{path} row 0", f"{path} row 1"]
    assert records[1].where.line is None
    monkeypatch.setattr(loading, "MAX_RECORD_CHARS", 110)
    records, report = load_records(path)
    assert [r.where.row for r in records] == [0]
    assert [(r.where.row, r.reason) for r in report.rejected] == [
        (1, "record is 121 characters long, over the limit of 110")
    ]


def test_unreadable_parquet_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_records(write(tmp_path, "d.parquet", b"not parquet"))


def test_datasets_folder_and_object(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.save_to_disk(str(tmp_path / "saved"))
    records, report = load_records(tmp_path / "saved")
    assert [r.data for r in records] == ROWS
    assert report.files == [str(tmp_path / "saved")]
    records, report = load_records(dataset)
    assert [str(r.where) for r in records] == ["<datasets.Dataset> row 0", "<datasets.Dataset> row 1"]
    assert report.files == ["<datasets.Dataset>"]


def test_dataset_dict_and_non_dataset_folder_are_refused(tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    with pytest.raises(DataError, match=r"DatasetDict with splits \['train'\]"):
        load_records(splits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder is not a saved dataset"):
        load_records(tmp_path / "empty")


# --- unsupported input -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "create"), [("missing.jsonl", False), ("d.txt", True)])
def test_missing_or_unsupported_file_names_path_and_supported_kinds(tmp_path, name, create):
    path = tmp_path / name
    if create:
        path.write_text("{}\n")
    report = LoadReport(files=[])
    with pytest.raises(DataError) as error:
        load_records(path, report)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert ".jsonl" in message and ".parquet" in message and "save_to_disk" in message
    assert "\n" not in message
    assert report == LoadReport(files=[])


def test_whole_file_error_leaves_the_report_untouched(tmp_path):
    report = LoadReport(files=["earlier.jsonl"], total=2)
    with pytest.raises(DataError):
        load_records(write(tmp_path, "d.json", b"[{}, {]"), report)
    assert report == LoadReport(files=["earlier.jsonl"], total=2)


def test_other_objects_are_a_type_error():
    with pytest.raises(TypeError, match="got list"):
        load_records([{"a": 1}])
