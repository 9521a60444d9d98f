"""Field types and the base model every config section shares: data files resolved against
the config's folder, unique lists, powers of two, hints appended to errors, and no booleans
where a number is meant."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    SerializationInfo,
    ValidationInfo,
    field_validator,
)

M = TypeVar("M", bound=BaseModel)


def _resolve_data_file(value: Path, info: ValidationInfo) -> Path:
    """Resolve ``value`` against ``info.context["base_dir"]`` (else cwd); it must be a file."""
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    try:
        resolved = (base / value.expanduser()).resolve()
        is_file = resolved.is_file()
    except (OSError, RuntimeError) as error:  # a symlink loop, a name too long, no access
        raise ValueError(f"data file cannot be resolved: {base / value} "
                         f"({getattr(error, 'strerror', None) or error})") from None
    if not is_file:
        raise ValueError(f"data file not found: {resolved}")
    return resolved


def _relative_to_base(value: Path, info: SerializationInfo) -> str:
    """Write ``value`` relative to ``info.context["base_dir"]`` when given, else as is."""
    base = (info.context or {}).get("base_dir")
    return os.path.relpath(value, base) if base else str(value)


DataFile = Annotated[
    Path,
    AfterValidator(_resolve_data_file),
    PlainSerializer(_relative_to_base, when_used="json"),
]
"""An existing data file; relative paths resolve against the config file's folder."""

DATA_FILE_HINT = "relative paths are resolved against the config file's folder"


def unique(values: list[Any]) -> list[Any]:
    """Reject lists that name an entry twice."""
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate entries {duplicates}; list each once")
    return values


def power_of_two(value: int) -> int:
    """Reject integers that are not powers of two."""
    if value & (value - 1):
        raise ValueError("must be a power of two (32, 64, 128, ..., 4096)")
    return value


def auto_or_module_names(value: Any) -> Any:
    """Accept ``"auto"`` or a non-empty list of non-empty module-name strings."""
    names_ok = isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value)
    if value == "auto" or names_ok:
        return value
    raise ValueError("must be 'auto' or a non-empty list of module names such as ['q_proj', 'v_proj']")


def hint(text: str) -> dict[str, str]:
    """Field metadata carrying a hint that ``load_config`` appends to that field's errors."""
    return {"hint": text}


def _numeric(annotation: Any) -> bool:
    """Whether ``annotation`` (possibly Optional / Annotated) means a number and not a bool."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _numeric(args[0])
    if args and get_origin(annotation) is not Literal:
        return bool not in args and any(_numeric(a) for a in args)
    return annotation in (int, float)


class Section(BaseModel):
    """Base of every config model: unknown keys, inf/nan and booleans where a number is
    meant (``batch_size: true`` would otherwise be read as 1) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not a boolean")
        return value
