"""The defaults table of the docs (``ftlab config defaults``), rendered from the models."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from ftlab.config.messages import inner_model
from ftlab.config.pipeline import PipelineConfig


def defaults_table() -> str:
    """Markdown table of every config key, generated from the models.

    One row per key, named by its YAML path from the top of a run config (for example
    ``stages[].train.lr``), with its type and constraints, default (as YAML/JSON) and
    description. Sections appear as their own row followed by their fields.
    """
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += _rows(PipelineConfig, prefix="")
    return "\n".join(rows) + "\n"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    """Table rows for ``model``'s fields and, recursively, their sections."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        cells = [f"`{key}`", _type_cell(field), _default_cell(field), field.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        section = inner_model(field.annotation)
        if section is not None:
            rows += _rows(section, prefix=f"{key}[]." if _is_list(field.annotation) else f"{key}.")
    return rows


def _is_list(annotation: Any) -> bool:
    """Whether ``annotation`` is ``list[...]`` or ``list[...] | None``."""
    return list in (get_origin(annotation), *map(get_origin, get_args(annotation)))


def _type_cell(field: FieldInfo) -> str:
    """The field's type followed by its numeric and length constraints."""
    constraints = [_constraint(m) for m in field.metadata]
    return ", ".join([_type_name(field.annotation), *(c for c in constraints if c)])


_CONSTRAINT_FORMS = {
    annotated_types.Gt: ("gt", "> {}"),
    annotated_types.Ge: ("ge", ">= {}"),
    annotated_types.Lt: ("lt", "< {}"),
    annotated_types.Le: ("le", "<= {}"),
    annotated_types.MinLen: ("min_length", "length >= {}"),
}


def _constraint(metadata: Any) -> str:
    """A constraint such as ``>= 1`` in words; empty for validators and other metadata."""
    form = _CONSTRAINT_FORMS.get(type(metadata))
    return form[1].format(getattr(metadata, form[0])) if form else ""


def _type_name(annotation: Any) -> str:
    """A short readable name of a type annotation (``int | null``, ``'a' | 'b'``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if args:
        return " | ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _default_cell(field: FieldInfo) -> str:
    """The default as YAML/JSON text, ``required``, or a pointer to the section's rows."""
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "section defaults below"
    return f"`{json.dumps(to_jsonable_python(default))}`"
