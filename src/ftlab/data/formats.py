"""Record formats of instruction data, detection, and field checks (given infrastructure).

Formats and the fields that identify them (optional fields in brackets):

=================  =====================================================
alpaca             instruction, output [, input, system]
prompt_completion  prompt, completion
question_answer    question, answer
messages           messages: [{role, content}, ...]
sharegpt           conversations: [{from, value}, ...]
=================  =====================================================

A conversation (what every format becomes) is a list of ``{"role", "content"}`` dicts with
roles ``system`` (optional, first), then alternating ``user`` / ``assistant``, ending with
``assistant``.
"""

from __future__ import annotations

from ftlab.errors import DataError

FORMATS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "question_answer": ("question", "answer"),
}
"""Format name -> required keys, in detection order."""
OPTIONAL_STRINGS = {"alpaca": ("input", "system")}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
ROLES = ("system", "user", "assistant")


def detect_format(record: dict) -> str:
    """The format whose required keys ``record`` has; DataError naming the keys otherwise."""
    for name, keys in FORMATS.items():
        if all(k in record for k in keys):
            return name
    expected = "; ".join(f"{n} ({', '.join(k)})" for n, k in FORMATS.items())
    raise DataError(f"no known format: keys seen {sorted(record)}; expected one of: {expected}")


def _text(record: dict, key: str, allow_empty: bool = False) -> None:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"field '{key}' is empty")


def _turns(items: object, key: str, role_key: str, text_key: str) -> None:
    if not isinstance(items, list) or not items:
        raise DataError(f"field '{key}' must be a non-empty list of turns")
    for i, turn in enumerate(items):
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            raise DataError(f"{key}[{i}] must be an object with a string '{text_key}'")
        if not turn[text_key].strip():
            raise DataError(f"{key}[{i}].{text_key} is empty")
        if role_key not in turn:
            raise DataError(f"{key}[{i}] has no '{role_key}'")


def check_fields(record: dict, fmt: str) -> None:
    """Raise DataError with the reason when ``record`` is not a valid ``fmt`` record.

    Required text fields must be non-empty strings; optional ones strings when present;
    turn lists non-empty with string contents and known roles.
    """
    if fmt == "messages":
        _turns(record["messages"], "messages", "role", "content")
        bad = [t["role"] for t in record["messages"] if t["role"] not in ROLES]
        if bad:
            raise DataError(f"unknown role {bad[0]!r}; expected one of {list(ROLES)}")
    elif fmt == "sharegpt":
        _turns(record["conversations"], "conversations", "from", "value")
        bad = [t["from"] for t in record["conversations"] if t["from"] not in SHAREGPT_ROLES]
        if bad:
            raise DataError(f"unknown speaker {bad[0]!r}; expected one of {list(SHAREGPT_ROLES)}")
    else:
        for key in FORMATS[fmt]:
            _text(record, key)
        for key in OPTIONAL_STRINGS.get(fmt, ()):
            if record.get(key) is not None:
                _text(record, key, allow_empty=True)


def check_conversation(conversation: list[dict]) -> None:
    """Raise DataError unless roles are [system], then user/assistant alternating, last assistant."""
    roles = [m["role"] for m in conversation]
    body = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user", "assistant"] * (len(body) // 2)
    if not body or body != expected:
        raise DataError(f"turn order {roles} is not [system], user, assistant, …, assistant")
