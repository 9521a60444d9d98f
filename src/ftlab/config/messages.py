"""Validation errors as one line per problem: ``<file>:<line>: <dotted.field>: <what is
wrong> (got <value>)[; hint]``, with did-you-mean suggestions for unknown keys."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails


def format_errors(exc: ValidationError, path: Path, text: str, model: type[BaseModel], data: Any) -> str:
    """One line per problem in ``exc``, ordered by line in the file."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    problems = [_problem(err, path, root, model, data) for err in exc.errors()]
    problems.sort(key=lambda problem: problem[0] or 0)
    return "\n".join(line for _, line in problems)


def _problem(
    err: ErrorDetails, path: Path, root: yaml.Node, model: type[BaseModel], data: Any
) -> tuple[int | None, str]:
    """``(line, message line)`` for one pydantic error."""
    loc = (*err["loc"], *err.get("ctx", {}).get("loc_suffix", ()))
    line = line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    field = ".".join(map(str, loc))
    hint = _hint_for(err, loc, model)
    parts = [where, field, f"{_what(err)}{_got(err, loc, data)}"]
    return line, ": ".join(p for p in parts if p) + (f"; {hint}" if hint else "")


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key (or list item) of ``loc`` present in the YAML tree."""
    node, line = root, None
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return line


def _child(node: yaml.Node | None, part: Any) -> tuple[int, yaml.Node] | None:
    """``(line, value node)`` of mapping key ``part`` or sequence item ``part`` of ``node``."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return key.start_mark.line + 1, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


def _what(err: ErrorDetails) -> str:
    """What is wrong, in words."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "missing required key"
    return err["msg"].removeprefix("Value error, ")


def _got(err: ErrorDetails, loc: tuple[Any, ...], data: Any) -> str:
    """`` (got <value>)`` for scalar and flat-list values; empty for mappings and missing keys."""
    if err["type"] == "missing":
        return ""
    value = _lookup(data, loc, default=err["input"])
    nested = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict | list) for v in value))
    if nested:
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _lookup(data: Any, loc: tuple[Any, ...], default: Any) -> Any:
    """The raw value at ``loc`` in ``data``, or ``default`` when it is not there."""
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return default
    return data


def _hint_for(err: ErrorDetails, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """Did-you-mean for unknown keys and literal values, plus the field's own hint."""
    if err["type"] == "extra_forbidden":
        return _suggest_key(str(loc[-1]), _walk(model, loc[:-1])[0])
    _, field = _walk(model, loc)
    if field is None:
        return ""
    hints = []
    if err["type"] == "literal_error":
        choices = _literal_choices(field.annotation)
        close = difflib.get_close_matches(str(err["input"]), choices, n=1) if len(choices) > 1 else []
        hints += [f"did you mean '{close[0]}'?"] if close else []
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    hints.append(str(extra.get("hint", "")))
    return "; ".join(h for h in hints if h)


_ECOSYSTEM_NAMES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_ratio",
    "eval_steps": "eval_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_last",
    "optim": "optimizer",
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "max_seq_length": "max_length",
    "model_name": "name_or_path",
    "torch_dtype": "dtype",
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "bnb_4bit_compute_dtype": "compute_dtype",
    "load_in_4bit": "enabled",
}
"""transformers / PEFT / TRL / bitsandbytes spellings of ftlab keys, for did-you-mean hints."""


def _suggest_key(key: str, parent: type[BaseModel] | None) -> str:
    """A did-you-mean for unknown ``key`` among ``parent``'s fields, else the valid keys."""
    keys = list(parent.model_fields) if parent else []
    known = _ECOSYSTEM_NAMES.get(key)
    close = [known] if known in keys else difflib.get_close_matches(key, keys, n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(keys)}"


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model reached by following ``loc`` from ``model``, and the last field on the way."""
    current: type[BaseModel] | None = model
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None, None
        field = current.model_fields[part]
        current = inner_model(field.annotation)
    return current, field


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation such as ``list[X]`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = inner_model(arg)
        if found is not None:
            return found
    return None


def _literal_choices(annotation: Any) -> list[str]:
    """Every ``Literal`` value inside ``annotation``, as strings."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return [choice for arg in get_args(annotation) for choice in _literal_choices(arg)]
