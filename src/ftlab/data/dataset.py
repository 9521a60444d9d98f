"""From files to conversations with per-record accounting (given infrastructure).

:func:`load_conversations` = raw loading (:mod:`ftlab.data.loading`) + per-record format
detection, field checks, normalization (task M1.1) and turn-order checks. Every record
ends up either as an :class:`Example` or as a rejection in the report with its file, line
(or row) and reason; ``report.total == len(examples) + len(report.rejected)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.data.formats import FORMATS, check_conversation, check_fields, detect_format
from ftlab.data.loading import LoadReport, SourceRef, load_records
from ftlab.data.normalize import to_conversation
from ftlab.errors import DataError


@dataclass(frozen=True)
class Example:
    """One usable conversation and where it came from."""

    where: SourceRef
    format: str
    conversation: list[dict]


def _record_format(data: dict, fmt: str) -> str:
    if fmt == "auto":
        return detect_format(data)
    missing = [k for k in FORMATS[fmt] if k not in data]
    if missing:
        raise DataError(f"not a {fmt} record: missing {missing}; keys seen {sorted(data)}")
    return fmt


def load_conversations(source, fmt: str = "auto", report: LoadReport | None = None
                       ) -> tuple[list[Example], LoadReport]:
    """Load ``source`` (see :func:`~ftlab.data.loading.load_records`) as conversations.

    ``fmt="auto"`` detects each record's format on its own, so one file may mix formats;
    a named format is required of every record. Records that fail are rejected with the
    reason, never dropped silently.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected auto or one of {list(FORMATS)}")
    records, report = load_records(source, report)
    examples = []
    for record in records:
        try:
            record_fmt = _record_format(record.data, fmt)
            check_fields(record.data, record_fmt)
            conversation = to_conversation(record.data, record_fmt)
            check_conversation(conversation)
        except DataError as e:
            report.reject(record.where, str(e))
            continue
        examples.append(Example(record.where, record_fmt, conversation))
    return examples, report
