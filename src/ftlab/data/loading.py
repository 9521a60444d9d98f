"""Raw-record loading with per-record accounting (given infrastructure of milestone 1).

:func:`load_records` reads JSON Lines, JSON arrays, CSV, Parquet and Hugging Face
``datasets`` into :class:`RawRecord` objects, each carrying a :class:`SourceRef` (file and
line, or row) so every later complaint can point at its origin. Messy input is handled and
never silently dropped: every record that cannot be read becomes a :class:`Rejection` in the
:class:`LoadReport`, with its line and the reason. Only problems that make the records of a
file impossible to separate (a broken JSON array, a bad CSV header, an unreadable Parquet
file) raise :class:`~ftlab.errors.DataError` for the whole file.

The loader does not care about schemas: it keeps any JSON object whatever its fields. Format
detection and normalisation happen later, and refuse records through :meth:`LoadReport.reject`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.errors import DataError
from ftlab.paths import shown

MAX_RECORD_CHARS = 200_000
"""Records longer than this many characters (raw text, or JSON for table rows) are rejected."""

SUPPORTED = (
    ".jsonl, .json (an array of objects, or JSON Lines), .csv (with a header row), .parquet, "
    "a folder written by datasets.Dataset.save_to_disk, or a datasets.Dataset"
)
DATASET_NAME = "<datasets.Dataset>"

_BOM = "\ufeff"
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape could not decode


@dataclass(frozen=True)
class SourceRef:
    """Where a record came from.

    ``file`` is the path as the caller gave it; printed through :func:`ftlab.paths.shown`
    (a file of the project as ``data/...``). Text formats set ``line``, the 1-based
    physical line the record starts on; Parquet and ``datasets`` set ``row``, 0-based.
    """

    file: str
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        """``data.jsonl:12``, ``data.parquet row 3``, or the bare file name."""
        file = shown(self.file)
        if self.line is not None:
            return f"{file}:{self.line}"
        if self.row is not None:
            return f"{file} row {self.row}"
        return file


@dataclass(frozen=True)
class Rejection:
    """A record that was refused, and why."""

    where: SourceRef
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class RawRecord:
    """A loaded record: its fields exactly as read, and where it came from."""

    where: SourceRef
    data: dict


@dataclass
class LoadReport:
    """Accounting of one or more loads.

    Invariant after loading: ``total == len(records) + len(rejected)``; blank lines are not
    records. Later stages that refuse a loaded record call :meth:`reject`, which lowers
    ``loaded`` without changing ``total``.
    """

    files: list[str]
    total: int = 0
    blank_lines: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        """Records seen and not rejected."""
        return self.total - len(self.rejected)

    def reject(self, where: SourceRef, reason: str) -> None:
        """Record that the record at ``where`` was refused for ``reason``."""
        self.rejected.append(Rejection(where, reason))

    def _files(self) -> str:
        return ", ".join(shown(f) for f in self.files)

    def summary(self) -> str:
        """Totals on the first line, then every rejection on its own indented line, in file
        order (by file, then line or row)."""
        head = (
            f"{self._files() or '(no files)'}: {self.total} records, "
            f"{self.loaded} loaded, {len(self.rejected)} rejected; "
            f"blank lines skipped: {self.blank_lines}"
        )
        order = sorted(self.rejected, key=lambda r: (self.files.index(r.where.file)
                                                     if r.where.file in self.files else 0,
                                                     r.where.line or 0, r.where.row or 0))
        return "\n".join([head, *(f"  {r}" for r in order)])

    def reason_counts(self) -> Counter:
        """Rejections counted by kind of reason (the reason up to its first colon, so
        ``invalid JSON: ... (column 3)`` and ``invalid JSON: ... (column 9)`` count together)."""
        return Counter(r.reason.split(":", 1)[0].strip() for r in self.rejected)

    def brief(self, first: int = 3) -> str:
        """The totals, the rejections counted by reason and the first ``first`` rejections
        (file:line and reason), indented; what a run prints for each stage's data."""
        if not self.rejected:
            return f"{self._files()}: {self.total} records, all loaded"
        by_reason = ", ".join(f"{reason} {n}" for reason, n in self.reason_counts().most_common())
        lines = [f"{self._files()}: {self.total} records, {self.loaded} loaded, "
                 f"{len(self.rejected)} rejected ({by_reason})"]
        lines += [f"  {r}" for r in self.rejected[:first]]
        if len(self.rejected) > first:
            lines.append(f"  ... and {len(self.rejected) - first} more")
        return "\n".join(lines)

    def refuse_above(self, max_fraction: float) -> None:
        """Raise :class:`DataError` when more than ``max_fraction`` of the records were
        rejected (``data.max_rejected_fraction``): training on what is left of a mostly
        broken file is rarely what was meant."""
        if self.total and len(self.rejected) / self.total > max_fraction:
            raise DataError(f"{len(self.rejected)} of {self.total} records "
                            f"({len(self.rejected) / self.total:.0%}) could not be used, more than "
                            f"data.max_rejected_fraction ({max_fraction:g}) allows; fix them or "
                            f"raise the limit:\n{self.brief(first=5)}")

    def merge(self, other: LoadReport) -> None:
        """Add ``other``'s files, counts and rejections to this report."""
        self.files.extend(other.files)
        self.total += other.total
        self.blank_lines += other.blank_lines
        self.rejected.extend(other.rejected)


_Item = RawRecord | Rejection | None  # None stands for a blank line


def load_records(source, report: LoadReport | None = None) -> tuple[list[RawRecord], LoadReport]:
    """Load every record of ``source``, in file order, with an account of what was refused.

    ``source``: a path (``str`` or ``Path``) to a ``.jsonl``, ``.json``, ``.csv`` or
    ``.parquet`` file, a ``save_to_disk`` folder, or a ``datasets.Dataset``.
    ``report``: when given, the load is added to it (file name appended, counts increased).

    Returns ``(records, report)``. The report is only updated once the whole file was read,
    so a :class:`DataError` (missing file, unsupported kind, a file whose records cannot be
    separated) leaves it untouched.
    """
    name, items = _read(source)
    report = report if report is not None else LoadReport(files=[])
    report.files.append(name)
    records = []
    for item in items:
        if item is None:
            report.blank_lines += 1
            continue
        report.total += 1
        if isinstance(item, Rejection):
            report.rejected.append(item)
        else:
            records.append(item)
    return records, report


def _read(source) -> tuple[str, list[_Item]]:
    """The source's display name and all its items; dispatches on the kind of source."""
    if _is_hf(source):
        rows = _dataset_rows(source, DATASET_NAME)
        return DATASET_NAME, list(_table_items(DATASET_NAME, rows))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a datasets.Dataset, got {type(source).__name__}")
    name, path = str(source), Path(source)
    if path.is_dir():
        return name, list(_table_items(name, _dataset_rows(_load_from_disk(path, name), name)))
    if not path.is_file():
        raise DataError(f"{name}: no such file or folder; supported: {SUPPORTED}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return name, list(_jsonl_items(name, _lines(_decode(path.read_bytes()))))
    if suffix == ".json":
        return name, list(_json_items(name, path.read_bytes()))
    if suffix == ".csv":
        return name, list(_csv_items(name, _lines(_decode(path.read_bytes()))))
    if suffix == ".parquet":
        return name, list(_table_items(name, _parquet_rows(path, name)))
    kind = repr(suffix) if suffix else "(no suffix)"
    raise DataError(f"{name}: unsupported kind of data file {kind}; supported: {SUPPORTED}")


# --- text decoding ---------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    """``raw`` decoded as UTF-8 without a leading BOM; undecodable bytes become surrogates."""
    return raw.decode("utf-8", errors="surrogateescape").removeprefix(_BOM)


def _lines(text: str) -> list[str]:
    """Physical lines split on LF, each without its LF or CRLF ending."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _utf8_problem(text: str) -> str | None:
    """``not valid UTF-8 (byte 0x.. at column ..)`` for the first undecodable byte, or None.

    The column is the 1-based byte position within ``text`` (for a CSV row spanning several
    lines, counted from the start of the row).
    """
    bad = _NOT_UTF8.search(text)
    if bad is None:
        return None
    column = len(text[: bad.start()].encode("utf-8", errors="surrogateescape")) + 1
    return f"not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at column {column})"


def _length_problem(length: int) -> str | None:
    """A reason when a record of ``length`` characters exceeds :data:`MAX_RECORD_CHARS`."""
    if length <= MAX_RECORD_CHARS:
        return None
    return f"record is {length} characters long, over the limit of {MAX_RECORD_CHARS}"


def _as_record(where: SourceRef, value: object) -> RawRecord | Rejection:
    """A record when ``value`` is a JSON object, else a rejection naming its type."""
    if isinstance(value, dict):
        return RawRecord(where, value)
    kind = "null" if value is None else type(value).__name__
    return Rejection(where, f"expected a JSON object, got {kind}")


# --- JSON Lines and JSON arrays ----------------------------------------------------------------


def _jsonl_items(name: str, lines: list[str]) -> Iterator[_Item]:
    """One item per physical line: None when blank, else a record or a rejection."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            yield None
            continue
        where = SourceRef(name, line=number)
        problem = _utf8_problem(line) or _length_problem(len(line))
        yield Rejection(where, problem) if problem else _parse_line(where, line)


def _parse_line(where: SourceRef, line: str) -> RawRecord | Rejection:
    """Parse one JSON Lines line; the column of a JSON error is the column in that line."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return Rejection(where, f"invalid JSON: {e.msg} (column {e.colno})")
    except (ValueError, RecursionError) as e:  # e.g. an integer of over 4300 digits, deep nesting
        return Rejection(where, f"unreadable JSON: {e}")
    return _as_record(where, value)


def _json_items(name: str, raw: bytes) -> Iterator[_Item]:
    """A ``.json`` file: a JSON array when its first non-blank character is ``[``, else JSON Lines.

    An array with an undecodable byte is refused whole, naming the byte's 0-based offset in
    the file (BOM included) and its line.
    """
    text = _decode(raw)
    if not text.startswith("[", _JSON_WHITESPACE.match(text).end()):
        return _jsonl_items(name, _lines(text))
    bad = _NOT_UTF8.search(text)
    if bad is not None:
        offset = len(raw) - len(text[bad.start() :].encode("utf-8", errors="surrogateescape"))
        raise DataError(
            f"{name}: not valid UTF-8 at line {text.count(chr(10), 0, bad.start()) + 1} "
            f"(byte 0x{raw[offset]:02x} at byte offset {offset}); the records of a JSON array "
            "cannot be separated, so the whole file is refused: re-save it as UTF-8"
        )
    return _array_items(name, text)


def _array_items(name: str, text: str) -> Iterator[_Item]:
    """The elements of a valid JSON array, each at the line where it starts.

    The whole text is parsed first so that a syntax error, which makes the elements impossible
    to separate, raises :class:`DataError` with its line and column before anything is yielded.
    """
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; the records "
            "of a JSON array cannot be separated, so the whole file is refused"
        ) from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{name}: unreadable JSON array: {e}") from None
    return _walk_array(name, text)


def _walk_array(name: str, text: str) -> Iterator[_Item]:
    """Walk an already validated JSON array with ``raw_decode``, counting lines incrementally."""
    decoder = json.JSONDecoder()
    pos = _JSON_WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted_to = 1, 0
    while text[pos] != "]":
        value, end = decoder.raw_decode(text, pos)
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        where = SourceRef(name, line=line)
        problem = _length_problem(end - pos)
        yield Rejection(where, problem) if problem else _as_record(where, value)
        pos = _JSON_WHITESPACE.match(text, end).end()
        if text[pos] == ",":
            pos = _JSON_WHITESPACE.match(text, pos + 1).end()


# --- CSV --------------------------------------------------------------------------------------


def _csv_items(name: str, lines: list[str]) -> Iterator[_Item]:
    """One item per CSV row after the header (the first non-blank row); all values are strings.

    A row's line is the line it starts on (quoted cells may span lines; their line breaks
    become ``\\n``). Malformed rows (strict quoting) and rows with the wrong number of cells
    are rejected; the header must be valid UTF-8 with distinct names.
    """
    reader = csv.reader((line + "\n" for line in lines), strict=True)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), sum(map(len, lines)) + 1))
    try:
        header, start = None, 1
        while start <= len(lines):
            cells, error = _next_row(reader)
            raw = "\n".join(lines[start - 1 : reader.line_num])
            if not raw.strip():
                yield None
            elif header is None:
                header = _csv_header(name, start, cells, raw, error)
            else:
                yield _csv_row(SourceRef(name, line=start), header, cells, raw, error)
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(old_limit)


def _next_row(reader) -> tuple[list[str], str | None]:
    """The next row's cells, or ``([], error)`` when the csv module refused the row."""
    try:
        return next(reader), None
    except csv.Error as e:
        return [], str(e)


def _csv_header(name: str, line: int, cells: list[str], raw: str, error: str | None) -> list[str]:
    """Validate the header row; any problem refuses the whole file."""
    problem = error or _utf8_problem(raw)
    duplicates = sorted({c for c in cells if cells.count(c) > 1})
    if problem or duplicates:
        detail = problem or f"duplicate column names {duplicates}"
        raise DataError(f"{name}: unusable CSV header on line {line}: {detail}; fix the header row")
    return cells


def _csv_row(
    where: SourceRef, header: list[str], cells: list[str], raw: str, error: str | None
) -> RawRecord | Rejection:
    """A record mapping header names to cells, or the row's first problem as a rejection.

    ``raw`` is the row's text (its lines joined with ``\\n``); ``error`` is the csv module's
    complaint about it, if any.
    """
    problem = _utf8_problem(raw) or _length_problem(len(raw))
    if problem is None and error is not None:
        last = where.line + raw.count("\n")
        span = f" (lines {where.line}-{last})" if last > where.line else ""
        problem = f"malformed CSV: {error}{span}"
    if problem is None and len(cells) != len(header):
        problem = f"expected {len(header)} cells (as in the header), got {len(cells)}"
    return Rejection(where, problem) if problem else RawRecord(where, dict(zip(header, cells)))


# --- Parquet and datasets ---------------------------------------------------------------------


def _table_items(name: str, rows: Iterable[dict]) -> Iterator[_Item]:
    """One record per table row (0-based ``row``); a row whose JSON is too long is rejected."""
    for index, row in enumerate(rows):
        where = SourceRef(name, row=index)
        problem = _length_problem(len(json.dumps(row, ensure_ascii=False, default=str)))
        yield Rejection(where, problem) if problem else RawRecord(where, row)


def _parquet_rows(path: Path, name: str) -> Iterator[dict]:
    """Rows of a Parquet file as dicts; nested columns become lists and dicts."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        batches = list(pq.ParquetFile(path).iter_batches())
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{name}: not a readable Parquet file ({e}); re-export it") from None
    for batch in batches:
        yield from batch.to_pylist()


def _is_hf(source) -> bool:
    """Whether ``source`` is a ``datasets`` object (without importing ``datasets``)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(source, (module.Dataset, module.DatasetDict))


def _load_from_disk(path: Path, name: str):
    """The dataset saved in folder ``path``; DataError when the folder is not one."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{name}: folder is not a saved dataset; supported: {SUPPORTED}") from None


def _dataset_rows(dataset, name: str) -> Iterator[dict]:
    """Rows of a ``datasets.Dataset``; a ``DatasetDict`` is refused, naming its splits."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(
            f"{name}: holds a DatasetDict with splits {sorted(dataset)}; load one split "
            "(a split's subfolder, or dataset['train'])"
        )
    return iter(dataset)
